//! The server's side of agents: the embedded agent's lease loop (`chengis serve` runs one
//! in-process, answering the job runner from the store through [`local::LocalPeer`]), preparing
//! a leased job ([`server_side`]), and the embedded agent's caches, artifacts and stage results
//! ([`job_files`]). The job runner, the remote agent (`chengis agent`) and the typed protocol's
//! agent side live in the `chengis-agent` crate, re-exported here.

use crate::engine::builds::{BuildContext, Notice};
use crate::exec::CancelSignal;
use crate::store::queue::LeaseRequest;
use crate::store::secrets::MasterKeys;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, broadcast};
use tracing::Instrument;

pub mod job_files;
pub mod local;
pub use chengis_agent::remote;
pub use chengis_agent::runner::{AgentConfig, execute};
pub use chengis_model::protocol;
pub mod server_side;
use local::LocalPeer;

/// Runs the agent loop until `shutdown` is cancelled.
pub async fn run_agent(ctx: BuildContext, keys: Arc<MasterKeys>, cfg: AgentConfig, shutdown: CancelSignal) {
    let slots = Arc::new(Semaphore::new(cfg.executors.max(1)));
    let mut notices = ctx.bus.subscribe();
    // A job that ends frees its slot only after its workspace is cleaned: it wakes the loop
    // then, so the freed slot leases at once instead of at the next timer.
    let slot_freed = Arc::new(tokio::sync::Notify::new());
    let mut last_disk_warning = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let free = slots.available_permits();
        let disk_full = ctx.storage.disk_state() == crate::engine::disk::DiskState::Critical;
        if disk_full && last_disk_warning.is_none_or(|t: Instant| t.elapsed() > Duration::from_secs(60)) {
            tracing::error!(
                agent = %cfg.name,
                "disk critically low under {}: leasing no new jobs until space is freed",
                ctx.storage.data_dir.display()
            );
            last_disk_warning = Some(Instant::now());
        }
        if free > 0 && !disk_full {
            let req = LeaseRequest {
                agent: &cfg.name,
                labels: &cfg.labels,
                capacity: free,
                ttl: cfg.lease_ttl,
                max_attempts: cfg.max_attempts,
                free: None,
                defer: None,
                registered_ms: None,
            };
            match ctx.store.lease_batch(&req).await {
                Ok(batch) => {
                    for (build_job, reason) in batch.exhausted {
                        if let Err(e) = ctx.job_ended(build_job, &reason).await {
                            tracing::error!(build_job, "moving the build on: {e}");
                        }
                    }
                    for lease in batch.leases {
                        let Ok(permit) = slots.clone().acquire_owned().await else { return };
                        let (ctx, keys, cfg, freed) = (ctx.clone(), keys.clone(), cfg.clone(), slot_freed.clone());
                        let span =
                            tracing::info_span!("build_job", build_job = lease.build_job_id, attempt = lease.attempt);
                        tokio::spawn(
                            async move {
                                match server_side::prepare(&ctx, &keys, &lease).await {
                                    Ok((a, local)) => {
                                        let peer = LocalPeer::new(ctx, local);
                                        if let Err(e) = execute(&peer, &cfg, a, None).await {
                                            tracing::error!("running build job {}: {e}", lease.build_job_id);
                                        }
                                    }
                                    Err(e) => {
                                        if let Err(e) = server_side::fail_prepare(&ctx, &lease, &e).await {
                                            tracing::error!("ending build job {}: {e}", lease.build_job_id);
                                        }
                                    }
                                }
                                drop(permit);
                                freed.notify_one();
                            }
                            .instrument(span),
                        );
                    }
                }
                Err(e) => tracing::warn!("lease failed: {e}"),
            }
        }
        // Long poll: wake on what makes work possible (an enqueue notice, a freed slot), or every
        // half second (expired leases of other agents, work queued by another server). Log and
        // status notices do not make work possible: they do not cost a lease attempt.
        let timer = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(timer);
        loop {
            tokio::select! {
                notice = notices.recv() => match notice {
                    Ok(Notice::Enqueued) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Closed) => {
                        (&mut timer).await;
                        break;
                    }
                },
                _ = slot_freed.notified() => break,
                _ = &mut timer => break,
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
