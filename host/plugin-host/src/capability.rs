//! Capabilities: what a plugin requests in its manifest, what an operator grants, and the one
//! [`Checker`] that every host import asks before acting for a plugin. A capability is usable
//! only when it is both requested and granted; a denial says what was denied and which grant
//! (or manifest entry) would allow it.
//!
//! Grants are written as text, the form the CLI and the allowlist store:
//! `http:https://hooks.slack.com:443`, `http:https://*.example.com:*`, `secret:SLACK_TOKEN`,
//! `workspace:read`, `workspace:write`, `exec`.

use std::fmt;
use std::str::FromStr;

use crate::types;

/// An outbound HTTP destination pattern: `scheme://host:port`, where the host may start with
/// `*.` (any subdomain) and the port may be `*` or left out (the scheme's default port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl HostPattern {
    /// Whether a request to `scheme://host:port` matches.
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        if !self.scheme.eq_ignore_ascii_case(scheme) {
            return false;
        }
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host.to_ascii_lowercase();
        match self.host.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => self.host == host,
        }
    }
}

impl FromStr for HostPattern {
    type Err = CapabilityParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| CapabilityParseError(format!("{text:?}: {why}"));
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("expected scheme://host:port"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, "*")) => (host, None),
            Some((host, port)) => (host, Some(port.parse::<u16>().map_err(|_| bad("the port must be a number or *"))?)),
            None => (rest, Some(default_port)),
        };
        let bare = host.strip_prefix("*.").unwrap_or(host);
        let valid = !bare.is_empty() && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid {
            return Err(bad("the host must be a DNS name or IP address, optionally starting with *."));
        }
        Ok(HostPattern { scheme, host: host.to_ascii_lowercase(), port })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}://{}:{port}", self.scheme, self.host),
            None => write!(f, "{}://{}:*", self.scheme, self.host),
        }
    }
}

/// One capability, as requested by a manifest or granted by an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Outbound HTTP to matching destinations.
    OutboundHttp(HostPattern),
    /// Reading the named secret.
    Secret(String),
    /// Reading the job workspace.
    WorkspaceRead,
    /// Reading and writing the job workspace.
    WorkspaceWrite,
    /// Running commands in the job's sandbox.
    SandboxExec,
}

/// A capability or grant that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid capability {0}")]
pub struct CapabilityParseError(String);

impl FromStr for Capability {
    type Err = CapabilityParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            Some(("http", pattern)) => Ok(Capability::OutboundHttp(pattern.parse()?)),
            Some(("secret", name)) if !name.is_empty() => Ok(Capability::Secret(name.to_string())),
            Some(("workspace", "read")) => Ok(Capability::WorkspaceRead),
            Some(("workspace", "write")) => Ok(Capability::WorkspaceWrite),
            None if text == "exec" => Ok(Capability::SandboxExec),
            _ => Err(CapabilityParseError(format!(
                "{text:?}: expected http:SCHEME://HOST:PORT, secret:NAME, workspace:read, \
                 workspace:write or exec"
            ))),
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capability::OutboundHttp(pattern) => write!(f, "http:{pattern}"),
            Capability::Secret(name) => write!(f, "secret:{name}"),
            Capability::WorkspaceRead => f.write_str("workspace:read"),
            Capability::WorkspaceWrite => f.write_str("workspace:write"),
            Capability::SandboxExec => f.write_str("exec"),
        }
    }
}

impl Capability {
    /// Converts a manifest's requested capability.
    pub fn from_wit(capability: &types::Capability) -> Result<Self, CapabilityParseError> {
        Ok(match capability {
            types::Capability::OutboundHttp(pattern) => Capability::OutboundHttp(pattern.parse()?),
            types::Capability::Secret(name) if !name.is_empty() => Capability::Secret(name.clone()),
            types::Capability::Secret(_) => {
                return Err(CapabilityParseError("secret(\"\"): a secret needs a name".into()));
            }
            types::Capability::WorkspaceRead => Capability::WorkspaceRead,
            types::Capability::WorkspaceWrite => Capability::WorkspaceWrite,
            types::Capability::SandboxExec => Capability::SandboxExec,
        })
    }

    /// How the same capability is written in WIT, for messages to plugin authors.
    fn wit_form(&self) -> String {
        match self {
            Capability::OutboundHttp(pattern) => format!("outbound-http(\"{pattern}\")"),
            Capability::Secret(name) => format!("secret(\"{name}\")"),
            Capability::WorkspaceRead => "workspace-read".into(),
            Capability::WorkspaceWrite => "workspace-write".into(),
            Capability::SandboxExec => "sandbox-exec".into(),
        }
    }
}

/// The capabilities an operator granted a plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(Vec<Capability>);

impl Grants {
    /// No capabilities at all (the default, and what `inspect` uses).
    pub fn none() -> Self {
        Grants(Vec::new())
    }

    /// Parses grants written as text (see the module docs).
    pub fn parse<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Self, CapabilityParseError> {
        texts.into_iter().map(str::parse).collect::<Result<Vec<_>, _>>().map(Grants)
    }

    /// The granted capabilities.
    pub fn capabilities(&self) -> &[Capability] {
        &self.0
    }
}

/// Why a capability check failed: what was asked for and how to allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} denied: {why}")]
pub struct Denial {
    /// What the plugin tried, e.g. `outbound HTTP to https://evil.example:443`.
    pub what: String,
    /// Why, with the fix.
    pub why: String,
}

/// Whether the workspace may be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceAccess {
    /// Read only.
    Read,
    /// Read and write.
    Write,
}

/// The one capability checker: the intersection of a plugin's requests and its grants.
#[derive(Debug, Clone, Default)]
pub struct Checker {
    requested: Vec<Capability>,
    granted: Vec<Capability>,
}

impl Checker {
    /// A checker for a plugin's manifest requests and the operator's grants.
    pub fn new(requested: Vec<Capability>, granted: &Grants) -> Self {
        Checker { requested, granted: granted.0.clone() }
    }

    /// A checker that denies everything (used to read manifests and by `inspect`).
    pub fn deny_all() -> Self {
        Checker::default()
    }

    /// Checks an outbound HTTP request to `scheme://host:port`.
    pub fn check_http(&self, scheme: &str, host: &str, port: u16) -> Result<(), Denial> {
        let what = format!("outbound HTTP to {scheme}://{host}:{port}");
        let matches = |caps: &[Capability]| {
            caps.iter().any(|c| matches!(c, Capability::OutboundHttp(p) if p.matches(scheme, host, port)))
        };
        let wanted = Capability::OutboundHttp(HostPattern {
            scheme: scheme.to_ascii_lowercase(),
            host: host.to_ascii_lowercase(),
            port: Some(port),
        });
        self.decide(what, matches(&self.requested), matches(&self.granted), &wanted)
    }

    /// Checks reading the secret `name`.
    pub fn check_secret(&self, name: &str) -> Result<(), Denial> {
        let wanted = Capability::Secret(name.to_string());
        let has = |caps: &[Capability]| caps.contains(&wanted);
        self.decide(format!("reading secret {name:?}"), has(&self.requested), has(&self.granted), &wanted)
    }

    /// Checks running a command in the sandbox.
    pub fn check_exec(&self) -> Result<(), Denial> {
        let wanted = Capability::SandboxExec;
        let has = |caps: &[Capability]| caps.contains(&wanted);
        self.decide("running a command in the sandbox".into(), has(&self.requested), has(&self.granted), &wanted)
    }

    /// The workspace access the plugin has, if any.
    pub fn workspace_access(&self) -> Option<WorkspaceAccess> {
        let level = |caps: &[Capability]| {
            if caps.contains(&Capability::WorkspaceWrite) {
                Some(WorkspaceAccess::Write)
            } else if caps.contains(&Capability::WorkspaceRead) {
                Some(WorkspaceAccess::Read)
            } else {
                None
            }
        };
        match (level(&self.requested)?, level(&self.granted)?) {
            (WorkspaceAccess::Write, WorkspaceAccess::Write) => Some(WorkspaceAccess::Write),
            _ => Some(WorkspaceAccess::Read),
        }
    }

    fn decide(&self, what: String, requested: bool, granted: bool, wanted: &Capability) -> Result<(), Denial> {
        match (requested, granted) {
            (true, true) => Ok(()),
            (false, _) => Err(Denial {
                what,
                why: format!(
                    "the plugin's manifest does not request it (add {} to its capabilities)",
                    wanted.wit_form()
                ),
            }),
            (true, false) => {
                Err(Denial { what, why: format!("the operator has not granted it (grant `{wanted}` to allow it)") })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker(requested: &[&str], granted: &[&str]) -> Checker {
        let requested = requested.iter().map(|r| r.parse().unwrap()).collect();
        Checker::new(requested, &Grants::parse(granted.iter().copied()).unwrap())
    }

    #[test]
    fn http_needs_request_and_grant() {
        let c = checker(&["http:https://hooks.slack.com"], &["http:https://*.slack.com:*"]);
        assert!(c.check_http("https", "hooks.slack.com", 443).is_ok());
        assert!(c.check_http("https", "HOOKS.slack.com", 443).is_ok());
        let denied = c.check_http("https", "hooks.slack.com", 8443).unwrap_err();
        assert!(denied.why.contains("manifest does not request"), "{denied}");
        let c = checker(&["http:https://*.slack.com:*"], &["http:https://hooks.slack.com:443"]);
        let denied = c.check_http("https", "api.slack.com", 443).unwrap_err();
        assert_eq!(
            denied.to_string(),
            "outbound HTTP to https://api.slack.com:443 denied: the operator has not granted it \
             (grant `http:https://api.slack.com:443` to allow it)"
        );
    }

    #[test]
    fn wildcard_host_needs_a_subdomain() {
        let pattern: HostPattern = "https://*.example.com:*".parse().unwrap();
        assert!(pattern.matches("https", "a.example.com", 1));
        assert!(!pattern.matches("https", "example.com", 443));
        assert!(!pattern.matches("https", "evilexample.com", 443));
        assert!(!pattern.matches("http", "a.example.com", 80));
    }

    #[test]
    fn secrets_and_exec_and_workspace() {
        let c = checker(&["secret:TOKEN", "exec", "workspace:write"], &["secret:TOKEN", "workspace:read"]);
        assert!(c.check_secret("TOKEN").is_ok());
        assert!(c.check_secret("OTHER").unwrap_err().why.contains("secret(\"OTHER\")"));
        assert!(c.check_exec().unwrap_err().why.contains("grant `exec`"));
        assert_eq!(c.workspace_access(), Some(WorkspaceAccess::Read));
        assert_eq!(checker(&["workspace:read"], &[]).workspace_access(), None);
    }

    #[test]
    fn grants_parse_and_print_back() {
        for text in ["http:https://a.example:443", "http:http://*.b.example:*", "secret:X", "workspace:read", "exec"] {
            assert_eq!(text.parse::<Capability>().unwrap().to_string(), text);
        }
        assert_eq!("http:https://a.example".parse::<Capability>().unwrap().to_string(), "http:https://a.example:443");
        assert!("http:ftp://a:1".parse::<Capability>().unwrap_err().to_string().contains("http or https"));
        assert!("net".parse::<Capability>().is_err());
    }
}
