//! The operator's container settings shared by `chengis serve` and `chengis run`: default
//! limits and the jobs allowed privileged mode or the Docker socket.

use crate::exec::docker::DockerSettings;
use clap::Args;
use serde::{Deserialize, Serialize};

/// Container flags (each also a `CHENGIS_DOCKER_*` variable, and a `docker_*` key of the
/// server's config file).
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
pub struct DockerArgs {
    /// Jobs allowed `privileged: true` (comma-separated names, `*` for all) [default: none].
    #[arg(long, env = "CHENGIS_DOCKER_ALLOW_PRIVILEGED", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub docker_allow_privileged: Vec<String>,
    /// Jobs allowed `docker-socket: true` (comma-separated names, `*` for all) [default: none].
    #[arg(long, env = "CHENGIS_DOCKER_ALLOW_SOCKET", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub docker_allow_socket: Vec<String>,
    /// Memory limit of jobs that set none, such as `2g` [default: no limit].
    #[arg(long, env = "CHENGIS_DOCKER_MEMORY")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_memory: Option<String>,
    /// CPU limit of jobs that set none, such as `1.5` [default: no limit].
    #[arg(long, env = "CHENGIS_DOCKER_CPUS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_cpus: Option<String>,
    /// Process limit of jobs that set none [default: 4096].
    #[arg(long, env = "CHENGIS_DOCKER_PIDS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_pids: Option<u32>,
}

impl DockerArgs {
    /// These flags over `file` (flag and environment win).
    pub fn over(&self, file: &DockerArgs) -> DockerArgs {
        let pick = |a: &Vec<String>, b: &Vec<String>| if a.is_empty() { b.clone() } else { a.clone() };
        DockerArgs {
            docker_allow_privileged: pick(&self.docker_allow_privileged, &file.docker_allow_privileged),
            docker_allow_socket: pick(&self.docker_allow_socket, &file.docker_allow_socket),
            docker_memory: self.docker_memory.clone().or_else(|| file.docker_memory.clone()),
            docker_cpus: self.docker_cpus.clone().or_else(|| file.docker_cpus.clone()),
            docker_pids: self.docker_pids.or(file.docker_pids),
        }
    }

    /// The settings, with the sizes checked.
    pub fn settings(&self) -> anyhow::Result<DockerSettings> {
        use chengis_pipeline::container::{parse_cpus, parse_memory};
        let defaults = DockerSettings::default();
        Ok(DockerSettings {
            default_memory: self
                .docker_memory
                .as_deref()
                .map(parse_memory)
                .transpose()
                .map_err(|e| anyhow::anyhow!("docker_memory: {e}"))?,
            default_nano_cpus: self
                .docker_cpus
                .as_deref()
                .map(parse_cpus)
                .transpose()
                .map_err(|e| anyhow::anyhow!("docker_cpus: {e}"))?,
            default_pids: self.docker_pids.unwrap_or(defaults.default_pids),
            allow_privileged: self.docker_allow_privileged.clone(),
            allow_docker_socket: self.docker_allow_socket.clone(),
            ..defaults
        })
    }
}
