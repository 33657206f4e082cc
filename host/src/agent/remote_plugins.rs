//! A remote agent's copy of the server's trust decisions for the step executors its jobs use:
//! before a job with `uses:` steps runs, the server resolves each reference against its
//! allowlist (only allowed plugins, with their grants and server-side config), the agent fetches
//! the component bytes by digest, checks the digest, and records the plugin in its own small
//! SQLite allowlist with exactly those grants. Other versions of the same name are denied there,
//! so the agent runs the version the server chose, with the capabilities the operator granted.

use super::protocol::ResolvedPlugin;
use super::remote::{Client, RemoteError};
use super::server_side::Assignment;
use crate::plugins::PluginService;
use crate::store::plugins::TrustState;
use std::path::Path;
use std::sync::Arc;

/// Opens the agent's plugin platform over `work_dir/agent.db` (its allowlist mirror) and
/// `work_dir` (components and compiled artifacts).
pub async fn open(work_dir: &Path) -> Result<Arc<PluginService>, String> {
    let url = format!("sqlite://{}", work_dir.join("agent.db").display());
    let store = crate::store::Store::open(&url).await.map_err(|e| e.to_string())?;
    let service = PluginService::new(store, work_dir).map_err(|e| e.to_string())?;
    Ok(Arc::new(service))
}

/// Brings the step executors `a` uses into the agent's allowlist as the server has them;
/// `Err` inside: the job cannot run (a plugin the server does not allow, a digest mismatch).
pub async fn sync(
    client: &Arc<Client>,
    service: &PluginService,
    a: &Assignment,
    tmp: &Path,
) -> Result<Result<(), String>, RemoteError> {
    let mut references: Vec<&str> = a.spec.steps.iter().filter_map(|s| s.uses.as_deref()).collect();
    references.sort_unstable();
    references.dedup();
    if references.is_empty() {
        return Ok(Ok(()));
    }
    let references = references.into_iter().map(str::to_string).collect();
    let answer = client.lease_call(&a.lease, &super::protocol::Plugins { references }).await?;
    if let Some(reason) = answer.error {
        return Ok(Err(reason));
    }
    let resolved = answer.plugins;
    // One job at a time changes the mirror.
    static SYNC: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _guard = SYNC.lock().await;
    let store = service.store();
    // What the server does not allow (any more) is not allowed here either: the step fails when
    // it runs, saying so, as on the embedded agent.
    let unresolved: Vec<String> = answer.unresolved.keys().cloned().collect();
    for p in store.plugins().await.map_err(|e| RemoteError::Setup(e.to_string()))? {
        if unresolved.contains(&p.name) && p.state == TrustState::Allowed {
            let _ = store.decide_plugin(&p.name, Some(&p.version), TrustState::Denied, None, "server").await;
        }
    }
    for ResolvedPlugin { record, config } in resolved {
        let fail = |e: &dyn std::fmt::Display| format!("plugin \"{}\" {}: {e}", record.name, record.version);
        let local = store.plugin_by_digest(&record.digest).await.map_err(|e| RemoteError::Setup(e.to_string()))?;
        match local {
            None => {
                let url =
                    format!("/api/v1/agent/leases/{}/plugins/{}?token={}", a.lease.entry, record.digest, a.lease.token);
                let (c, tmp) = (client.clone(), tmp.to_path_buf());
                let fetched =
                    tokio::task::spawn_blocking(move || super::remote_blobs::fetch(&c, "plugin download", &url, &tmp))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                let file = match fetched {
                    Ok(f) => f,
                    Err(e) => return Ok(Err(fail(&e))),
                };
                let bytes = match std::fs::read(file.path()) {
                    Ok(b) => b,
                    Err(e) => return Ok(Err(fail(&e))),
                };
                match service.install(&bytes, true, &record.granted, "server", record.builtin).await {
                    Ok(installed) if installed.digest == record.digest => {}
                    Ok(installed) => {
                        return Ok(Err(fail(&format!(
                            "the downloaded component is {}, not the {} the server allowed",
                            installed.digest, record.digest
                        ))));
                    }
                    Err(e) => return Ok(Err(fail(&e))),
                }
            }
            Some(p) if p.granted != record.granted || p.state != TrustState::Allowed => {
                let granted = record.granted.clone();
                if let Err(e) =
                    store.decide_plugin(&p.name, Some(&p.version), TrustState::Allowed, Some(&granted), "server").await
                {
                    return Ok(Err(fail(&e)));
                }
            }
            Some(_) => {}
        }
        // Only the version the server chose is allowed here.
        for other in store.plugins().await.map_err(|e| RemoteError::Setup(e.to_string()))? {
            if other.name == record.name && other.digest != record.digest && other.state == TrustState::Allowed {
                let _ =
                    store.decide_plugin(&other.name, Some(&other.version), TrustState::Denied, None, "server").await;
            }
        }
        if let Err(e) = store.set_plugin_config(&record.name, &config).await {
            return Ok(Err(fail(&e)));
        }
    }
    Ok(Ok(()))
}
