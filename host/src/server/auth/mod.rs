//! Who is calling and what they may do: the route table (every route's minimum role and token
//! scope, checked by one middleware), sessions and API tokens, CSRF protection of
//! cookie-authenticated writes, rate limits, password hashing, and the audit trail of
//! security-relevant actions.

pub mod routes;
pub mod rules;

use super::AppState;
use super::error::ApiError;
use crate::store::users::{Role, UserRecord};
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use rules::{Access, Scope};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The session cookie's name.
pub const COOKIE: &str = "chengis_session";
/// How long a browser session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Authentication settings of a server.
#[derive(Debug)]
pub struct AuthSettings {
    /// Served over TLS: cookies get `Secure`.
    pub tls: bool,
    /// Badges are readable without signing in.
    pub public_badges: bool,
    /// Failed sign-ins in a row that lock an account.
    pub max_failures: i64,
    /// How long a locked account stays locked.
    pub lockout: Duration,
    /// Sign-in attempts per client address and per username in `limit_window`.
    pub login_limit: super::webhooks::route::RateLimiter,
    /// Sign-in attempts per username.
    pub login_user_limit: super::webhooks::route::RateLimiter,
    /// API and page requests per client address (anonymous) or per user.
    pub request_limit: super::webhooks::route::RateLimiter,
}

impl Default for AuthSettings {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        AuthSettings {
            tls: false,
            public_badges: true,
            max_failures: 5,
            lockout: Duration::from_secs(15 * 60),
            login_limit: super::webhooks::route::RateLimiter::with_window(20, minute),
            login_user_limit: super::webhooks::route::RateLimiter::with_window(10, minute),
            request_limit: super::webhooks::route::RateLimiter::with_window(3000, minute),
        }
    }
}

/// How a caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// Nothing: anonymous.
    Anonymous,
    /// A browser session (the cookie); writes need the CSRF token.
    Session {
        /// The session's CSRF token.
        csrf: String,
        /// The cookie secret (to end this session at logout).
        secret: String,
    },
    /// An API token with scopes.
    Token {
        /// The token's id.
        id: i64,
        /// What it may do.
        scopes: Vec<String>,
    },
}

/// The caller of a request, as the middleware found it (in the request's extensions).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The signed-in user, if any.
    pub user: Option<UserRecord>,
    /// How they signed in.
    pub via: Via,
    /// The client's address.
    pub ip: String,
}

impl Caller {
    /// The name audit entries use.
    pub fn actor(&self) -> String {
        self.user.as_ref().map_or_else(|| "anonymous".to_string(), |u| u.username.clone())
    }

    /// The CSRF token forms must carry (empty without a session).
    pub fn csrf(&self) -> &str {
        match &self.via {
            Via::Session { csrf, .. } => csrf,
            _ => "",
        }
    }

    /// Whether the caller's role is at least `role`.
    pub fn at_least(&self, role: Role) -> bool {
        self.user.as_ref().is_some_and(|u| u.role >= role)
    }
}

/// The client's address, from the connection (plain TCP or TLS).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, super::tls::TlsListener>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, super::tls::TlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

fn client_ip<B>(req: &Request<B>) -> String {
    req.extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map_or_else(|| "unknown".to_string(), |ConnectInfo(ClientAddr(a))| a.ip().to_string())
}

/// The value of cookie `name`.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// An error answer: JSON for API routes, an HTML page (or a sign-in redirect) for pages.
fn refuse(api: bool, status: StatusCode, code: &'static str, message: String, path_and_query: &str) -> Response {
    if api {
        let mut resp = ApiError { status, code, message, details: json!(null) }.into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    } else if status == StatusCode::UNAUTHORIZED {
        Redirect::to(&format!("/login?next={}", super::views::path_segment(path_and_query))).into_response()
    } else {
        super::views::PageError { status, message }.into_response()
    }
}

/// Sets `Retry-After` on a 429.
fn too_many(api: bool, wait: u64, what: &str, path: &str) -> Response {
    let mut resp = refuse(
        api,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many {what}; try again in {wait} s"),
        path,
    );
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
    resp
}

/// Finds the caller: an API token (`Authorization: Bearer chgu_...`), else the session
/// cookie, else anonymous. `Err` for a bearer token that is not a live user token.
async fn identify(s: &AppState, headers: &HeaderMap, ip: String) -> Result<Caller, (&'static str, String)> {
    if let Some(token) = bearer(headers) {
        if !token.starts_with("chgu_") {
            return Err(("unauthorized", "not a user API token (agent tokens only work on agent routes)".into()));
        }
        return match s.builds.store.api_token(token).await {
            Ok(Some((user, t))) => Ok(Caller { user: Some(user), via: Via::Token { id: t.id, scopes: t.scopes }, ip }),
            Ok(None) => Err(("unauthorized", "the API token is unknown, expired or revoked".into())),
            Err(e) => Err(("unavailable", e.to_string())),
        };
    }
    if let Some(secret) = cookie(headers, COOKIE)
        && let Ok(Some((user, csrf))) = s.builds.store.session(&secret).await
    {
        return Ok(Caller { user: Some(user), via: Via::Session { csrf, secret }, ip });
    }
    Ok(Caller { user: None, via: Via::Anonymous, ip })
}

/// Whether a cookie-authenticated write carries the session's CSRF token (header
/// `X-CSRF-Token`, or the `_csrf` field of a form body) and, when the browser sent an Origin,
/// comes from this server. Returns the request (its body read back in) when it does.
async fn check_csrf(req: Request<Body>, csrf: &str) -> Result<Request<Body>, String> {
    let h = req.headers();
    if let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if origin_host != host {
            return Err(format!("cross-site request refused (Origin {origin} is not this server)"));
        }
    }
    let matches = |given: &str| bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), csrf.as_bytes()));
    if let Some(given) = h.get("x-csrf-token").and_then(|v| v.to_str().ok()) {
        return if matches(given) { Ok(req) } else { Err("wrong CSRF token".into()) };
    }
    let is_form = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err("missing CSRF token (send the X-CSRF-Token header or the form's _csrf field)".into());
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, super::BODY_LIMIT).await.map_err(|e| format!("reading the form: {e}"))?;
    let given = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
        .ok()
        .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == "_csrf").map(|(_, v)| v));
    match given {
        Some(g) if matches(&g) => Ok(Request::from_parts(parts, Body::from(bytes))),
        Some(_) => Err("wrong CSRF token".into()),
        None => Err("missing CSRF token (the form has no _csrf field)".into()),
    }
}

/// The middleware every matched route goes through: finds the rule of the route, the caller,
/// and lets the request through only when the rule allows; then writes the audit entry of
/// actions the rule names.
pub async fn authorize(State(s): State<AppState>, req: Request<Body>, next: Next) -> Response {
    let path = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    let method = if req.method() == Method::HEAD { Method::GET } else { req.method().clone() };
    let uri = req.uri().clone();
    let shown = uri.path_and_query().map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string());
    let api = path.starts_with("/api/") || path.starts_with("/hooks/");
    let Some(rule) = rules::rule(&method, &path) else {
        // Deny by default: a route without a rule is a bug, never an open door.
        tracing::error!("route {method} {path} has no access rule");
        return refuse(api, StatusCode::FORBIDDEN, "forbidden", format!("{method} {path} has no access rule"), &shown);
    };
    // The least role and token scope the route needs; `None`: public on purpose (agent routes
    // check their agent tokens themselves).
    let need = match rule.access {
        Access::Public | Access::Agent => None,
        Access::Badge if s.auth.public_badges => None,
        Access::Badge => Some((Role::Viewer, Scope::BuildsRead)),
        Access::SignedIn => Some((Role::Viewer, Scope::Any)),
        Access::Role(role, scope) => Some((role, scope)),
        Access::Secrets => {
            // A job's secrets: developers; global secrets: admins. (Stricter than the handler
            // when in doubt: an encoded key reads as global.)
            let job_scoped = uri
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv.strip_prefix("job=").is_some_and(|v| !v.is_empty())));
            Some((if job_scoped { Role::Developer } else { Role::Admin }, Scope::SecretsWrite))
        }
    };
    let Some((min, scope)) = need else { return next.run(req).await };
    let ip = client_ip(&req);
    let caller = match identify(&s, req.headers(), ip.clone()).await {
        Ok(c) => c,
        Err(("unavailable", m)) => return refuse(api, StatusCode::SERVICE_UNAVAILABLE, "unavailable", m, &shown),
        Err((code, m)) => return refuse(true, StatusCode::UNAUTHORIZED, code, m, &shown),
    };
    let key = caller.user.as_ref().map_or_else(|| format!("ip:{ip}"), |u| format!("user:{}", u.id));
    if let Some(wait) = s.auth.request_limit.check(&key) {
        return too_many(api, wait, "requests", &shown);
    }
    let Some(user) = &caller.user else {
        return refuse(
            api,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "sign in first (or send a Bearer API token)".into(),
            &shown,
        );
    };
    if user.role < min {
        return refuse(
            api,
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{method} {} needs the {min} role; {} is {}", uri.path(), user.username, user.role),
            &shown,
        );
    }
    if let Via::Token { scopes, .. } = &caller.via
        && scope != Scope::Any
        && !scopes.iter().any(|s| s == scope.as_str())
    {
        return refuse(
            api,
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{method} {} needs a token with the `{}` scope", uri.path(), scope.as_str()),
            &shown,
        );
    }
    let mut req = req;
    if let Via::Session { csrf, .. } = &caller.via
        && !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS)
    {
        req = match check_csrf(req, csrf).await {
            Ok(r) => r,
            Err(m) => {
                tracing::warn!(user = %user.username, "refused {method} {}: {m}", uri.path());
                return refuse(api, StatusCode::FORBIDDEN, "csrf", m, &shown);
            }
        };
    }
    let audit = rule.audit;
    let (actor, caller_ip) = (caller.actor(), caller.ip.clone());
    req.extensions_mut().insert(caller);
    let resp = next.run(req).await;
    if let Some(action) = audit
        && (resp.status().is_success() || resp.status().is_redirection())
    {
        let target = uri.path().to_string() + uri.query().map(|q| format!("?{q}")).as_deref().unwrap_or("");
        record(&s, &actor, &caller_ip, action, &target, &format!("HTTP {}", resp.status().as_u16())).await;
    }
    resp
}

/// Writes an audit entry; a failure is logged (the action itself already happened).
pub async fn record(s: &AppState, actor: &str, ip: &str, action: &str, target: &str, details: &str) {
    if let Err(e) = s.builds.store.audit(actor, ip, action, target, details).await {
        tracing::error!("audit log: cannot record {action} on {target} by {actor}: {e}");
    }
}

/// Hashes a password with argon2id (OWASP's parameters: 19 MiB, 2 passes, 1 lane).
pub fn hash_password(password: &str) -> Result<String, String> {
    use aes_gcm::aead::rand_core::RngCore;
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;
    let mut salt = [0u8; 16];
    aes_gcm::aead::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Whether `password` matches the stored hash (argon2's own constant-time check).
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::PasswordVerifier;
    argon2::PasswordHash::new(hash).is_ok_and(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
}

fn argon2() -> argon2::Argon2<'static> {
    let params = argon2::Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// A hash of a random password, verified against when the user does not exist, so an unknown
/// name costs the same time as a wrong password.
pub fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password(&crate::store::new_secret("")).unwrap_or_default())
}

/// Passwords must be at least this long.
pub const MIN_PASSWORD: usize = 12;

/// At first start (no active admin): creates `admin` with `CHENGIS_ADMIN_PASSWORD`, or with a
/// random password printed once to the log. `CHENGIS_ADMIN_TOKEN` (a `chgu_` secret), when set,
/// becomes an API token of the first admin with every scope (for automation).
pub async fn bootstrap(store: &crate::store::Store) -> Result<(), String> {
    let admins = store.active_admins().await.map_err(|e| e.to_string())?;
    if admins == 0 {
        let (password, generated) = match std::env::var("CHENGIS_ADMIN_PASSWORD") {
            Ok(p) if p.len() >= MIN_PASSWORD => (p, false),
            Ok(_) => return Err(format!("CHENGIS_ADMIN_PASSWORD must have at least {MIN_PASSWORD} characters")),
            Err(_) => (crate::store::new_secret("")[..24].to_string(), true),
        };
        let hash = tokio::task::spawn_blocking(move || hash_password(&password).map(|h| (h, password)))
            .await
            .map_err(|e| e.to_string())??;
        let name = if store.user_by_name("admin").await.map_err(|e| e.to_string())?.is_some() {
            format!("admin-{}", &crate::store::new_secret("")[..6])
        } else {
            "admin".to_string()
        };
        store.create_user(&name, &hash.0, Role::Admin).await.map_err(|e| e.to_string())?;
        store
            .audit("system", "local", "user.create", &format!("user:{name}"), "first admin")
            .await
            .map_err(|e| e.to_string())?;
        if generated {
            // Printed once, on purpose: the operator's only way to the first sign-in.
            tracing::warn!(
                "created the first admin `{name}` with the one-time password {}: sign in at /login and change it \
                 (chengis user passwd {name}), or set CHENGIS_ADMIN_PASSWORD before the first start",
                hash.1
            );
        } else {
            tracing::info!("created the first admin `{name}` from CHENGIS_ADMIN_PASSWORD");
        }
    }
    if let Ok(token) = std::env::var("CHENGIS_ADMIN_TOKEN") {
        if !token.starts_with("chgu_") || token.len() < 37 {
            return Err("CHENGIS_ADMIN_TOKEN must be `chgu_` followed by at least 32 random characters".into());
        }
        if store.api_token(&token).await.map_err(|e| e.to_string())?.is_none() {
            let admin = store
                .users()
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|u| u.role == Role::Admin && u.active)
                .ok_or("no active admin for CHENGIS_ADMIN_TOKEN")?;
            store
                .add_api_token_secret(&admin, "CHENGIS_ADMIN_TOKEN", &Scope::all_names(), &token)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The shared settings in the app state.
pub type Settings = Arc<AuthSettings>;
