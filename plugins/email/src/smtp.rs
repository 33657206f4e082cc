//! A small SMTP client (RFC 5321) over any `Read + Write` stream: the greeting, `EHLO` (or
//! `HELO`), optional `STARTTLS` (the upgrade itself is the caller's [`Upgrade`]), optional
//! `AUTH PLAIN`/`AUTH LOGIN`, `MAIL FROM`, one `RCPT TO` per recipient, `DATA` with
//! dot-stuffing, and `QUIT`. Every failure names the server, the command and the server's
//! reply code and text; the password is never part of a message or a log line.

use std::io::{Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chengis_plugin_sdk::{Host, Level};

use crate::message::Message;
use crate::settings::{Login, StartTls};

/// A byte stream to an SMTP server: a TCP connection, a TLS session over one, or a test pipe.
pub trait Stream: Read + Write {}

impl<T: Read + Write> Stream for T {}

/// The longest reply line accepted (RFC 5321 allows 512 octets; servers write longer text).
const MAX_LINE: usize = 4096;
/// The most lines one reply may have.
const MAX_LINES: usize = 256;

/// Turns a clear-text stream into a TLS one after `STARTTLS`.
pub trait Upgrade {
    /// Whether this build can do TLS at all.
    fn available(&self) -> bool;
    /// Runs the TLS handshake over `stream` (for the server `host`) and returns the TLS stream.
    fn upgrade<'a>(&self, stream: Box<dyn Stream + 'a>, host: &str) -> Result<Box<dyn Stream + 'a>, String>;
}

/// A server's reply: its code and its text lines (without the code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line.
    pub lines: Vec<String>,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / ").trim())
    }
}

/// What the session needs besides the message.
pub struct Options<'a> {
    /// `host:port`, for messages.
    pub server: String,
    /// The host name, for the TLS certificate check.
    pub host: &'a str,
    /// The name this client gives in `EHLO`.
    pub helo: &'a str,
    /// The STARTTLS mode.
    pub starttls: StartTls,
    /// The login, if any.
    pub login: Option<&'a Login>,
}

/// An SMTP session on one connection.
struct Session<'a> {
    stream: Box<dyn Stream + 'a>,
    pending: Vec<u8>,
    server: String,
}

impl<'a> Session<'a> {
    /// Reads one (possibly multi-line) reply; `what` names what it answers, for errors.
    fn reply(&mut self, what: &str) -> Result<Reply, String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line(what)?;
            let code = line.get(..3).filter(|c| c.bytes().all(|b| b.is_ascii_digit())).and_then(|c| c.parse().ok());
            let separator = line.as_bytes().get(3).copied();
            let (Some(code), Some(b' ' | b'-') | None) = (code, separator) else {
                return Err(format!("SMTP server {} sent a malformed reply to {what}: {line:?}", self.server));
            };
            lines.push(line.get(4..).unwrap_or_default().to_string());
            if separator != Some(b'-') {
                return Ok(Reply { code, lines });
            }
            if lines.len() >= MAX_LINES {
                return Err(format!("SMTP server {} sent more than {MAX_LINES} reply lines to {what}", self.server));
            }
        }
    }

    /// Reads one line, without its line ending.
    fn line(&mut self, what: &str) -> Result<String, String> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.pending.len() > MAX_LINE {
                return Err(format!("SMTP server {} sent a reply line over {MAX_LINE} bytes to {what}", self.server));
            }
            let mut buffer = [0u8; 1024];
            match self.stream.read(&mut buffer) {
                Ok(0) => {
                    return Err(format!(
                        "SMTP server {} closed the connection instead of answering {what}",
                        self.server
                    ));
                }
                Ok(n) => self.pending.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(format!("reading the reply of SMTP server {} to {what} failed: {e}", self.server));
                }
            }
        }
    }

    /// Writes raw bytes; `what` names them for errors.
    fn write(&mut self, bytes: &[u8], what: &str) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .map_err(|e| format!("sending {what} to SMTP server {} failed: {e}", self.server))
    }

    /// Sends a command and reads its reply. `shown` is how the command appears in errors
    /// (credentials are never shown).
    fn command(&mut self, line: &str, shown: &str) -> Result<Reply, String> {
        self.write(format!("{line}\r\n").as_bytes(), shown)?;
        self.reply(shown)
    }

    /// Sends a command and fails unless the reply code is one of `expected`.
    fn expect(&mut self, line: &str, shown: &str, expected: &[u16]) -> Result<Reply, String> {
        let reply = self.command(line, shown)?;
        if expected.contains(&reply.code) { Ok(reply) } else { Err(self.refused(shown, &reply)) }
    }

    fn refused(&self, shown: &str, reply: &Reply) -> String {
        format!("SMTP server {} refused {shown}: {reply}", self.server)
    }

    /// Says `EHLO` (or `HELO` when the server does not know `EHLO`) and returns the
    /// extension keywords, uppercase, with their parameters.
    fn hello(&mut self, helo: &str) -> Result<Vec<String>, String> {
        let reply = self.command(&format!("EHLO {helo}"), &format!("EHLO {helo}"))?;
        if reply.code == 250 {
            return Ok(reply.lines.iter().skip(1).map(|l| l.trim().to_ascii_uppercase()).collect());
        }
        if (500..=504).contains(&reply.code) || reply.code == 550 {
            self.expect(&format!("HELO {helo}"), &format!("HELO {helo}"), &[250])?;
            return Ok(Vec::new());
        }
        Err(self.refused(&format!("EHLO {helo}"), &reply))
    }

    /// Ends the session politely; errors here do not matter any more.
    fn quit(&mut self) {
        let _ = self.command("QUIT", "QUIT");
    }
}

/// Whether the extensions list `keyword` (e.g. `STARTTLS`), and its parameters.
fn extension<'e>(extensions: &'e [String], keyword: &str) -> Option<&'e str> {
    extensions.iter().find_map(|line| {
        let (word, rest) = line.split_once([' ', '=']).unwrap_or((line.as_str(), ""));
        (word == keyword).then_some(rest)
    })
}

/// `text` with every line that starts with `.` doubled (RFC 5321 4.5.2), ending in CRLF, and
/// the end-of-data line `.` after it.
pub fn dot_stuff(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 64);
    let body = text.strip_suffix("\r\n").unwrap_or(text);
    for line in body.split("\r\n") {
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Runs a whole SMTP session on `stream` and delivers `message`. Returns the server's reply
/// to the end of `DATA` (e.g. `250 2.0.0 Ok: queued as 1234`).
pub fn deliver<'a>(
    stream: Box<dyn Stream + 'a>,
    options: &Options<'_>,
    tls: &dyn Upgrade,
    host: &dyn Host,
    message: &Message,
) -> Result<Reply, String> {
    let mut session = Session { stream, pending: Vec::new(), server: options.server.clone() };
    let greeting = session.reply("the connection (greeting)")?;
    if greeting.code != 220 {
        return Err(format!("SMTP server {} greeted with {greeting} instead of 220", options.server));
    }
    let result = converse(&mut session, options, tls, host, message);
    session.quit();
    result
}

fn converse(
    session: &mut Session<'_>,
    options: &Options<'_>,
    tls: &dyn Upgrade,
    host: &dyn Host,
    message: &Message,
) -> Result<Reply, String> {
    let mut extensions = session.hello(options.helo)?;
    let offered = extension(&extensions, "STARTTLS").is_some();
    let mut secure = false;
    match (options.starttls, offered) {
        (StartTls::Never, _) => {}
        (StartTls::Required, false) => {
            return Err(format!(
                "SMTP server {} does not offer STARTTLS, and `starttls` is `required` (set it to `if-available` or `never` to send in clear text)",
                options.server
            ));
        }
        (StartTls::IfAvailable, false) => {
            host.log(
                Level::Warn,
                &format!("SMTP server {} does not offer STARTTLS: sending in clear text", options.server),
            );
        }
        (StartTls::IfAvailable, true) if !tls.available() => {
            host.log(
                Level::Warn,
                &format!(
                    "SMTP server {} offers STARTTLS, but this build has no TLS: sending in clear text",
                    options.server
                ),
            );
        }
        (StartTls::IfAvailable | StartTls::Required, true) => {
            session.expect("STARTTLS", "STARTTLS", &[220])?;
            if !session.pending.is_empty() {
                // Bytes sent before the handshake would be taken as protected: refuse them.
                return Err(format!("SMTP server {} sent data after its STARTTLS reply, before TLS", options.server));
            }
            let stream = std::mem::replace(&mut session.stream, Box::new(std::io::empty()));
            session.stream = tls
                .upgrade(stream, options.host)
                .map_err(|e| format!("TLS with SMTP server {} failed: {e}", options.server))?;
            secure = true;
            host.log(Level::Debug, &format!("SMTP server {}: TLS started", options.server));
            extensions = session.hello(options.helo)?;
        }
    }
    if let Some(login) = options.login {
        if !secure && options.starttls != StartTls::Never {
            return Err(format!(
                "refusing to send the SMTP password to {} in clear text (no TLS); set `starttls: never` to allow it",
                options.server
            ));
        }
        authenticate(session, &extensions, login)?;
    }
    session.expect(&format!("MAIL FROM:<{}>", message.from), &format!("MAIL FROM:<{}>", message.from), &[250])?;
    let mut rejected = Vec::new();
    for to in &message.to {
        let shown = format!("RCPT TO:<{to}>");
        let reply = session.command(&shown, &shown)?;
        if !matches!(reply.code, 250 | 251) {
            rejected.push(format!("<{to}>: {reply}"));
        }
    }
    if !rejected.is_empty() {
        let _ = session.command("RSET", "RSET");
        return Err(format!(
            "SMTP server {} rejected {} of {} recipients, nothing was sent: {}",
            options.server,
            rejected.len(),
            message.to.len(),
            rejected.join("; ")
        ));
    }
    session.expect("DATA", "DATA", &[354])?;
    session.write(&dot_stuff(&message.text), "the message")?;
    let reply = session.reply("the message (end of DATA)")?;
    if reply.code != 250 {
        return Err(session.refused("the message (end of DATA)", &reply));
    }
    Ok(reply)
}

/// `AUTH PLAIN` when offered, else `AUTH LOGIN`.
fn authenticate(session: &mut Session<'_>, extensions: &[String], login: &Login) -> Result<(), String> {
    let mechanisms: Vec<&str> = extension(extensions, "AUTH").unwrap_or_default().split_whitespace().collect();
    let shown = |mechanism: &str| format!("AUTH {mechanism} (as {:?})", login.username);
    if mechanisms.contains(&"PLAIN") {
        let token = BASE64.encode(format!("\0{}\0{}", login.username, login.password));
        session.expect(&format!("AUTH PLAIN {token}"), &shown("PLAIN"), &[235])?;
    } else if mechanisms.contains(&"LOGIN") {
        session.expect("AUTH LOGIN", &shown("LOGIN"), &[334])?;
        session.expect(&BASE64.encode(&login.username), &shown("LOGIN"), &[334])?;
        session.expect(&BASE64.encode(&login.password), &shown("LOGIN"), &[235])?;
    } else {
        return Err(format!(
            "SMTP server {} offers no login this plugin speaks (it offers AUTH {:?}; PLAIN or LOGIN are supported)",
            session.server,
            mechanisms.join(" ")
        ));
    }
    Ok(())
}
