//! GitLab payloads (`X-Gitlab-Event`): `Push Hook`, `Tag Push Hook` and `Merge Request Hook`;
//! every other hook (`System Hook`, `Note Hook`, `Pipeline Hook`, ...) is ignored. GitLab has no
//! ping: its "Test" button sends a sample `Push Hook`.
//!
//! Merge request actions: `open`, `reopen`, `close`, `merge`, and `update`, which is
//! [`PrAction::Synchronize`] when it carries `oldrev` (new commits were pushed) and
//! `Other("update")` otherwise (title, labels, ...).
//!
//! Reference: <https://docs.gitlab.com/user/project/integrations/webhook_events/>.

use super::json::Node;
use super::{Event, ParseError, PrAction, PullRequest, Push, PushParts, changed_files, is_sha_prefix, name_email};
use super::{valid_short_ref, wrong};

/// Parses a GitLab delivery whose `X-Gitlab-Event` is `event`.
pub(super) fn parse(event: &str, root: &Node<'_>) -> Result<Event, ParseError> {
    match event {
        "Push Hook" | "Tag Push Hook" => push(root).map(Event::Push),
        "Merge Request Hook" => merge_request(root).map(Event::PullRequest),
        other => Ok(Event::Ignored { event: other.to_owned() }),
    }
}

/// The project's HTTP clone URL (older payloads: `repository.git_http_url`) and its path.
fn project(root: &Node<'_>) -> Result<(String, Option<String>), ParseError> {
    let url = match root.str("project.git_http_url").or_else(|| root.str("repository.git_http_url")) {
        Some(url) => url.to_owned(),
        None => root.req_str("project.git_http_url")?.to_owned(),
    };
    Ok((url, root.str("project.path_with_namespace").map(str::to_owned)))
}

/// A `Push Hook` or `Tag Push Hook`.
fn push(root: &Node<'_>) -> Result<Push, ParseError> {
    let (repository, full_name) = project(root)?;
    let after = root.req_str("after")?;
    let commits = root.items("commits").unwrap_or_default();
    // GitLab lists at most 20 commits; `total_commits_count` says how many there were.
    let truncated = root.u64("total_commits_count").is_some_and(|total| total > commits.len() as u64);
    // Commits are listed oldest first; the head is the one whose id is `after`.
    let head = commits.iter().find(|c| c.str("id") == Some(after)).or(commits.last());
    let message = root
        .str("message")
        .filter(|m| !m.is_empty())
        .or_else(|| head.and_then(|h| h.str("message")))
        .map(str::to_owned);
    let author = head.and_then(|h| name_email(h.str("author.name"), h.str("author.email")));
    PushParts {
        repository,
        full_name,
        git_ref: root.req_str("ref")?.to_owned(),
        ref_field: "ref",
        before: root.str("before").map(str::to_owned),
        before_field: "before",
        after: after.to_owned(),
        after_field: "after",
        created: None,
        deleted: None,
        forced: false,
        changed_files: if truncated { None } else { changed_files(&commits) },
        message,
        author,
        pusher: root.str("user_username").or_else(|| root.str("user_name")).map(str::to_owned),
    }
    .build()
}

/// A `Merge Request Hook`.
fn merge_request(root: &Node<'_>) -> Result<PullRequest, ParseError> {
    let (repository, full_name) = project(root)?;
    let attrs = root.req("object_attributes")?;
    let action = match attrs.str("action") {
        Some("open") => PrAction::Opened,
        Some("reopen") => PrAction::Reopened,
        Some("close") => PrAction::Closed { merged: false },
        Some("merge") => PrAction::Closed { merged: true },
        Some("update") if attrs.str("oldrev").is_some_and(|r| !r.is_empty()) => PrAction::Synchronize,
        Some(other) => PrAction::Other(other.to_owned()),
        None => PrAction::Other(attrs.str("state").unwrap_or("unknown").to_owned()),
    };
    let last_commit = attrs.req("last_commit")?;
    let head_sha = last_commit.req_str("id")?;
    if !is_sha_prefix(head_sha) {
        return Err(wrong(&last_commit.path_of("id"), "a commit sha"));
    }
    let head_ref = attrs.req_str("source_branch")?;
    if !valid_short_ref(head_ref) {
        return Err(wrong(&attrs.path_of("source_branch"), "a valid branch name"));
    }
    let base_ref = attrs.req_str("target_branch")?;
    if !valid_short_ref(base_ref) {
        return Err(wrong(&attrs.path_of("target_branch"), "a valid branch name"));
    }
    Ok(PullRequest {
        repository,
        full_name,
        head_repository: attrs.str("source.git_http_url").map(str::to_owned),
        number: attrs.req_u64("iid")?,
        action,
        head_sha: head_sha.to_owned(),
        head_ref: head_ref.to_owned(),
        base_ref: base_ref.to_owned(),
        title: attrs.req_str("title")?.to_owned(),
        author: root.str("user.username").or_else(|| root.str("user.name")).map(str::to_owned),
    })
}
