//! The definitions sent to the engine: the hardened job container, service containers and the
//! job network. Pure data, so the hardening is visible (and tested) in one place.
//!
//! Hardening by default: every capability dropped except [`KEPT_CAPABILITIES`],
//! `no-new-privileges`, a pids limit, memory (without extra swap) and CPU limits, no privileged
//! mode and no Docker socket unless the operator allows them for the job, an optional non-root
//! `user:` and read-only root filesystem (with a tmpfs `/tmp`), and no host mounts but the
//! workspace (`/workspace`), Chengis's private step directory (`/chengis`: env/output files and
//! scripts of the job's steps) and named cache volumes.

use super::runner::RUNNER;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, HostConfigLogConfig, Mount, MountTypeEnum, NetworkCreateRequest,
    NetworkingConfig,
};
use chengis_pipeline::container::{ContainerOptions, NetworkMode};
use std::collections::HashMap;
use std::path::Path;

/// Where the workspace is mounted in every container of a job.
pub const WORKSPACE: &str = "/workspace";
/// Where the job's private step files (env, output, scripts) are mounted.
pub const STATE: &str = "/chengis";
/// Capabilities a job container keeps (Docker's default set minus network, device, audit and
/// chroot powers): enough for package managers and builds running as root.
pub const KEPT_CAPABILITIES: &[&str] = &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID"];
/// The Docker socket path mounted for jobs the operator allows.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Limits and privileges resolved against the operator's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Memory in bytes.
    pub memory: Option<u64>,
    /// CPU in billionths.
    pub nano_cpus: Option<u64>,
    /// Most processes.
    pub pids: u32,
    /// Privileged (already checked against the operator's allowance).
    pub privileged: bool,
    /// Mount the Docker socket (already checked against the operator's allowance).
    pub docker_socket: bool,
}

/// The job (or per-step) container.
pub struct JobContainer<'a> {
    /// Image reference.
    pub image: &'a str,
    /// The job's container options.
    pub options: &'a ContainerOptions,
    /// Resolved limits.
    pub limits: &'a Limits,
    /// Host directory of the workspace.
    pub workspace: &'a Path,
    /// Host directory of the job's step files.
    pub state_dir: &'a Path,
    /// The job network to join (none for `network: none`).
    pub network: Option<&'a str>,
    /// Labels.
    pub labels: HashMap<String, String>,
}

/// The engine definition of a job container.
pub fn job_container(c: &JobContainer<'_>) -> ContainerCreateBody {
    let mut mounts = vec![bind(c.workspace, WORKSPACE), bind(c.state_dir, STATE)];
    for (name, target) in &c.options.cache_volumes {
        mounts.push(Mount {
            target: Some(target.clone()),
            source: Some(name.clone()),
            typ: Some(MountTypeEnum::VOLUME),
            read_only: Some(false),
            ..Mount::default()
        });
    }
    if c.limits.docker_socket {
        mounts.push(Mount {
            target: Some(DOCKER_SOCKET.into()),
            source: Some(DOCKER_SOCKET.into()),
            typ: Some(MountTypeEnum::BIND),
            ..Mount::default()
        });
    }
    let tmpfs = c.options.read_only.then(|| HashMap::from([("/tmp".to_string(), "rw,nosuid,nodev,mode=1777".into())]));
    let host_config = HostConfig {
        mounts: Some(mounts),
        tmpfs,
        readonly_rootfs: Some(c.options.read_only),
        cap_drop: (!c.limits.privileged).then(|| vec!["ALL".into()]),
        cap_add: (!c.limits.privileged).then(|| KEPT_CAPABILITIES.iter().map(|s| s.to_string()).collect()),
        security_opt: Some(vec!["no-new-privileges".into()]),
        privileged: Some(c.limits.privileged),
        pids_limit: Some(i64::from(c.limits.pids)),
        memory: c.limits.memory.map(|m| m as i64),
        memory_swap: c.limits.memory.map(|m| m as i64),
        nano_cpus: c.limits.nano_cpus.map(|n| n as i64),
        network_mode: Some(match (c.options.network, c.network) {
            (NetworkMode::None, _) | (_, None) => "none".into(),
            (NetworkMode::Bridge, Some(n)) => n.to_string(),
        }),
        // Step output reaches the agent through the attached runner; the engine keeps no copy.
        log_config: Some(HostConfigLogConfig { typ: Some("none".into()), config: None }),
        ..HostConfig::default()
    };
    ContainerCreateBody {
        image: Some(c.image.to_string()),
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into(), RUNNER.into()]),
        cmd: Some(Vec::new()),
        open_stdin: Some(true),
        stdin_once: Some(false),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        working_dir: Some(WORKSPACE.into()),
        user: c.options.user.clone(),
        labels: Some(c.labels.clone()),
        host_config: Some(host_config),
        ..ContainerCreateBody::default()
    }
}

/// A service container on the job network, reachable by `name`.
pub struct ServiceContainer<'a> {
    /// Service name (its host name on the network).
    pub name: &'a str,
    /// Image.
    pub image: &'a str,
    /// Environment.
    pub env: Vec<String>,
    /// Command overriding the image's.
    pub command: &'a [String],
    /// The job network.
    pub network: &'a str,
    /// Resolved limits of the job (services get the same memory/CPU/pids caps).
    pub limits: &'a Limits,
    /// Labels.
    pub labels: HashMap<String, String>,
}

/// The engine definition of a service container: same capability and privilege hardening as
/// the job container, no mounts at all.
pub fn service_container(s: &ServiceContainer<'_>) -> ContainerCreateBody {
    let host_config = HostConfig {
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: Some(KEPT_CAPABILITIES.iter().chain(&["NET_BIND_SERVICE"]).map(|s| s.to_string()).collect()),
        security_opt: Some(vec!["no-new-privileges".into()]),
        pids_limit: Some(i64::from(s.limits.pids)),
        memory: s.limits.memory.map(|m| m as i64),
        memory_swap: s.limits.memory.map(|m| m as i64),
        nano_cpus: s.limits.nano_cpus.map(|n| n as i64),
        network_mode: Some(s.network.to_string()),
        ..HostConfig::default()
    };
    let endpoint = EndpointSettings { aliases: Some(vec![s.name.to_string()]), ..EndpointSettings::default() };
    ContainerCreateBody {
        image: Some(s.image.to_string()),
        env: Some(s.env.clone()),
        cmd: (!s.command.is_empty()).then(|| s.command.to_vec()),
        hostname: Some(s.name.to_string()),
        labels: Some(s.labels.clone()),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(s.network.to_string(), endpoint)])),
        }),
        ..ContainerCreateBody::default()
    }
}

/// The private bridge network of a job.
pub fn job_network(name: &str, labels: HashMap<String, String>) -> NetworkCreateRequest {
    NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".into()),
        labels: Some(labels),
        ..NetworkCreateRequest::default()
    }
}

fn bind(source: &Path, target: &str) -> Mount {
    Mount {
        target: Some(target.into()),
        source: Some(source.display().to_string()),
        typ: Some(MountTypeEnum::BIND),
        read_only: Some(false),
        ..Mount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { memory: Some(64 << 20), nano_cpus: None, pids: 128, privileged: false, docker_socket: false }
    }

    #[test]
    fn job_container_is_hardened_by_default() {
        let options = ContainerOptions {
            read_only: true,
            user: Some("1000".into()),
            cache_volumes: vec![("cargo".into(), "/root/.cargo".into())],
            ..ContainerOptions::default()
        };
        let l = limits();
        let body = job_container(&JobContainer {
            image: "img",
            options: &options,
            limits: &l,
            workspace: Path::new("/w"),
            state_dir: Path::new("/s"),
            network: Some("net"),
            labels: HashMap::new(),
        });
        let hc = body.host_config.unwrap();
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert!(!hc.cap_add.unwrap().iter().any(|c| c == "NET_RAW" || c == "SYS_ADMIN"));
        assert_eq!(hc.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(hc.privileged, Some(false));
        assert_eq!(hc.pids_limit, Some(128));
        assert_eq!(hc.memory, Some(64 << 20));
        assert_eq!(hc.memory_swap, hc.memory, "no swap beyond the memory limit");
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert!(hc.tmpfs.unwrap().contains_key("/tmp"));
        assert_eq!(hc.network_mode.as_deref(), Some("net"));
        let mounts = hc.mounts.unwrap();
        let targets: Vec<_> = mounts.iter().map(|m| m.target.clone().unwrap()).collect();
        assert_eq!(targets, ["/workspace", "/chengis", "/root/.cargo"]);
        assert!(!targets.iter().any(|t| t == DOCKER_SOCKET));
        assert_eq!(mounts[2].typ, Some(MountTypeEnum::VOLUME));
        assert_eq!(body.user.as_deref(), Some("1000"));
        assert_eq!(body.working_dir.as_deref(), Some("/workspace"));
    }

    #[test]
    fn network_none_has_no_network() {
        let options = ContainerOptions { network: NetworkMode::None, ..ContainerOptions::default() };
        let l = limits();
        let body = job_container(&JobContainer {
            image: "img",
            options: &options,
            limits: &l,
            workspace: Path::new("/w"),
            state_dir: Path::new("/s"),
            network: Some("net"),
            labels: HashMap::new(),
        });
        assert_eq!(body.host_config.unwrap().network_mode.as_deref(), Some("none"));
    }
}
