//! [`PluginError`]: every failure of a plugin call or load, with the plugin's name and version
//! (or its digest, before its manifest is known) in the message, e.g.
//! `plugin "slack" 1.2.0: timed out after 5 s`.

use std::fmt;
use std::time::Duration;

use crate::capability::Denial;
use crate::trust::Digest;

/// Which plugin an error is about: its manifest name and version once known, else its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginLabel {
    /// A plugin whose manifest has been read.
    Named {
        /// The manifest's name.
        name: String,
        /// The manifest's version.
        version: String,
    },
    /// A component whose manifest is not known (yet).
    Digest(Digest),
}

impl fmt::Display for PluginLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginLabel::Named { name, version } => write!(f, "plugin {name:?} {version}"),
            PluginLabel::Digest(digest) => write!(f, "plugin {}", digest.short()),
        }
    }
}

/// A failed plugin load or call.
#[derive(Debug, thiserror::Error)]
#[error("{plugin}: {kind}")]
pub struct PluginError {
    /// The plugin it is about.
    pub plugin: PluginLabel,
    /// What went wrong.
    pub kind: ErrorKind,
}

impl PluginError {
    pub(crate) fn new(plugin: &PluginLabel, kind: ErrorKind) -> Self {
        PluginError { plugin: plugin.clone(), kind }
    }
}

/// What went wrong in a plugin load or call.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// The component's digest is not in the trust allowlist.
    #[error("{digest} is not in the trust allowlist; allow it before loading (inspecting is allowed)")]
    NotTrusted {
        /// The refused component's digest.
        digest: Digest,
    },
    /// The bytes are not a valid component, or wasmtime could not compile them.
    #[error("not a loadable WebAssembly component: {0}")]
    Compile(String),
    /// The component does not implement a world this host knows.
    #[error("{0}")]
    UnknownWorld(String),
    /// The component needs imports its world does not provide.
    #[error("cannot be linked as a {world} plugin: {reason}")]
    Link {
        /// The world it was linked as.
        world: &'static str,
        /// Wasmtime's reason.
        reason: String,
    },
    /// The caller used the entry point of another world.
    #[error("is a {actual} plugin, not a {expected}")]
    WrongWorld {
        /// The world whose entry point was called.
        expected: &'static str,
        /// The plugin's world.
        actual: &'static str,
    },
    /// The manifest is malformed.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// The call ran past its deadline (guest code or a waiting host call).
    /// Every instance slot of the pooling allocator is in use.
    #[error(
        "cannot start: all {0} plugin instances are in use; try again when calls finish, or raise the runtime's max_instances"
    )]
    NoInstanceSlot(u32),
    #[error("timed out after {}", human_duration(*.0))]
    TimedOut(Duration),
    /// The guest tried to grow its memory past the cap.
    #[error("exceeded its memory limit of {} MiB", .limit_bytes / (1024 * 1024))]
    MemoryExceeded {
        /// The cap in bytes.
        limit_bytes: usize,
    },
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access, ...).
    #[error("crashed: {0}")]
    Trap(String),
    /// The guest returned or wrote more than the host accepts.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    OutputTooLarge {
        /// Which output.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The guest used a capability it does not have.
    #[error("{0}")]
    Denied(Denial),
    /// The plugin ran and reported a failure of its own.
    #[error("failed: {0}")]
    Failed(String),
    /// The host could not set up the call (e.g. the workspace cannot be opened).
    #[error("host error: {0}")]
    Host(String),
}

/// `5 s`, `250 ms`, `1.5 s`: how timeouts read in messages.
pub(crate) fn human_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_plugin_and_version() {
        let label = PluginLabel::Named { name: "slack".into(), version: "1.2.0".into() };
        let err = PluginError::new(&label, ErrorKind::TimedOut(Duration::from_secs(5)));
        assert_eq!(err.to_string(), r#"plugin "slack" 1.2.0: timed out after 5 s"#);
        let err = PluginError::new(&label, ErrorKind::TimedOut(Duration::from_millis(250)));
        assert_eq!(err.to_string(), r#"plugin "slack" 1.2.0: timed out after 250 ms"#);
        let err = PluginError::new(&label, ErrorKind::TimedOut(Duration::from_millis(1500)));
        assert_eq!(err.to_string(), r#"plugin "slack" 1.2.0: timed out after 1.5 s"#);
    }
}
