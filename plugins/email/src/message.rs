//! Building the e-mail: the subject from its template, the facts of the build, and the
//! RFC 5322 / MIME message (headers with RFC 2047 encoded words where needed, a
//! `multipart/alternative` body with a text/plain and an HTML part), with CRLF line endings.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chengis_plugin_sdk::Status;
use chengis_plugin_sdk::notifier::Event;

use crate::settings::{Outcome, Settings};

/// The placeholders a subject template may use.
pub const PLACEHOLDERS: &[&str] =
    &["pipeline", "number", "status", "result", "branch", "sha", "short-sha", "job", "trigger", "author"];

/// The subject of build events when `subject` is not set.
pub const DEFAULT_BUILD_SUBJECT: &str = "[chengis] {pipeline} #{number} {result} ({branch})";
/// The subject of job events when `subject` is not set.
pub const DEFAULT_JOB_SUBJECT: &str = "[chengis] {pipeline} #{number} job {job} {result} ({branch})";

/// Checks that a subject template only uses known placeholders and closes its braces.
pub fn check_template(template: &str) -> Result<(), String> {
    render(template, |_| Some(String::new())).map(|_| ())
}

/// Fills `{name}` placeholders with `value(name)`; `{{` and `}}` stand for braces.
fn render(template: &str, value: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if tail.starts_with('}') {
            return Err(format!("unmatched `}}` in {template:?} (write `}}}}` for a brace)"));
        } else {
            let end = tail.find('}').ok_or_else(|| format!("unclosed `{{` in {template:?}"))?;
            let name = &tail[1..end];
            if !PLACEHOLDERS.contains(&name) {
                return Err(format!("unknown placeholder {{{name}}}; known: {{{}}}", PLACEHOLDERS.join("}, {")));
            }
            out.push_str(&value(name).unwrap_or_default());
            rest = &tail[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The facts of one event that the mail shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The pipeline.
    pub pipeline: String,
    /// The build number.
    pub number: u64,
    /// The job's name, for job events.
    pub job: Option<String>,
    /// The status of the build or job.
    pub status: Status,
    /// `fixed` for a success after a failure, else the status.
    pub result: String,
    /// The previous status, for `fixed`.
    pub previous: Option<Status>,
    /// The branch, else the tag, else `detached`.
    pub branch: String,
    /// The full commit id.
    pub sha: String,
    /// The commit message's first line.
    pub commit_subject: String,
    /// The commit's author.
    pub author: String,
    /// What started the build.
    pub trigger: String,
    /// How long the build or job took.
    pub duration: Option<String>,
    /// A link to the build, if the server knows its URL.
    pub link: Option<String>,
}

impl Facts {
    /// The facts of `event`, whose mailed status is `outcome`.
    pub fn of(event: &Event, outcome: Outcome) -> Facts {
        let build = &event.build;
        let commit = &build.commit;
        let duration_ms = event.job.as_ref().map_or(build.duration_ms, |job| job.duration_ms);
        Facts {
            pipeline: build.pipeline.clone(),
            number: build.number,
            job: event.job.as_ref().map(|job| job.name.clone()),
            status: outcome.status,
            result: if outcome.fixed { "fixed".into() } else { outcome.status.as_str().into() },
            previous: event.previous_status,
            branch: commit.branch.clone().or_else(|| commit.tag.clone()).unwrap_or_else(|| "detached".into()),
            sha: commit.sha.clone(),
            commit_subject: commit.message.lines().next().unwrap_or_default().to_string(),
            author: commit.author.clone(),
            trigger: build.trigger.clone(),
            duration: duration_ms.map(human_duration),
            link: build.url.clone(),
        }
    }

    fn short_sha(&self) -> &str {
        self.sha.get(..7).unwrap_or(&self.sha)
    }

    fn placeholder(&self, name: &str) -> Option<String> {
        Some(match name {
            "pipeline" => self.pipeline.clone(),
            "number" => self.number.to_string(),
            "status" => self.status.as_str().into(),
            "result" => self.result.clone(),
            "branch" => self.branch.clone(),
            "sha" => self.sha.clone(),
            "short-sha" => self.short_sha().into(),
            "job" => self.job.clone().unwrap_or_default(),
            "trigger" => self.trigger.clone(),
            "author" => self.author.clone(),
            _ => return None,
        })
    }

    /// The subject from `template` (or the default for the event kind), on one line.
    pub fn subject(&self, template: Option<&str>) -> Result<String, String> {
        let default = if self.job.is_some() { DEFAULT_JOB_SUBJECT } else { DEFAULT_BUILD_SUBJECT };
        let text = render(template.unwrap_or(default), |name| self.placeholder(name))?;
        Ok(text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>().trim().to_string())
    }

    /// The headline of the body, e.g. `web #42 failed` or `web #43: job test fixed`.
    fn headline(&self) -> String {
        let what = match &self.job {
            Some(job) => format!("{} #{}: job {job}", self.pipeline, self.number),
            None => format!("{} #{}", self.pipeline, self.number),
        };
        let verb = match (self.result.as_str(), self.status) {
            ("fixed", _) => "is fixed".to_string(),
            (_, Status::Success) => "succeeded".into(),
            (_, Status::Failure) => "failed".into(),
            (_, Status::Error) => "could not run (error)".into(),
            (_, Status::Cancelled) => "was cancelled".into(),
            (_, other) => format!("is {}", other.as_str()),
        };
        format!("{what} {verb}")
    }

    /// The rows of the body's table: label and value.
    fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![("Pipeline", self.pipeline.clone()), ("Build", format!("#{}", self.number))];
        if let Some(job) = &self.job {
            rows.push(("Job", job.clone()));
        }
        let status = match (self.result.as_str(), self.previous) {
            ("fixed", Some(previous)) => {
                format!("{} (fixed; the previous one was {})", self.status.as_str(), previous.as_str())
            }
            _ => self.status.as_str().to_string(),
        };
        rows.push(("Status", status));
        rows.push(("Branch", self.branch.clone()));
        rows.push(("Commit", format!("{} {}", self.short_sha(), self.commit_subject).trim_end().to_string()));
        rows.push(("Author", self.author.clone()));
        rows.push(("Trigger", self.trigger.clone()));
        if let Some(duration) = &self.duration {
            rows.push(("Duration", duration.clone()));
        }
        if let Some(link) = &self.link {
            rows.push(("Link", link.clone()));
        }
        rows
    }

    /// The text/plain body (LF line endings; [`Message::render`] makes them CRLF).
    pub fn text_body(&self) -> String {
        let mut text = format!("{}\n\n", self.headline());
        for (label, value) in self.rows() {
            let _ = writeln!(text, "{:<10}{}", format!("{label}:"), one_line(&value));
        }
        text.push_str("\n-- \nSent by Chengis (email notifier)\n");
        text
    }

    /// The text/html body, every value escaped.
    pub fn html_body(&self) -> String {
        let colour = match (self.result.as_str(), self.status) {
            ("fixed", _) | (_, Status::Success) => "#1a7f37",
            (_, Status::Failure | Status::Error) => "#cf222e",
            _ => "#57606a",
        };
        let mut html = String::from("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body>\n");
        let _ = writeln!(html, "<h2 style=\"color:{colour}\">{}</h2>", escape_html(&self.headline()));
        html.push_str("<table cellpadding=\"4\">\n");
        for (label, value) in self.rows() {
            let cell = if label == "Link" {
                format!("<a href=\"{0}\">{0}</a>", escape_html(&value))
            } else {
                escape_html(&one_line(&value))
            };
            let _ = writeln!(html, "<tr><th align=\"left\">{label}</th><td>{cell}</td></tr>");
        }
        html.push_str("</table>\n<p style=\"color:#57606a\">Sent by Chengis (email notifier)</p>\n</body></html>\n");
        html
    }
}

/// `850 ms`, `1.5 s`, `2 min 5 s`, `1 h 2 min`.
fn human_duration(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0 => format!("{ms} ms"),
        1..60 => format!("{:.1} s", ms as f64 / 1000.0),
        60..3600 => format!("{} min {} s", seconds / 60, seconds % 60),
        _ => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
    }
}

/// Control characters (newlines too) replaced by spaces.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// `&`, `<`, `>`, `"` and `'` as HTML entities.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A header value as RFC 2047 encoded words (`=?UTF-8?B?...?=`) when it is not plain ASCII,
/// folded so that each encoded word stays within 75 characters.
pub fn encode_header(value: &str) -> String {
    if value.chars().all(|c| c.is_ascii() && !c.is_ascii_control()) {
        return value.to_string();
    }
    // 45 bytes encode to 60 base64 characters; with `=?UTF-8?B?` and `?=` that is 72.
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in value.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words.iter().map(|w| format!("=?UTF-8?B?{}?=", BASE64.encode(w))).collect::<Vec<_>>().join("\r\n ")
}

/// A mailbox for a header: `Name <a@b>` with the name encoded when it is not ASCII.
fn encode_mailbox(mailbox: &str) -> String {
    match mailbox.rfind('<') {
        Some(open) if mailbox.ends_with('>') => {
            let name = mailbox[..open].trim();
            let address = &mailbox[open..];
            if name.is_empty() {
                address.to_string()
            } else if name.is_ascii() {
                format!("{name} {address}")
            } else {
                format!("{} {address}", encode_header(name))
            }
        }
        _ => mailbox.to_string(),
    }
}

/// One MIME part's headers and body: 7bit when it is ASCII with short lines, else base64.
fn mime_part(content_type: &str, body: &str) -> String {
    let seven_bit = body.is_ascii() && body.lines().all(|line| line.len() <= 900);
    let mut part = format!("Content-Type: {content_type}; charset=utf-8\n");
    if seven_bit {
        part.push_str("Content-Transfer-Encoding: 7bit\n\n");
        part.push_str(body);
    } else {
        part.push_str("Content-Transfer-Encoding: base64\n\n");
        let encoded = BASE64.encode(body.replace('\n', "\r\n"));
        for line in encoded.as_bytes().chunks(76) {
            part.push_str(&String::from_utf8_lossy(line));
            part.push('\n');
        }
    }
    part
}

/// A complete message, ready for `DATA`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The envelope sender.
    pub from: String,
    /// The envelope recipients.
    pub to: Vec<String>,
    /// The message text: headers and body, CRLF line endings, not yet dot-stuffed.
    pub text: String,
}

/// What makes a message unique and dated: `Date:`, the `Message-ID:` and the MIME boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The `Date:` value (RFC 5322 date-time).
    pub date: String,
    /// A unique token for the `Message-ID:` and the boundary.
    pub unique: String,
}

impl Stamp {
    /// The current wall-clock time and a random token.
    pub fn now() -> Stamp {
        use std::hash::{BuildHasher, Hasher};
        let now = std::time::SystemTime::now();
        // httpdate writes `Tue, 15 Nov 1994 08:12:31 GMT`; RFC 5322 prefers a numeric zone.
        let date = httpdate::fmt_http_date(now).replace(" GMT", " +0000");
        let nanos = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        Stamp { date, unique: format!("{nanos:x}.{:016x}", hasher.finish()) }
    }
}

impl Message {
    /// The message for `facts`, addressed as `settings` say, dated and identified by `stamp`.
    pub fn build(settings: &Settings, facts: &Facts, stamp: &Stamp) -> Result<Message, String> {
        let subject = facts.subject(settings.subject.as_deref())?;
        let domain = settings.from_address.rsplit_once('@').map_or("localhost", |(_, d)| d);
        let boundary = format!("=_chengis_{}", stamp.unique);
        let mut text = String::new();
        let _ = writeln!(text, "From: {}", encode_mailbox(&settings.from));
        let _ = writeln!(text, "To: {}", settings.to.join(",\n "));
        let _ = writeln!(text, "Subject: {}", encode_header(&subject));
        let _ = writeln!(text, "Date: {}", stamp.date);
        let _ = writeln!(text, "Message-ID: <chengis.{}@{domain}>", stamp.unique);
        text.push_str("MIME-Version: 1.0\n");
        text.push_str("Auto-Submitted: auto-generated\n");
        let _ = writeln!(text, "Content-Type: multipart/alternative; boundary=\"{boundary}\"");
        text.push_str("\nThis is a MIME message: a plain-text and an HTML version.\n");
        for (content_type, body) in [("text/plain", facts.text_body()), ("text/html", facts.html_body())] {
            let _ = write!(text, "\n--{boundary}\n{}", mime_part(content_type, &body));
        }
        let _ = writeln!(text, "\n--{boundary}--");
        let text = text.replace("\r\n", "\n").replace('\n', "\r\n");
        Ok(Message { from: settings.from_address.clone(), to: settings.to.clone(), text })
    }
}

/// Sample data shared by the crate's tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A failed build with HTML-unsafe and non-ASCII text.
    pub fn sample_facts() -> Facts {
        Facts {
            pipeline: "web".into(),
            number: 42,
            job: None,
            status: Status::Failure,
            result: "failure".into(),
            previous: Some(Status::Success),
            branch: "main".into(),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            commit_subject: "Fix <script>alert(\"x\")</script> & more".into(),
            author: "Zoë <zoe@example.com>".into(),
            trigger: "push".into(),
            duration: Some("1 min 1 s".into()),
            link: Some("https://ci.example/web/42?a=1&b=2".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::notifier::EventKind;
    use chengis_plugin_sdk::types::{Build, Commit, Job};

    fn facts() -> Facts {
        tests_support::sample_facts()
    }

    fn settings(extra: &[(&str, &str)]) -> Settings {
        let mut pairs = vec![
            ("smtp-host", "smtp.example.com"),
            ("from", "Chengis CI <ci@example.com>"),
            ("to", "a@example.com,b@example.com"),
        ];
        pairs.extend_from_slice(extra);
        Settings::read(&chengis_plugin_sdk::testing::config(&pairs), |_| None).unwrap()
    }

    fn stamp() -> Stamp {
        Stamp { date: "Tue, 15 Nov 1994 08:12:31 +0000".into(), unique: "abc.123".into() }
    }

    #[test]
    fn templates() {
        let facts = facts();
        assert_eq!(facts.subject(None).unwrap(), "[chengis] web #42 failure (main)");
        let job = Facts { job: Some("test".into()), result: "fixed".into(), ..facts.clone() };
        assert_eq!(job.subject(None).unwrap(), "[chengis] web #42 job test fixed (main)");
        assert_eq!(
            facts.subject(Some("{{{pipeline}}} {short-sha} {status}\nBcc: x")).unwrap(),
            "{web} 0123456 failure Bcc: x"
        );
        assert!(check_template("{nope}").unwrap_err().contains("unknown placeholder {nope}"));
        assert!(check_template("{pipeline").unwrap_err().contains("unclosed"));
        assert!(check_template("a } b").unwrap_err().contains("unmatched"));
        check_template("[ci] {pipeline} #{number}").unwrap();
    }

    #[test]
    fn facts_from_an_event() {
        let event = Event {
            kind: EventKind::JobFinished,
            build: Build {
                id: 1,
                number: 7,
                pipeline: "api".into(),
                status: Status::Running,
                commit: Commit {
                    sha: "abc".into(),
                    repository: "r".into(),
                    branch: None,
                    tag: Some("v1.0".into()),
                    message: "Subject line\n\nBody".into(),
                    author: "A <a@b.c>".into(),
                },
                trigger: "tag".into(),
                url: None,
                duration_ms: Some(5),
            },
            job: Some(Job {
                id: 2,
                name: "lint".into(),
                status: Status::Success,
                image: None,
                duration_ms: Some(125_000),
            }),
            previous_status: Some(Status::Error),
        };
        let facts = Facts::of(&event, Outcome { status: Status::Success, fixed: true });
        assert_eq!(facts.branch, "v1.0");
        assert_eq!(facts.commit_subject, "Subject line");
        assert_eq!(facts.duration.as_deref(), Some("2 min 5 s"));
        assert_eq!(facts.result, "fixed");
        assert_eq!(facts.short_sha(), "abc");
        let text = facts.text_body();
        assert!(text.starts_with("api #7: job lint is fixed\n\n"), "{text}");
        assert!(text.contains("Status:   success (fixed; the previous one was error)\n"), "{text}");
        assert!(!text.contains("Link:"));
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(850), "850 ms");
        assert_eq!(human_duration(1500), "1.5 s");
        assert_eq!(human_duration(61_500), "1 min 1 s");
        assert_eq!(human_duration(3_725_000), "1 h 2 min");
    }

    #[test]
    fn html_escapes_every_value() {
        let html = facts().html_body();
        assert!(
            html.contains("<td>0123456 Fix &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more</td>"),
            "{html}"
        );
        assert!(
            html.contains(
                "<a href=\"https://ci.example/web/42?a=1&amp;b=2\">https://ci.example/web/42?a=1&amp;b=2</a>"
            )
        );
        assert!(!html.contains("<script>"));
        assert_eq!(escape_html("'\"<&>"), "&#39;&quot;&lt;&amp;&gt;");
    }

    #[test]
    fn text_body_lists_the_facts() {
        let text = facts().text_body();
        assert_eq!(
            text,
            "web #42 failed\n\n\
             Pipeline: web\n\
             Build:    #42\n\
             Status:   failure\n\
             Branch:   main\n\
             Commit:   0123456 Fix <script>alert(\"x\")</script> & more\n\
             Author:   Zoë <zoe@example.com>\n\
             Trigger:  push\n\
             Duration: 1 min 1 s\n\
             Link:     https://ci.example/web/42?a=1&b=2\n\
             \n-- \nSent by Chengis (email notifier)\n"
        );
    }

    #[test]
    fn encoded_words() {
        assert_eq!(encode_header("plain [ascii] #1"), "plain [ascii] #1");
        assert_eq!(encode_header("Zoë"), "=?UTF-8?B?Wm/Dqw==?=");
        let long = "ü".repeat(60);
        let encoded = encode_header(&long);
        let words: Vec<&str> = encoded.split("\r\n ").collect();
        assert_eq!(words.len(), 3);
        assert!(words.iter().all(|w| w.len() <= 75 && w.starts_with("=?UTF-8?B?") && w.ends_with("?=")));
        let decoded: String =
            words.iter().map(|w| String::from_utf8(BASE64.decode(&w[10..w.len() - 2]).unwrap()).unwrap()).collect();
        assert_eq!(decoded, long);
        assert_eq!(encode_mailbox("Zoë <z@e.x>"), "=?UTF-8?B?Wm/Dqw==?= <z@e.x>");
        assert_eq!(encode_mailbox("CI <c@e.x>"), "CI <c@e.x>");
        assert_eq!(encode_mailbox("c@e.x"), "c@e.x");
    }

    #[test]
    fn message_headers_and_parts() {
        let message = Message::build(&settings(&[]), &facts(), &stamp()).unwrap();
        assert_eq!(message.from, "ci@example.com");
        assert_eq!(message.to, ["a@example.com", "b@example.com"]);
        let text = &message.text;
        assert!(!text.replace("\r\n", "").contains('\n'), "bare LF");
        assert!(!text.replace("\r\n", "").contains('\r'), "bare CR");
        let (headers, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            headers,
            "From: Chengis CI <ci@example.com>\r\n\
             To: a@example.com,\r\n b@example.com\r\n\
             Subject: [chengis] web #42 failure (main)\r\n\
             Date: Tue, 15 Nov 1994 08:12:31 +0000\r\n\
             Message-ID: <chengis.abc.123@example.com>\r\n\
             MIME-Version: 1.0\r\n\
             Auto-Submitted: auto-generated\r\n\
             Content-Type: multipart/alternative; boundary=\"=_chengis_abc.123\""
        );
        let parts: Vec<&str> = body.split("--=_chengis_abc.123").collect();
        assert_eq!(parts.len(), 4, "{body}");
        assert_eq!(parts[3], "--\r\n");
        // The author is not ASCII, so both parts are base64.
        for (part, content_type) in [(parts[1], "text/plain"), (parts[2], "text/html")] {
            let (part_headers, encoded) = part.split_once("\r\n\r\n").unwrap();
            assert_eq!(
                part_headers,
                format!("\r\nContent-Type: {content_type}; charset=utf-8\r\nContent-Transfer-Encoding: base64")
            );
            assert!(encoded.lines().all(|l| l.len() <= 76));
            let decoded = String::from_utf8(BASE64.decode(encoded.replace("\r\n", "")).unwrap()).unwrap();
            assert!(decoded.contains("Zoë"), "{decoded}");
            assert!(decoded.contains("\r\n") && !decoded.replace("\r\n", "").contains('\n'));
        }
    }

    #[test]
    fn ascii_parts_are_7bit_and_subjects_encoded() {
        let facts = Facts { author: "A <a@example.com>".into(), ..facts() };
        let settings = settings(&[("subject", "Échec {pipeline}")]);
        let message = Message::build(&settings, &facts, &stamp()).unwrap();
        assert!(message.text.contains("\r\nSubject: =?UTF-8?B?w4ljaGVjIHdlYg==?=\r\n"));
        assert!(message.text.contains(
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\nweb #42 failed\r\n"
        ));
        assert!(message.text.contains("<td>0123456 Fix &lt;script&gt;"));
    }

    #[test]
    fn stamps_are_dated_and_unique() {
        let (a, b) = (Stamp::now(), Stamp::now());
        assert_ne!(a.unique, b.unique);
        assert!(a.date.ends_with(" +0000") && a.date.len() == 31, "{}", a.date);
    }
}
