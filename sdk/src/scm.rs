//! Helpers shared by SCM status reporters: parsing a clone URL into host and path
//! ([`Repository`]), percent-encoding a path segment, checking a commit id, cutting a
//! description to an API's length limit, noting a Chengis status a forge cannot express,
//! reading the API token from the granted secret named in configuration, and turning a forge's
//! error answer into a [`Failure`] that never shows the token.

use std::fmt;

use crate::config::ConfigError;
use crate::host::Host;
use crate::http::HttpRequest;
use crate::types::{Capability, Diagnostic, Failure, Manifest, Severity};

/// A repository as named by its clone URL: the forge's host (and port, when the URL has one)
/// and the path segments, without a trailing `.git`.
///
/// `https://github.com/owner/repo.git`, `git@github.com:owner/repo.git`,
/// `ssh://git@gitlab.example.com:2222/group/sub/repo.git` and
/// `https://user@gitlab.example.com:8443/group/sub/repo/` all parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// The host, lowercase (IPv6 addresses without brackets).
    pub host: String,
    /// The port written in the URL, if any (it may be an SSH port).
    pub port: Option<u16>,
    /// The path segments, e.g. `["group", "sub", "repo"]`; never empty.
    pub segments: Vec<String>,
}

/// A clone URL that could not be parsed. Its message shows the URL without userinfo, query or
/// fragment, so a password or token in the URL never reaches a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryUrlError {
    /// The URL, with any userinfo, query and fragment removed.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for RepositoryUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "repository URL {:?} {}", self.url, self.reason)
    }
}

impl std::error::Error for RepositoryUrlError {}

impl From<RepositoryUrlError> for Failure {
    fn from(error: RepositoryUrlError) -> Self {
        Failure::new(error.to_string())
    }
}

/// The URL schemes a clone URL may have.
const SCHEMES: &[&str] = &["https", "http", "ssh", "git", "git+ssh", "ssh+git"];

impl Repository {
    /// Parses a clone URL: `scheme://[userinfo@]host[:port]/path[.git][/]` for the schemes
    /// `https`, `http`, `ssh`, `git`, `git+ssh`, `ssh+git`, or the scp-like
    /// `[user@]host:path[.git]`.
    pub fn parse(url: &str) -> Result<Repository, RepositoryUrlError> {
        let url = url.trim();
        let fail = |reason: &str| RepositoryUrlError { url: redact_url(url), reason: reason.into() };
        if url.is_empty() {
            return Err(fail("is empty: expected a clone URL like https://host/owner/repo.git"));
        }
        let (authority, path) = if let Some((scheme, rest)) = url.split_once("://") {
            if !SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
                return Err(fail("has an unsupported scheme: expected https, http, ssh or git"));
            }
            let rest = rest.split(['?', '#']).next().unwrap_or_default();
            match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            }
        } else {
            // scp-like `[user@]host:path`: a colon before any slash.
            match url.find([':', '/']) {
                Some(i) if url[i..].starts_with(':') => (&url[..i], &url[i + 1..]),
                _ => return Err(fail("is not a clone URL (expected https://host/owner/repo or git@host:owner/repo)")),
            }
        };
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        let (host, port) = split_host_port(host_port).map_err(|reason| fail(&reason))?;
        if host.is_empty() {
            return Err(fail("has no host"));
        }
        let mut segments: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
        if let Some(last) = segments.last_mut()
            && let Some(stripped) = last.strip_suffix(".git")
        {
            *last = stripped.to_string();
        }
        if segments.last().is_some_and(String::is_empty) {
            segments.pop();
        }
        if segments.is_empty() {
            return Err(fail("has no repository path"));
        }
        if segments.iter().any(|s| s == "." || s == "..") {
            return Err(fail("has a `.` or `..` path segment"));
        }
        Ok(Repository { host: host.to_ascii_lowercase(), port, segments })
    }

    /// The path segments joined with `/`, e.g. `group/sub/repo`.
    pub fn path(&self) -> String {
        self.segments.join("/")
    }

    /// The two segments of an `owner/repo` path (GitHub, Bitbucket); an error naming the URL
    /// when the path has another number of segments.
    pub fn owner_and_name(&self) -> Result<(&str, &str), RepositoryUrlError> {
        match self.segments.as_slice() {
            [owner, name] => Ok((owner, name)),
            _ => Err(RepositoryUrlError {
                url: self.display(),
                reason: format!("has the path {:?}, expected OWNER/REPO", self.path()),
            }),
        }
    }

    /// `host[:port]/path`, for messages.
    pub fn display(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match self.port {
            Some(port) => format!("{host}:{port}/{}", self.path()),
            None => format!("{host}/{}", self.path()),
        }
    }
}

/// Splits `host[:port]` (or `[v6]:port`) into the host and the port.
fn split_host_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("has an unclosed `[` in its host")?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or("has text after its `[host]`")?)),
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(port) => Some(port.parse::<u16>().map_err(|_| format!("has an invalid port {port:?}"))?),
    };
    Ok((host, port))
}

/// The URL with any userinfo (`user:password@`), query and fragment removed: safe to show in
/// messages. Works on `scheme://` and scp-like URLs.
pub fn redact_url(url: &str) -> String {
    let url = url.trim().split(['?', '#']).next().unwrap_or_default();
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => match url.find([':', '/']) {
            Some(i) if url[i..].starts_with(':') => {
                let (authority, path) = url.split_at(i);
                let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
                format!("{host}{path}")
            }
            _ => url.to_string(),
        },
    }
}

/// Percent-encodes everything but the unreserved characters (`A-Z a-z 0-9 - . _ ~`), so the
/// text is one URL path segment: `group/sub/project` becomes `group%2Fsub%2Fproject`.
pub fn encode_path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Checks that `sha` is a full 40-character hexadecimal commit id (what the forges' status
/// APIs take).
pub fn check_commit_sha(sha: &str) -> Result<(), Failure> {
    if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let shown = truncate_chars(sha, 60);
    Err(Failure::new(format!("commit {shown:?} is not a full 40-character hexadecimal commit id")))
}

/// `text` cut to at most `max` characters (not bytes), ending with `…` when it was cut.
pub fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// A description that says `note` (e.g. `Skipped`) when the forge's state cannot: `description`
/// unchanged when it already mentions the note (case-insensitive), `note` alone when the
/// description is empty, else `NOTE: description`.
pub fn with_note(description: &str, note: &str) -> String {
    let description = description.trim();
    if description.is_empty() {
        note.to_string()
    } else if description.to_lowercase().contains(&note.to_lowercase()) {
        description.to_string()
    } else {
        format!("{note}: {description}")
    }
}

/// Reads the API token from the secret named by the configuration key `key` (default
/// `default_secret`). The secret must be one that `manifest` requests (the host only lets a
/// plugin read those), and it must have a value; a token's surrounding whitespace is removed.
/// Failures name the key and the secret, never the value.
pub fn token(host: &dyn Host, manifest: &Manifest, key: &str, default_secret: &str) -> Result<String, Failure> {
    let name: String = host.config().or(key, default_secret.to_string())?;
    let requested: Vec<&str> = manifest
        .capabilities
        .iter()
        .filter_map(|c| match c {
            Capability::Secret(name) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    if !requested.contains(&name.as_str()) {
        return Err(ConfigError {
            key: key.into(),
            message: format!(
                "secret {name:?} is not one this plugin may read (its manifest requests {})",
                requested.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
            ),
        }
        .into());
    }
    let value = host.secret(&name).unwrap_or_default();
    let value = value.trim();
    if value.is_empty() {
        return Err(Failure::new(format!(
            "the API token secret {name:?} (config key {key:?}) has no value: set the secret on the server"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Failure::new(format!(
            "the API token secret {name:?} (config key {key:?}) contains a line break or control character"
        )));
    }
    Ok(value.to_string())
}

/// The API base URL from the configuration key `key`, without a trailing `/`, or `None` when it
/// is not set. It must be an absolute `http://` or `https://` URL with a host and no query.
pub fn base_url(host: &dyn Host, key: &str) -> Result<Option<String>, Failure> {
    let Some(url) = host.config().optional::<String>(key)? else { return Ok(None) };
    let url = url.trim().trim_end_matches('/').to_string();
    let invalid = |message: String| Failure::from(ConfigError { key: key.into(), message });
    HttpRequest::get(url.as_str()).parts().map_err(|e| invalid(e.to_string()))?;
    if url.contains(['?', '#']) {
        return Err(invalid(format!("{:?} must not have a query or fragment", redact_url(&url))));
    }
    Ok(Some(url))
}

/// The repository to report on: the configuration key `repository` when set (`owner/repo`,
/// or `group/sub/project` on GitLab: for mirrors and clone URLs that do not name the forge's
/// repository, such as `file://` ones), else the one `clone_url` names, which must be on one of
/// `public_hosts` unless the API URL is `configured` (see [`check_default_host`]).
pub fn repository(
    host: &dyn Host,
    clone_url: &str,
    configured: bool,
    public_hosts: &[&str],
    help: &str,
) -> Result<Repository, Failure> {
    if let Some(path) = host.config().optional::<String>("repository")? {
        let segments: Vec<String> = path.trim().trim_matches('/').split('/').map(str::to_string).collect();
        if segments.len() < 2 || segments.iter().any(|s| s.is_empty() || s == "." || s == "..") {
            let message = format!("{path:?} is not a repository path such as owner/repo");
            return Err(Failure::from(ConfigError { key: "repository".into(), message }));
        }
        return Ok(Repository { host: String::new(), port: None, segments });
    }
    let repository = Repository::parse(clone_url)?;
    if !configured {
        check_default_host(&repository, public_hosts, "api-url", help)?;
    }
    Ok(repository)
}

/// Checks that `repository` is on one of `hosts`: the forge that the default API URL serves,
/// used when the configuration key `key` (the API URL) is not set. The failure names the key
/// and carries `help` (how to set it for a self-hosted forge).
pub fn check_default_host(repository: &Repository, hosts: &[&str], key: &str, help: &str) -> Result<(), Failure> {
    if hosts.contains(&repository.host.as_str()) {
        return Ok(());
    }
    let message = format!(
        "repository {:?} is not on {}, which the default API URL serves: set config key {key:?}",
        repository.display(),
        hosts.first().copied().unwrap_or("the default forge")
    );
    Err(Failure {
        message: message.clone(),
        diagnostics: vec![Diagnostic {
            severity: Severity::Error,
            code: "repository-not-on-forge".into(),
            message,
            field: Some(format!("with.{key}")),
            help: Some(help.into()),
        }],
    })
}

/// The failure for a forge's error answer: `GitHub answered 422 Unprocessable Entity:
/// Validation Failed`. `detail` is the API's own message, if any, in which `token` is replaced
/// by `***` wherever it appears.
pub fn api_failure(forge: &str, status: u16, detail: Option<&str>, token: &str) -> Failure {
    let mut message = match reason_phrase(status) {
        "" => format!("{forge} answered {status}"),
        reason => format!("{forge} answered {status} {reason}"),
    };
    if let Some(detail) = detail.map(str::trim).filter(|d| !d.is_empty()) {
        message.push_str(": ");
        message.push_str(&truncate_chars(&redact_secret(detail, token), 500));
    }
    Failure::new(message)
}

/// `text` with every occurrence of `secret` replaced by `***` (unchanged when `secret` is empty).
pub fn redact_secret(text: &str, secret: &str) -> String {
    if secret.is_empty() { text.to_string() } else { text.replace(secret, "***") }
}

/// The first 200 characters of a non-JSON error body, on one line (for proxies' HTML or text
/// answers); `None` when it is empty.
pub fn body_excerpt(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    (!line.is_empty()).then(|| truncate_chars(&line, 200))
}

/// The standard reason phrase of an HTTP status code (empty for unusual codes).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeHost;
    use crate::types::Kind;

    fn parse(url: &str) -> (String, Option<u16>, String) {
        let repo = Repository::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        (repo.host.clone(), repo.port, repo.path())
    }

    #[test]
    fn parses_every_clone_url_form() {
        let github = ("github.com".to_string(), None, "owner/repo".to_string());
        assert_eq!(parse("https://github.com/owner/repo.git"), github);
        assert_eq!(parse("https://github.com/owner/repo"), github);
        assert_eq!(parse("https://github.com/owner/repo/"), github);
        assert_eq!(parse("https://github.com/owner/repo.git/"), github);
        assert_eq!(parse("  https://GitHub.com/owner/repo  "), github);
        assert_eq!(parse("git@github.com:owner/repo.git"), github);
        assert_eq!(parse("github.com:owner/repo"), github);
        assert_eq!(parse("git@github.com:/owner/repo.git"), github);
        assert_eq!(parse("ssh://git@github.com/owner/repo.git"), github);
        assert_eq!(parse("git://github.com/owner/repo"), github);
        assert_eq!(
            parse("https://user:pa55@gitlab.example.com:8443/group/sub/repo.git"),
            ("gitlab.example.com".into(), Some(8443), "group/sub/repo".into())
        );
        assert_eq!(
            parse("ssh://git@gitlab.example.com:2222/group/sub/repo.git"),
            ("gitlab.example.com".into(), Some(2222), "group/sub/repo".into())
        );
        assert_eq!(parse("https://[::1]:3000/o/r.git"), ("::1".into(), Some(3000), "o/r".into()));
        assert_eq!(parse("https://h.example/o/r.git?x=1#frag"), ("h.example".into(), None, "o/r".into()));
        assert_eq!(parse("https://h.example//o//r"), ("h.example".into(), None, "o/r".into()));
    }

    #[test]
    fn owner_and_name_needs_two_segments() {
        let repo = Repository::parse("git@bitbucket.org:team/app.git").unwrap();
        assert_eq!(repo.owner_and_name().unwrap(), ("team", "app"));
        let nested = Repository::parse("https://gitlab.com/a/b/c.git").unwrap();
        assert_eq!(
            nested.owner_and_name().unwrap_err().to_string(),
            r#"repository URL "gitlab.com/a/b/c" has the path "a/b/c", expected OWNER/REPO"#
        );
        let ported = Repository::parse("ssh://git@h.example:22/a/b/c").unwrap();
        assert_eq!(ported.display(), "h.example:22/a/b/c");
    }

    #[test]
    fn bad_urls_are_errors_without_userinfo() {
        let cases = [
            ("", "is empty"),
            ("web", "is not a clone URL"),
            ("./local/repo", "is not a clone URL"),
            ("/srv/git/repo.git", "is not a clone URL"),
            ("file:///srv/git/repo.git", "unsupported scheme"),
            ("https://github.com", "has no repository path"),
            ("https://github.com/.git", "has no repository path"),
            ("git@github.com:", "has no repository path"),
            ("https://tok:s3cr3t@host.example:99999/o/r", "invalid port"),
            ("https://:s3cr3t@/o/r", "has no host"),
            ("https://[::1/o/r", "unclosed"),
            ("https://h.example/o/../r", "`..`"),
        ];
        for (url, reason) in cases {
            let error = Repository::parse(url).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(reason), "{url}: {message}");
            assert!(!message.contains("s3cr3t"), "{url}: {message}");
        }
        let error = Repository::parse("https://tok:s3cr3t@host.example:99999/o/r?private_token=zzz").unwrap_err();
        assert_eq!(error.url, "https://host.example:99999/o/r");
        assert_eq!(
            Failure::from(error).message,
            r#"repository URL "https://host.example:99999/o/r" has an invalid port "99999""#
        );
    }

    #[test]
    fn redacts_userinfo_query_and_fragment() {
        assert_eq!(redact_url("https://u:p@h.example/o/r?t=1"), "https://h.example/o/r");
        assert_eq!(redact_url("token@h.example:o/r.git"), "h.example:o/r.git");
        assert_eq!(redact_url("https://h.example/a@b"), "https://h.example/a@b");
        assert_eq!(redact_url("plain"), "plain");
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode_path_segment("group/sub/project"), "group%2Fsub%2Fproject");
        assert_eq!(encode_path_segment("a b+c%é"), "a%20b%2Bc%25%C3%A9");
        assert_eq!(encode_path_segment("Az09-._~"), "Az09-._~");
    }

    #[test]
    fn checks_commit_ids() {
        assert!(check_commit_sha("0123456789abcdef0123456789ABCDEF01234567").is_ok());
        assert_eq!(
            check_commit_sha("0123456").unwrap_err().message,
            r#"commit "0123456" is not a full 40-character hexadecimal commit id"#
        );
        assert!(check_commit_sha(&"g".repeat(40)).is_err());
        assert!(check_commit_sha(&"a".repeat(41)).is_err());
    }

    #[test]
    fn truncates_on_character_boundaries() {
        assert_eq!(truncate_chars("short", 5), "short");
        assert_eq!(truncate_chars("too long", 5), "too …");
        assert_eq!(truncate_chars("ééééé", 3), "éé…");
        assert_eq!(truncate_chars("x", 0), "");
        let cut = truncate_chars(&"日本".repeat(100), 140);
        assert_eq!(cut.chars().count(), 140);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn notes_statuses_the_forge_cannot_show() {
        assert_eq!(with_note("", "Skipped"), "Skipped");
        assert_eq!(with_note("job test skipped", "Skipped"), "job test skipped");
        assert_eq!(with_note("3 of 4 jobs passed", "Running"), "Running: 3 of 4 jobs passed");
    }

    fn manifest() -> Manifest {
        Manifest::new("x", "0.1.0", "x", Kind::ScmStatus).secret("GITHUB_TOKEN").outbound_http("https://a.example:443")
    }

    #[test]
    fn reads_the_token_from_the_named_secret() {
        let host = FakeHost::new().with_secret("GITHUB_TOKEN", " ghp_abc\n");
        assert_eq!(token(&host, &manifest(), "token-secret", "GITHUB_TOKEN").unwrap(), "ghp_abc");

        let host = FakeHost::new().with_config("token-secret", "OTHER");
        let failure = token(&host, &manifest(), "token-secret", "GITHUB_TOKEN").unwrap_err();
        assert_eq!(
            failure.message,
            r#"invalid configuration: config key "token-secret": secret "OTHER" is not one this plugin may read (its manifest requests "GITHUB_TOKEN")"#
        );
        assert_eq!(failure.diagnostics[0].field.as_deref(), Some("with.token-secret"));

        let failure = token(&FakeHost::new(), &manifest(), "token-secret", "GITHUB_TOKEN").unwrap_err();
        assert!(failure.message.contains(r#"secret "GITHUB_TOKEN" (config key "token-secret") has no value"#));
        let host = FakeHost::new().with_secret("GITHUB_TOKEN", "ab\ncd");
        let failure = token(&host, &manifest(), "token-secret", "GITHUB_TOKEN").unwrap_err();
        assert!(failure.message.contains("line break") && !failure.message.contains("ab"), "{}", failure.message);
    }

    #[test]
    fn base_urls_are_checked_and_trimmed() {
        let host = FakeHost::new().with_config("api-url", " https://ghe.example/api/v3/ ");
        assert_eq!(base_url(&host, "api-url").unwrap().as_deref(), Some("https://ghe.example/api/v3"));
        assert_eq!(base_url(&FakeHost::new(), "api-url").unwrap(), None);
        let host = FakeHost::new().with_config("api-url", "ghe.example/api");
        let failure = base_url(&host, "api-url").unwrap_err();
        assert_eq!(
            failure.message,
            r#"invalid configuration: config key "api-url": "ghe.example/api" is not an absolute URL"#
        );
        let host = FakeHost::new().with_config("api-url", "https://u:p@ghe.example/api?x=1");
        let failure = base_url(&host, "api-url").unwrap_err();
        assert!(
            failure.message.contains("must not have a query") && !failure.message.contains("u:p"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn default_hosts_are_enforced() {
        let repo = Repository::parse("git@github.com:o/r.git").unwrap();
        assert!(check_default_host(&repo, &["github.com"], "api-url", "help").is_ok());
        let repo = Repository::parse("https://git.corp.example/o/r.git").unwrap();
        let failure = check_default_host(&repo, &["github.com", "ssh.github.com"], "api-url", "set it").unwrap_err();
        assert_eq!(
            failure.message,
            r#"repository "git.corp.example/o/r" is not on github.com, which the default API URL serves: set config key "api-url""#
        );
        assert_eq!(failure.diagnostics[0].field.as_deref(), Some("with.api-url"));
        assert_eq!(failure.diagnostics[0].help.as_deref(), Some("set it"));
    }

    #[test]
    fn api_failures_name_forge_status_and_message_but_not_the_token() {
        let failure = api_failure("GitHub", 401, Some("Bad credentials for ghp_abc"), "ghp_abc");
        assert_eq!(failure.message, "GitHub answered 401 Unauthorized: Bad credentials for ***");
        assert_eq!(api_failure("Gitea", 502, None, "t").message, "Gitea answered 502 Bad Gateway");
        assert_eq!(api_failure("Gitea", 599, Some(" "), "t").message, "Gitea answered 599");
        assert_eq!(body_excerpt(b"<html>\n  <b>Bad</b>\n</html>").as_deref(), Some("<html> <b>Bad</b> </html>"));
        assert_eq!(body_excerpt(b" \n"), None);
    }
}
