//! `email`: the builtin notifier that e-mails build (and optionally job) results over SMTP,
//! through `wasi:sockets` to the granted `host:port` only, with STARTTLS (rustls with a
//! pure-Rust crypto provider), optional `AUTH PLAIN`/`LOGIN` with a password from a granted
//! secret, and a `multipart/alternative` message (plain text and HTML).
//!
//! Modules: [`settings`] (configuration and which events are mailed), [`message`] (the
//! RFC 5322/MIME message), [`smtp`] (the SMTP dialogue over any stream), [`tls`] (STARTTLS).

pub mod message;
pub mod settings;
pub mod smtp;
pub mod tls;

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use chengis_plugin_sdk::notifier::Event;
use chengis_plugin_sdk::{ConfigError, Failure, Host, Kind, Level, Manifest, Notifier, export};

use crate::message::{Facts, Message, Stamp};
use crate::settings::Settings;
use crate::smtp::{Options, Upgrade};

/// The `email` plugin.
pub struct Email;

impl Notifier for Email {
    fn manifest() -> Manifest {
        Manifest::new("email", "0.1.0", "E-mails build results over SMTP (STARTTLS, AUTH)", Kind::Notifier)
            .outbound_tcp("*:*")
            .secret(settings::DEFAULT_PASSWORD_SECRET)
            .config("smtp-host", "The SMTP server's host name or IP address (grant tcp:HOST:PORT)", true, None)
            .config("smtp-port", "The SMTP server's port", false, Some("587"))
            .config(
                "starttls",
                "never, if-available (clear text when not offered) or required (fail when not offered)",
                false,
                Some(settings::DEFAULT_STARTTLS),
            )
            .config("from", "The sender: ci@example.com or Chengis <ci@example.com>", true, None)
            .config("to", "The recipients, separated by commas", true, None)
            .config(
                "subject",
                "The subject template; placeholders {pipeline} {number} {status} {result} {branch} {sha} {short-sha} {job} {trigger} {author}",
                false,
                Some(message::DEFAULT_BUILD_SUBJECT),
            )
            .config("username", "The SMTP login (AUTH PLAIN or LOGIN); none when unset", false, None)
            .config(
                "password-secret",
                "The secret holding the SMTP password (needed with username)",
                false,
                Some(settings::DEFAULT_PASSWORD_SECRET),
            )
            .config("on", "When to mail: a comma list of success, failure, fixed, always", false, Some(settings::DEFAULT_ON))
            .config("events", "Which events: build, or build,job", false, Some(settings::DEFAULT_EVENTS))
            .config("helo-name", "The name this client gives in EHLO", false, Some(settings::DEFAULT_HELO))
            .config(
                "timeout-seconds",
                "Connect, read and write timeout; keep it below the host's call timeout (chengis.timeout)",
                false,
                None,
            )
            .config("tls-ca-cert", "Extra CA certificates (PEM) to trust, for a private CA", false, None)
    }

    fn notify(host: &dyn Host, event: Event) -> Result<(), Failure> {
        let settings = Settings::read(&host.config(), |name| host.secret(name))?;
        let tls = tls::Rustls::new(settings.ca_pem.as_deref())
            .map_err(|message| ConfigError { key: "tls-ca-cert".into(), message })?;
        let outcome = match settings.wants(&event) {
            Ok(outcome) => outcome,
            Err(why) => {
                host.log(
                    Level::Debug,
                    &format!("no e-mail for {} #{}: {why}", event.build.pipeline, event.build.number),
                );
                return Ok(());
            }
        };
        send(host, &settings, &Facts::of(&event, outcome), &tls)
    }
}

/// Connects to the configured server, delivers the mail for `facts` and logs the result.
pub fn send(host: &dyn Host, settings: &Settings, facts: &Facts, tls: &dyn Upgrade) -> Result<(), Failure> {
    let message = Message::build(settings, facts, &Stamp::now()).map_err(Failure::new)?;
    let server = format!("{}:{}", settings.host, settings.port);
    let stream = connect(host, settings).map_err(Failure::new)?;
    let options = Options {
        server,
        host: &settings.host,
        helo: &settings.helo,
        starttls: settings.starttls,
        login: settings.login.as_ref(),
    };
    let reply = smtp::deliver(Box::new(stream), &options, tls, host, &message).map_err(Failure::new)?;
    host.info(&format!(
        "e-mailed {} about {} #{} ({}) through {}: {reply}",
        message.to.join(", "),
        facts.pipeline,
        facts.number,
        facts.result,
        options.server
    ));
    Ok(())
}

/// Opens the TCP connection, trying each address of the host in turn; with `timeout-seconds`
/// set, that is the connect, read and write timeout (otherwise the host's call deadline is the
/// only bound, see the README).
fn connect(host: &dyn Host, settings: &Settings) -> Result<TcpStream, String> {
    let server = format!("{}:{}", settings.host, settings.port);
    let timeout = settings.timeout_seconds.map(Duration::from_secs);
    let addresses = (settings.host.as_str(), settings.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot look up SMTP server {server}: {e}"))?;
    let mut last_error = None;
    let mut denied = false;
    for address in addresses {
        let attempt = match timeout {
            Some(timeout) => TcpStream::connect_timeout(&address, timeout),
            None => TcpStream::connect(address),
        };
        match attempt {
            Ok(stream) => {
                let timeouts = stream.set_read_timeout(timeout).and_then(|()| stream.set_write_timeout(timeout));
                if let Err(e) = timeouts {
                    host.log(Level::Debug, &format!("SMTP server {server}: no read/write timeout ({e})"));
                }
                return Ok(stream);
            }
            Err(e) => {
                denied |= e.kind() == std::io::ErrorKind::PermissionDenied;
                last_error = Some(format!("{address}: {e}"));
            }
        }
    }
    Err(match last_error {
        // The host refuses destinations that were not granted (sockets are off without grants).
        Some(error) if denied => format!(
            "cannot connect to SMTP server {server} ({error}); the operator must grant it: \
             `chengis plugin allow email --grant tcp:{server}`"
        ),
        Some(error) => format!("cannot connect to SMTP server {server} ({error})"),
        None => format!("cannot look up SMTP server {server}: no addresses"),
    })
}

export!(Email as notifier);

#[cfg(test)]
mod tests;
