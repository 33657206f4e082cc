//! `http`: the builtin step executor that sends one HTTP request as a step (a deploy hook, a
//! health check, an API call) through the host's `wasi:http`, to granted destinations only. It
//! checks the response status against `expect-status` and sets the outputs `status` and `body`
//! (the body's output name is configurable, its text capped at 64 KiB).
//!
//! Header values never reach the log (they often carry tokens), and the URL is logged without
//! its query string.

use chengis_plugin_sdk::step_executor::Invocation;
use chengis_plugin_sdk::{ConfigError, Failure, Host, HttpRequest, Kind, Manifest, StepExecutor, export};

/// The most response-body bytes kept in the body output.
pub const MAX_BODY_OUTPUT: usize = 64 * 1024;

/// The most response-body characters quoted in a failure message.
const MAX_BODY_IN_FAILURE: usize = 512;

/// The http step executor.
pub struct Http;

/// The statuses a step accepts, as inclusive ranges (`2xx` is 200–299).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedStatus {
    ranges: Vec<(u16, u16)>,
    text: String,
}

impl ExpectedStatus {
    /// Parses `2xx`, `200,201,404`, `200-204` or a mix, separated by commas or spaces.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError { key: "expect-status".into(), message };
        let code = |part: &str| {
            part.parse::<u16>().ok().filter(|c| (100..=599).contains(c)).ok_or_else(|| {
                error(format!("{part:?} is not a status code (100 to 599), a class like 2xx or a range"))
            })
        };
        let mut ranges = Vec::new();
        for part in text.split([',', ' ', '\n']).map(str::trim).filter(|p| !p.is_empty()) {
            let lower = part.to_ascii_lowercase();
            if let Some(class) = lower.strip_suffix("xx").filter(|c| c.len() == 1) {
                let first = code(&format!("{class}00"))?;
                ranges.push((first, first + 99));
            } else if let Some((from, to)) = part.split_once('-') {
                let (from, to) = (code(from.trim())?, code(to.trim())?);
                if from > to {
                    return Err(error(format!("{part:?} is an empty range")));
                }
                ranges.push((from, to));
            } else {
                let status = code(part)?;
                ranges.push((status, status));
            }
        }
        if ranges.is_empty() {
            return Err(error("has no status".into()));
        }
        Ok(ExpectedStatus { ranges, text: text.split_whitespace().collect::<Vec<_>>().join(" ") })
    }

    /// Whether `status` is expected.
    pub fn contains(&self, status: u16) -> bool {
        self.ranges.iter().any(|(from, to)| (*from..=*to).contains(&status))
    }
}

/// Parses `headers`: one `Name: value` per line, blank lines ignored. Errors name the line but
/// never quote a value.
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut headers = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let error = |what: &str| ConfigError { key: "headers".into(), message: format!("line {}: {what}", number + 1) };
        let (name, value) = line.split_once(':').ok_or_else(|| error("expected `Name: value`"))?;
        let name = name.trim();
        if !is_token(name) {
            return Err(error(&format!("{name:?} is not a valid header name")));
        }
        let value = value.trim();
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(error(&format!("the value of {name} has a control character")));
        }
        headers.push((name.to_string(), value.to_string()));
    }
    Ok(headers)
}

/// Whether `text` is an HTTP token (a method or header name).
fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `url` without its query string and fragment, for logs and messages.
fn display_url(url: &str) -> String {
    match url.find(['?', '#']) {
        Some(i) => format!("{}?…", &url[..i]),
        None => url.to_string(),
    }
}

/// The reason phrase of common statuses, for messages.
fn reason(status: u16) -> &'static str {
    match status {
        200 => " OK",
        201 => " Created",
        202 => " Accepted",
        204 => " No Content",
        301 => " Moved Permanently",
        302 => " Found",
        304 => " Not Modified",
        400 => " Bad Request",
        401 => " Unauthorized",
        403 => " Forbidden",
        404 => " Not Found",
        405 => " Method Not Allowed",
        409 => " Conflict",
        422 => " Unprocessable Entity",
        429 => " Too Many Requests",
        500 => " Internal Server Error",
        502 => " Bad Gateway",
        503 => " Service Unavailable",
        504 => " Gateway Timeout",
        _ => "",
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl StepExecutor for Http {
    fn manifest() -> Manifest {
        Manifest::new("http", "0.1.0", "Sends an HTTP request as a step", Kind::StepExecutor)
            .outbound_http("https://*:*")
            .outbound_http("http://*:*")
            .config("url", "The absolute http:// or https:// URL", true, None)
            .config("method", "GET, POST, PUT, PATCH, DELETE, HEAD, ...", false, Some("GET"))
            .config("headers", "Request headers, one `Name: value` per line", false, None)
            .config("body", "The request body", false, None)
            .config("expect-status", "Accepted statuses: 2xx, 200,201,404 or 200-299", false, Some("2xx"))
            .config("output", "The name of the output that gets the response body", false, Some("body"))
    }

    fn run(host: &dyn Host, _invocation: Invocation) -> Result<(), Failure> {
        let config = host.config();
        let url: String = config.required("url")?;
        let url = url.trim().to_string();
        let method = config.get("method").map_or("GET", str::trim).to_ascii_uppercase();
        if !is_token(&method) {
            return Err(
                ConfigError { key: "method".into(), message: format!("{method:?} is not an HTTP method") }.into()
            );
        }
        let headers = parse_headers(config.get("headers").unwrap_or(""))?;
        let expected = ExpectedStatus::parse(config.get("expect-status").unwrap_or("2xx"))?;
        let output = config.get("output").map_or("body", str::trim).to_string();
        if !is_token(&output) || output == "status" {
            return Err(ConfigError {
                key: "output".into(),
                message: format!("{output:?} cannot name the body output (letters, digits, `-`, `_`; not `status`)"),
            }
            .into());
        }
        let request = HttpRequest {
            method: method.clone(),
            url: url.clone(),
            headers,
            body: config.get("body").unwrap_or("").as_bytes().to_vec(),
        };
        if request.parts().is_err() {
            return Err(ConfigError {
                key: "url".into(),
                message: "must be an absolute http:// or https:// URL with a host".into(),
            }
            .into());
        }
        let shown = display_url(&url);
        host.info(&format!("{method} {shown}"));
        let response = host.http(&request).map_err(|e| {
            // The SDK's message starts with the full URL; keep the query out of it.
            let prefix = format!("{method} {url}: ");
            let reason = e.0.strip_prefix(&prefix).unwrap_or(&e.0);
            Failure::new(format!("{method} {shown} failed: {reason}"))
        })?;
        let status = response.status;
        let body = response.text();
        host.info(&format!("answered {status}{} ({} bytes)", reason(status), response.body.len()));
        host.set_output("status", &status.to_string());
        let kept = cut(&body, MAX_BODY_OUTPUT);
        if kept.len() < body.len() {
            host.info(&format!(
                "the response body is {} bytes; the `{output}` output keeps the first {}",
                body.len(),
                kept.len()
            ));
        }
        host.set_output(&output, kept);
        if !expected.contains(status) {
            let excerpt = cut(body.trim(), MAX_BODY_IN_FAILURE);
            let more = if excerpt.len() < body.trim().len() { "…" } else { "" };
            let colon = if excerpt.is_empty() { "" } else { ": " };
            return Err(Failure::new(format!(
                "{method} {shown} answered {status}{}, expected {}{colon}{excerpt}{more}",
                reason(status),
                expected.text
            )));
        }
        Ok(())
    }
}

export!(Http as step_executor);

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::testing::FakeHost;
    use chengis_plugin_sdk::{Capability, HttpResponse};

    fn invocation() -> Invocation {
        chengis_plugin_sdk::testing::sample_invocation("http@0.1.0")
    }

    fn fake(config: &[(&str, &str)], response: HttpResponse) -> FakeHost {
        config
            .iter()
            .fold(FakeHost::new(), |host, (k, v)| host.with_config(k, v))
            .with_http_response("https://deploy.example.com/", response)
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn sends_the_configured_request_and_sets_the_outputs() {
        let host = fake(
            &[
                ("url", " https://deploy.example.com/hooks/web?token=s3cr3t "),
                ("method", "post"),
                ("headers", "Authorization: Bearer abc123\n\nContent-Type: application/json\nX-Empty:"),
                ("body", r#"{"ref":"main"}"#),
            ],
            HttpResponse::new(201, r#"{"id":7}"#),
        );
        Http::run(&host, invocation()).unwrap();
        let request = &host.requests()[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.url, "https://deploy.example.com/hooks/web?token=s3cr3t");
        assert_eq!(
            request.headers,
            pairs(&[("Authorization", "Bearer abc123"), ("Content-Type", "application/json"), ("X-Empty", "")])
        );
        assert_eq!(request.body, br#"{"ref":"main"}"#);
        assert_eq!(host.outputs(), pairs(&[("status", "201"), ("body", r#"{"id":7}"#)]));
        let log = host.log_text();
        assert_eq!(log, "POST https://deploy.example.com/hooks/web?…\nanswered 201 Created (8 bytes)\n");
        assert!(!log.contains("abc123") && !log.contains("s3cr3t"));
    }

    #[test]
    fn defaults_are_a_get_without_body_expecting_2xx() {
        let host = fake(&[("url", "https://deploy.example.com/health")], HttpResponse::new(204, ""));
        Http::run(&host, invocation()).unwrap();
        let request = &host.requests()[0];
        assert_eq!((request.method.as_str(), request.headers.len(), request.body.len()), ("GET", 0, 0));
        assert_eq!(host.outputs(), pairs(&[("status", "204"), ("body", "")]));
    }

    #[test]
    fn an_unexpected_status_fails_with_the_response() {
        let host = fake(&[("url", "https://deploy.example.com/x")], HttpResponse::new(503, "  maintenance\n"));
        let failure = Http::run(&host, invocation()).unwrap_err();
        assert_eq!(
            failure.message,
            "GET https://deploy.example.com/x answered 503 Service Unavailable, expected 2xx: maintenance"
        );
        assert_eq!(host.outputs()[0], ("status".to_string(), "503".to_string()));

        let host = fake(
            &[("url", "https://deploy.example.com/x"), ("expect-status", "200, 404")],
            HttpResponse::new(418, "x".repeat(600)),
        );
        let failure = Http::run(&host, invocation()).unwrap_err();
        assert_eq!(
            failure.message,
            format!("GET https://deploy.example.com/x answered 418, expected 200, 404: {}…", "x".repeat(512))
        );
    }

    #[test]
    fn an_expected_error_status_succeeds_and_the_output_can_be_renamed() {
        let host = fake(
            &[("url", "https://deploy.example.com/x"), ("expect-status", "404"), ("output", "page")],
            HttpResponse::new(404, "gone"),
        );
        Http::run(&host, invocation()).unwrap();
        assert_eq!(host.outputs(), pairs(&[("status", "404"), ("page", "gone")]));
    }

    #[test]
    fn a_large_body_is_cut_with_a_note() {
        let body = format!("{}é", "a".repeat(MAX_BODY_OUTPUT - 1));
        let host = fake(&[("url", "https://deploy.example.com/big")], HttpResponse::new(200, body));
        Http::run(&host, invocation()).unwrap();
        let outputs = host.outputs();
        assert_eq!(outputs[1].1, "a".repeat(MAX_BODY_OUTPUT - 1));
        assert!(
            host.log_text().contains("the response body is 65537 bytes; the `body` output keeps the first 65535\n"),
            "{}",
            host.log_text()
        );
    }

    #[test]
    fn transport_errors_fail_the_step() {
        let host = FakeHost::new().with_config("url", "https://elsewhere.example.com/a?b=c");
        let failure = Http::run(&host, invocation()).unwrap_err();
        assert_eq!(failure.message, "GET https://elsewhere.example.com/a?… failed: no canned response in the FakeHost");
        assert!(host.outputs().is_empty());
    }

    #[test]
    fn bad_config_names_the_key_without_quoting_header_values() {
        let failure = |config: &[(&str, &str)]| {
            let host = fake(config, HttpResponse::new(200, ""));
            let message = Http::run(&host, invocation()).unwrap_err().message;
            assert!(host.requests().is_empty(), "{message}");
            message
        };
        assert!(failure(&[]).contains(r#"config key "url": is required"#));
        assert_eq!(
            failure(&[("url", "deploy.example.com/x")]),
            r#"invalid configuration: config key "url": must be an absolute http:// or https:// URL with a host"#
        );
        assert!(failure(&[("url", "ftp://x/")]).contains(r#"config key "url""#));
        assert!(
            failure(&[("url", "https://x/"), ("method", "GE T")]).contains(r#""method": "GE T" is not an HTTP method"#)
        );
        let message = failure(&[("url", "https://x/"), ("headers", "X-Ok: 1\nAuthorization Bearer s3cr3t")]);
        assert_eq!(message, r#"invalid configuration: config key "headers": line 2: expected `Name: value`"#);
        let message = failure(&[("url", "https://x/"), ("headers", "Bad Name: s3cr3t")]);
        assert!(message.ends_with(r#"line 1: "Bad Name" is not a valid header name"#), "{message}");
        assert!(failure(&[("url", "https://x/"), ("expect-status", "2xx,abc")]).contains(r#""abc" is not a status"#));
        assert!(failure(&[("url", "https://x/"), ("output", "status")]).contains(r#"config key "output""#));
    }

    #[test]
    fn expected_statuses() {
        let expected = ExpectedStatus::parse("2xx, 404,500-502").unwrap();
        for (status, ok) in [(200, true), (299, true), (300, false), (404, true), (501, true), (503, false)] {
            assert_eq!(expected.contains(status), ok, "{status}");
        }
        assert!(ExpectedStatus::parse("3XX").unwrap().contains(301));
        for bad in ["", "6xx", "20", "299-200", "2xxx", "abc"] {
            let error = ExpectedStatus::parse(bad).unwrap_err();
            assert_eq!(error.key, "expect-status", "{bad}");
        }
    }

    #[test]
    fn the_manifest_asks_for_any_destination_the_operator_grants() {
        let manifest = Http::manifest();
        let patterns: Vec<_> = manifest
            .capabilities
            .iter()
            .map(|c| match c {
                Capability::OutboundHttp(pattern) => pattern.as_str(),
                _ => panic!("only outbound HTTP is requested"),
            })
            .collect();
        assert_eq!(patterns, ["https://*:*", "http://*:*"]);
    }
}
