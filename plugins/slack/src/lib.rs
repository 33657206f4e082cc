//! `slack`: the builtin notifier that posts a Block Kit message about finished builds (and,
//! optionally, jobs) to a Slack incoming webhook. The webhook URL is a credential, so it is
//! read from a granted secret and never appears in a log line or an error.
//!
//! Configuration: `webhook-secret`, `on`, `events` (see `settings`); the message is built in
//! `message`; Slack's answers are turned into failures here.

pub mod message;
pub mod settings;

use chengis_plugin_sdk::notifier::{Event, EventKind};
use chengis_plugin_sdk::{Failure, Host, HttpRequest, HttpResponse, Kind, Level, Manifest, Notifier, export};

use crate::settings::{DEFAULT_EVENTS, DEFAULT_ON, DEFAULT_SECRET, Settings};

/// The plugin's version, as in its manifest and `User-Agent`.
pub const VERSION: &str = "0.1.0";

/// The longest part of Slack's answer quoted in a failure.
const QUOTE_CHARS: usize = 200;

/// The slack notifier.
pub struct Slack;

impl Notifier for Slack {
    fn manifest() -> Manifest {
        Manifest::new("slack", VERSION, "Posts build results to a Slack incoming webhook (Block Kit)", Kind::Notifier)
            .outbound_http("https://hooks.slack.com:443")
            // Slack-compatible receivers and proxies: usable only where the operator grants them.
            .outbound_http("https://*:*")
            .outbound_http("http://*:*")
            .secret(DEFAULT_SECRET)
            .config(
                "webhook-secret",
                "The name of the granted secret holding the incoming-webhook URL",
                false,
                Some(DEFAULT_SECRET),
            )
            .config("on", "When to post: a comma list of success, failure, fixed, always", false, Some(DEFAULT_ON))
            .config(
                "events",
                "What to post about: `build`, or `build,job` to add finished jobs",
                false,
                Some(DEFAULT_EVENTS),
            )
    }

    fn notify(host: &dyn Host, event: Event) -> Result<(), Failure> {
        let settings = Settings::from_config(&host.config())?;
        let what = match &event.job {
            Some(job) => format!("{} #{} job {}", event.build.pipeline, event.build.number, job.name),
            None => format!("{} #{}", event.build.pipeline, event.build.number),
        };
        let Some(outcome) = settings.wants(&event) else {
            let kind = match event.kind {
                EventKind::BuildStarted => "build started",
                EventKind::BuildFinished => "build finished",
                EventKind::JobStarted => "job started",
                EventKind::JobFinished => "job finished",
            };
            let status = event.job.as_ref().map_or(event.build.status, |j| j.status);
            host.log(Level::Debug, &format!("slack: nothing to post for {what} ({kind}: {})", status.as_str()));
            return Ok(());
        };
        let url = webhook_url(host, &settings.secret)?;
        let body = message::message(&event, outcome).to_string();
        let request = HttpRequest::post(url.clone(), body)
            .header("Content-Type", "application/json")
            .header("User-Agent", format!("chengis-slack/{VERSION}"));
        let response = host.http(&request).map_err(|e| {
            Failure::new(format!(
                "slack: posting to the webhook of secret {} failed: {}",
                settings.secret,
                scrub(&e.0, &url)
            ))
        })?;
        if !response.is_success() {
            return Err(Failure::new(slack_error(&response, &settings.secret, &url)));
        }
        let status = event.job.as_ref().map_or(event.build.status, |j| j.status);
        host.info(&format!("slack: posted {what} {}", message::verb(outcome, status)));
        Ok(())
    }
}

export!(Slack as notifier);

/// The webhook URL from the secret `name`, checked to be an absolute http(s) URL.
fn webhook_url(host: &dyn Host, name: &str) -> Result<String, Failure> {
    let url = host.secret(name).map(|u| u.trim().to_string()).unwrap_or_default();
    if url.is_empty() {
        return Err(Failure::new(format!(
            "slack: secret {name} is not set: store the Slack incoming-webhook URL \
             (https://hooks.slack.com/services/...) in it and grant `secret:{name}` to the plugin"
        )));
    }
    if HttpRequest::post(url.as_str(), Vec::new()).parts().is_err() {
        return Err(Failure::new(format!(
            "slack: secret {name} does not hold an http(s) URL: it should be the incoming-webhook URL \
             (https://hooks.slack.com/services/...)"
        )));
    }
    Ok(url)
}

/// The failure for an answer other than 2xx: the status, Slack's error code and what to do,
/// never the webhook URL.
fn slack_error(response: &HttpResponse, secret: &str, url: &str) -> String {
    let text = response.text();
    let code = scrub(text.trim(), url);
    let code: String = code.chars().take(QUOTE_CHARS).collect();
    let hint = match code.as_str() {
        "invalid_payload" | "no_text" | "invalid_attachments" | "too_many_attachments" | "invalid_blocks" => {
            "Slack rejected the message as malformed"
        }
        "invalid_token" => "the webhook URL is not valid or its token was revoked; check the secret",
        "action_prohibited" => "an admin has restricted posting to this channel",
        "posting_to_general_channel_denied" => "only admins may post to this channel",
        "no_service" | "no_service_id" | "no_team" | "team_disabled" => {
            "the incoming webhook was disabled or removed; create a new one and update the secret"
        }
        "channel_not_found" | "user_not_found" => "the webhook's channel no longer exists",
        "channel_is_archived" => "the webhook's channel is archived",
        _ if response.status == 429 => "Slack is rate-limiting this webhook",
        _ if response.status >= 500 => "Slack had a problem; a later notification will try again",
        _ => "see https://api.slack.com/messaging/webhooks#handling_errors",
    };
    let message = format!("slack: Slack answered {} {}", response.status, reason(response.status));
    let mut message = message.trim_end().to_string();
    if !code.is_empty() {
        message.push_str(&format!(": {code}"));
    }
    message.push_str(&format!(" ({hint}"));
    if let Some(after) = header(response, "retry-after").filter(|_| response.status == 429) {
        message.push_str(&format!("; retry after {} s", after.trim()));
    }
    message.push_str(&format!("; webhook from secret {secret})"));
    message
}

/// The first value of header `name` (case-insensitive).
fn header<'r>(response: &'r HttpResponse, name: &str) -> Option<&'r str> {
    response.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// `text` with the webhook URL (and its path, the secret part) replaced.
fn scrub(text: &str, url: &str) -> String {
    let mut text = text.replace(url, "<webhook URL>");
    if let Ok((_, _, path)) = HttpRequest::post(url, Vec::new()).parts()
        && path.len() > 1
    {
        text = text.replace(path, "/<secret path>");
    }
    text
}

/// The reason phrase of the statuses Slack answers with.
fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests;
