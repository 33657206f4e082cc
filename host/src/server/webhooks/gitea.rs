//! Gitea (and Forgejo) payloads (`X-Gitea-Event`): `push`, `pull_request`, `create` of a tag,
//! `delete` and `ping`; every other event is ignored. The shapes mirror GitHub's, read by
//! [`super::github`]; the differences are `synchronized`, a `sha` on `create`, and a push
//! payload without `created`/`deleted`/`forced` (derived from the zero shas instead).
//!
//! Reference: <https://docs.gitea.com/usage/webhooks> and Gitea's `modules/structs/hook.go`.

use super::json::Node;
use super::{Event, ParseError, github};

/// Parses a Gitea delivery whose `X-Gitea-Event` is `event`.
pub(super) fn parse(event: &str, root: &Node<'_>) -> Result<Event, ParseError> {
    match event {
        "push" => github::push(root).map(Event::Push),
        "pull_request" => github::pull_request(root).map(Event::PullRequest),
        "ping" => Ok(Event::Ping),
        "delete" => github::ref_event(root, "delete", None).map(Event::Push),
        // Gitea also sends a `push` of the new tag (with its own delivery id): building on the
        // `create` too would build the tag twice.
        other => Ok(Event::Ignored { event: other.to_owned() }),
    }
}
