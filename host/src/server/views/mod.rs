//! The web dashboard: server-rendered HTML pages (askama templates from `web/templates`),
//! embedded static files, status badges, and the form posts behind the pages' buttons.

mod pages;
pub mod svg;

use super::error::ApiError;
use askama::Template;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};

impl super::Routes {
    /// Adds the dashboard's routes (HTML pages, form posts, badges and static files).
    pub fn merge_views(self) -> Self {
        self.add("GET", "/", get(pages::home))
            .add("GET", "/jobs/{name}", get(pages::job))
            .add("POST", "/jobs/{name}/trigger", post(pages::trigger))
            .add("GET", "/builds/{id}", get(pages::build))
            .add("POST", "/builds/{id}/cancel", post(pages::cancel))
            .add("POST", "/builds/{id}/retry", post(pages::retry))
            .add("GET", "/builds/{id}/artifacts", get(pages::artifacts))
            .add("GET", "/builds/{id}/jobs/{job}/log", get(pages::log))
            .add("GET", "/plugins", get(pages::plugins))
            .add("POST", "/plugins/{name}/{decision}", post(pages::decide_plugin))
            .add("GET", "/agents", get(pages::agents))
            .add("GET", "/audit", get(pages::audit))
            .add("GET", "/badge/{file}", get(pages::badge))
            .add("GET", "/static/{file}", get(static_file))
    }
}

/// The files under `web/static` the pages use, compiled into the binary.
const STATIC: &[(&str, &str, &str)] = &[
    ("app.css", "text/css; charset=utf-8", include_str!("../../../../web/static/app.css")),
    ("log.css", "text/css; charset=utf-8", include_str!("../../../../web/static/log.css")),
    ("live.js", "text/javascript; charset=utf-8", include_str!("../../../../web/static/live.js")),
    ("log.js", "text/javascript; charset=utf-8", include_str!("../../../../web/static/log.js")),
];

/// A version stamp for static URLs (`/static/app.css?v=...`), so browsers may cache them for
/// long and still get a new build's files.
pub fn static_version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for (_, _, body) in STATIC {
            h.update(body.as_bytes());
        }
        hex::encode(&h.finalize()[..6])
    })
}

async fn static_file(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match STATIC.iter().find(|(name, _, _)| *name == file) {
        Some((_, mime, body)) => {
            let mut resp = (*body).into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
            h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            resp
        }
        None => PageError::not_found(format!("no static file `{file}`")).into_response(),
    }
}

/// Headers every HTML page carries: no inline script, no framing, no MIME sniffing.
fn security_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// What every page knows about its viewer: the header's name and sign-out form, and which
/// buttons to show (the server checks again on every post).
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    /// The signed-in user's name.
    pub me: Option<String>,
    /// The session's CSRF token, for the forms.
    pub csrf: String,
    /// May trigger, cancel and retry.
    pub developer: bool,
    /// May allow and deny plugins.
    pub admin: bool,
}

impl Ctx {
    /// The context of `caller` (none: anonymous).
    pub fn of(caller: Option<&super::auth::Caller>) -> Ctx {
        use crate::store::users::Role;
        match caller {
            None => Ctx::default(),
            Some(c) => Ctx {
                me: c.user.as_ref().map(|u| u.username.clone()),
                csrf: c.csrf().to_string(),
                developer: c.at_least(Role::Developer),
                admin: c.at_least(Role::Admin),
            },
        }
    }
}

/// Renders a template as an HTML answer with `status`.
pub(crate) fn page<T: Template>(status: StatusCode, t: &T) -> Response {
    match t.render() {
        Ok(body) => {
            let mut resp = (status, Html(body)).into_response();
            security_headers(resp.headers_mut());
            resp
        }
        Err(e) => {
            // Templates are checked at compile time; a failure here is a bug.
            tracing::error!("rendering a page: {e}");
            let mut resp = (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered").into_response();
            security_headers(resp.headers_mut());
            resp
        }
    }
}

/// An error shown as an HTML page.
#[derive(Debug)]
pub struct PageError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for people.
    pub message: String,
}

impl PageError {
    /// A 404 page.
    pub fn not_found(message: impl Into<String>) -> Self {
        PageError { status: StatusCode::NOT_FOUND, message: message.into() }
    }

    /// A 400 page.
    pub fn bad_request(message: impl Into<String>) -> Self {
        PageError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError { status: e.status, message: e.message }
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: String,
    nav: &'static str,
    v: &'static str,
    ctx: Ctx,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let reason = self.status.canonical_reason().unwrap_or("Error");
        let t = ErrorPage {
            title: format!("{} {reason}", self.status.as_u16()),
            nav: "",
            v: static_version(),
            ctx: Ctx::default(),
            message: &self.message,
        };
        page(self.status, &t)
    }
}

/// A URL path segment: everything but unreserved characters percent-encoded.
pub use crate::agent::remote::percent_encode as path_segment;

/// A duration in milliseconds as people read it: `0.4s`, `45s`, `3m 07s`, `2h 05m`.
pub fn duration_text(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 10_000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    match ms / 1000 {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// A time in ms since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn time_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

/// A time in ms since the epoch as RFC 3339 (for `<time datetime>`).
pub fn time_iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

/// Milliseconds between `start` and `end` (or now, while running).
pub fn elapsed(start: Option<i64>, end: Option<i64>) -> Option<i64> {
    let start = start?;
    let end = end.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
    });
    Some((end - start).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_helpers() {
        assert_eq!(path_segment("test (os=linux)"), "test%20%28os%3Dlinux%29");
        assert_eq!(duration_text(420), "0.4s");
        assert_eq!(duration_text(45_000), "45s");
        assert_eq!(duration_text(187_000), "3m 07s");
        assert_eq!(duration_text(7_500_000), "2h 05m");
        assert_eq!(time_text(0), "1970-01-01 00:00:00");
    }
}
