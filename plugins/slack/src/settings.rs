//! The slack plugin's configuration (`webhook-secret`, `on`, `events`) and the rule that
//! decides whether an event is worth a message.

use chengis_plugin_sdk::notifier::{Event, EventKind};
use chengis_plugin_sdk::notify::When;
use chengis_plugin_sdk::{Config, ConfigError};

/// The secret that holds the incoming-webhook URL when `webhook-secret` is not set.
pub const DEFAULT_SECRET: &str = "SLACK_WEBHOOK_URL";

/// The `on` list when it is not set.
pub const DEFAULT_ON: &str = "failure,fixed";

/// The `events` list when it is not set.
pub const DEFAULT_EVENTS: &str = "build";

/// How a finished build or job turned out, as `on` sees it.
pub use chengis_plugin_sdk::notify::Outcome;

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The name of the secret holding the webhook URL.
    pub secret: String,
    /// The `on` list.
    pub on: When,
    /// `events` includes `build`.
    pub builds: bool,
    /// `events` includes `job`.
    pub jobs: bool,
}

impl Settings {
    /// Reads and checks the configuration; errors name the key and the accepted values.
    pub fn from_config(config: &Config) -> Result<Settings, ConfigError> {
        let secret: String = config.or("webhook-secret", DEFAULT_SECRET.to_string())?;
        if secret.trim().is_empty() {
            return Err(ConfigError { key: "webhook-secret".into(), message: "must name a secret, got \"\"".into() });
        }
        let mut settings =
            Settings { secret: secret.trim().to_string(), on: When::default(), builds: false, jobs: false };
        for word in list(config, "on", DEFAULT_ON)? {
            // `finished` is the host's server-side `on` value for `always`: this plugin only ever
            // posts finished builds and jobs.
            let word = if word == "finished" { "always" } else { word.as_str() };
            if !settings.on.set(word) {
                return Err(ConfigError {
                    key: "on".into(),
                    message: format!("unknown value {word:?}: expected a comma list of {}", When::WORDS),
                });
            }
        }
        for word in list(config, "events", DEFAULT_EVENTS)? {
            match word.as_str() {
                "build" => settings.builds = true,
                "job" => settings.jobs = true,
                other => {
                    return Err(ConfigError {
                        key: "events".into(),
                        message: format!("unknown value {other:?}: expected `build` or `build,job`"),
                    });
                }
            }
        }
        Ok(settings)
    }

    /// The outcome of `event` when it is one this configuration posts about, else `None`.
    /// Only finished builds (and, with `events: build,job`, finished jobs) are posted.
    pub fn wants(&self, event: &Event) -> Option<Outcome> {
        let status = match (event.kind, &event.job) {
            (EventKind::BuildFinished, _) if self.builds => event.build.status,
            (EventKind::JobFinished, Some(job)) if self.jobs => job.status,
            _ => return None,
        };
        let outcome = Outcome::of(status, event.previous_status);
        let wanted = self.on.wants(outcome);
        wanted.then_some(outcome)
    }
}

/// The comma list of `key` (lowercase, trimmed, empty items dropped), or of `default`.
fn list(config: &Config, key: &str, default: &str) -> Result<Vec<String>, ConfigError> {
    let text = config.get(key).unwrap_or(default);
    let words: Vec<String> = text.split(',').map(|w| w.trim().to_ascii_lowercase()).filter(|w| !w.is_empty()).collect();
    if words.is_empty() {
        return Err(ConfigError {
            key: key.into(),
            message: format!("is empty: expected a comma list (default {default:?})"),
        });
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::testing::config;

    #[test]
    fn defaults() {
        let settings = Settings::from_config(&Config::default()).unwrap();
        assert_eq!(settings.secret, "SLACK_WEBHOOK_URL");
        assert_eq!(settings.on, When { failure: true, fixed: true, ..When::default() });
        assert!(settings.builds && !settings.jobs);
    }

    #[test]
    fn bad_values_name_the_key() {
        let error = Settings::from_config(&config(&[("on", "failure, sometimes")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"config key "on": unknown value "sometimes": expected a comma list of success, failure, fixed, always"#
        );
        let error = Settings::from_config(&config(&[("events", "build,step")])).unwrap_err();
        assert_eq!(error.key, "events");
        let error = Settings::from_config(&config(&[("on", " , ")])).unwrap_err();
        assert_eq!(error.key, "on");
        let error = Settings::from_config(&config(&[("webhook-secret", " ")])).unwrap_err();
        assert_eq!(error.key, "webhook-secret");
    }

    #[test]
    fn lists_are_case_and_space_insensitive() {
        let settings = Settings::from_config(&config(&[("on", " Success ,ALWAYS"), ("events", "job, build")])).unwrap();
        assert_eq!(settings.on, When { success: true, always: true, ..When::default() });
        assert!(settings.builds && settings.jobs);
        let settings = Settings::from_config(&config(&[("on", "finished")])).unwrap();
        assert_eq!(settings.on, When { always: true, ..When::default() });
    }
}
