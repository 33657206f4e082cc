//! SCM webhook receivers, the pure core: verifying deliveries (HMAC signatures, shared tokens,
//! timestamps), reading their delivery ids and event names, and parsing the payloads of GitHub,
//! GitLab, Gitea, Bitbucket Cloud and Chengis's own generic format into one [`Event`] model.
//!
//! Nothing here does I/O: the HTTP route, the delivery store (replay protection) and the builds
//! live elsewhere and call [`verify`], [`delivery_id`], [`event_name`] and [`parse`] in that
//! order. Errors never echo a signature, a token or the body, so they are safe to log.
//!
//! | provider | authenticity | delivery id (required) | event name |
//! |---|---|---|---|
//! | GitHub | `X-Hub-Signature-256: sha256=<hex>` | `X-GitHub-Delivery` | `X-GitHub-Event` |
//! | GitLab | `X-Gitlab-Token: <secret>` | `Idempotency-Key` (newer GitLab; the same for every retry), else `X-Gitlab-Event-UUID` | `X-Gitlab-Event` |
//! | Gitea | `X-Gitea-Signature: <hex>` | `X-Gitea-Delivery` (or the `X-GitHub-Delivery` it also sends) | `X-Gitea-Event` |
//! | Bitbucket | `X-Hub-Signature: sha256=<hex>` | `X-Request-UUID` | `X-Event-Key` |
//! | generic | see [`generic`] | `X-Chengis-Delivery` (signed) | always `push` |
//!
//! Every forge here sends a delivery id, so a delivery without one is refused: it cannot be
//! told apart from a replay. Only the generic format signs its id; the forges sign the body
//! alone, so the receiver also remembers a digest of each body (per job and provider, for the
//! delivery retention) and processes a signed body once whatever id comes with it.

mod bitbucket;
pub mod generic;
mod gitea;
mod github;
mod gitlab;
mod json;
pub mod route;
mod verify;

use axum::http::HeaderMap;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

use json::Node;

/// The largest body [`parse`] accepts, in bytes (GitHub's own cap on webhook payloads). The
/// route should refuse larger bodies before reading them (e.g. with axum's `DefaultBodyLimit`).
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// The deepest nesting of JSON arrays and objects [`parse`] accepts.
pub const MAX_JSON_DEPTH: usize = 64;

/// How far the generic format's `X-Chengis-Timestamp` may be from the receiver's clock, in
/// seconds, either way.
pub const GENERIC_MAX_SKEW_SECS: i64 = 300;

/// The sha the forges send for "no commit": `before` of a created ref, `after` of a deleted one.
pub const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// The forge (or format) a webhook delivery comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// GitHub (github.com or GitHub Enterprise Server).
    Github,
    /// GitLab (gitlab.com or self-managed).
    Gitlab,
    /// Gitea (and Forgejo, which sends the same headers).
    Gitea,
    /// Bitbucket Cloud.
    Bitbucket,
    /// Chengis's own signed format, documented in [`generic`].
    Generic,
}

impl Provider {
    /// Every provider, in a stable order.
    pub const ALL: [Provider; 5] =
        [Provider::Github, Provider::Gitlab, Provider::Gitea, Provider::Bitbucket, Provider::Generic];

    /// The lowercase name: `github`, `gitlab`, `gitea`, `bitbucket` or `generic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
            Provider::Bitbucket => "bitbucket",
            Provider::Generic => "generic",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider name that is not one of [`Provider::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown webhook provider `{0}` (expected github, gitlab, gitea, bitbucket or generic)")]
pub struct UnknownProvider(pub String);

impl FromStr for Provider {
    type Err = UnknownProvider;

    /// Parses `github`, `gitlab`, `gitea`, `bitbucket` or `generic`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownProvider(s.to_owned()))
    }
}

/// Why a delivery is not authentic. Answer 401 and log it; it never contains the signature,
/// the token or the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The header carrying the signature (or token, or timestamp) is absent.
    #[error("missing header `{header}`")]
    Missing {
        /// The header's name.
        header: &'static str,
    },
    /// The header is present but not in the expected form (prefix, hex, digits).
    #[error("malformed header `{header}`")]
    Malformed {
        /// The header's name.
        header: &'static str,
    },
    /// The signature or token matches none of the hook's secrets.
    #[error("signature does not match any of the hook's secrets")]
    Mismatch,
    /// The generic format's timestamp is too far from the receiver's clock.
    #[error(
        "timestamp is {} s in the {}, more than the {GENERIC_MAX_SKEW_SECS} s allowed",
        age_secs.unsigned_abs(),
        if *age_secs >= 0 { "past" } else { "future" }
    )]
    Stale {
        /// Receiver's clock minus the timestamp: positive when old, negative when in the future.
        age_secs: i64,
    },
    /// The hook has no (non-empty) secret configured, so nothing can be verified.
    #[error("no secret is configured for this webhook")]
    NoSecret,
}

/// Why a delivery's body could not be turned into an [`Event`]. Answer 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("body of {size} bytes is larger than the {limit} bytes allowed")]
    TooLarge {
        /// The body's size.
        size: usize,
        /// [`MAX_BODY_BYTES`].
        limit: usize,
    },
    /// The JSON nests arrays and objects deeper than [`MAX_JSON_DEPTH`].
    #[error("JSON is nested deeper than {limit} levels")]
    TooDeep {
        /// [`MAX_JSON_DEPTH`].
        limit: usize,
    },
    /// The body is not JSON (or a form without a `payload` field); `message` says where.
    #[error("invalid payload: {message}")]
    Invalid {
        /// What is wrong, with line and column for JSON errors.
        message: String,
    },
    /// The header naming the event type is absent.
    #[error("missing header `{header}` naming the event")]
    MissingEvent {
        /// The header's name.
        header: &'static str,
    },
    /// A field the event needs is absent or null.
    #[error("missing field `{field}`")]
    Missing {
        /// The field's JSON path, such as `pull_request.head.sha`.
        field: String,
    },
    /// A field has the wrong type or an unusable value (a sha that is not hex, a bad ref name).
    #[error("field `{field}` is not {expected}")]
    WrongType {
        /// The field's JSON path.
        field: String,
        /// What it should have been, such as `a string`.
        expected: &'static str,
    },
}

/// What a delivery asks Chengis to react to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A branch or tag push, including creates and deletes.
    Push(Push),
    /// A pull (merge) request was opened, updated, reopened or closed.
    PullRequest(PullRequest),
    /// The forge checks that the hook works.
    Ping,
    /// Any other event type: stored and answered 202 "ignored".
    Ignored {
        /// The event's name as the forge sent it (e.g. `issues`, `Note Hook`).
        event: String,
    },
}

/// A push to a branch or a tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Push {
    /// The repository's clone URL (Bitbucket: its web URL, which git clones as well).
    pub repository: String,
    /// The repository's full name (`owner/name`, GitLab `group/sub/name`), when sent.
    pub full_name: Option<String>,
    /// The full ref: `refs/heads/main` or `refs/tags/v1`.
    pub git_ref: String,
    /// The branch name when `git_ref` is under `refs/heads/`.
    pub branch: Option<String>,
    /// The tag name when `git_ref` is under `refs/tags/`.
    pub tag: Option<String>,
    /// The commit the ref pointed at before (all zeros for a created ref), when sent.
    pub before: Option<String>,
    /// The commit the ref points at now (40 or 64 hex digits); all zeros when deleted.
    pub after: String,
    /// The ref was deleted.
    pub deleted: bool,
    /// The ref was created.
    pub created: bool,
    /// The push was a force push (when the forge says so; GitLab and Gitea never do).
    pub forced: bool,
    /// The union of the files added, modified and removed by the payload's commits, sorted.
    /// `None` when the payload cannot tell: no commit list (a delete, a new ref at an existing
    /// commit, Bitbucket, the generic format without `changed_files`), a commit without file
    /// lists, or a list the forge truncated. A path filter should then run the build.
    pub changed_files: Option<Vec<String>>,
    /// The message of the head commit (of the tag, for a GitLab annotated tag), when sent.
    pub message: Option<String>,
    /// The head commit's author as `Name <email>` (or just the name), when sent.
    pub author: Option<String>,
    /// Who pushed (login or username), when sent.
    pub pusher: Option<String>,
}

/// What happened to a pull (merge) request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrAction {
    /// It was opened.
    Opened,
    /// New commits were pushed to its head branch (Bitbucket: any update, see [`parse`]).
    Synchronize,
    /// It was reopened.
    Reopened,
    /// It was closed, merged or not.
    Closed {
        /// It was merged (GitHub/Gitea `merged`, GitLab `merge`, Bitbucket `fulfilled`).
        merged: bool,
    },
    /// Any other action (`edited`, `labeled`, GitLab `update` without new commits, ...).
    Other(String),
}

impl PrAction {
    /// A short name: `opened`, `synchronize`, `reopened`, `closed`, `merged` or the other action.
    pub fn as_str(&self) -> &str {
        match self {
            PrAction::Opened => "opened",
            PrAction::Synchronize => "synchronize",
            PrAction::Reopened => "reopened",
            PrAction::Closed { merged: false } => "closed",
            PrAction::Closed { merged: true } => "merged",
            PrAction::Other(action) => action,
        }
    }
}

/// A pull request (GitLab: merge request) event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequest {
    /// The target (base) repository's clone URL (Bitbucket: its web URL).
    pub repository: String,
    /// The target repository's full name, when sent.
    pub full_name: Option<String>,
    /// The clone URL of the repository holding the head branch (a fork, or the same one), when
    /// sent.
    pub head_repository: Option<String>,
    /// The request's number in its repository (GitLab: the `iid`).
    pub number: u64,
    /// What happened.
    pub action: PrAction,
    /// The head commit. Full (40 or 64 hex) except for Bitbucket, which sends 12 hex digits.
    pub head_sha: String,
    /// The head (source) branch name, without `refs/heads/`.
    pub head_ref: String,
    /// The base (target) branch name, without `refs/heads/`.
    pub base_ref: String,
    /// The title.
    pub title: String,
    /// The request's author (GitLab: the user who triggered the event; the hook names the
    /// author only by id).
    pub author: Option<String>,
}

impl PullRequest {
    /// True when the head branch lives in another repository than the base (a fork).
    pub fn is_fork(&self) -> bool {
        let norm = |u: &str| u.trim().trim_end_matches('/').trim_end_matches(".git").to_ascii_lowercase();
        self.head_repository.as_deref().is_some_and(|h| norm(h) != norm(&self.repository))
    }
}

/// Checks that a delivery comes from the forge: succeeds when ANY of `secrets` (the hook's
/// active secrets, two during rotation) matches. Empty secrets are ignored; with none left the
/// answer is [`VerifyError::NoSecret`]. Every comparison is constant-time. `now_unix` is the
/// receiver's clock, used by the generic format's timestamp check only.
pub fn verify(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[&str],
    now_unix: i64,
) -> Result<(), VerifyError> {
    let secrets: Vec<&[u8]> = secrets.iter().filter(|s| !s.is_empty()).map(|s| s.as_bytes()).collect();
    if secrets.is_empty() {
        return Err(VerifyError::NoSecret);
    }
    match provider {
        Provider::Github => verify::hmac_header(headers, "x-hub-signature-256", Some("sha256="), body, &secrets),
        Provider::Gitea => verify::hmac_header(headers, "x-gitea-signature", None, body, &secrets),
        Provider::Bitbucket => verify::hmac_header(headers, "x-hub-signature", Some("sha256="), body, &secrets),
        Provider::Gitlab => verify::token_header(headers, "x-gitlab-token", &secrets),
        Provider::Generic => generic::verify(headers, body, &secrets, now_unix),
    }
}

/// The headers that may carry the provider's delivery id, in the order they are read, as the
/// forges spell them (for error messages; header lookups ignore case).
pub fn delivery_headers(provider: Provider) -> &'static [&'static str] {
    match provider {
        Provider::Github => &["X-GitHub-Delivery"],
        Provider::Gitlab => &["Idempotency-Key", "X-Gitlab-Event-UUID"],
        Provider::Gitea => &["X-Gitea-Delivery", "X-GitHub-Delivery"],
        Provider::Bitbucket => &["X-Request-UUID"],
        Provider::Generic => &["X-Chengis-Delivery"],
    }
}

/// The delivery's id, for replay protection: the same for every retry of one delivery. `None`
/// when the header is absent or not a plausible id (empty, over 128 bytes, or not printable
/// ASCII; for the generic format also when it holds a `.`, the separator of what is signed).
/// Every provider sends one, so `None` means the delivery must be refused.
pub fn delivery_id(provider: Provider, headers: &HeaderMap) -> Option<String> {
    let found = delivery_headers(provider).iter().find_map(|name| {
        header_str(headers, &name.to_ascii_lowercase()).filter(|v| plausible_id(v)).map(str::to_owned)
    });
    match provider {
        Provider::Generic => found.filter(|id| !id.contains('.')),
        _ => found,
    }
}

/// The digest by which a body already processed for a job and provider is recognised: the hex
/// SHA-256 of the raw body (the store keeps one per job and provider).
pub fn body_digest(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(body))
}

/// The event's name as the forge sent it (`push`, `Merge Request Hook`, `repo:push`, ...), for
/// storing and logging; `None` when the header is absent. The generic format is always `push`.
pub fn event_name(provider: Provider, headers: &HeaderMap) -> Option<String> {
    match event_header(provider) {
        Some(name) => header_str(headers, name).map(|v| v.trim().to_owned()),
        None => Some("push".to_owned()),
    }
}

/// Parses a delivery's body into an [`Event`], after checking its size and nesting depth.
///
/// A form-encoded body (`Content-Type: application/x-www-form-urlencoded`, which GitHub and
/// Gitea offer) is read from its `payload` field. Event types Chengis does not build on become
/// [`Event::Ignored`]; only a malformed body, a missing event header or a recognised event
/// without the fields it needs is an error.
///
/// Mapping notes: GitHub and Gitea `delete` events become a deleted [`Push`]; a Gitea `create`
/// of a tag becomes a created [`Push`]; a GitHub `create` is [`Event::Ignored`], because it
/// carries no commit sha and GitHub sends a `push` event for the same new ref that does.
/// Bitbucket's `pullrequest:updated` is sent for new commits and for edits alike, and becomes
/// [`PrAction::Synchronize`].
pub fn parse(provider: Provider, headers: &HeaderMap, body: &[u8]) -> Result<Event, ParseError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ParseError::TooLarge { size: body.len(), limit: MAX_BODY_BYTES });
    }
    let event = match event_header(provider) {
        Some(name) => Some(header_str(headers, name).map(str::trim).ok_or(ParseError::MissingEvent { header: name })?),
        None => None,
    };
    let form_payload;
    let body = if is_form(headers) {
        form_payload = json::form_field(body, "payload")
            .ok_or_else(|| ParseError::Invalid { message: "form body without a `payload` field".to_owned() })?;
        form_payload.as_slice()
    } else {
        body
    };
    // An event no parser reads is checked to be JSON without building a document of it.
    if let Some(event) = event
        && !reads_payload(provider, event)
    {
        json::validate_bounded(body)?;
        return Ok(Event::Ignored { event: event.to_owned() });
    }
    let value = json::parse_bounded(body)?;
    let root = Node::root(&value);
    match (provider, event) {
        (Provider::Github, Some(event)) => github::parse(event, &root),
        (Provider::Gitea, Some(event)) => gitea::parse(event, &root),
        (Provider::Gitlab, Some(event)) => gitlab::parse(event, &root),
        (Provider::Bitbucket, Some(event)) => bitbucket::parse(event, &root),
        (Provider::Generic, _) => generic::parse(&root),
        (_, None) => Err(ParseError::Invalid { message: "no event type".to_owned() }),
    }
}

/// Whether the provider's parser reads the payload of `event` (anything else is stored and
/// ignored).
pub fn reads_payload(provider: Provider, event: &str) -> bool {
    match provider {
        Provider::Github | Provider::Gitea => matches!(event, "push" | "pull_request" | "ping" | "delete"),
        Provider::Gitlab => matches!(event, "Push Hook" | "Tag Push Hook" | "Merge Request Hook"),
        Provider::Bitbucket => event == "repo:push" || event == "diagnostics:ping" || event.starts_with("pullrequest:"),
        Provider::Generic => true,
    }
}

/// The header naming the event type, or `None` for the generic format (always a push).
pub fn event_header(provider: Provider) -> Option<&'static str> {
    match provider {
        Provider::Github => Some("x-github-event"),
        Provider::Gitlab => Some("x-gitlab-event"),
        Provider::Gitea => Some("x-gitea-event"),
        Provider::Bitbucket => Some("x-event-key"),
        Provider::Generic => None,
    }
}

/// The first value of a header as text, if it is visible ASCII.
fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A delivery id worth storing: 1 to 128 bytes of printable ASCII.
fn plausible_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The request says its body is an HTML form.
fn is_form(headers: &HeaderMap) -> bool {
    header_str(headers, "content-type")
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"))
}

/// Builds a [`Push`] from the parts every provider has, deriving branch, tag, created and
/// deleted, and checking the ref name and the shas (they reach git command lines later).
struct PushParts<'a> {
    repository: String,
    full_name: Option<String>,
    git_ref: String,
    ref_field: &'a str,
    before: Option<String>,
    before_field: &'a str,
    after: String,
    after_field: &'a str,
    created: Option<bool>,
    deleted: Option<bool>,
    forced: bool,
    changed_files: Option<Vec<String>>,
    message: Option<String>,
    author: Option<String>,
    pusher: Option<String>,
}

impl PushParts<'_> {
    /// Checks the parts and makes the [`Push`].
    fn build(self) -> Result<Push, ParseError> {
        if !valid_ref(&self.git_ref) {
            return Err(wrong(self.ref_field, "a full git ref name such as refs/heads/main"));
        }
        if !is_full_sha(&self.after) {
            return Err(wrong(self.after_field, "a commit sha (40 or 64 hex digits)"));
        }
        if let Some(before) = &self.before
            && !is_full_sha(before)
        {
            return Err(wrong(self.before_field, "a commit sha (40 or 64 hex digits)"));
        }
        let deleted = self.deleted.unwrap_or(false) || is_zero_sha(&self.after);
        let created = !deleted && (self.created.unwrap_or(false) || self.before.as_deref().is_some_and(is_zero_sha));
        let branch = self.git_ref.strip_prefix("refs/heads/").map(str::to_owned);
        let tag = self.git_ref.strip_prefix("refs/tags/").map(str::to_owned);
        Ok(Push {
            repository: self.repository,
            full_name: self.full_name,
            git_ref: self.git_ref,
            branch,
            tag,
            before: self.before,
            after: self.after,
            deleted,
            created,
            forced: self.forced,
            changed_files: if deleted { None } else { self.changed_files },
            message: self.message,
            author: self.author,
            pusher: self.pusher,
        })
    }
}

/// A [`ParseError::WrongType`] for `field`.
fn wrong(field: &str, expected: &'static str) -> ParseError {
    ParseError::WrongType { field: field.to_owned(), expected }
}

/// 40 (SHA-1) or 64 (SHA-256) hex digits.
fn is_full_sha(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A full or abbreviated (at least 7 digits) commit sha.
fn is_sha_prefix(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// All zeros: the "no commit" sha.
fn is_zero_sha(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == b'0')
}

/// A ref name safe to hand to git: under `refs/`, no control characters or spaces, no `..`,
/// none of git's forbidden characters, no component starting with `-` or `.`.
fn valid_ref(r: &str) -> bool {
    r.starts_with("refs/")
        && r.len() <= 1024
        && !r.contains("..")
        && !r.contains("@{")
        && !r.ends_with('/')
        && !r.ends_with(".lock")
        && !r.bytes().any(|b| b.is_ascii_control() || b" ~^:?*[\\".contains(&b))
        && r.split('/').all(|c| !c.is_empty() && !c.starts_with('-') && !c.starts_with('.'))
}

/// A branch or tag name (without `refs/...`) safe to put under `refs/heads/` or `refs/tags/`.
fn valid_short_ref(name: &str) -> bool {
    valid_ref(&format!("refs/heads/{name}"))
}

/// The union of `added`, `modified` and `removed` over `commits`, sorted; `None` when a commit
/// lacks all three lists or there are no commits.
fn changed_files(commits: &[Node<'_>]) -> Option<Vec<String>> {
    if commits.is_empty() {
        return None;
    }
    let mut files = std::collections::BTreeSet::new();
    for commit in commits {
        let mut any = false;
        for key in ["added", "modified", "removed"] {
            if let Some(list) = commit.array(key) {
                any = true;
                files.extend(list.iter().filter_map(|f| f.as_str()).map(str::to_owned));
            }
        }
        if !any {
            return None;
        }
    }
    Some(files.into_iter().collect())
}

/// `Name <email>`, or whichever of the two is present.
fn name_email(name: Option<&str>, email: Option<&str>) -> Option<String> {
    match (name.filter(|s| !s.is_empty()), email.filter(|s| !s.is_empty())) {
        (Some(n), Some(e)) => Some(format!("{n} <{e}>")),
        (Some(n), None) => Some(n.to_owned()),
        (None, Some(e)) => Some(format!("<{e}>")),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests;
