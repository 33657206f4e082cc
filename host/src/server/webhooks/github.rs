//! GitHub payloads (`X-GitHub-Event`): `push`, `pull_request`, `ping` and `delete`; every other
//! event, `create` included, is ignored. Gitea's payloads mirror these, so [`super::gitea`]
//! reuses the readers here.
//!
//! Reference: <https://docs.github.com/en/webhooks/webhook-events-and-payloads>.

use super::json::Node;
use super::{
    Event, ParseError, PrAction, PullRequest, Push, PushParts, ZERO_SHA, changed_files, is_sha_prefix, name_email,
    valid_short_ref, wrong,
};

/// Parses a GitHub delivery whose `X-GitHub-Event` is `event`.
pub(super) fn parse(event: &str, root: &Node<'_>) -> Result<Event, ParseError> {
    match event {
        "push" => push(root).map(Event::Push),
        "pull_request" => pull_request(root).map(Event::PullRequest),
        "ping" => Ok(Event::Ping),
        "delete" => ref_event(root, "delete", None).map(Event::Push),
        // `create` carries no sha; the `push` event GitHub sends for the same new ref does.
        other => Ok(Event::Ignored { event: other.to_owned() }),
    }
}

/// The repository's clone URL (falling back to its web URL) and full name.
pub(super) fn repository(root: &Node<'_>) -> Result<(String, Option<String>), ParseError> {
    let repo = root.req("repository")?;
    let url = match repo.str("clone_url").or_else(|| repo.str("html_url")) {
        Some(url) => url.to_owned(),
        None => repo.req_str("clone_url")?.to_owned(),
    };
    Ok((url, repo.str("full_name").map(str::to_owned)))
}

/// A `push` event (GitHub and Gitea).
pub(super) fn push(root: &Node<'_>) -> Result<Push, ParseError> {
    let (repository, full_name) = repository(root)?;
    let commits = root.items("commits").unwrap_or_default();
    // Gitea says how many commits there were and sends a limited list.
    let truncated = root.u64("total_commits").is_some_and(|total| total > commits.len() as u64);
    let head = root.get("head_commit");
    let message = head.as_ref().and_then(|h| h.str("message")).map(str::to_owned);
    let author = head.as_ref().and_then(|h| name_email(h.str("author.name"), h.str("author.email")));
    let pusher = root
        .str("pusher.login")
        .or_else(|| root.str("pusher.username"))
        .or_else(|| root.str("pusher.name"))
        .or_else(|| root.str("sender.login"))
        .map(str::to_owned);
    PushParts {
        repository,
        full_name,
        git_ref: root.req_str("ref")?.to_owned(),
        ref_field: "ref",
        before: root.str("before").map(str::to_owned),
        before_field: "before",
        after: root.req_str("after")?.to_owned(),
        after_field: "after",
        created: root.bool("created"),
        deleted: root.bool("deleted"),
        forced: root.bool("forced").unwrap_or(false),
        changed_files: if truncated { None } else { changed_files(&commits) },
        message,
        author,
        pusher,
    }
    .build()
}

/// A `create` or `delete` event (`ref` is a short name, `ref_type` is `branch` or `tag`) as a
/// [`Push`]: created at `sha` when given, deleted otherwise.
pub(super) fn ref_event(root: &Node<'_>, event: &str, sha: Option<&str>) -> Result<Push, ParseError> {
    let (repository, full_name) = repository(root)?;
    let name = root.req_str("ref")?;
    if !valid_short_ref(name) {
        return Err(wrong("ref", "a valid branch or tag name"));
    }
    let git_ref = match root.req_str("ref_type")? {
        "branch" => format!("refs/heads/{name}"),
        "tag" => format!("refs/tags/{name}"),
        _ => return Err(wrong("ref_type", "`branch` or `tag`")),
    };
    let created = sha.is_some();
    PushParts {
        repository,
        full_name,
        git_ref,
        ref_field: "ref",
        before: created.then(|| ZERO_SHA.to_owned()),
        before_field: "before",
        after: sha.unwrap_or(ZERO_SHA).to_owned(),
        after_field: if created { "sha" } else { event },
        created: Some(created),
        deleted: Some(!created),
        forced: false,
        changed_files: None,
        message: None,
        author: None,
        pusher: root.str("sender.login").or_else(|| root.str("sender.username")).map(str::to_owned),
    }
    .build()
}

/// A `pull_request` event (GitHub and Gitea; Gitea says `synchronized`).
pub(super) fn pull_request(root: &Node<'_>) -> Result<PullRequest, ParseError> {
    let (repository, full_name) = repository(root)?;
    let pr = root.req("pull_request")?;
    let merged = pr.bool("merged").unwrap_or(false);
    let action = match root.req_str("action")? {
        "opened" => PrAction::Opened,
        "synchronize" | "synchronized" => PrAction::Synchronize,
        "reopened" => PrAction::Reopened,
        "closed" => PrAction::Closed { merged },
        other => PrAction::Other(other.to_owned()),
    };
    let number = match root.u64("number") {
        Some(n) => n,
        None => pr.req_u64("number")?,
    };
    let head = pr.req("head")?;
    let head_sha = head.req_str("sha")?;
    if !is_sha_prefix(head_sha) {
        return Err(wrong(&head.path_of("sha"), "a commit sha"));
    }
    let head_ref = head.req_str("ref")?;
    if !valid_short_ref(head_ref) {
        return Err(wrong(&head.path_of("ref"), "a valid branch name"));
    }
    let base = pr.req("base")?;
    let base_ref = base.req_str("ref")?;
    if !valid_short_ref(base_ref) {
        return Err(wrong(&base.path_of("ref"), "a valid branch name"));
    }
    Ok(PullRequest {
        repository,
        full_name,
        head_repository: head.str("repo.clone_url").map(str::to_owned),
        number,
        action,
        head_sha: head_sha.to_owned(),
        head_ref: head_ref.to_owned(),
        base_ref: base_ref.to_owned(),
        title: pr.req_str("title")?.to_owned(),
        author: pr.str("user.login").or_else(|| pr.str("user.username")).map(str::to_owned),
    })
}
