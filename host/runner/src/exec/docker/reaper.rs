//! The reaper: removes containers and networks left by an agent process that is gone (a
//! `kill -9`, a crash, a power cut), recognised by their labels. Run at start-up and
//! periodically; named cache volumes are kept on purpose.

use super::sandbox::remove_container;
use super::{DockerError, DockerRuntime, LABEL_AGENT, LABEL_INSTANCE, LABEL_LEASE};
use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};
use std::collections::HashMap;

/// What a reaping pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Containers removed.
    pub containers: usize,
    /// Networks removed.
    pub networks: usize,
}

impl DockerRuntime {
    /// Removes this agent's objects whose owner is gone: objects of another instance of the
    /// agent (an earlier process), unless `still_owned(instance, lease)` says the lease is still
    /// held (local runs check that the process is alive).
    pub async fn reap(&self, still_owned: impl Fn(&str, &str) -> bool) -> Result<ReapReport, DockerError> {
        let docker = self.client().await?;
        let filters: HashMap<&str, Vec<String>> =
            HashMap::from([("label", vec![format!("{LABEL_AGENT}={}", self.agent())])]);
        let gone = |labels: &HashMap<String, String>| {
            let instance = labels.get(LABEL_INSTANCE).map(String::as_str).unwrap_or("");
            let lease = labels.get(LABEL_LEASE).map(String::as_str).unwrap_or("");
            instance != self.instance() && !still_owned(instance, lease)
        };
        let mut report = ReapReport::default();
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let containers = docker.list_containers(Some(options)).await.map_err(DockerError::api("listing containers"))?;
        for c in containers {
            if let (Some(id), Some(labels)) = (c.id, c.labels)
                && gone(&labels)
            {
                tracing::info!(container = %id, lease = ?labels.get(LABEL_LEASE), "reaping a leftover container");
                remove_container(docker, &id).await;
                report.containers += 1;
            }
        }
        let options = ListNetworksOptionsBuilder::default().filters(&filters).build();
        let networks = docker.list_networks(Some(options)).await.map_err(DockerError::api("listing networks"))?;
        for n in networks {
            if let (Some(id), Some(labels)) = (n.id, n.labels)
                && gone(&labels)
            {
                tracing::info!(network = %id, "reaping a leftover network");
                match docker.remove_network(&id).await {
                    Ok(()) => report.networks += 1,
                    Err(e) => tracing::warn!(network = %id, "reaping a network: {e}"),
                }
            }
        }
        Ok(report)
    }
}
