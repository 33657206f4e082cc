//! A remote agent's copy of the server's trust decisions for the step executors its jobs use:
//! before a job with `uses:` steps runs, the server resolves each reference against its
//! allowlist (only allowed plugins, with their grants and server-side config), the agent fetches
//! the component bytes by digest and checks the digest, and keeps the decision in memory with
//! exactly those grants. Nothing else runs here: a plugin the server did not hand over for a
//! job is unknown to the agent, and one it refused fails with the server's reason.

use super::{Client, RemoteError};
use crate::assignment::Assignment;
use crate::executors::{BoxFuture, StepExecutor, StepExecutors, limits_from_config, plugin_config, step_limits};
use chengis_model::protocol::ResolvedPlugin;
use chengis_model::records::PluginRecord;
use chengis_plugin_host::{Allowlist, Digest, Grants, Limits, Plugin, Runtime};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The step executors the server allowed for this agent's jobs, with their component files
/// under `work_dir/plugins` and compiled artifacts under `work_dir/plugin-cache`.
pub struct Mirror {
    runtime: Runtime,
    dir: PathBuf,
    state: Mutex<State>,
    /// One job at a time changes the mirror.
    sync: tokio::sync::Mutex<()>,
}

/// What the server decided, by plugin name.
#[derive(Default)]
struct State {
    /// Allowed versions (newest decision last), with their server-side config.
    allowed: HashMap<String, Vec<ResolvedPlugin>>,
    /// Names the server refused, with its reason.
    refused: HashMap<String, String>,
    /// Loaded components, by digest, grants and limits.
    loaded: HashMap<String, Plugin>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Mirror {
    /// An empty mirror keeping components under `work_dir`.
    pub fn open(work_dir: &Path) -> Result<Mirror, String> {
        let runtime = Runtime::new(Some(work_dir.join("plugin-cache"))).map_err(|e| e.to_string())?;
        let dir = work_dir.join("plugins");
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Mirror { runtime, dir, state: Mutex::new(State::default()), sync: tokio::sync::Mutex::new(()) })
    }

    /// The file a component with `digest` (`sha256:HEX`) is kept in.
    fn file_of(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| self.dir.join(format!("{hex}.wasm")))
    }

    /// Brings the step executors `a` uses into the mirror as the server has them; `Err` inside:
    /// the job cannot run (the server runs no plugin platform, a download failed, a digest
    /// mismatch).
    pub async fn sync(
        &self,
        client: &Arc<Client>,
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
        let answer = client.lease_call(&a.lease, &chengis_model::protocol::Plugins { references }).await?;
        if let Some(reason) = answer.error {
            return Ok(Err(reason));
        }
        let _guard = self.sync.lock().await;
        for resolved in &answer.plugins {
            let record = &resolved.record;
            let fail = |e: &dyn std::fmt::Display| format!("plugin \"{}\" {}: {e}", record.name, record.version);
            let Some(path) = self.file_of(&record.digest) else {
                return Ok(Err(fail(&format!("the server sent an invalid digest `{}`", record.digest))));
            };
            let present = std::fs::read(&path).is_ok_and(|b| Digest::of(&b).to_string() == record.digest);
            if !present {
                let url =
                    format!("/api/v1/agent/leases/{}/plugins/{}?token={}", a.lease.entry, record.digest, a.lease.token);
                let (c, tmp, secret) = (client.clone(), tmp.to_path_buf(), a.lease.secret.clone());
                let fetched = tokio::task::spawn_blocking(move || {
                    super::blobs::fetch(&c, "plugin download", &url, secret.as_ref(), &tmp)
                })
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
                let got = Digest::of(&bytes).to_string();
                if got != record.digest {
                    return Ok(Err(fail(&format!(
                        "the downloaded component is {got}, not the {} the server allowed",
                        record.digest
                    ))));
                }
                if let Err(e) = file.persist(&path) {
                    return Ok(Err(fail(&e.error)));
                }
            }
        }
        let mut state = lock(&self.state);
        for (name, why) in answer.unresolved {
            state.allowed.remove(&name);
            state.refused.insert(name, why);
        }
        for resolved in answer.plugins {
            let name = resolved.record.name.clone();
            state.refused.remove(&name);
            let versions = state.allowed.entry(name).or_default();
            versions.retain(|p| p.record.version != resolved.record.version);
            versions.push(resolved);
        }
        Ok(Ok(()))
    }

    /// Loads an allowed record's component, checking its bytes against the allowed digest.
    fn load(&self, record: &PluginRecord, limits: Limits) -> Result<Plugin, String> {
        let key = format!("{}|{}|{limits:?}", record.digest, record.granted.join(","));
        if let Some(p) = lock(&self.state).loaded.get(&key) {
            return Ok(p.clone());
        }
        let path = self.file_of(&record.digest).ok_or_else(|| format!("invalid digest `{}`", record.digest))?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let digest = Digest::of(&bytes);
        if digest.to_string() != record.digest {
            return Err(format!(
                "plugin `{}` {}: {} does not match the allowed digest {}; it was modified and is refused",
                record.name,
                record.version,
                path.display(),
                record.digest
            ));
        }
        let grants =
            Grants::parse(record.granted.iter().map(String::as_str)).map_err(|e| format!("invalid grant: {e}"))?;
        let plugin =
            self.runtime.load(&bytes, &Allowlist::from_iter([digest]), grants, limits).map_err(|e| e.to_string())?;
        lock(&self.state).loaded.insert(key, plugin.clone());
        Ok(plugin)
    }

    fn find(&self, reference: &str) -> Result<ResolvedPlugin, String> {
        let (name, version) = match reference.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (reference, None),
        };
        let state = lock(&self.state);
        let found = state.allowed.get(name).and_then(|versions| match version {
            Some(v) => versions.iter().rev().find(|p| p.record.version == v),
            None => versions.last(),
        });
        match (found, state.refused.get(name)) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(why)) => Err(why.clone()),
            (None, None) => {
                Err(format!("no step-executor plugin `{reference}` was allowed by the server for this job"))
            }
        }
    }
}

impl StepExecutors for Mirror {
    fn step_executor<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<StepExecutor, String>> {
        Box::pin(async move {
            let ResolvedPlugin { record, config } = self.find(reference)?;
            let limits = limits_from_config(&record.name, &config, step_limits(Limits::default()));
            let plugin = self.load(&record, limits)?;
            Ok(StepExecutor { record, plugin, config: plugin_config(&config) })
        })
    }
}
