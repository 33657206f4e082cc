//! The webhook plugin's configuration: `url`, `secret-name`, `events`, `retries`, `backoff-ms`.

use chengis_plugin_sdk::notifier::EventKind;
use chengis_plugin_sdk::{Config, ConfigError, HttpRequest};

use crate::document::kind_name;

/// The secret holding the HMAC key when `secret-name` is not set.
pub const DEFAULT_SECRET: &str = "WEBHOOK_SECRET";

/// The `events` list when it is not set: every kind.
pub const DEFAULT_EVENTS: &str = "build-started,build-finished,job-started,job-finished";

/// How many times a delivery is retried after a 5xx answer or a connection error.
pub const DEFAULT_RETRIES: u32 = 3;

/// The wait before the first retry, doubling for each next one: 0.5 s, 1 s, 2 s (3.5 s in all,
/// within the host's default 5 s limit for a notifier call).
pub const DEFAULT_BACKOFF_MS: u64 = 500;

/// The most retries accepted.
pub const MAX_RETRIES: u32 = 10;

/// The longest initial backoff accepted.
pub const MAX_BACKOFF_MS: u64 = 60_000;

const KINDS: [EventKind; 4] =
    [EventKind::BuildStarted, EventKind::BuildFinished, EventKind::JobStarted, EventKind::JobFinished];

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where to POST.
    pub url: String,
    /// The name of the secret holding the HMAC key.
    pub secret: String,
    /// The event kinds to deliver.
    pub events: Vec<EventKind>,
    /// Retries after the first attempt.
    pub retries: u32,
    /// The first wait between attempts, in milliseconds; it doubles each time.
    pub backoff_ms: u64,
}

impl Settings {
    /// Reads and checks the configuration; errors name the key.
    pub fn from_config(config: &Config) -> Result<Settings, ConfigError> {
        let error = |key: &str, message: String| ConfigError { key: key.into(), message };
        let url: String = config.required("url")?;
        let url = url.trim().to_string();
        if let Err(e) = HttpRequest::post(url.as_str(), Vec::new()).parts() {
            return Err(error("url", format!("expected an http:// or https:// URL: {e}")));
        }
        let secret: String = config.or("secret-name", DEFAULT_SECRET.to_string())?;
        let secret = secret.trim().to_string();
        if secret.is_empty() {
            return Err(error("secret-name", "must name a secret, got \"\"".into()));
        }
        let mut events = Vec::new();
        let text = config.get("events").unwrap_or(DEFAULT_EVENTS);
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let word = word.to_ascii_lowercase();
            let Some(kind) = KINDS.into_iter().find(|k| kind_name(*k) == word) else {
                return Err(error(
                    "events",
                    format!("unknown event {word:?}: expected a comma list of {DEFAULT_EVENTS}"),
                ));
            };
            if !events.contains(&kind) {
                events.push(kind);
            }
        }
        if events.is_empty() {
            return Err(error("events", format!("is empty: expected a comma list of {DEFAULT_EVENTS}")));
        }
        let retries = config.or("retries", DEFAULT_RETRIES)?;
        if retries > MAX_RETRIES {
            return Err(error("retries", format!("expected at most {MAX_RETRIES}, got {retries}")));
        }
        let backoff_ms = config.or("backoff-ms", DEFAULT_BACKOFF_MS)?;
        if backoff_ms > MAX_BACKOFF_MS {
            return Err(error("backoff-ms", format!("expected at most {MAX_BACKOFF_MS}, got {backoff_ms}")));
        }
        Ok(Settings { url, secret, events, retries, backoff_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::testing::config;

    #[test]
    fn defaults() {
        let settings = Settings::from_config(&config(&[("url", " https://hooks.example.com/ci ")])).unwrap();
        assert_eq!(
            settings,
            Settings {
                url: "https://hooks.example.com/ci".into(),
                secret: "WEBHOOK_SECRET".into(),
                events: KINDS.to_vec(),
                retries: 3,
                backoff_ms: 500,
            }
        );
    }

    #[test]
    fn values_are_checked_and_errors_name_the_key() {
        let key = |pairs: &[(&str, &str)]| Settings::from_config(&config(pairs)).unwrap_err();
        assert_eq!(key(&[]).to_string(), r#"config key "url": is required but not set"#);
        let error = key(&[("url", "ftp://x/")]);
        assert_eq!(error.key, "url");
        assert!(error.message.contains("only http and https"), "{error}");
        let url = ("url", "https://x/");
        assert_eq!(
            key(&[url, ("events", "build-finished,deploy")]).to_string(),
            r#"config key "events": unknown event "deploy": expected a comma list of build-started,build-finished,job-started,job-finished"#
        );
        assert_eq!(key(&[url, ("events", ",")]).key, "events");
        assert_eq!(key(&[url, ("retries", "many")]).key, "retries");
        assert_eq!(key(&[url, ("retries", "11")]).message, "expected at most 10, got 11");
        assert_eq!(key(&[url, ("backoff-ms", "-1")]).key, "backoff-ms");
        assert_eq!(key(&[url, ("backoff-ms", "60001")]).key, "backoff-ms");
        assert_eq!(key(&[url, ("secret-name", "")]).key, "secret-name");
    }

    #[test]
    fn events_parse_as_a_list() {
        let settings = Settings::from_config(&config(&[
            ("url", "http://x/"),
            ("events", " Build-Finished , job-finished,build-finished"),
        ]))
        .unwrap();
        assert_eq!(settings.events, [EventKind::BuildFinished, EventKind::JobFinished]);
    }
}
