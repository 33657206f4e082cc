//! Capabilities: what a plugin requests in its manifest, what an operator grants, and the one
//! [`Checker`] that every host import asks before acting for a plugin. A capability is usable
//! only when it is both requested and granted; a denial says what was denied and which grant
//! (or manifest entry) would allow it.
//!
//! Grants are written as text, the form the CLI and the allowlist store:
//! `http:https://hooks.slack.com:443`, `http:https://*.example.com:*`, `secret:SLACK_TOKEN`,
//! `workspace:read`, `workspace:write`, `exec`, `tcp:smtp.example.com:587`.

use std::fmt;
use std::str::FromStr;

use crate::types;

/// An outbound HTTP destination pattern: `scheme://host:port`, where the host may start with
/// `*.` (any subdomain) or be `*` (any host: a plugin whose URL is configuration requests it,
/// and the operator's grants say which hosts), and the port may be `*` or left out (the
/// scheme's default port).
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
        if self.host == "*" {
            return true;
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
        let valid =
            host == "*" || !bare.is_empty() && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid {
            return Err(bad("the host must be a DNS name or IP address, optionally starting with *."));
        }
        Ok(HostPattern { scheme, host: host.to_ascii_lowercase(), port })
    }
}

impl HostPattern {
    /// Whether the pattern names any host (`scheme://*:port`).
    pub fn is_any_host(&self) -> bool {
        self.host == "*"
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

/// An outbound TCP destination: `host:port`. In a manifest the host may be `*` and the port
/// `*` (a plugin whose server is configuration); the operator's grants name real destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpTarget {
    /// The DNS name or IP address, lowercase, or `*` for any host.
    pub host: String,
    /// The port, or `None` for any port.
    pub port: Option<u16>,
}

impl TcpTarget {
    /// Whether a connection to `host:port` matches.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        (self.host == "*" || self.host.eq_ignore_ascii_case(host)) && self.port.is_none_or(|p| p == port)
    }

    /// Whether it names one destination (no `*`).
    pub fn is_concrete(&self) -> bool {
        self.host != "*" && self.port.is_some()
    }
}

impl FromStr for TcpTarget {
    type Err = CapabilityParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| CapabilityParseError(format!("{text:?}: {why}"));
        let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("expected host:port"))?;
        let port = match port {
            "*" => None,
            _ => {
                Some(port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("the port must be 1-65535 or *"))?)
            }
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let valid = host == "*"
            || !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'));
        if !valid {
            return Err(bad("the host must be a DNS name, an IP address or *"));
        }
        Ok(TcpTarget { host: host.to_ascii_lowercase(), port })
    }
}

impl fmt::Display for TcpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:", self.host)?;
        } else {
            write!(f, "{}:", self.host)?;
        }
        match self.port {
            Some(port) => write!(f, "{port}"),
            None => f.write_str("*"),
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
    /// Outbound TCP (`wasi:sockets`) to one `host:port`.
    OutboundTcp(TcpTarget),
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
            Some(("tcp", target)) => Ok(Capability::OutboundTcp(target.parse()?)),
            None if text == "exec" => Ok(Capability::SandboxExec),
            _ => Err(CapabilityParseError(format!(
                "{text:?}: expected http:SCHEME://HOST:PORT, secret:NAME, workspace:read, \
                 workspace:write, exec or tcp:HOST:PORT"
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
            Capability::OutboundTcp(target) => write!(f, "tcp:{target}"),
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
            types::Capability::OutboundTcp(target) => Capability::OutboundTcp(target.parse()?),
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
            Capability::OutboundTcp(target) => format!("outbound-tcp(\"{target}\")"),
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

    /// Checks an outbound TCP connection to `host:port`.
    pub fn check_tcp(&self, host: &str, port: u16) -> Result<(), Denial> {
        let wanted = TcpTarget { host: host.to_ascii_lowercase(), port: Some(port) };
        let matches =
            |caps: &[Capability]| caps.iter().any(|c| matches!(c, Capability::OutboundTcp(t) if t.matches(host, port)));
        let what = format!("outbound TCP to {wanted}");
        self.decide(what, matches(&self.requested), matches(&self.granted), &Capability::OutboundTcp(wanted))
    }

    /// Whether the manifest requests any outbound TCP.
    pub fn requests_tcp(&self) -> bool {
        self.requested.iter().any(|c| matches!(c, Capability::OutboundTcp(_)))
    }

    /// The granted TCP destinations that a request covers (only concrete grants: the host must
    /// know which addresses to open).
    pub fn tcp_targets(&self) -> Vec<TcpTarget> {
        self.granted
            .iter()
            .filter_map(|c| match c {
                Capability::OutboundTcp(t)
                    if t.is_concrete() && t.port.is_some_and(|port| self.check_tcp(&t.host, port).is_ok()) =>
                {
                    Some(t.clone())
                }
                _ => None,
            })
            .collect()
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
    fn any_host_patterns_still_need_a_grant() {
        let c = checker(&["http:https://*:*"], &["http:https://git.example.com:443"]);
        assert!(c.check_http("https", "git.example.com", 443).is_ok());
        assert!(c.check_http("https", "evil.example", 443).unwrap_err().why.contains("has not granted"));
        assert!("https://*:*".parse::<HostPattern>().unwrap().is_any_host());
        assert!("https://*x:*".parse::<HostPattern>().is_err());
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
        for text in [
            "http:https://a.example:443",
            "http:http://*.b.example:*",
            "secret:X",
            "workspace:read",
            "exec",
            "tcp:smtp.a.example:587",
        ] {
            assert_eq!(text.parse::<Capability>().unwrap().to_string(), text);
        }
        assert_eq!("http:https://a.example".parse::<Capability>().unwrap().to_string(), "http:https://a.example:443");
        assert!("http:ftp://a:1".parse::<Capability>().unwrap_err().to_string().contains("http or https"));
        assert!("net".parse::<Capability>().is_err());
        assert!("tcp:a.example".parse::<Capability>().unwrap_err().to_string().contains("host:port"));
        assert!("tcp:a.example:0".parse::<Capability>().is_err());
    }

    #[test]
    fn tcp_needs_request_and_grant() {
        let c = checker(&["tcp:smtp.example.com:587", "tcp:other.example:25"], &["tcp:SMTP.example.com:587"]);
        assert!(c.check_tcp("smtp.example.com", 587).is_ok());
        assert!(c.check_tcp("other.example", 25).unwrap_err().why.contains("grant `tcp:other.example:25`"));
        assert!(c.check_tcp("smtp.example.com", 25).unwrap_err().why.contains("outbound-tcp(\"smtp.example.com:25\")"));
        assert_eq!(c.tcp_targets(), vec![TcpTarget { host: "smtp.example.com".into(), port: Some(587) }]);
        let any = checker(&["tcp:*:*"], &["tcp:127.0.0.1:2525", "tcp:*:25"]);
        assert!(any.check_tcp("127.0.0.1", 2525).is_ok());
        assert_eq!(any.tcp_targets(), vec![TcpTarget { host: "127.0.0.1".into(), port: Some(2525) }]);
    }
}
