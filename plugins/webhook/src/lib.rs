//! `webhook`: the builtin notifier that POSTs each build or job event as a JSON document to
//! any URL, signed with HMAC-SHA256 over `"<timestamp>.<body>"` so that the receiver can check
//! it came from this server and is fresh, and retried with exponential backoff on 5xx answers
//! and connection errors (never on 4xx).
//!
//! Configuration is in `settings`, the document in `document`, the signature in `signature`.

pub mod document;
pub mod settings;
pub mod signature;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chengis_plugin_sdk::notifier::Event;
use chengis_plugin_sdk::{Failure, Host, HttpRequest, HttpResponse, Kind, Level, Manifest, Notifier, export};

use crate::document::{Document, kind_name};
use crate::settings::{DEFAULT_BACKOFF_MS, DEFAULT_EVENTS, DEFAULT_RETRIES, DEFAULT_SECRET, Settings};

/// The plugin's version, as in its manifest and `User-Agent`.
pub const VERSION: &str = "0.1.0";

/// The longest part of a receiver's answer quoted in a failure.
const QUOTE_CHARS: usize = 200;

/// The webhook notifier.
pub struct Webhook;

impl Notifier for Webhook {
    fn manifest() -> Manifest {
        let retries = DEFAULT_RETRIES.to_string();
        let backoff = DEFAULT_BACKOFF_MS.to_string();
        Manifest::new("webhook", VERSION, "POSTs signed JSON build events to any URL", Kind::Notifier)
            .outbound_http("https://*:*")
            .outbound_http("http://*:*")
            .secret(DEFAULT_SECRET)
            .config("url", "The http(s) URL to POST the events to", true, None)
            .config(
                "secret-name",
                "The name of the granted secret holding the HMAC-SHA256 key",
                false,
                Some(DEFAULT_SECRET),
            )
            .config(
                "events",
                "The events to send: a comma list of build-started, build-finished, job-started, job-finished",
                false,
                Some(DEFAULT_EVENTS),
            )
            .config("retries", "Retries after a 5xx answer or a connection error (at most 10)", false, Some(&retries))
            .config(
                "backoff-ms",
                "The wait before the first retry in milliseconds; it doubles each retry",
                false,
                Some(&backoff),
            )
    }

    fn notify(host: &dyn Host, event: Event) -> Result<(), Failure> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Failure::new("webhook: the clock is before 1970; cannot timestamp the delivery"))?
            .as_secs();
        deliver(host, &event, now, &mut std::thread::sleep)
    }
}

export!(Webhook as notifier);

/// Sends `event` as signed at `now` (unix seconds), waiting with `sleep` between attempts.
pub fn deliver(host: &dyn Host, event: &Event, now: u64, sleep: &mut dyn FnMut(Duration)) -> Result<(), Failure> {
    let settings = Settings::from_config(&host.config())?;
    let kind = kind_name(event.kind);
    if !settings.events.contains(&event.kind) {
        host.log(Level::Debug, &format!("webhook: {kind} is not in `events`; nothing sent"));
        return Ok(());
    }
    let key = host.secret(&settings.secret).unwrap_or_default();
    if key.is_empty() {
        return Err(Failure::new(format!(
            "webhook: secret {name} (the HMAC key) is not set or empty: store a random key in it, \
             grant `secret:{name}` to the plugin and give the same key to the receiver",
            name = settings.secret
        )));
    }
    let body = Document::of(event)
        .to_json()
        .map_err(|e| Failure::new(format!("webhook: cannot write the {kind} document as JSON: {e}")))?;
    let job = event.job.as_ref().map(|j| j.name.as_str());
    let request = HttpRequest::post(settings.url.as_str(), body.as_bytes())
        .header("Content-Type", "application/json")
        .header("User-Agent", format!("chengis-webhook/{VERSION}"))
        .header("X-Chengis-Event", kind)
        .header("X-Chengis-Timestamp", now.to_string())
        .header("X-Chengis-Signature", signature::sign(key.as_bytes(), now, body.as_bytes()))
        .header("X-Chengis-Delivery", signature::delivery_id(event.build.id, kind, job, now));

    let target = display_url(&settings.url);
    let attempts = settings.retries + 1;
    let mut backoff = settings.backoff_ms;
    for attempt in 1..=attempts {
        let problem = match host.http(&request) {
            Ok(response) if response.is_success() => {
                host.info(&format!(
                    "webhook: delivered {kind} to {target} ({}{})",
                    status_line(response.status),
                    if attempt > 1 { format!(", attempt {attempt} of {attempts}") } else { String::new() }
                ));
                return Ok(());
            }
            Ok(response) if response.status >= 500 => format!("answered {}", answer(&response)),
            Ok(response) => {
                return Err(Failure::new(format!("webhook: {target} answered {} (not retried)", answer(&response))));
            }
            // The host refused the destination: retrying cannot help, and its error names the grant.
            Err(e) if e.0.contains("denied") => {
                return Err(Failure::new(format!("webhook: sending {kind} to {target} was denied: {e}")));
            }
            Err(e) => format!("could not be reached: {e}"),
        };
        if attempt == attempts {
            let tries = if attempts == 1 { "1 attempt".to_string() } else { format!("{attempts} attempts") };
            return Err(Failure::new(format!("webhook: {target} {problem} (gave up after {tries})")));
        }
        host.log(
            Level::Warn,
            &format!("webhook: {target} {problem}; retrying in {backoff} ms (attempt {attempt} of {attempts})"),
        );
        sleep(Duration::from_millis(backoff));
        backoff = backoff.saturating_mul(2);
    }
    Ok(())
}

/// `401 Unauthorized: <start of the body>`.
fn answer(response: &HttpResponse) -> String {
    let text = response.text();
    let text = text.trim();
    let mut quote: String = text.chars().take(QUOTE_CHARS).collect();
    if quote.len() < text.len() {
        quote.push('…');
    }
    if quote.is_empty() { status_line(response.status) } else { format!("{}: {quote}", status_line(response.status)) }
}

/// `503 Service Unavailable`, or the bare code when it is not a common one.
fn status_line(status: u16) -> String {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => return status.to_string(),
    };
    format!("{status} {reason}")
}

/// The URL as shown in logs and failures: without a user/password part and without its query
/// (either may carry a token).
pub fn display_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let path = path.split(['?', '#']).next().unwrap_or("");
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
mod tests;
