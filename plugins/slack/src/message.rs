//! The Slack message for one event: a fallback `text` line and one attachment whose colour
//! shows the status and whose Block Kit blocks show the job, build, ref, commit, duration
//! and a link to the build.

use chengis_plugin_sdk::notifier::Event;
use chengis_plugin_sdk::types::Status;
use serde_json::{Value, json};

use crate::settings::Outcome;

/// The longest commit subject shown; longer ones are cut with `…`.
const SUBJECT_CHARS: usize = 120;

/// The attachment colour of an outcome and status (Slack's own green and red).
pub fn colour(outcome: Outcome, status: Status) -> &'static str {
    match (outcome, status) {
        (Outcome::Success | Outcome::Fixed, _) => "#2eb886",
        (_, Status::Failure) => "#e01e5a",
        (_, Status::Error) => "#a30200",
        (_, Status::Pending | Status::Running) => "#1d9bd1",
        _ => "#9e9e9e",
    }
}

/// The status as a word for people: `succeeded`, `fixed`, `failed`, ...
pub fn verb(outcome: Outcome, status: Status) -> &'static str {
    match (outcome, status) {
        (Outcome::Fixed, _) => "fixed",
        (_, Status::Success) => "succeeded",
        (_, Status::Failure) => "failed",
        (_, Status::Error) => "errored",
        (_, Status::Cancelled) => "was cancelled",
        (_, Status::Skipped) => "was skipped",
        (_, Status::Running) => "is running",
        (_, Status::Pending) => "is pending",
    }
}

/// The whole message (the JSON body posted to the webhook).
pub fn message(event: &Event, outcome: Outcome) -> Value {
    let build = &event.build;
    let commit = &build.commit;
    let job = event.job.as_ref();
    let status = job.map_or(build.status, |j| j.status);
    let verb = verb(outcome, status);
    let short_sha = commit.sha.get(..7).unwrap_or(&commit.sha);
    let subject = truncate(commit.message.lines().next().unwrap_or("").trim(), SUBJECT_CHARS);
    let reference = match (&commit.branch, &commit.tag) {
        (Some(branch), _) => Some(("Branch", branch.as_str())),
        (None, Some(tag)) => Some(("Tag", tag.as_str())),
        (None, None) => None,
    };
    let duration = job.map_or(build.duration_ms, |j| j.duration_ms);

    let title = format!("{} #{}", build.pipeline, build.number);
    let mut fallback = match job {
        Some(job) => format!("{title}: job {} {verb}", job.name),
        None => format!("{title} {verb}"),
    };
    let at = match reference {
        Some((_, name)) => format!("{name} @ {short_sha}"),
        None => short_sha.to_string(),
    };
    fallback.push_str(&format!(" ({at})"));

    let linked_title = match &build.url {
        Some(url) => format!("*<{}|{}>*", link_target(url), escape(&title)),
        None => format!("*{}*", escape(&title)),
    };
    let headline = match job {
        Some(job) => format!("{linked_title} job *{}* {verb}", escape(&job.name)),
        None => format!("{linked_title} {verb}"),
    };

    let job_name = match job {
        Some(job) => format!("{} / {}", build.pipeline, job.name),
        None => build.pipeline.clone(),
    };
    let mut fields = vec![
        field("Status", &capitalise(verb)),
        field("Job", &escape(&job_name)),
        field("Build", &format!("#{}", build.number)),
    ];
    if let Some((label, name)) = reference {
        fields.push(field(label, &escape(name)));
    }
    let mut commit_text = format!("`{short_sha}`");
    if !subject.is_empty() {
        commit_text.push_str(&format!(" {}", escape(&subject)));
    }
    fields.push(field("Commit", &commit_text));
    if let Some(ms) = duration {
        fields.push(field("Duration", &human_duration(ms)));
    }

    let mut context = format!("Triggered by {}", escape(&build.trigger));
    let author = commit.author.split(" <").next().unwrap_or("").trim();
    if !author.is_empty() {
        context.push_str(&format!(" · {}", escape(author)));
    }
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": headline}}),
        json!({"type": "section", "fields": fields}),
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]}),
    ];
    if let Some(url) = &build.url {
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": format!("<{}|View build #{}>", link_target(url), build.number)}],
        }));
    }
    json!({
        "text": escape(&fallback),
        "attachments": [{"color": colour(outcome, status), "blocks": blocks}],
    })
}

/// One `fields` entry of a section: a bold label over its value.
fn field(label: &str, value: &str) -> Value {
    json!({"type": "mrkdwn", "text": format!("*{label}*\n{value}")})
}

/// Escapes the three characters Slack's mrkdwn gives meaning to: `&`, `<` and `>`.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A URL made safe inside `<url|label>`: `|` and `>` would end it early.
fn link_target(url: &str) -> String {
    url.replace('|', "%7C").replace('>', "%3E").replace('<', "%3C")
}

/// `text` cut to `max` characters, ending in `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// `succeeded` → `Succeeded`.
fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// A duration for people: `850 ms`, `4.2 s`, `3 m 5 s`, `2 h 7 m`.
pub fn human_duration(ms: u64) -> String {
    let seconds = ms / 1000;
    match ms {
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} m {} s", seconds / 60, seconds % 60),
        _ => format!("{} h {} m", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_duration(850), "850 ms");
        assert_eq!(human_duration(4_250), "4.2 s");
        assert_eq!(human_duration(185_000), "3 m 5 s");
        assert_eq!(human_duration(7_620_000), "2 h 7 m");
    }

    #[test]
    fn escaping_and_truncating() {
        assert_eq!(escape("a <b> & c"), "a &lt;b&gt; &amp; c");
        assert_eq!(link_target("https://ci/x?a|b>"), "https://ci/x?a%7Cb%3E");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        assert_eq!(capitalise("was cancelled"), "Was cancelled");
    }

    #[test]
    fn colours() {
        assert_eq!(colour(Outcome::Fixed, Status::Success), "#2eb886");
        assert_eq!(colour(Outcome::Failure, Status::Failure), "#e01e5a");
        assert_eq!(colour(Outcome::Failure, Status::Error), "#a30200");
        assert_eq!(colour(Outcome::Other, Status::Cancelled), "#9e9e9e");
    }
}
