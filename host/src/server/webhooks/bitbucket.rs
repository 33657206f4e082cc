//! Bitbucket Cloud payloads (`X-Event-Key`): `repo:push`, `pullrequest:created`, `:updated`,
//! `:fulfilled` (merged) and `:rejected` (declined), and `diagnostics:ping`; every other event
//! is ignored.
//!
//! A push carries `push.changes[]`, one per ref; only the first is read (a push of several refs
//! at once builds the first). `new: null` is a delete and `old: null` a create. Bitbucket sends neither
//! clone URLs (the web URL `repository.links.html.href` clones as well) nor file lists, and its
//! pull request events name the head commit by 12 hex digits only.
//!
//! Reference: <https://support.atlassian.com/bitbucket-cloud/docs/event-payloads/>.

use super::json::Node;
use super::{Event, ParseError, PrAction, PullRequest, Push, PushParts, ZERO_SHA, is_sha_prefix};
use super::{valid_short_ref, wrong};

/// Parses a Bitbucket delivery whose `X-Event-Key` is `event`.
pub(super) fn parse(event: &str, root: &Node<'_>) -> Result<Event, ParseError> {
    let action = match event {
        "repo:push" => return push(root).map(Event::Push),
        "diagnostics:ping" => return Ok(Event::Ping),
        "pullrequest:created" => PrAction::Opened,
        "pullrequest:updated" => PrAction::Synchronize,
        "pullrequest:fulfilled" => PrAction::Closed { merged: true },
        "pullrequest:rejected" => PrAction::Closed { merged: false },
        other => return Ok(Event::Ignored { event: other.to_owned() }),
    };
    pull_request(root, action).map(Event::PullRequest)
}

/// The repository's web URL and full name.
fn repository(root: &Node<'_>) -> Result<(String, Option<String>), ParseError> {
    Ok((root.req_str("repository.links.html.href")?.to_owned(), root.str("repository.full_name").map(str::to_owned)))
}

/// The actor's nickname (or display name).
fn actor(root: &Node<'_>) -> Option<String> {
    root.str("actor.nickname").or_else(|| root.str("actor.display_name")).map(str::to_owned)
}

/// A `repo:push`: the first of `push.changes`.
fn push(root: &Node<'_>) -> Result<Push, ParseError> {
    let (repository, full_name) = repository(root)?;
    let changes = root.items("push.changes").unwrap_or_default();
    let change = changes.first().ok_or_else(|| ParseError::Missing { field: "push.changes[0]".to_owned() })?;
    let new = change.get("new");
    let old = change.get("old");
    // The ref's type and name come from `new`, or from `old` when the ref was deleted.
    let side = new.as_ref().or(old.as_ref()).ok_or_else(|| ParseError::Missing { field: change.path_of("new") })?;
    let name = side.req_str("name")?;
    if !valid_short_ref(name) {
        return Err(wrong(&side.path_of("name"), "a valid branch or tag name"));
    }
    let git_ref = match side.req_str("type")? {
        "branch" | "named_branch" => format!("refs/heads/{name}"),
        "tag" | "annotated_tag" => format!("refs/tags/{name}"),
        _ => return Err(wrong(&side.path_of("type"), "`branch` or `tag`")),
    };
    let after = match &new {
        Some(new) => new.req_str("target.hash")?.to_owned(),
        None => ZERO_SHA.to_owned(),
    };
    let before = old.as_ref().map(|old| old.req_str("target.hash")).transpose()?.map(str::to_owned);
    let target = new.as_ref().and_then(|n| n.get("target"));
    let after_field = new.as_ref().map(|n| n.path_of("target.hash")).unwrap_or_else(|| change.path_of("new"));
    let before_field = old.as_ref().map(|o| o.path_of("target.hash")).unwrap_or_default();
    PushParts {
        repository,
        full_name,
        git_ref,
        ref_field: side.path(),
        before: Some(before.unwrap_or_else(|| ZERO_SHA.to_owned())),
        before_field: &before_field,
        after,
        after_field: &after_field,
        created: Some(old.is_none() || change.bool("created").unwrap_or(false)),
        deleted: Some(new.is_none() || change.bool("closed").unwrap_or(false)),
        forced: change.bool("forced").unwrap_or(false),
        changed_files: None,
        message: target.as_ref().and_then(|t| t.str("message")).map(str::to_owned),
        author: target.as_ref().and_then(|t| t.str("author.raw")).map(str::to_owned),
        pusher: actor(root),
    }
    .build()
}

/// A `pullrequest:*` event.
fn pull_request(root: &Node<'_>, action: PrAction) -> Result<PullRequest, ParseError> {
    let (repository, full_name) = repository(root)?;
    let pr = root.req("pullrequest")?;
    let source = pr.req("source")?;
    let head_sha = source.req_str("commit.hash")?;
    if !is_sha_prefix(head_sha) {
        return Err(wrong(&source.path_of("commit.hash"), "a commit sha"));
    }
    let head_ref = source.req_str("branch.name")?;
    if !valid_short_ref(head_ref) {
        return Err(wrong(&source.path_of("branch.name"), "a valid branch name"));
    }
    let destination = pr.req("destination")?;
    let base_ref = destination.req_str("branch.name")?;
    if !valid_short_ref(base_ref) {
        return Err(wrong(&destination.path_of("branch.name"), "a valid branch name"));
    }
    Ok(PullRequest {
        repository,
        full_name,
        head_repository: source.str("repository.links.html.href").map(str::to_owned),
        number: pr.req_u64("id")?,
        action,
        head_sha: head_sha.to_owned(),
        head_ref: head_ref.to_owned(),
        base_ref: base_ref.to_owned(),
        title: pr.req_str("title")?.to_owned(),
        author: pr.str("author.nickname").or_else(|| pr.str("author.display_name")).map(str::to_owned),
    })
}
