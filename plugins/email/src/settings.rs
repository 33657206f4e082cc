//! The plugin's configuration: reading and checking every key (`smtp-host`, `smtp-port`,
//! `starttls`, `from`, `to`, `subject`, `username`, `password-secret`, `on`, `events`,
//! `helo-name`, `timeout-seconds`, `tls-ca-cert`) into [`Settings`], and deciding whether an
//! event is mailed at all ([`Settings::wants`]).

use chengis_plugin_sdk::notifier::{Event, EventKind};
use chengis_plugin_sdk::notify::{self, When};
use chengis_plugin_sdk::{Config, ConfigError, Status};

/// The default SMTP port (message submission, RFC 6409).
pub const DEFAULT_PORT: u16 = 587;
/// The secret that holds the SMTP password unless `password-secret` names another.
pub const DEFAULT_PASSWORD_SECRET: &str = "SMTP_PASSWORD";
/// The default of `on`.
pub const DEFAULT_ON: &str = "failure,fixed";
/// The default of `events`.
pub const DEFAULT_EVENTS: &str = "build";
/// The default of `starttls`.
pub const DEFAULT_STARTTLS: &str = "required";
/// The default of `helo-name`.
pub const DEFAULT_HELO: &str = "localhost";

/// When to upgrade the connection with STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    /// Never: the whole session is in clear text.
    Never,
    /// When the server offers it; otherwise in clear text (and then without AUTH).
    IfAvailable,
    /// Always: fail when the server does not offer it.
    Required,
}

/// The SMTP login: user name and the password read from the granted secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// The user name.
    pub username: String,
    /// The password (never printed: see the `Debug` impl).
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("username", &self.username).field("password", &"<hidden>").finish()
    }
}

/// Everything the configuration says, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The SMTP server's host name or IP address.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The STARTTLS mode.
    pub starttls: StartTls,
    /// The `From:` header as configured (`ci@example.com` or `Chengis <ci@example.com>`).
    pub from: String,
    /// The envelope sender: the address in `from`.
    pub from_address: String,
    /// The recipients' addresses.
    pub to: Vec<String>,
    /// The subject template, if set.
    pub subject: Option<String>,
    /// The login, when `username` is set.
    pub login: Option<Login>,
    /// Which statuses are mailed (the `on` key).
    pub on: When,
    /// Whether job events are mailed (build events always are).
    pub job_events: bool,
    /// The name this client gives in `EHLO`.
    pub helo: String,
    /// The connect/read/write timeout of the connection, if set.
    pub timeout_seconds: Option<u64>,
    /// Extra trusted CA certificates (PEM), for servers with a private CA.
    pub ca_pem: Option<String>,
}

/// A configuration error naming its key.
fn bad(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), message: message.into() }
}

impl Settings {
    /// Reads and checks the configuration; `secret` reads a granted secret (only called when
    /// `username` is set).
    pub fn read(config: &Config, secret: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let host: String = config.required("smtp-host")?;
        let host = host.trim().to_string();
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
            return Err(bad("smtp-host", format!("expected a host name or IP address, got {host:?}")));
        }
        let port: u16 = config.or("smtp-port", DEFAULT_PORT)?;
        if port == 0 {
            return Err(bad("smtp-port", "expected a port of 1-65535, got 0"));
        }
        let starttls = match config.get("starttls").unwrap_or(DEFAULT_STARTTLS).trim() {
            "never" => StartTls::Never,
            "if-available" => StartTls::IfAvailable,
            "required" => StartTls::Required,
            other => {
                return Err(bad("starttls", format!("expected never, if-available or required, got {other:?}")));
            }
        };
        let from: String = config.required("from")?;
        let from = from.trim().to_string();
        let from_address = mailbox_address(&from).map_err(|why| bad("from", why))?;
        let to_text: String = config.required("to")?;
        let to = to_text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| mailbox_address(s).map_err(|why| bad("to", why)))
            .collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err(bad("to", "expected one or more addresses separated by commas, got none"));
        }
        let subject: Option<String> = config.get("subject").map(str::to_string);
        if let Some(template) = &subject {
            crate::message::check_template(template).map_err(|why| bad("subject", why))?;
        }
        let username = config.get("username").map(str::trim).filter(|u| !u.is_empty()).map(str::to_string);
        let secret_name = config.get("password-secret").map(str::trim).unwrap_or(DEFAULT_PASSWORD_SECRET).to_string();
        let login = match username {
            Some(username) => {
                if username.chars().any(char::is_control) {
                    return Err(bad("username", "must not contain control characters"));
                }
                let password = secret(&secret_name).filter(|p| !p.is_empty()).ok_or_else(|| {
                    bad(
                        "password-secret",
                        format!("the secret {secret_name:?} has no value (it is needed because `username` is set)"),
                    )
                })?;
                Some(Login { username, password })
            }
            None => None,
        };
        let on = parse_on(config.get("on").unwrap_or(DEFAULT_ON))?;
        let job_events = parse_events(config.get("events").unwrap_or(DEFAULT_EVENTS))?;
        let helo = config.get("helo-name").map(str::trim).unwrap_or(DEFAULT_HELO).to_string();
        if helo.is_empty() || !helo.chars().all(|c| c.is_ascii_graphic()) {
            return Err(bad("helo-name", format!("expected a host name or address literal, got {helo:?}")));
        }
        let timeout_seconds: Option<u64> = config.optional("timeout-seconds")?;
        if timeout_seconds == Some(0) {
            return Err(bad("timeout-seconds", "expected 1 or more seconds, got 0"));
        }
        let ca_pem = config.get("tls-ca-cert").map(str::to_string).filter(|pem| !pem.trim().is_empty());
        Ok(Settings {
            host,
            port,
            starttls,
            from,
            from_address,
            to,
            subject,
            login,
            on,
            job_events,
            helo,
            timeout_seconds,
            ca_pem,
        })
    }

    /// Whether this event is mailed, and if so whether it counts as `fixed`; `Err` says why it
    /// is not (for the debug log).
    pub fn wants(&self, event: &Event) -> Result<Outcome, String> {
        let status = match (&event.kind, &event.job) {
            (EventKind::BuildFinished, _) => event.build.status,
            (EventKind::JobFinished, Some(job)) if self.job_events => job.status,
            (EventKind::JobFinished, Some(_)) => return Err("job events are not mailed (events: build)".into()),
            (EventKind::JobFinished, None) => return Err("a job event without a job".into()),
            (EventKind::BuildStarted | EventKind::JobStarted, _) => {
                return Err("only finished builds and jobs are mailed".into());
            }
        };
        let outcome = notify::Outcome::of(status, event.previous_status);
        let fixed = outcome == notify::Outcome::Fixed;
        if self.on.wants(outcome) {
            Ok(Outcome { status, fixed })
        } else {
            Err(format!("status {}{} is not in `on`", status.as_str(), if fixed { " (fixed)" } else { "" }))
        }
    }
}

/// The status an e-mail is about, and whether it fixes an earlier failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The build's status (build events) or the job's (job events).
    pub status: Status,
    /// A success after a failure, error or cancellation.
    pub fixed: bool,
}

fn parse_on(text: &str) -> Result<When, ConfigError> {
    let mut on = When::default();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if !on.set(word) {
            return Err(bad("on", format!("expected a comma list of {}; got {word:?}", When::WORDS)));
        }
    }
    if on.is_empty() {
        return Err(bad("on", format!("expected one or more of {}; got none", When::WORDS)));
    }
    Ok(on)
}

fn parse_events(text: &str) -> Result<bool, ConfigError> {
    let mut build = false;
    let mut job = false;
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "build" => build = true,
            "job" => job = true,
            other => return Err(bad("events", format!("expected build or build,job; got {other:?}"))),
        }
    }
    if !build {
        return Err(bad("events", format!("expected build or build,job; got {text:?}")));
    }
    Ok(job)
}

/// The address of a mailbox written as `user@example.com` or `Name <user@example.com>`.
pub fn mailbox_address(text: &str) -> Result<String, String> {
    let text = text.trim();
    let address = match (text.rfind('<'), text.ends_with('>')) {
        (Some(open), true) => &text[open + 1..text.len() - 1],
        (None, false) => text,
        _ => return Err(format!("expected user@example.com or Name <user@example.com>, got {text:?}")),
    };
    let valid = address.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && !domain.is_empty()
            && !domain.contains('@')
            && address.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | ',' | '"' | '\\'))
    });
    if !valid {
        return Err(format!("{address:?} is not an e-mail address like user@example.com"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{text:?} contains control characters"));
    }
    Ok(address.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::testing::{config, sample_event};

    fn minimal() -> Vec<(&'static str, &'static str)> {
        vec![
            ("smtp-host", "smtp.example.com"),
            ("from", "Chengis <ci@example.com>"),
            ("to", "a@example.com, b@example.com"),
        ]
    }

    fn no_secret(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults() {
        let settings = Settings::read(&config(&minimal()), no_secret).unwrap();
        assert_eq!(settings.host, "smtp.example.com");
        assert_eq!(settings.port, 587);
        assert_eq!(settings.starttls, StartTls::Required);
        assert_eq!(settings.from_address, "ci@example.com");
        assert_eq!(settings.to, ["a@example.com", "b@example.com"]);
        assert_eq!(settings.on, When { failure: true, fixed: true, ..Default::default() });
        assert!(!settings.job_events);
        assert_eq!(settings.login, None);
        assert_eq!(settings.helo, "localhost");
        assert_eq!(settings.timeout_seconds, None);
    }

    #[test]
    fn every_error_names_its_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("smtp-port", "99999", "smtp-port"),
            ("smtp-port", "0", "smtp-port"),
            ("starttls", "sometimes", "starttls"),
            ("from", "not an address", "from"),
            ("to", "a@example.com, nobody", "to"),
            ("to", " , ", "to"),
            ("on", "failure,tuesday", "on"),
            ("on", "", "on"),
            ("events", "job", "events"),
            ("events", "build,step", "events"),
            ("subject", "{pipeline} {nonsense}", "subject"),
            ("helo-name", "two words", "helo-name"),
            ("timeout-seconds", "0", "timeout-seconds"),
            ("smtp-host", "smtp.example.com/x", "smtp-host"),
        ];
        for (key, value, named) in cases {
            let mut pairs: Vec<_> = minimal().into_iter().filter(|(k, _)| k != key).collect();
            pairs.push((key, value));
            let error = Settings::read(&config(&pairs), no_secret).unwrap_err();
            assert_eq!(error.key, *named, "{key}={value:?}: {error}");
        }
        let error = Settings::read(&config(&[("smtp-host", "h"), ("to", "a@b.c")]), no_secret).unwrap_err();
        assert_eq!(error.to_string(), r#"config key "from": is required but not set"#);
    }

    #[test]
    fn password_comes_from_the_named_secret_only_with_a_username() {
        let mut pairs = minimal();
        pairs.push(("username", "ci"));
        let error = Settings::read(&config(&pairs), no_secret).unwrap_err();
        assert_eq!(error.key, "password-secret");
        assert!(error.message.contains("\"SMTP_PASSWORD\" has no value"), "{error}");
        let settings =
            Settings::read(&config(&pairs), |name| (name == "SMTP_PASSWORD").then(|| "hunter2".to_string())).unwrap();
        assert_eq!(settings.login, Some(Login { username: "ci".into(), password: "hunter2".into() }));
        assert!(!format!("{settings:?}").contains("hunter2"));
        pairs.push(("password-secret", "MAIL_PW"));
        let settings = Settings::read(&config(&pairs), |name| (name == "MAIL_PW").then(|| "pw".to_string())).unwrap();
        assert_eq!(settings.login.unwrap().password, "pw");
        // Without a username no secret is read.
        Settings::read(&config(&minimal()), |name| panic!("read {name}")).unwrap();
    }

    fn event(kind: EventKind, status: Status, previous: Option<Status>) -> Event {
        Event { previous_status: previous, ..sample_event(kind, status) }
    }

    #[test]
    fn on_and_events_select_what_is_mailed() {
        let settings = Settings::read(&config(&minimal()), no_secret).unwrap();
        let finished = |status, previous| settings.wants(&event(EventKind::BuildFinished, status, previous));
        assert_eq!(finished(Status::Failure, None), Ok(Outcome { status: Status::Failure, fixed: false }));
        assert!(finished(Status::Error, Some(Status::Success)).is_ok());
        assert_eq!(
            finished(Status::Success, Some(Status::Failure)),
            Ok(Outcome { status: Status::Success, fixed: true })
        );
        assert!(finished(Status::Success, Some(Status::Cancelled)).is_ok());
        assert_eq!(finished(Status::Success, Some(Status::Success)), Err("status success is not in `on`".into()));
        assert!(finished(Status::Success, None).is_err());
        assert!(finished(Status::Cancelled, None).is_err());
        assert!(settings.wants(&event(EventKind::BuildStarted, Status::Running, None)).is_err());
        assert!(settings.wants(&event(EventKind::JobFinished, Status::Failure, None)).is_err());

        let mut pairs = minimal();
        pairs.extend([("on", "success"), ("events", "build,job")]);
        let settings = Settings::read(&config(&pairs), no_secret).unwrap();
        assert!(settings.wants(&event(EventKind::JobFinished, Status::Success, None)).is_ok());
        assert!(settings.wants(&event(EventKind::JobFinished, Status::Failure, None)).is_err());
        assert!(settings.wants(&event(EventKind::JobStarted, Status::Running, None)).is_err());

        let mut pairs = minimal();
        pairs.push(("on", "always"));
        let settings = Settings::read(&config(&pairs), no_secret).unwrap();
        assert!(settings.wants(&event(EventKind::BuildFinished, Status::Cancelled, None)).is_ok());
    }

    #[test]
    fn mailbox_addresses() {
        assert_eq!(mailbox_address("a@b.c").unwrap(), "a@b.c");
        assert_eq!(mailbox_address(" Chengis CI <ci@example.com> ").unwrap(), "ci@example.com");
        assert!(mailbox_address("ci@example.com>").is_err());
        assert!(mailbox_address("a@b@c").is_err());
        assert!(mailbox_address("@b").is_err());
        assert!(mailbox_address("x <a b@c>").is_err());
        assert!(mailbox_address("Name\r\nBcc: x <a@b.c>").is_err());
    }
}
