//! Who is calling and what they may do: the route table (every route's minimum role and token
//! scope, checked by one middleware), sessions and API tokens, CSRF protection of
//! cookie-authenticated writes, rate limits and the per-address sign-in backoff, the client
//! address (taken from `X-Forwarded-For`/`Forwarded` only behind a trusted proxy), the security
//! headers of every answer, password hashing, and the audit trail of security-relevant actions.

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
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Client addresses (IPv6: /64 networks) with failed sign-ins, within `lockout`, that lock
    /// an account. Failures from one address count once: one client alone never locks an
    /// account (it is slowed down by [`AuthSettings::login_backoff`] instead).
    pub max_failures: i64,
    /// How long a locked account stays locked (and how long a failure counts towards a lock).
    pub lockout: Duration,
    /// Sign-in attempts per client address.
    pub login_limit: super::webhooks::route::RateLimiter,
    /// Exponential wait of a client address after failed sign-ins.
    pub login_backoff: LoginBackoff,
    /// API and page requests per client address (anonymous) or per user.
    pub request_limit: super::webhooks::route::RateLimiter,
    /// Proxies whose `X-Forwarded-For`/`Forwarded` headers are believed.
    pub trusted_proxies: TrustedProxies,
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
            login_backoff: LoginBackoff::new(LoginBackoff::FREE_FAILURES, Duration::from_secs(15 * 60)),
            request_limit: super::webhooks::route::RateLimiter::with_window(3000, minute),
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// Per client address: after [`LoginBackoff::FREE_FAILURES`] failed sign-ins in a row, the
/// address waits 1 s before its next attempt, then 2 s, 4 s, ... up to a cap; a good sign-in
/// from it clears the count. Kept in memory (a restart forgets it).
#[derive(Debug)]
pub struct LoginBackoff {
    free: u32,
    max_wait: Duration,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl LoginBackoff {
    /// Failed sign-ins an address may make in a row before it has to wait.
    pub const FREE_FAILURES: u32 = 3;

    /// `free` failures without waiting, then waits doubling from 1 s up to `max_wait`.
    pub fn new(free: u32, max_wait: Duration) -> Self {
        LoginBackoff { free, max_wait, failures: Mutex::new(HashMap::new()) }
    }

    fn wait_after(&self, failures: u32) -> Duration {
        if failures < self.free {
            return Duration::ZERO;
        }
        let doublings = (failures - self.free).min(30);
        Duration::from_secs(1u64 << doublings).min(self.max_wait)
    }

    /// The seconds `key` must still wait before its next attempt, if any.
    pub fn check(&self, key: &str) -> Option<u64> {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let (count, last) = map.get(key)?;
        let wait = self.wait_after(*count);
        let left = wait.saturating_sub(last.elapsed());
        (!left.is_zero()).then(|| left.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// Counts a failed sign-in of `key`.
    pub fn failed(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            // Forget addresses whose wait is long over.
            let cap = self.max_wait;
            map.retain(|_, (_, last)| last.elapsed() < cap * 2);
        }
        let entry = map.entry(key.to_string()).or_insert((0, Instant::now()));
        *entry = (entry.0.saturating_add(1), Instant::now());
    }

    /// Clears `key` after a good sign-in.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// One network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `127.0.0.1`, `fd00::/8` or `::1`.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr =
            addr.parse().map_err(|_| format!("`{text}` is not an address or network (such as 10.0.0.0/8)"))?;
        let net = net.to_canonical();
        let bits = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {bits}"))?,
        };
        Ok(Cidr { net, prefix })
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The proxies (`--trusted-proxies`) whose forwarding headers are believed; none by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl TrustedProxies {
    /// Parses a comma-separated list such as `10.0.0.0/8,127.0.0.1`.
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        list.split(',').filter(|p| !p.trim().is_empty()).map(Cidr::parse).collect::<Result<_, _>>().map(TrustedProxies)
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client's address of a connection from `peer`: `peer` itself unless it is a trusted
    /// proxy; then the hops its forwarding headers list (`Forwarded`'s `for=` when present,
    /// else `X-Forwarded-For`) are walked from the nearest, skipping trusted proxies, and the
    /// first other address is the client. A hop that is not an address (`unknown`, an
    /// obfuscated name, garbage) stops the walk at the last trusted hop.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let values = |name: header::HeaderName| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|s| s.trim().to_string())
                .collect()
        };
        let forwarded = values(header::FORWARDED);
        let hops: Vec<Option<IpAddr>> = if forwarded.is_empty() {
            values(header::HeaderName::from_static("x-forwarded-for")).iter().map(|h| parse_hop(h)).collect()
        } else {
            forwarded
                .iter()
                .map(|element| {
                    element.split(';').find_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        k.trim().eq_ignore_ascii_case("for").then(|| v.trim().to_string())
                    })
                })
                .map(|v| v.and_then(|v| parse_hop(&v)))
                .collect()
        };
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            let Some(ip) = hop else { return client };
            client = ip;
            if !self.contains(ip) {
                return ip;
            }
        }
        client
    }
}

/// An address of a forwarding header: `192.0.2.1`, `192.0.2.1:4711`, `"[2001:db8::1]:4711"`,
/// `2001:db8::1`.
fn parse_hop(text: &str) -> Option<IpAddr> {
    let t = text.trim().trim_matches('"');
    let addr = if let Some(rest) = t.strip_prefix('[') {
        rest.split_once(']')?.0
    } else if t.matches(':').count() == 1 {
        t.split_once(':')?.0
    } else {
        t
    };
    addr.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// The key counting sign-in failures of a client address: the address, or for IPv6 its /64
/// network (one host usually holds a whole /64, so single IPv6 addresses are cheap to vary).
pub fn network_key(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => {
            let net = std::net::Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64));
            format!("{net}/64")
        }
        _ => ip.to_string(),
    }
}

/// The client's address as the middleware resolved it (see [`TrustedProxies::client`]), in
/// the request's extensions of every route.
#[derive(Debug, Clone)]
pub struct ClientIp(pub String);

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
        /// When it expires, if ever.
        expires_ms: Option<i64>,
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

    /// Whether the caller is an admin and, when calling with a token, the token holds `scope`.
    pub fn is_admin_with(&self, scope: rules::Scope) -> bool {
        self.at_least(Role::Admin)
            && match &self.via {
                Via::Token { scopes, .. } => scopes.iter().any(|s| s == scope.as_str()),
                Via::Session { .. } => true,
                Via::Anonymous => false,
            }
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

fn client_ip<B>(settings: &AuthSettings, req: &Request<B>) -> String {
    req.extensions().get::<ConnectInfo<ClientAddr>>().map_or_else(
        || "unknown".to_string(),
        |ConnectInfo(ClientAddr(a))| settings.trusted_proxies.client(a.ip(), req.headers()).to_string(),
    )
}

/// The Content-Security-Policy of every answer that sets none itself (JSON, downloads, CSV,
/// badges, redirects, errors): nothing may load or frame it. HTML pages set their own.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// The headers every answer carries (a layer around the whole router, 404s and body-limit
/// errors included): `X-Content-Type-Options: nosniff`, and [`API_CSP`] unless the answer has
/// its own policy (the HTML pages).
pub async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(API_CSP));
    resp
}

/// `Ok` unless the request carries an `Origin` that is not this server (the `Host` the
/// browser addressed). A request without `Origin` passes (not a cross-site browser post).
pub fn same_origin(h: &HeaderMap) -> Result<(), String> {
    if let Some(origin) = h.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not text)");
        let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if host.is_empty() || origin_host != host {
            return Err(format!("cross-site request refused (Origin {origin} is not this server)"));
        }
    }
    Ok(())
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
            Ok(Some((user, t))) => Ok(Caller {
                user: Some(user),
                via: Via::Token { id: t.id, scopes: t.scopes, expires_ms: t.expires_ms },
                ip,
            }),
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
    same_origin(h)?;
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
pub async fn authorize(State(s): State<AppState>, mut req: Request<Body>, next: Next) -> Response {
    let ip = client_ip(&s.auth, &req);
    req.extensions_mut().insert(ClientIp(ip.clone()));
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
    let hashed = argon2().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string());
    // argon2's 19 MiB working block is freed: give it back to the OS.
    crate::memory::release();
    hashed
}

/// Whether `password` matches the stored hash (argon2's own constant-time check).
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::PasswordVerifier;
    let ok = argon2::PasswordHash::new(hash).is_ok_and(|h| argon2().verify_password(password.as_bytes(), &h).is_ok());
    // argon2's 19 MiB working block is freed: give it back to the OS.
    crate::memory::release();
    ok
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
        let (password, generated) = match chengis_runner::sandbox::startup_var("CHENGIS_ADMIN_PASSWORD").ok_or(()) {
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
    if let Some(token) = chengis_runner::sandbox::startup_var("CHENGIS_ADMIN_TOKEN") {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn networks_parse_and_match() {
        let t = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1,fd00::/8").unwrap();
        for yes in ["10.1.2.3", "127.0.0.1", "fd12::1", "::ffff:10.0.0.1"] {
            assert!(t.contains(yes.parse().unwrap()), "{yes}");
        }
        for no in ["11.0.0.1", "127.0.0.2", "fe80::1", "::1"] {
            assert!(!t.contains(no.parse().unwrap()), "{no}");
        }
        for bad in ["10.0.0.0/33", "nope", "::/129", "10.0.0.0/x"] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(TrustedProxies::parse("").unwrap(), TrustedProxies::default());
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_peers() {
        let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let xff = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.5, 10.0.0.2")]);
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(t.client(stranger, &xff), stranger, "an untrusted peer's headers are ignored");
        assert_eq!(TrustedProxies::default().client(proxy, &xff), proxy, "no proxies trusted: ignored");
        assert_eq!(t.client(proxy, &xff).to_string(), "203.0.113.5");
        let fwd = headers(&[
            ("forwarded", "for=1.1.1.1, for=\"[2001:db8::1]:80\";proto=https"),
            ("x-forwarded-for", "9.9.9.9"),
        ]);
        assert_eq!(t.client(proxy, &fwd).to_string(), "2001:db8::1", "Forwarded wins");
        let port = headers(&[("x-forwarded-for", "192.0.2.7:5555")]);
        assert_eq!(t.client(proxy, &port).to_string(), "192.0.2.7");
        let garbage = headers(&[("x-forwarded-for", "203.0.113.5, unknown")]);
        assert_eq!(t.client(proxy, &garbage), proxy, "an unreadable hop stops at the proxy");
        assert_eq!(t.client(proxy, &HeaderMap::new()), proxy);
    }

    #[test]
    fn backoff_doubles_after_the_free_failures() {
        let b = LoginBackoff::new(3, Duration::from_secs(8));
        let waits: Vec<u64> = (1..=7).map(|n| b.wait_after(n).as_secs()).collect();
        assert_eq!(waits, [0, 0, 1, 2, 4, 8, 8]);
        for _ in 0..2 {
            b.failed("a");
        }
        assert_eq!(b.check("a"), None);
        b.failed("a");
        assert_eq!(b.check("a"), Some(1));
        assert_eq!(b.check("b"), None, "per address");
        b.succeeded("a");
        assert_eq!(b.check("a"), None);
        assert_eq!(network_key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(network_key("192.0.2.1"), "192.0.2.1");
    }
}
