//! Native tests of the whole plugin: the SMTP dialogue against scripted in-memory servers
//! (every reply and the exact client transcript), and `notify` through the SDK's `FakeHost`
//! against a small SMTP server on a loopback `TcpListener`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::mpsc;

use base64::Engine as _;
use chengis_plugin_sdk::Level;
use chengis_plugin_sdk::notifier::EventKind;
use chengis_plugin_sdk::testing::{FakeHost, sample_event, sample_job};
use chengis_plugin_sdk::types::Status;

use super::*;
use crate::message::tests_support::sample_facts;
use crate::settings::{Login, StartTls};
use crate::smtp::{Reply, Stream, dot_stuff};

/// A stream that hands out one scripted server chunk per read and records what is written.
struct Scripted {
    chunks: VecDeque<Vec<u8>>,
    written: Rc<RefCell<Vec<u8>>>,
}

impl Read for Scripted {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let Some(chunk) = self.chunks.front_mut() else { return Ok(0) };
        let n = chunk.len().min(buffer.len());
        buffer[..n].copy_from_slice(&chunk[..n]);
        chunk.drain(..n);
        if chunk.is_empty() {
            self.chunks.pop_front();
        }
        Ok(n)
    }
}

impl Write for Scripted {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.written.borrow_mut().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A pretend TLS upgrade: marks every write after it with `TLS>` and records the host name.
struct FakeTls {
    available: bool,
    hosts: RefCell<Vec<String>>,
}

struct Marked<'a>(Box<dyn Stream + 'a>);

impl Read for Marked<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buffer)
    }
}

impl Write for Marked<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(b"TLS>")?;
        self.0.write_all(bytes)?;
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Upgrade for FakeTls {
    fn available(&self) -> bool {
        self.available
    }
    fn upgrade<'a>(&self, stream: Box<dyn Stream + 'a>, host: &str) -> Result<Box<dyn Stream + 'a>, String> {
        self.hosts.borrow_mut().push(host.to_string());
        Ok(Box::new(Marked(stream)))
    }
}

fn tls() -> FakeTls {
    FakeTls { available: true, hosts: RefCell::default() }
}

fn message() -> Message {
    Message {
        from: "ci@example.com".into(),
        to: vec!["a@example.com".into(), "b@example.com".into()],
        text: "Subject: x\r\n\r\nline\r\n.starts with a dot\r\n".into(),
    }
}

/// Runs a session against `replies` (one chunk each); returns the result, the client's
/// transcript and the host.
fn run(
    replies: &[&str],
    starttls: StartTls,
    login: Option<&Login>,
    tls: &FakeTls,
) -> (Result<Reply, String>, String, FakeHost) {
    let written = Rc::new(RefCell::new(Vec::new()));
    let stream = Scripted { chunks: replies.iter().map(|r| r.as_bytes().to_vec()).collect(), written: written.clone() };
    let options =
        Options { server: "mail.example:587".into(), host: "mail.example", helo: "ci.local", starttls, login };
    let host = FakeHost::new();
    let result = smtp::deliver(Box::new(stream), &options, tls, &host, &message());
    let transcript = String::from_utf8(written.borrow().clone()).unwrap();
    (result, transcript, host)
}

const GREETING: &str = "220 mail.example ESMTP ready\r\n";
const EHLO_TLS: &str = "250-mail.example hello\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 STARTTLS\r\n";
const EHLO_AUTH: &str = "250-mail.example hello again\r\n250-AUTH LOGIN PLAIN\r\n250 8BITMIME\r\n";
const EHLO_PLAIN: &str = "250-mail.example\r\n250 SIZE 1000\r\n";

fn login() -> Login {
    Login { username: "ci".into(), password: "hunter2".into() }
}

#[test]
fn full_session_with_starttls_and_auth_plain() {
    let tls = tls();
    let login = login();
    let replies = [
        GREETING,
        EHLO_TLS,
        "220 2.0.0 go ahead\r\n",
        EHLO_AUTH,
        "235 2.7.0 Authentication successful\r\n",
        "250 2.1.0 Ok\r\n",
        "250 2.1.5 Ok\r\n",
        "251 2.1.5 will forward\r\n",
        "354 End data with <CR><LF>.<CR><LF>\r\n",
        "250 2.0.0 Ok: queued as 1234\r\n",
        "221 2.0.0 Bye\r\n",
    ];
    let (result, transcript, host) = run(&replies, StartTls::Required, Some(&login), &tls);
    let reply = result.unwrap();
    assert_eq!(reply.to_string(), "250 2.0.0 Ok: queued as 1234");
    let token = base64::engine::general_purpose::STANDARD.encode("\0ci\0hunter2");
    assert_eq!(
        transcript,
        format!(
            "EHLO ci.local\r\nSTARTTLS\r\n\
             TLS>EHLO ci.local\r\n\
             TLS>AUTH PLAIN {token}\r\n\
             TLS>MAIL FROM:<ci@example.com>\r\n\
             TLS>RCPT TO:<a@example.com>\r\n\
             TLS>RCPT TO:<b@example.com>\r\n\
             TLS>DATA\r\n\
             TLS>Subject: x\r\n\r\nline\r\n..starts with a dot\r\n.\r\n\
             TLS>QUIT\r\n"
        )
    );
    assert_eq!(*tls.hosts.borrow(), ["mail.example"]);
    assert!(host.logs().iter().any(|(level, line)| *level == Level::Debug && line.contains("TLS started")));
    assert!(!host.log_text().contains("hunter2"));
}

#[test]
fn auth_login_when_plain_is_not_offered() {
    let login = login();
    let replies = [
        GREETING,
        "250-mail.example\r\n250 AUTH=LOGIN\r\n",
        "334 VXNlcm5hbWU6\r\n",
        "334 UGFzc3dvcmQ6\r\n",
        "235 ok\r\n",
        "250 ok\r\n",
        "250 ok\r\n",
        "250 ok\r\n",
        "354 go\r\n",
        "250 queued\r\n",
        "221 bye\r\n",
    ];
    let (result, transcript, _) = run(&replies, StartTls::Never, Some(&login), &tls());
    result.unwrap();
    assert!(
        transcript.starts_with("EHLO ci.local\r\nAUTH LOGIN\r\nY2k=\r\naHVudGVyMg==\r\nMAIL FROM:<ci@example.com>\r\n")
    );
}

#[test]
fn failed_login_shows_the_reply_but_never_the_password() {
    let login = login();
    let replies =
        [GREETING, EHLO_TLS, "220 go\r\n", EHLO_AUTH, "535 5.7.8 Error: authentication failed: bad\r\n", "221 bye\r\n"];
    let (result, transcript, host) = run(&replies, StartTls::Required, Some(&login), &tls());
    let error = result.unwrap_err();
    assert_eq!(
        error,
        "SMTP server mail.example:587 refused AUTH PLAIN (as \"ci\"): 535 5.7.8 Error: authentication failed: bad"
    );
    let token = base64::engine::general_purpose::STANDARD.encode("\0ci\0hunter2");
    assert!(!error.contains("hunter2") && !error.contains(&token));
    assert!(!host.log_text().contains("hunter2"));
    assert!(transcript.ends_with("TLS>QUIT\r\n"), "{transcript}");
}

#[test]
fn rejected_recipients_fail_with_the_reply_and_send_nothing() {
    let replies = [
        GREETING,
        EHLO_PLAIN,
        "250 ok\r\n",
        "550 5.1.1 <a@example.com>: Recipient address rejected: User unknown\r\n",
        "250 ok\r\n",
        "250 reset\r\n",
        "221 bye\r\n",
    ];
    let (result, transcript, _) = run(&replies, StartTls::Never, None, &tls());
    assert_eq!(
        result.unwrap_err(),
        "SMTP server mail.example:587 rejected 1 of 2 recipients, nothing was sent: \
         <a@example.com>: 550 5.1.1 <a@example.com>: Recipient address rejected: User unknown"
    );
    assert!(!transcript.contains("DATA"));
    assert!(transcript.ends_with("RCPT TO:<b@example.com>\r\nRSET\r\nQUIT\r\n"), "{transcript}");
}

#[test]
fn refused_message_and_sender() {
    let replies = [GREETING, EHLO_PLAIN, "553 5.7.1 Sender address rejected\r\n", "221 bye\r\n"];
    let (result, _, _) = run(&replies, StartTls::Never, None, &tls());
    assert_eq!(
        result.unwrap_err(),
        "SMTP server mail.example:587 refused MAIL FROM:<ci@example.com>: 553 5.7.1 Sender address rejected"
    );
    let replies =
        [GREETING, EHLO_PLAIN, "250 ok\r\n", "250 ok\r\n", "250 ok\r\n", "354 go\r\n", "552 5.3.4 Message too big\r\n"];
    let (result, _, _) = run(&replies, StartTls::Never, None, &tls());
    assert_eq!(
        result.unwrap_err(),
        "SMTP server mail.example:587 refused the message (end of DATA): 552 5.3.4 Message too big"
    );
}

#[test]
fn starttls_modes() {
    // required, not offered: fail before sending anything.
    let (result, transcript, _) = run(&[GREETING, EHLO_PLAIN, "221 bye\r\n"], StartTls::Required, None, &tls());
    assert!(result.unwrap_err().contains("does not offer STARTTLS, and `starttls` is `required`"));
    assert_eq!(transcript, "EHLO ci.local\r\nQUIT\r\n");

    // if-available, not offered: a warning, then clear text.
    let replies =
        [GREETING, EHLO_PLAIN, "250 ok\r\n", "250 ok\r\n", "250 ok\r\n", "354 go\r\n", "250 ok\r\n", "221 bye\r\n"];
    let (result, transcript, host) = run(&replies, StartTls::IfAvailable, None, &tls());
    result.unwrap();
    assert!(!transcript.contains("STARTTLS") && !transcript.contains("TLS>"));
    assert!(host.logs().contains(&(
        Level::Warn,
        "SMTP server mail.example:587 does not offer STARTTLS: sending in clear text".to_string()
    )));

    // if-available, offered, but no TLS in this build: a warning, then clear text.
    let no_tls = FakeTls { available: false, hosts: RefCell::default() };
    let replies =
        [GREETING, EHLO_TLS, "250 ok\r\n", "250 ok\r\n", "250 ok\r\n", "354 go\r\n", "250 ok\r\n", "221 bye\r\n"];
    let (result, transcript, host) = run(&replies, StartTls::IfAvailable, None, &no_tls);
    result.unwrap();
    assert!(!transcript.contains("STARTTLS"));
    assert!(host.log_text().contains("offers STARTTLS, but this build has no TLS"));

    // never: no STARTTLS even when offered.
    let (result, transcript, _) = run(&replies, StartTls::Never, None, &tls());
    result.unwrap();
    assert!(!transcript.contains("STARTTLS"));
}

#[test]
fn the_password_is_not_sent_in_clear_text_unless_starttls_is_never() {
    let login = login();
    let (result, transcript, _) =
        run(&[GREETING, EHLO_AUTH, "221 bye\r\n"], StartTls::IfAvailable, Some(&login), &tls());
    assert_eq!(
        result.unwrap_err(),
        "refusing to send the SMTP password to mail.example:587 in clear text (no TLS); set `starttls: never` to allow it"
    );
    assert!(!transcript.contains("AUTH"));
    // No AUTH offered at all.
    let (result, _, _) = run(&[GREETING, EHLO_PLAIN, "221 bye\r\n"], StartTls::Never, Some(&login), &tls());
    assert!(result.unwrap_err().contains("offers no login this plugin speaks"));
}

#[test]
fn data_sent_before_the_tls_handshake_is_refused() {
    let replies = [GREETING, EHLO_TLS, "220 go ahead\r\n250 injected\r\n", "221 bye\r\n"];
    let (result, _, _) = run(&replies, StartTls::Required, None, &tls());
    assert_eq!(result.unwrap_err(), "SMTP server mail.example:587 sent data after its STARTTLS reply, before TLS");
}

#[test]
fn greeting_helo_fallback_and_malformed_replies() {
    let (result, _, _) = run(&["554 5.3.2 go away\r\n"], StartTls::Never, None, &tls());
    assert_eq!(result.unwrap_err(), "SMTP server mail.example:587 greeted with 554 5.3.2 go away instead of 220");

    let replies = [
        GREETING,
        "502 5.5.2 what?\r\n",
        "250 ok\r\n",
        "250 ok\r\n",
        "250 ok\r\n",
        "250 ok\r\n",
        "354 go\r\n",
        "250 ok\r\n",
    ];
    let (result, transcript, _) = run(&replies, StartTls::Never, None, &tls());
    result.unwrap();
    assert!(transcript.starts_with("EHLO ci.local\r\nHELO ci.local\r\nMAIL FROM"), "{transcript}");

    let (result, _, _) = run(&[GREETING, "hello there\r\n"], StartTls::Never, None, &tls());
    assert_eq!(
        result.unwrap_err(),
        "SMTP server mail.example:587 sent a malformed reply to EHLO ci.local: \"hello there\""
    );

    let (result, _, _) = run(&[GREETING, "250-mail.example\r\n"], StartTls::Never, None, &tls());
    assert_eq!(
        result.unwrap_err(),
        "SMTP server mail.example:587 closed the connection instead of answering EHLO ci.local"
    );

    // Multi-line replies split over reads, bare LF endings, and a code-only line.
    let replies = [
        GREETING,
        "250-mail.ex",
        "ample\n250-STARTTLS\n250\n",
        "220\r\n",
        EHLO_PLAIN,
        "250 ok\r\n",
        "250 ok\r\n",
        "250 ok\r\n",
        "354 go\r\n",
        "250 ok\r\n",
    ];
    let (result, transcript, _) = run(&replies, StartTls::Required, None, &tls());
    result.unwrap();
    assert!(transcript.contains("STARTTLS\r\nTLS>EHLO"));
}

#[test]
fn dot_stuffing() {
    assert_eq!(dot_stuff("a\r\n.b\r\n..c\r\n.\r\nd"), b"a\r\n..b\r\n...c\r\n..\r\nd\r\n.\r\n");
    assert_eq!(dot_stuff(".\r\n"), b"..\r\n.\r\n");
    assert_eq!(dot_stuff(""), b"\r\n.\r\n");
}

// --- notify() through the FakeHost against a loopback SMTP server ---------------------------

/// What the loopback server saw: the command lines and the message of each DATA.
struct Seen {
    commands: Vec<String>,
    messages: Vec<String>,
}

/// A minimal SMTP server on 127.0.0.1 for one connection: no STARTTLS, AUTH PLAIN, and a 550
/// for recipients whose address starts with `bad`.
fn loopback_server() -> (u16, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        let mut seen = Seen { commands: Vec::new(), messages: Vec::new() };
        writer.write_all(GREETING.as_bytes()).unwrap();
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 0 {
            let command = line.trim_end().to_string();
            line.clear();
            seen.commands.push(command.clone());
            let reply = match command.split(' ').next().unwrap_or_default() {
                "EHLO" => "250-localhost\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n",
                "AUTH" => "235 2.7.0 ok\r\n",
                "RCPT" if command.starts_with("RCPT TO:<bad") => "550 5.1.1 no such user here\r\n",
                "DATA" => {
                    writer.write_all(b"354 go on\r\n").unwrap();
                    let mut data = String::new();
                    while !data.ends_with("\r\n.\r\n") {
                        if reader.read_line(&mut data).unwrap() == 0 {
                            break;
                        }
                    }
                    seen.messages.push(data);
                    "250 2.0.0 queued as ABC\r\n"
                }
                "QUIT" => {
                    writer.write_all(b"221 bye\r\n").unwrap();
                    break;
                }
                _ => "250 ok\r\n",
            };
            writer.write_all(reply.as_bytes()).unwrap();
        }
        let _ = tx.send(seen);
    });
    (port, rx)
}

/// A finished build of the SDK's sample, with a commit message that needs escaping.
fn event(status: Status, previous: Option<Status>) -> Event {
    let mut event = Event { previous_status: previous, ..sample_event(EventKind::BuildFinished, status) };
    event.build.commit.message = "Fix <the> thing\n\nmore".into();
    event
}

fn host(port: u16) -> FakeHost {
    FakeHost::new()
        .with_config("smtp-host", "127.0.0.1")
        .with_config("smtp-port", &port.to_string())
        .with_config("starttls", "never")
        .with_config("from", "Chengis <ci@example.com>")
        .with_config("to", "dev@example.com, ops@example.com")
}

#[test]
fn notify_delivers_over_tcp() {
    let (port, seen) = loopback_server();
    let host = host(port)
        .with_config("username", "ci")
        .with_secret("SMTP_PASSWORD", "s3cret")
        .with_config("timeout-seconds", "5");
    Email::notify(&host, event(Status::Failure, Some(Status::Success))).unwrap();
    let seen = seen.recv().unwrap();
    let token = base64::engine::general_purpose::STANDARD.encode("\0ci\0s3cret");
    assert_eq!(
        seen.commands,
        [
            "EHLO localhost".to_string(),
            format!("AUTH PLAIN {token}"),
            "MAIL FROM:<ci@example.com>".into(),
            "RCPT TO:<dev@example.com>".into(),
            "RCPT TO:<ops@example.com>".into(),
            "DATA".into(),
            "QUIT".into(),
        ]
    );
    let data = &seen.messages[0];
    assert!(data.contains("\r\nSubject: [chengis] web #42 failure (main)\r\n"), "{data}");
    assert!(data.contains("multipart/alternative"));
    assert!(data.contains("<td>0123456 Fix &lt;the&gt; thing</td>"));
    assert!(data.contains("Commit:   0123456 Fix <the> thing\r\n"));
    assert!(data.contains("Duration: 1 min 1 s\r\n"));
    assert!(data.contains("Link:     https://ci.example/builds/9\r\n"));
    assert_eq!(
        host.log_text(),
        format!(
            "e-mailed dev@example.com, ops@example.com about web #42 (failure) through 127.0.0.1:{port}: 250 2.0.0 queued as ABC\n"
        )
    );
}

#[test]
fn notify_fails_with_the_recipient_rejection() {
    let (port, seen) = loopback_server();
    let host = FakeHost::new()
        .with_config("smtp-host", "127.0.0.1")
        .with_config("smtp-port", &port.to_string())
        .with_config("starttls", "never")
        .with_config("from", "ci@example.com")
        .with_config("to", "bad@example.com");
    let failure = Email::notify(&host, event(Status::Success, Some(Status::Failure))).unwrap_err();
    assert_eq!(
        failure.message,
        format!(
            "SMTP server 127.0.0.1:{port} rejected 1 of 1 recipients, nothing was sent: <bad@example.com>: 550 5.1.1 no such user here"
        )
    );
    assert!(seen.recv().unwrap().messages.is_empty());
}

#[test]
fn notify_skips_unwanted_events_without_connecting() {
    // Port 1 on loopback: a connection attempt would fail the call.
    let host = host(1);
    Email::notify(&host, event(Status::Success, Some(Status::Success))).unwrap();
    assert!(host.logs().iter().all(|(level, _)| *level == Level::Debug));
    assert!(host.log_text().contains("no e-mail for web #42: status success is not in `on`"));
    let job_event = Event {
        kind: EventKind::JobFinished,
        job: Some(sample_job("test", Status::Failure)),
        ..event(Status::Running, None)
    };
    Email::notify(&host, job_event).unwrap();
}

#[test]
fn notify_reports_connection_and_config_errors() {
    let failure = Email::notify(&host(1), event(Status::Failure, None)).unwrap_err();
    assert!(
        failure.message.starts_with("cannot connect to SMTP server 127.0.0.1:1 (127.0.0.1:1: "),
        "{}",
        failure.message
    );

    let host = host(1).with_config("username", "ci");
    let failure = Email::notify(&host, event(Status::Failure, None)).unwrap_err();
    assert!(
        failure.message.starts_with("invalid configuration: config key \"password-secret\""),
        "{}",
        failure.message
    );
    assert_eq!(failure.diagnostics[0].field.as_deref(), Some("with.password-secret"));

    let host = host_with_ca("not a certificate");
    let failure = Email::notify(&host, event(Status::Failure, None)).unwrap_err();
    assert_eq!(
        failure.message,
        "invalid configuration: config key \"tls-ca-cert\": no `-----BEGIN CERTIFICATE-----` block found"
    );
    let host = host_with_ca("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    let failure = Email::notify(&host, event(Status::Failure, None)).unwrap_err();
    assert!(failure.message.contains("config key \"tls-ca-cert\": not a usable CA certificate"), "{}", failure.message);
}

fn host_with_ca(pem: &str) -> FakeHost {
    host(1).with_config("tls-ca-cert", pem)
}

#[test]
fn manifest_requests_tcp_and_the_password_secret() {
    use chengis_plugin_sdk::Capability;
    let manifest = Email::manifest();
    assert_eq!(manifest.name, "email");
    let capabilities: Vec<String> = manifest.capabilities.iter().map(|c| format!("{c:?}")).collect();
    assert_eq!(
        capabilities,
        [
            format!("{:?}", Capability::OutboundTcp("*:*".into())),
            format!("{:?}", Capability::Secret("SMTP_PASSWORD".into()))
        ]
    );
    let keys: Vec<&str> = manifest.config.iter().map(|f| f.name.as_str()).collect();
    for key in
        ["smtp-host", "smtp-port", "starttls", "from", "to", "subject", "username", "password-secret", "on", "events"]
    {
        assert!(keys.contains(&key), "{key} missing from the manifest");
    }
    let required: Vec<&str> = manifest.config.iter().filter(|f| f.required).map(|f| f.name.as_str()).collect();
    assert_eq!(required, ["smtp-host", "from", "to"]);
}

#[test]
fn send_builds_the_message_from_facts() {
    let (port, seen) = loopback_server();
    let host = host(port);
    let settings = Settings::read(&host.config(), |_| None).unwrap();
    send(&host, &settings, &sample_facts(), &tls()).unwrap();
    let data = seen.recv().unwrap().messages.remove(0);
    assert!(data.contains("Subject: [chengis] web #42 failure (main)\r\n"));
    assert!(data.ends_with("--\r\n.\r\n"));
}
