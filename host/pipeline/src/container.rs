//! Container settings of a job, checked without I/O: memory sizes, CPU counts, pull policies,
//! networks and named cache volumes (names and mount paths that cannot escape or shadow).

use serde::{Deserialize, Serialize};

/// Paths a cache volume may not be mounted on (or under).
const RESERVED_MOUNTS: &[&str] = &["/proc", "/sys", "/dev", "/chengis"];

/// When the image of a job is pulled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Pull only when the engine does not have the image (default).
    #[default]
    IfNotPresent,
    /// Pull before every job.
    Always,
    /// Never pull: the image must already be on the engine.
    Never,
}

impl PullPolicy {
    /// Parses `always`, `if-not-present` or `never`.
    pub fn parse(s: &str) -> Option<PullPolicy> {
        match s {
            "always" => Some(PullPolicy::Always),
            "if-not-present" => Some(PullPolicy::IfNotPresent),
            "never" => Some(PullPolicy::Never),
            _ => None,
        }
    }
}

/// The network of a job's containers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    /// A private bridge network per job, shared with its services (default).
    #[default]
    Bridge,
    /// No network at all (loopback only); services are not allowed.
    None,
}

impl NetworkMode {
    /// Parses `bridge` or `none`.
    pub fn parse(s: &str) -> Option<NetworkMode> {
        match s {
            "bridge" => Some(NetworkMode::Bridge),
            "none" => Some(NetworkMode::None),
            _ => None,
        }
    }
}

/// Everything about the container of a job besides its image and services.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerOptions {
    /// Pull policy.
    pub pull: PullPolicy,
    /// Memory limit in bytes (the server default when unset).
    pub memory: Option<u64>,
    /// CPU limit in billionths of a CPU (the server default when unset).
    pub nano_cpus: Option<u64>,
    /// Most processes (the server default when unset).
    pub pids: Option<u32>,
    /// User to run steps as (`1000`, `1000:1000`, `builder`).
    pub user: Option<String>,
    /// Read-only root filesystem (with a writable tmpfs `/tmp`).
    pub read_only: bool,
    /// Privileged mode, only honoured when the operator allows it for the job.
    pub privileged: bool,
    /// Mount the Docker socket, only honoured when the operator allows it for the job.
    pub docker_socket: bool,
    /// The network.
    pub network: NetworkMode,
    /// Named cache volumes: volume name to absolute mount path.
    pub cache_volumes: Vec<(String, String)>,
}

/// Parses a size: a number of bytes, or a number with `k`, `m`, `g` or `t` (binary units,
/// optionally followed by `b`/`i`/`ib`), such as `512m`, `2GiB` or `1.5t`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("`{s}` is not a size such as `512m` or `2g`"))?;
    let mult: f64 = match unit.trim().trim_end_matches("ib").trim_end_matches(['b', 'i']) {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("unknown unit in `{s}` (use k, m, g or t)")),
    };
    Ok((value * mult) as u64)
}

/// Parses a memory size (see [`parse_size`]), at least 4 MiB.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let bytes = parse_size(s)?;
    if bytes < 4 << 20 {
        return Err(format!("`{s}` is below the smallest memory limit of 4m"));
    }
    Ok(bytes)
}

/// Parses a CPU count such as `1`, `0.5` or `2.25` into billionths of a CPU.
pub fn parse_cpus(s: &str) -> Result<u64, String> {
    let value: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of CPUs such as `1.5`"))?;
    if !(0.01..=1024.0).contains(&value) {
        return Err(format!("`{s}` CPUs is outside 0.01 to 1024"));
    }
    Ok((value * 1e9) as u64)
}

/// Checks a cache volume name: 1 to 64 of letters, digits, `_`, `.`, `-`, starting with a
/// letter or digit.
pub fn check_volume_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid volume name (1 to 64 letters, digits, `_`, `.`, `-`, starting with a letter or digit)"
        ))
    }
}

/// Checks a mount path: absolute, no `..` or `.`, plain characters, not `/` and not a system
/// directory.
pub fn check_mount_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` is not an absolute path"));
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    if parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
        return Err(format!("`{path}` has an empty, `.` or `..` component"));
    }
    if !path.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '.' | '-')) {
        return Err(format!("`{path}` has characters other than letters, digits, `/`, `_`, `.`, `-`"));
    }
    if path == "/workspace" {
        return Err("a cache volume cannot replace the workspace itself (mount it below /workspace)".into());
    }
    if let Some(r) = RESERVED_MOUNTS.iter().find(|r| path == **r || path.starts_with(&format!("{r}/"))) {
        return Err(format!("`{path}` is under {r}, which is reserved"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512m"), Ok(512 << 20));
        assert_eq!(parse_memory("2G"), Ok(2 << 30));
        assert_eq!(parse_memory("1.5gib"), Ok(3 << 29));
        assert_eq!(parse_memory("67108864"), Ok(64 << 20));
        assert!(parse_memory("1k").unwrap_err().contains("smallest"));
        assert!(parse_memory("12x").unwrap_err().contains("unit"));
        assert!(parse_memory("lots").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("1.5"), Ok(1_500_000_000));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("x").is_err());
    }

    #[test]
    fn volumes_cannot_escape() {
        assert!(check_volume_name("cargo-registry").is_ok());
        assert!(check_volume_name("../etc").is_err());
        assert!(check_volume_name("a b").is_err());
        assert!(check_volume_name("").is_err());
        assert!(check_mount_path("/root/.cargo").is_ok());
        assert!(check_mount_path("/workspace/target").is_ok());
        assert!(check_mount_path("relative").is_err());
        assert!(check_mount_path("/a/../etc").is_err());
        assert!(check_mount_path("/").is_err());
        assert!(check_mount_path("/workspace").is_err());
        assert!(check_mount_path("/proc/x").is_err());
        assert!(check_mount_path("/tmp/$(x)").is_err());
    }
}
