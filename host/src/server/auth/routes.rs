//! Sign-in and everything about identity: the login page and `POST /login` (session cookie),
//! sign-out, `POST /api/v1/login` (an API token for the CLI), the caller's own password and
//! tokens, users (admins), and the audit log (admins: JSON, CSV, chain check).

use super::rules::Scope;
use super::{COOKIE, Caller, ClientIp, SESSION_TTL, Via, hash_password, record, verify_password};
use crate::server::AppState;
use crate::server::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::server::views::{PageError, static_version};
use crate::store::users::{Role, TokenRecord, UserRecord};
use askama::Template;
use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};

/// The one answer to every failed sign-in (unknown user, wrong password, locked, disabled).
const BAD_LOGIN: &str =
    "wrong username or password (failures slow this address down; failures from many addresses lock the account)";

/// The longest username accepted at sign-in (as when users are created); longer ones are
/// refused before any lookup, rate limit or audit entry.
pub const MAX_USERNAME: usize = 64;

/// The longest token lifetime `expires_in` may ask for.
pub const MAX_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    title: String,
    nav: &'static str,
    v: &'static str,
    ctx: crate::server::views::Ctx,
    next: String,
    username: String,
    error: Option<String>,
}

/// Query of the login page: where to go after signing in.
#[derive(Debug, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// Only paths on this server: `/x`, never `//host`, `/\\host`, `https://...`; and only
/// printable ASCII without spaces (browsers drop tabs and newlines, turning `/\t/host` into
/// `//host`). Anything else is `/`.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && n.chars().all(|c| c.is_ascii_graphic()) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

fn login_page(status: StatusCode, next: String, username: String, error: Option<String>) -> Response {
    let t = LoginPage {
        title: "Sign in".into(),
        nav: "",
        v: static_version(),
        ctx: Default::default(),
        next,
        username,
        error,
    };
    crate::server::views::page(status, &t)
}

/// `GET /login`.
pub async fn login_form(Query(q): Query<NextQuery>) -> Response {
    login_page(StatusCode::OK, safe_next(q.next.as_deref()), String::new(), None)
}

fn ip_of(addr: Option<Extension<ClientIp>>) -> String {
    addr.map_or_else(|| "unknown".into(), |Extension(ClientIp(a))| a)
}

/// The refusal of a username longer than [`MAX_USERNAME`].
fn too_long_username() -> String {
    format!("a username has at most {MAX_USERNAME} characters")
}

/// Checks a username and password with rate limits and lockout; the same error for every
/// failure. `Err` carries the status and message.
async fn check_login(
    s: &AppState,
    ip: &str,
    username: &str,
    password: &str,
) -> Result<UserRecord, (StatusCode, String, u64)> {
    let auth = &s.auth;
    if username.chars().count() > MAX_USERNAME {
        return Err((StatusCode::BAD_REQUEST, too_long_username(), 0));
    }
    let net = super::network_key(ip);
    if let Some(wait) = auth.login_limit.check(&format!("ip:{ip}")) {
        return Err((StatusCode::TOO_MANY_REQUESTS, format!("too many sign-in attempts; try again in {wait} s"), wait));
    }
    if let Some(wait) = auth.login_backoff.check(&net) {
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            format!("failed sign-ins from this address: wait {wait} s before trying again"),
            wait,
        ));
    }
    let unavailable = |e: crate::store::StoreError| (StatusCode::SERVICE_UNAVAILABLE, e.to_string(), 0);
    let found = s.builds.store.user_by_name(username).await.map_err(unavailable)?;
    let hash = found.as_ref().map_or_else(|| super::dummy_hash().to_string(), |(_, h)| h.clone());
    let given = password.to_string();
    let ok = tokio::task::spawn_blocking(move || verify_password(&given, &hash)).await.unwrap_or(false);
    let now = crate::store::now_ms();
    let fail = |why: &str| {
        tracing::info!(%ip, "sign-in refused for `{username}`: {why}");
        (StatusCode::UNAUTHORIZED, BAD_LOGIN.to_string(), 0)
    };
    if !ok {
        auth.login_backoff.failed(&net);
    }
    let Some((user, _)) = found else {
        record(s, username, ip, "login.failure", &format!("user:{username}"), "unknown user").await;
        return Err(fail("unknown user"));
    };
    if user.locked_until_ms > now {
        record(s, username, ip, "login.failure", &format!("user:{username}"), "locked").await;
        return Err(fail("locked"));
    }
    if !ok || !user.active {
        let why = if ok { "disabled" } else { "wrong password" };
        let lockout = i64::try_from(auth.lockout.as_millis()).unwrap_or(i64::MAX / 2);
        let (since, until) = (now.saturating_sub(lockout), now.saturating_add(lockout));
        let store = &s.builds.store;
        let after = store.login_failed(user.id, &net, auth.max_failures, since, until).await.map_err(unavailable)?;
        let details = if after.locked_until_ms > now { format!("{why}; locked") } else { why.to_string() };
        record(s, username, ip, "login.failure", &format!("user:{username}"), &details).await;
        return Err(fail(why));
    }
    s.builds.store.login_succeeded(user.id).await.map_err(unavailable)?;
    auth.login_backoff.succeeded(&net);
    Ok(user)
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
}

fn session_cookie(s: &AppState, value: &str, max_age: u64) -> HeaderValue {
    let secure = if s.auth.tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"))
        .unwrap_or(HeaderValue::from_static("chengis_session=; Path=/"))
}

/// `POST /login`: a new session (any session cookie the browser had is ended: rotation). A
/// post whose `Origin` is another site is refused (login CSRF: signing a victim's browser in
/// to the attacker's account).
pub async fn login(
    State(s): State<AppState>,
    addr: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let ip = ip_of(addr);
    if let Err(message) = super::same_origin(&headers) {
        tracing::warn!(%ip, "refused a sign-in: {message}");
        return PageError { status: StatusCode::FORBIDDEN, message }.into_response();
    }
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&body) else {
        return login_page(StatusCode::BAD_REQUEST, "/".into(), String::new(), Some("fill in both fields".into()));
    };
    let next = safe_next(form.next.as_deref());
    if form.username.chars().count() > MAX_USERNAME {
        return login_page(StatusCode::BAD_REQUEST, next, String::new(), Some(too_long_username()));
    }
    let user = match check_login(&s, &ip, &form.username, &form.password).await {
        Ok(u) => u,
        Err((status, message, wait)) => {
            let mut resp = login_page(status, next, form.username.clone(), Some(message));
            if wait > 0 {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
            }
            return resp;
        }
    };
    if let Some(old) = super::cookie(&headers, COOKIE) {
        let _ = s.builds.store.delete_session(&old).await;
    }
    let (secret, _) = match s.builds.store.create_session(&user, SESSION_TTL.as_millis() as i64).await {
        Ok(x) => x,
        Err(e) => return PageError::from(e).into_response(),
    };
    record(&s, &user.username, &ip, "login.success", &format!("user:{}", user.username), "session").await;
    let mut resp = Redirect::to(&next).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, session_cookie(&s, &secret, SESSION_TTL.as_secs()));
    resp
}

/// `POST /logout`: ends this session.
pub async fn logout(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    if let Via::Session { secret, .. } = &caller.via {
        let _ = s.builds.store.delete_session(secret).await;
        record(&s, &caller.actor(), &caller.ip, "logout", &format!("user:{}", caller.actor()), "").await;
    }
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().insert(header::SET_COOKIE, session_cookie(&s, "", 0));
    resp
}

/// `POST /api/v1/login`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiLogin {
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
    /// Name of the token to create (default `cli`).
    #[serde(default)]
    pub token_name: Option<String>,
}

/// Signs in with a password and answers a new API token with every scope the user's role
/// allows (what `chengis login` stores).
#[utoipa::path(post, path = "/api/v1/login", request_body = ApiLogin, responses((status = 201, description = "`{token, user}`"), (status = 401, body = crate::server::error::ErrorBody), (status = 429, body = crate::server::error::ErrorBody)))]
pub async fn api_login(
    State(s): State<AppState>,
    addr: Option<Extension<ClientIp>>,
    ApiJson(body): ApiJson<ApiLogin>,
) -> Result<Response, ApiError> {
    let ip = ip_of(addr);
    let user = match check_login(&s, &ip, &body.username, &body.password).await {
        Ok(u) => u,
        Err((status, message, wait)) => {
            let (code, details) = match status {
                StatusCode::TOO_MANY_REQUESTS => ("rate_limited", Value::Null),
                StatusCode::BAD_REQUEST => ("bad_request", json!({"field": "username", "max": MAX_USERNAME})),
                _ => ("unauthorized", Value::Null),
            };
            let mut resp = ApiError { status, code, message, details }.into_response();
            if wait > 0 {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
            }
            return Ok(resp);
        }
    };
    let name = body.token_name.unwrap_or_else(|| "cli".into());
    let (token, secret) =
        s.builds.store.create_api_token(&user, &name, &Scope::names_for(user.role), None, None).await?;
    record(&s, &user.username, &ip, "login.success", &format!("user:{}", user.username), "api token").await;
    record(&s, &user.username, &ip, "token.create", &format!("token:{}", token.id), &name).await;
    Ok((StatusCode::CREATED, axum::Json(json!({"token": secret, "user": user, "token_info": token}))).into_response())
}

fn me(caller: &Caller) -> Result<&UserRecord, ApiError> {
    caller.user.as_ref().ok_or_else(|| ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "unauthorized",
        message: "sign in first".into(),
        details: Value::Null,
    })
}

/// `GET /api/v1/me`: the caller and how they signed in (through a token: its id and expiry).
#[utoipa::path(get, path = "/api/v1/me", responses((status = 200, description = "`{user, via, scopes, token}`")))]
pub async fn whoami(Extension(caller): Extension<Caller>) -> Result<axum::Json<Value>, ApiError> {
    let user = me(&caller)?;
    let (via, scopes, token) = match &caller.via {
        Via::Token { id, scopes, expires_ms } => ("token", scopes.clone(), json!({"id": id, "expires_ms": expires_ms})),
        Via::Session { .. } => ("session", Scope::names_for(user.role), Value::Null),
        Via::Anonymous => ("anonymous", vec![], Value::Null),
    };
    Ok(axum::Json(json!({"user": user, "via": via, "scopes": scopes, "token": token})))
}

/// `DELETE /api/v1/me/token`: revokes the API token the call is made with (and every token made
/// through it): how `chengis logout` signs out. Any token may end itself, whatever its scopes.
#[utoipa::path(delete, path = "/api/v1/me/token", responses((status = 204, description = "revoked"), (status = 400, body = crate::server::error::ErrorBody)))]
pub async fn revoke_own_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<StatusCode, ApiError> {
    let user = me(&caller)?;
    let Via::Token { id, .. } = &caller.via else {
        return Err(ApiError::bad_request(
            "this call revokes the API token it is made with; a browser session signs out with POST /logout",
        ));
    };
    s.builds.store.revoke_api_token(*id, Some(user.id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A password change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The current password.
    pub current: String,
    /// The new one (at least 12 characters).
    pub new: String,
}

fn weak(password: &str) -> Option<ApiError> {
    (password.chars().count() < super::MIN_PASSWORD)
        .then(|| ApiError::bad_request(format!("a password needs at least {} characters", super::MIN_PASSWORD)))
}

async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .map_err(ApiError::bad_request)
}

/// `POST /api/v1/me/password`: changes the caller's password; every session and token made
/// before ends (a session caller gets a new session cookie).
#[utoipa::path(post, path = "/api/v1/me/password", request_body = PasswordChange, responses((status = 200, description = "changed"), (status = 400, body = crate::server::error::ErrorBody), (status = 403, body = crate::server::error::ErrorBody)))]
pub async fn change_password(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<PasswordChange>,
) -> Result<Response, ApiError> {
    let user = me(&caller)?;
    if let Some(e) = weak(&body.new) {
        return Err(e);
    }
    let (_, stored) =
        s.builds.store.user_by_name(&user.username).await?.ok_or_else(|| ApiError::not_found("no such user"))?;
    let current = body.current.clone();
    if !tokio::task::spawn_blocking(move || verify_password(&current, &stored)).await.unwrap_or(false) {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: "the current password is wrong".into(),
            details: Value::Null,
        });
    }
    let updated = s.builds.store.set_password(user.id, &hash(body.new).await?).await?;
    let mut resp = axum::Json(json!({"changed": true, "user": updated})).into_response();
    if matches!(caller.via, Via::Session { .. }) {
        let (secret, _) = s.builds.store.create_session(&updated, SESSION_TTL.as_millis() as i64).await?;
        resp.headers_mut().insert(header::SET_COOKIE, session_cookie(&s, &secret, SESSION_TTL.as_secs()));
    }
    Ok(resp)
}

/// A new API token.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A name to recognise it by.
    pub name: String,
    /// Scopes (default: every scope the caller holds: the role's through a session, the
    /// calling token's through a token).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Lifetime such as `30d`, at most 365 days (default: no expiry through a session; the
    /// calling token's expiry through a token).
    #[serde(default)]
    pub expires_in: Option<String>,
}

/// A 400 about `expires_in`, naming the field and the bound.
fn bad_expiry(message: String) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "bad_request",
        message,
        details: json!({"field": "expires_in", "max": "365d"}),
    }
}

/// `POST /api/v1/tokens`: a token of the caller (shown once). Through a token (which needs the
/// `tokens:write` scope), the new token holds at most the calling token's scopes, expires no
/// later than it, and is revoked with it.
#[utoipa::path(post, path = "/api/v1/tokens", request_body = NewToken, responses((status = 201, description = "`{token, info}`"), (status = 400, body = crate::server::error::ErrorBody)))]
pub async fn create_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let user = me(&caller)?;
    let role_scopes = Scope::names_for(user.role);
    let (allowed, parent, parent_expiry): (Vec<String>, Option<i64>, Option<i64>) = match &caller.via {
        Via::Token { id, scopes, expires_ms } => {
            (role_scopes.iter().filter(|sc| scopes.contains(sc)).cloned().collect(), Some(*id), *expires_ms)
        }
        _ => (role_scopes.clone(), None, None),
    };
    let scopes = body.scopes.unwrap_or_else(|| allowed.clone());
    if let Some(bad) = scopes.iter().find(|sc| !allowed.contains(sc)) {
        let why = if !Scope::all_names().contains(bad) {
            "unknown scope".to_string()
        } else if !role_scopes.contains(bad) {
            format!("the {} role cannot hold it", user.role)
        } else {
            "the token making this one does not hold it (a token cannot grant more than it has)".to_string()
        };
        return Err(ApiError::bad_request(format!("scope `{bad}`: {why}; allowed: {}", allowed.join(", "))));
    }
    let now = crate::store::now_ms();
    let expires_ms = match body.expires_in.as_deref() {
        None => parent_expiry,
        Some(text) => {
            let d = humantime::parse_duration(text).map_err(|e| {
                bad_expiry(format!("`expires_in` `{text}`: {e} (for example 30d or 12h; at most 365d)"))
            })?;
            if d > MAX_TOKEN_LIFETIME {
                return Err(bad_expiry(format!("`expires_in` `{text}` is longer than the maximum of 365d")));
            }
            if d.is_zero() {
                return Err(bad_expiry(format!("`expires_in` `{text}`: a token must live for some time")));
            }
            // At most a year: no overflow.
            let at = now + d.as_millis() as i64;
            if let Some(limit) = parent_expiry
                && at > limit
            {
                return Err(bad_expiry(format!(
                    "`expires_in` `{text}`: a token made through another token cannot outlive it (it expires at {})",
                    crate::server::views::time_iso(limit)
                )));
            }
            Some(at)
        }
    };
    if body.name.trim().is_empty() {
        return Err(ApiError::bad_request("a token needs a name"));
    }
    let (info, secret) = s.builds.store.create_api_token(user, body.name.trim(), &scopes, expires_ms, parent).await?;
    Ok((StatusCode::CREATED, axum::Json(json!({"token": secret, "info": info}))))
}

/// Query of the token list: `?all=true` for every user's (admins).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    /// Every user's tokens (admins only).
    #[serde(default)]
    all: bool,
}

/// `GET /api/v1/tokens`: the caller's tokens (never the secrets).
#[utoipa::path(get, path = "/api/v1/tokens", params(TokenQuery), responses((status = 200, description = "`{tokens}`")))]
pub async fn list_tokens(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<TokenQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let user = me(&caller)?;
    let whose = if q.all && user.role == Role::Admin { None } else { Some(user.id) };
    let tokens: Vec<TokenRecord> = s.builds.store.api_tokens(whose).await?;
    Ok(axum::Json(json!({"tokens": tokens})))
}

/// `DELETE /api/v1/tokens/{id}`: revokes a token of the caller (admins: anyone's), at once,
/// with every token made through it.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", params(("id" = i64, Path, description = "token id")), responses((status = 204, description = "revoked"), (status = 404, body = crate::server::error::ErrorBody)))]
pub async fn revoke_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiError> {
    let user = me(&caller)?;
    let whose = if user.role == Role::Admin { None } else { Some(user.id) };
    s.builds.store.revoke_api_token(id, whose).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new user.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Unique name: letters, digits, `.`, `_`, `-`.
    pub username: String,
    /// Password (at least 12 characters).
    pub password: String,
    /// `admin`, `developer` or `viewer`.
    pub role: Role,
}

/// `GET /api/v1/users`.
#[utoipa::path(get, path = "/api/v1/users", responses((status = 200, description = "`{users}`")))]
pub async fn list_users(State(s): State<AppState>) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(json!({"users": s.builds.store.users().await?})))
}

/// `POST /api/v1/users`.
#[utoipa::path(post, path = "/api/v1/users", request_body = NewUser, responses((status = 201, body = UserRecord), (status = 400, body = crate::server::error::ErrorBody), (status = 409, body = crate::server::error::ErrorBody)))]
pub async fn create_user(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<(StatusCode, axum::Json<UserRecord>), ApiError> {
    let name = body.username.trim();
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err(ApiError::bad_request(format!("username `{name}`: 1 to 64 letters, digits, `.`, `_` or `-`")));
    }
    if let Some(e) = weak(&body.password) {
        return Err(e);
    }
    let user = s.builds.store.create_user(name, &hash(body.password).await?, body.role).await?;
    Ok((StatusCode::CREATED, axum::Json(user)))
}

/// A change to a user (admins): any of role, active, password.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    /// New role.
    #[serde(default)]
    pub role: Option<Role>,
    /// Enable or disable (disabling ends their sessions and tokens).
    #[serde(default)]
    pub active: Option<bool>,
    /// New password (ends their sessions and tokens).
    #[serde(default)]
    pub password: Option<String>,
}

/// `PATCH /api/v1/users/{name}`. The last active admin cannot be demoted or disabled.
#[utoipa::path(patch, path = "/api/v1/users/{name}", request_body = UserChange, params(("name" = String, Path, description = "username")), responses((status = 200, body = UserRecord), (status = 404, body = crate::server::error::ErrorBody), (status = 409, body = crate::server::error::ErrorBody)))]
pub async fn change_user(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<UserChange>,
) -> Result<axum::Json<UserRecord>, ApiError> {
    let store = &s.builds.store;
    let (mut user, _) =
        store.user_by_name(&name).await?.ok_or_else(|| ApiError::not_found(format!("no user `{name}`")))?;
    let demotes = body.role.is_some_and(|r| r != Role::Admin) || body.active == Some(false);
    if user.role == Role::Admin && user.active && demotes && store.active_admins().await? <= 1 {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: format!("`{name}` is the last active admin; make another admin first"),
            details: Value::Null,
        });
    }
    if let Some(p) = &body.password
        && let Some(e) = weak(p)
    {
        return Err(e);
    }
    if let Some(role) = body.role {
        user = store.set_role(user.id, role).await?;
    }
    if let Some(active) = body.active {
        user = store.set_active(user.id, active).await?;
    }
    if let Some(p) = body.password {
        user = store.set_password(user.id, &hash(p).await?).await?;
    }
    Ok(axum::Json(user))
}

/// Query of the audit export.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// `json` (default) or `csv`.
    #[serde(default)]
    format: Option<String>,
    /// Entries after this id.
    #[serde(default)]
    after: Option<i64>,
    /// At most this many (default 1,000, at most 100,000).
    #[serde(default)]
    limit: Option<i64>,
}

/// A CSV cell, quoted when needed. Spreadsheet formulas are defused: a cell starting with `=`,
/// `+`, `-` or `@`, even after spaces, tabs or line breaks (which spreadsheets skip), gets a
/// leading `'`.
fn csv_field(text: &str) -> String {
    let formula = text.trim_start_matches([' ', '\t', '\r', '\n']).starts_with(['=', '+', '-', '@']);
    let t = if formula { format!("'{text}") } else { text.to_string() };
    if t.contains([',', '"', '\n', '\r']) { format!("\"{}\"", t.replace('"', "\"\"")) } else { t }
}

/// `GET /api/v1/audit?format=json|csv`: the audit log (admins).
#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery), responses((status = 200, description = "`{entries}` or CSV")))]
pub async fn audit(State(s): State<AppState>, ApiQuery(q): ApiQuery<AuditQuery>) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(1000).clamp(1, 100_000);
    let entries = s.builds.store.audit_entries(q.after.unwrap_or(0), limit).await?;
    match q.format.as_deref().unwrap_or("json") {
        "json" => Ok(axum::Json(json!({"entries": entries})).into_response()),
        "csv" => {
            let mut out = String::from("id,at,actor,ip,action,target,details,hash\n");
            for e in &entries {
                let at = crate::server::views::time_iso(e.at_ms);
                let row = [
                    e.id.to_string(),
                    at,
                    e.actor.clone(),
                    e.ip.clone(),
                    e.action.clone(),
                    e.target.clone(),
                    e.details.clone(),
                    e.hash.clone(),
                ];
                out.push_str(&row.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
                out.push('\n');
            }
            let mut resp = out.into_response();
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
            resp.headers_mut()
                .insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"audit.csv\""));
            Ok(resp)
        }
        other => Err(ApiError::bad_request(format!("unknown format `{other}`: json or csv"))),
    }
}

/// `GET /api/v1/audit/verify`: checks the whole chain.
#[utoipa::path(get, path = "/api/v1/audit/verify", responses((status = 200, description = "`{entries, ok, problem}`")))]
pub async fn audit_verify(State(s): State<AppState>) -> Result<axum::Json<Value>, ApiError> {
    let v = s.builds.store.verify_audit().await?;
    Ok(axum::Json(json!({"entries": v.entries, "ok": v.problem.is_none(), "problem": v.problem})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_a_path_of_this_server() {
        for ok in ["/", "/jobs/app", "/builds/3?x=1&y=%20z"] {
            assert_eq!(safe_next(Some(ok)), ok);
        }
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r\n/evil.example",
            "/x y",
            " /x",
            "/x\u{0}",
            "/\u{a0}/evil",
            "/caf\u{e9}",
            "https://evil.example",
            "evil",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn csv_cells_never_start_a_formula() {
        for (given, want) in [
            ("=1+1", "'=1+1"),
            ("+1", "'+1"),
            ("-1", "'-1"),
            ("@SUM(A1)", "'@SUM(A1)"),
            (" =1", "' =1"),
            ("\t=1", "'\t=1"),
            ("\r=1", "\"'\r=1\""),
            ("\n =HYPERLINK(x)", "\"'\n =HYPERLINK(x)\""),
            ("plain", "plain"),
            ("a=b", "a=b"),
            (" x", " x"),
            ("a,b", "\"a,b\""),
        ] {
            assert_eq!(csv_field(given), want, "{given:?}");
        }
    }
}
