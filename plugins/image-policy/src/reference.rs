//! Container image references: checking them against Docker's reference grammar and
//! normalising them the way Docker does (`node` → `docker.io/library/node:latest`), so that
//! rules match one spelling of each image.

use std::fmt;

/// A valid image reference in Docker's normalised form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host, with its port if any: `docker.io`, `ghcr.io`, `registry.example:5000`.
    pub registry: String,
    /// The repository path inside the registry: `library/node`, `org/app`.
    pub repository: String,
    /// The tag: `latest` when the reference has neither a tag nor a digest.
    pub tag: Option<String>,
    /// The digest, e.g. `sha256:0123...`, when the reference pins one.
    pub digest: Option<String>,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// The registry of references without one.
const DOCKER_HUB: &str = "docker.io";

/// Parses `image` and normalises it like Docker: a missing registry is `docker.io`, a Docker
/// Hub image without a namespace is in `library/`, `index.docker.io` is `docker.io`, and a
/// reference with neither tag nor digest gets the tag `latest`. The error says what is wrong.
pub fn normalise(image: &str) -> Result<ImageRef, String> {
    if image.is_empty() {
        return Err("is empty".into());
    }
    if image.chars().any(char::is_whitespace) {
        return Err("contains whitespace".into());
    }
    let (name_and_tag, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(check_digest(digest)?)),
        None => (image, None),
    };
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
        Some(i) => {
            let colon = last_slash + i;
            (&name_and_tag[..colon], Some(check_tag(&name_and_tag[colon + 1..])?))
        }
        None => (name_and_tag, None),
    };
    let (registry, path) = match name.split_once('/') {
        Some((first, rest)) if looks_like_registry(first) => (first, rest),
        _ => (DOCKER_HUB, name),
    };
    check_registry(registry)?;
    let registry = if registry == "index.docker.io" { DOCKER_HUB } else { registry };
    check_path(path)?;
    let repository =
        if registry == DOCKER_HUB && !path.contains('/') { format!("library/{path}") } else { path.to_string() };
    let tag = match (tag, &digest) {
        (None, None) => Some("latest".to_string()),
        (tag, _) => tag.map(str::to_string),
    };
    Ok(ImageRef { registry: registry.to_string(), repository, tag, digest: digest.map(str::to_string) })
}

/// Docker's rule: the first path component is a registry when it has a `.` or a `:`, is
/// `localhost`, or has an uppercase letter (repository paths are lowercase).
fn looks_like_registry(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase())
}

/// `host[:port]`, where host is dot-separated labels of letters, digits and inner `-`, or an
/// IPv6 address in brackets.
fn check_registry(registry: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("has an invalid registry `{registry}` ({why})"));
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((address, after)) = rest.split_once(']') else { return bad("an IPv6 address needs a closing `]`") };
        if address.is_empty() || !address.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return bad("not an IPv6 address");
        }
        match after {
            "" => (None, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return bad("unexpected text after the IPv6 address"),
            },
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return bad("host names are letters, digits, `-` and `.`");
        }
    }
    if let Some(port) = port
        && (port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()))
    {
        return bad("the port must be a number");
    }
    Ok(())
}

/// Path components: lowercase letters and digits, separated inside a component by `.`, `_`,
/// `__` or runs of `-`.
fn check_path(path: &str) -> Result<(), String> {
    for component in path.split('/') {
        if !component_ok(component) {
            return Err(format!(
                "has an invalid repository name `{path}` (lowercase letters and digits, separated by `.`, `_`, `__` or `-`, and `/` between components)"
            ));
        }
    }
    Ok(())
}

fn component_ok(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().copied().is_some_and(alnum) || !bytes.last().copied().is_some_and(alnum) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__` or a run of `-`, each followed by an alphanumeric.
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => i += if bytes.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || !bytes.get(i).copied().is_some_and(alnum) {
            return false;
        }
    }
    true
}

/// A tag: a word character, then up to 127 word characters, `.` or `-`.
fn check_tag(tag: &str) -> Result<&str, String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let ok = tag.len() <= 128
        && tag.chars().next().is_some_and(word)
        && tag.chars().all(|c| word(c) || c == '.' || c == '-');
    if ok {
        Ok(tag)
    } else {
        Err(format!(
            "has an invalid tag `{tag}` (up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`)"
        ))
    }
}

/// A digest: `algorithm:hex`, with at least 32 hex digits.
fn check_digest(digest: &str) -> Result<&str, String> {
    let bad = || Err(format!("has an invalid digest `{digest}` (expected `sha256:` and the hex digest)"));
    let Some((algorithm, hex)) = digest.split_once(':') else { return bad() };
    let algorithm_ok = algorithm.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && algorithm.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '.'));
    if !algorithm_ok || hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return bad();
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(image: &str) -> String {
        normalise(image).unwrap_or_else(|e| panic!("{image}: {e}")).to_string()
    }

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_hub_short_names_get_registry_library_and_latest() {
        assert_eq!(norm("node"), "docker.io/library/node:latest");
        assert_eq!(norm("node:20-alpine"), "docker.io/library/node:20-alpine");
        assert_eq!(norm("user/app:1"), "docker.io/user/app:1");
        assert_eq!(norm("docker.io/node"), "docker.io/library/node:latest");
        assert_eq!(norm("index.docker.io/library/rust:1.95"), "docker.io/library/rust:1.95");
        assert_eq!(norm("docker.io/a/b/c:x"), "docker.io/a/b/c:x");
    }

    #[test]
    fn other_registries_keep_their_host_and_port() {
        assert_eq!(norm("registry.example:5000/app"), "registry.example:5000/app:latest");
        assert_eq!(norm("ghcr.io/org/team/app:1.2.3"), "ghcr.io/org/team/app:1.2.3");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("localhost:5000/app:dev"), "localhost:5000/app:dev");
        assert_eq!(norm("[::1]:5000/app"), "[::1]:5000/app:latest");
        // An uppercase first component is a registry (repositories are lowercase).
        assert_eq!(norm("Registry/app"), "Registry/app:latest");
        let parsed = normalise("registry.example:5000/team/app:2").unwrap();
        assert_eq!(parsed.registry, "registry.example:5000");
        assert_eq!(parsed.repository, "team/app");
        assert_eq!(parsed.tag.as_deref(), Some("2"));
    }

    #[test]
    fn digests_are_kept_and_no_latest_is_added() {
        assert_eq!(norm(&format!("node@{DIGEST}")), format!("docker.io/library/node@{DIGEST}"));
        assert_eq!(norm(&format!("node:20@{DIGEST}")), format!("docker.io/library/node:20@{DIGEST}"));
        assert_eq!(norm(&format!("registry.example:5000/app@{DIGEST}")), format!("registry.example:5000/app@{DIGEST}"));
    }

    #[test]
    fn invalid_references_say_what_is_wrong() {
        let error = |image: &str| normalise(image).unwrap_err();
        assert_eq!(error(""), "is empty");
        assert_eq!(error("node 20"), "contains whitespace");
        assert!(error("(expression)").starts_with("has an invalid repository name `(expression)`"));
        assert!(error("Node").starts_with("has an invalid repository name `Node`"), "{}", error("Node"));
        assert!(error("node:").starts_with("has an invalid tag ``"));
        assert!(error("node:.x").starts_with("has an invalid tag `.x`"));
        assert!(error("node@sha256:abc").starts_with("has an invalid digest `sha256:abc`"));
        assert!(error("node@md5").starts_with("has an invalid digest"));
        assert!(error("registry.example:http/app").starts_with("has an invalid registry"));
        assert!(error("bad-.example/app").starts_with("has an invalid registry"));
        assert!(error("[::1/app").starts_with("has an invalid registry"));
        assert!(error("app//x").starts_with("has an invalid repository name"));
        assert!(error("user/app-").starts_with("has an invalid repository name"));
        assert!(error("user/a___b").starts_with("has an invalid repository name"));
        assert!(error(&format!("node:{}", "x".repeat(129))).starts_with("has an invalid tag"));
    }

    #[test]
    fn separators_inside_path_components() {
        for ok in ["a.b", "a_b", "a__b", "a---b", "a1-b2.c3"] {
            assert!(component_ok(ok), "{ok}");
        }
        for bad in ["a..b", "a.-b", "_a", "a_", "a___b", "", "A"] {
            assert!(!component_ok(bad), "{bad}");
        }
    }
}
