//! A job's sandbox on the engine: the image (pulled by policy), the private network, the
//! service containers (started and waited for) and the job container; torn down at the end of
//! the job whatever happened, and by a background task if the owner forgot.

use super::spec::{self, JobContainer, Limits, ServiceContainer};
use super::{DockerError, DockerRuntime, DockerSettings, LABEL_CACHE_VOLUME, SandboxLabels};
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerStateStatusEnum, VolumeCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use chengis_pipeline::container::{ContainerOptions, NetworkMode, PullPolicy};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

/// A service to start next to the job.
#[derive(Debug, Clone)]
pub struct ServiceRequest {
    /// Name (its host name on the job network).
    pub name: String,
    /// Image.
    pub image: String,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Command overriding the image's.
    pub command: Vec<String>,
    /// TCP ports to wait for.
    pub ports: Vec<u16>,
    /// A command run in the service until it succeeds.
    pub health_cmd: Option<String>,
    /// Longest wait for readiness (the operator's default when unset).
    pub wait_timeout: Option<Duration>,
}

/// What a sandbox is made of.
pub struct SandboxRequest<'a> {
    /// The job name the operator's allowances are matched against.
    pub job_name: &'a str,
    /// Image of the job container.
    pub image: &'a str,
    /// The job's container options.
    pub options: &'a ContainerOptions,
    /// Services to start first.
    pub services: Vec<ServiceRequest>,
    /// Host directory of the workspace.
    pub workspace: &'a Path,
    /// Host directory of the job's step files.
    pub state_dir: &'a Path,
    /// Identity for labels.
    pub labels: SandboxLabels,
    /// An existing network to join (a per-step container next to its job's) instead of
    /// creating one.
    pub join_network: Option<String>,
    /// Give the workspace to the container's `user:` (chown, as root in the container) so
    /// that a non-root user can write to it; only for workspaces the agent owns.
    pub hand_over_workspace: bool,
}

/// The attached streams of a job container's runner (PID 1).
pub(super) struct Attached {
    pub(super) output:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bollard::container::LogOutput, BollardError>> + Send>>,
    pub(super) input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

/// A running job sandbox; steps run in it through [`JobSandbox::run_step`].
pub struct JobSandbox {
    pub(super) docker: Docker,
    pub(super) container: String,
    pub(super) runner: tokio::sync::Mutex<Option<Attached>>,
    pub(super) mark: String,
    pub(super) runs: std::sync::atomic::AtomicU64,
    pub(super) state_dir: PathBuf,
    pub(super) user: Option<String>,
    pub(super) memory: Option<u64>,
    pub(super) oom_kills: AtomicU64,
    network: Option<String>,
    owns_network: bool,
    services: Vec<String>,
    options: ContainerOptions,
    limits: Limits,
    workspace: PathBuf,
    labels: SandboxLabels,
    runtime: Arc<DockerRuntime>,
    torn_down: bool,
}

impl JobSandbox {
    /// Pulls what is missing, creates the network, starts and waits for the services, and
    /// starts the job container. On any failure, whatever was created is removed.
    pub async fn start(runtime: &Arc<DockerRuntime>, req: SandboxRequest<'_>) -> Result<JobSandbox, DockerError> {
        let docker = runtime.client().await?.clone();
        let limits = resolve_limits(runtime.settings(), req.job_name, req.options)?;
        if req.options.network == NetworkMode::None && !req.services.is_empty() {
            return Err(DockerError::Service {
                name: req.services[0].name.clone(),
                reason: "cannot be reached by a job with `network: none`".into(),
            });
        }
        ensure_image(&docker, req.image, req.options.pull).await?;
        for s in &req.services {
            ensure_image(&docker, &s.image, req.options.pull).await?;
        }
        let mut sandbox = JobSandbox {
            docker: docker.clone(),
            container: String::new(),
            runner: tokio::sync::Mutex::new(None),
            mark: format!("CHENGIS-END-{}", super::random_token()),
            runs: std::sync::atomic::AtomicU64::new(0),
            user: req.options.user.clone(),
            memory: limits.memory,
            oom_kills: AtomicU64::new(0),
            network: req.join_network.clone(),
            owns_network: false,
            services: Vec::new(),
            options: req.options.clone(),
            limits,
            workspace: req.workspace.to_path_buf(),
            state_dir: req.state_dir.to_path_buf(),
            labels: req.labels.clone(),
            runtime: runtime.clone(),
            torn_down: false,
        };
        match sandbox.bring_up(&req).await {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                sandbox.teardown().await;
                Err(e)
            }
        }
    }

    async fn bring_up(&mut self, req: &SandboxRequest<'_>) -> Result<(), DockerError> {
        let labels = self.runtime.labels(&self.labels);
        if self.network.is_none() && req.options.network == NetworkMode::Bridge {
            let name = self.runtime.name("net");
            self.docker
                .create_network(spec::job_network(&name, labels.clone()))
                .await
                .map_err(DockerError::api("creating the job network"))?;
            self.network = Some(name);
            self.owns_network = true;
        }
        for (volume, _) in &req.options.cache_volumes {
            let mut vlabels = labels.clone();
            vlabels.retain(|k, _| k == super::LABEL_AGENT);
            vlabels.insert(LABEL_CACHE_VOLUME.into(), volume.clone());
            let request = VolumeCreateRequest {
                name: Some(volume.clone()),
                labels: Some(vlabels),
                ..VolumeCreateRequest::default()
            };
            self.docker
                .create_volume(request)
                .await
                .map_err(DockerError::api(format!("creating cache volume `{volume}`")))?;
        }
        for s in &req.services {
            let network = self.network.clone().unwrap_or_default();
            let body = spec::service_container(&ServiceContainer {
                name: &s.name,
                image: &s.image,
                env: s.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                command: &s.command,
                network: &network,
                limits: &self.limits,
                labels: labels.clone(),
            });
            let id = self.create_and_start(&format!("svc-{}", s.name), body, &format!("service `{}`", s.name)).await?;
            self.services.push(id.clone());
            let timeout = s.wait_timeout.unwrap_or(self.runtime.settings().service_timeout);
            wait_ready(&self.docker, &id, &network, s, timeout).await?;
        }
        let body = spec::job_container(&JobContainer {
            image: req.image,
            options: &self.options,
            limits: &self.limits,
            workspace: &self.workspace,
            state_dir: &self.state_dir,
            network: self.network.as_deref(),
            labels,
        });
        self.container = self.create("job", body, "the job container").await?;
        let attach =
            AttachContainerOptionsBuilder::default().stdin(true).stdout(true).stderr(true).stream(true).build();
        let attached = self
            .docker
            .attach_container(&self.container, Some(attach))
            .await
            .map_err(DockerError::api("attaching to the job container"))?;
        *self.runner.get_mut() = Some(Attached { output: attached.output, input: attached.input });
        self.start_container(&self.container, "the job container").await?;
        if req.hand_over_workspace
            && let Some(user) = self.user.clone()
        {
            self.hand_over_workspace(&user).await;
        }
        Ok(())
    }

    /// Makes the workspace owned by the container's `user:` (resolved in the image when it is a
    /// name), so that a non-root step can write to it. Done from the agent's side: inside the
    /// container even root has no capabilities once the container runs as another user.
    async fn hand_over_workspace(&self, user: &str) {
        let (name, group) = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
        let uid = match name.parse::<u32>() {
            Ok(uid) => Some(uid),
            Err(_) => self.id_in_image("-u", name).await,
        };
        let gid = match group {
            Some(g) => g.parse::<u32>().ok(),
            None if name.parse::<u32>().is_err() => self.id_in_image("-g", name).await,
            None => None,
        };
        let Some(uid) = uid else {
            tracing::warn!(%user, "cannot resolve the container user: the workspace stays the agent's");
            return;
        };
        let root = self.workspace.clone();
        let done = tokio::task::spawn_blocking(move || chown_tree(&root, uid, gid)).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(%user, "handing the workspace over: {e}");
        }
    }

    async fn id_in_image(&self, flag: &str, name: &str) -> Option<u32> {
        let cmd = vec!["id".into(), flag.into(), name.into()];
        match exec_output(&self.docker, &self.container, cmd, None).await {
            Ok((0, out)) => out.trim().parse().ok(),
            _ => None,
        }
    }

    async fn create_and_start(
        &self,
        what: &str,
        body: bollard::models::ContainerCreateBody,
        desc: &str,
    ) -> Result<String, DockerError> {
        let id = self.create(what, body, desc).await?;
        if let Err(e) = self.start_container(&id, desc).await {
            remove_container(&self.docker, &id).await;
            return Err(e);
        }
        Ok(id)
    }

    async fn create(
        &self,
        what: &str,
        body: bollard::models::ContainerCreateBody,
        desc: &str,
    ) -> Result<String, DockerError> {
        let name = self.runtime.name(what);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(DockerError::api(format!("creating {desc}")))?;
        Ok(created.id)
    }

    async fn start_container(&self, id: &str, desc: &str) -> Result<(), DockerError> {
        self.docker.start_container(id, None).await.map_err(DockerError::api(format!("starting {desc}")))
    }

    /// A container for one step in another image, on the same workspace, network and limits.
    pub async fn step_sandbox(&self, image: &str, job_name: &str) -> Result<JobSandbox, DockerError> {
        JobSandbox::start(
            &self.runtime,
            SandboxRequest {
                job_name,
                image,
                options: &self.options,
                services: Vec::new(),
                workspace: &self.workspace,
                state_dir: &self.state_dir,
                labels: self.labels.clone(),
                join_network: self.network.clone(),
                hand_over_workspace: false,
            },
        )
        .await
    }

    /// Removes the containers (with their anonymous volumes) and the network.
    pub async fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        let mut ids: Vec<String> = self.services.drain(..).collect();
        if !self.container.is_empty() {
            ids.push(std::mem::take(&mut self.container));
        }
        let docker = self.docker.clone();
        futures_util::future::join_all(ids.iter().map(|id| remove_container(&docker, id))).await;
        if self.owns_network
            && let Some(net) = self.network.take()
            && let Err(e) = docker.remove_network(&net).await
        {
            tracing::warn!(network = %net, "removing the job network: {e}");
        }
    }
}

impl Drop for JobSandbox {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        // The owner did not tear down (a panic or an early return): do it in the background.
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let docker = self.docker.clone();
        let mut ids: Vec<String> = self.services.drain(..).collect();
        if !self.container.is_empty() {
            ids.push(std::mem::take(&mut self.container));
        }
        let network = if self.owns_network { self.network.take() } else { None };
        handle.spawn(async move {
            for id in &ids {
                remove_container(&docker, id).await;
            }
            if let Some(n) = network {
                let _ = docker.remove_network(&n).await;
            }
        });
    }
}

/// `lchown` of `root` and everything under it (symlinks themselves, never their targets).
fn chown_tree(root: &Path, uid: u32, gid: Option<u32>) -> std::io::Result<()> {
    std::os::unix::fs::lchown(root, Some(uid), gid)?;
    if std::fs::symlink_metadata(root)?.is_dir() {
        for entry in std::fs::read_dir(root)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Limits of the job against the operator's defaults and allowances.
fn resolve_limits(settings: &DockerSettings, job: &str, o: &ContainerOptions) -> Result<Limits, DockerError> {
    if o.privileged && !DockerSettings::allows(&settings.allow_privileged, job) {
        return Err(DockerError::NotAllowed {
            job: job.into(),
            what: "privileged: true".into(),
            how: format!("an operator can allow it with `--docker-allow-privileged {job}`"),
        });
    }
    if o.docker_socket && !DockerSettings::allows(&settings.allow_docker_socket, job) {
        return Err(DockerError::NotAllowed {
            job: job.into(),
            what: "docker-socket: true".into(),
            how: format!("an operator can allow it with `--docker-allow-socket {job}`"),
        });
    }
    Ok(Limits {
        memory: o.memory.or(settings.default_memory),
        nano_cpus: o.nano_cpus.or(settings.default_nano_cpus),
        pids: o.pids.unwrap_or(settings.default_pids),
        privileged: o.privileged,
        docker_socket: o.docker_socket,
    })
}

/// Removes a container and its anonymous volumes; a container already gone is fine.
pub(super) async fn remove_container(docker: &Docker, id: &str) {
    let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) | Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => {}
        Err(e) => tracing::warn!(container = %id, "removing a container: {e}"),
    }
}

/// Makes sure `image` is on the engine according to `policy`.
async fn ensure_image(docker: &Docker, image: &str, policy: PullPolicy) -> Result<(), DockerError> {
    let present = match docker.inspect_image(image).await {
        Ok(_) => true,
        Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => false,
        Err(e) => return Err(DockerError::api(format!("looking up image `{image}`"))(e)),
    };
    match (policy, present) {
        (PullPolicy::Never, false) => return Err(DockerError::ImageMissing { image: image.into() }),
        (PullPolicy::Never | PullPolicy::IfNotPresent, true) => return Ok(()),
        _ => {}
    }
    let (repo, tag) = split_reference(image);
    let options = CreateImageOptionsBuilder::default().from_image(repo).tag(tag).build();
    let mut progress = docker.create_image(Some(options), None, None);
    while let Some(item) = progress.next().await {
        if let Err(e) = item {
            let reason = match e {
                BollardError::DockerResponseServerError { message, .. } => message,
                other => other.to_string(),
            };
            return Err(DockerError::Pull { image: image.into(), reason });
        }
    }
    Ok(())
}

/// Splits `repo[:tag]` (a digest stays in the repository part); the tag defaults to `latest`.
fn split_reference(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (&image[..slash + i], &image[slash + i + 1..]),
        None => (image, "latest"),
    }
}

/// Runs `cmd` in a container and returns its exit code and output (at most 4 KiB kept).
pub(super) async fn exec_output(
    docker: &Docker,
    container: &str,
    cmd: Vec<String>,
    user: Option<String>,
) -> Result<(i64, String), BollardError> {
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd),
                user,
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..CreateExecOptions::default()
            },
        )
        .await?;
    let mut text = String::new();
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&exec.id, Some(StartExecOptions::default())).await?
    {
        while let Some(Ok(chunk)) = output.next().await {
            if text.len() < 4096 {
                text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        }
    }
    let code = docker.inspect_exec(&exec.id).await?.exit_code.unwrap_or(-1);
    Ok((code, text))
}

/// Waits until the service accepts TCP connections on its ports and its health command
/// succeeds, or fails with what the service said.
async fn wait_ready(
    docker: &Docker,
    id: &str,
    network: &str,
    s: &ServiceRequest,
    timeout: Duration,
) -> Result<(), DockerError> {
    let started = Instant::now();
    let fail = |reason: String| DockerError::Service { name: s.name.clone(), reason };
    let mut last = String::from("it never answered");
    loop {
        let info = docker
            .inspect_container(id, None)
            .await
            .map_err(DockerError::api(format!("inspecting service `{}`", s.name)))?;
        let state = info.state.unwrap_or_default();
        if state.status != Some(ContainerStateStatusEnum::RUNNING) {
            let logs = tail_logs(docker, id).await;
            return Err(fail(format!(
                "exited with code {} before it was ready; its last output:\n{logs}",
                state.exit_code.unwrap_or(-1)
            )));
        }
        let ip = info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty());
        let mut ready = true;
        for port in &s.ports {
            let Some(ip) = &ip else {
                ready = false;
                break;
            };
            let addr = format!("{ip}:{port}");
            let connect = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(&addr)).await;
            if !matches!(connect, Ok(Ok(_))) {
                last = format!("port {port} did not accept connections");
                ready = false;
                break;
            }
        }
        if ready && let Some(cmd) = &s.health_cmd {
            match exec_output(docker, id, vec!["/bin/sh".into(), "-c".into(), cmd.clone()], None).await {
                Ok((0, _)) => {}
                Ok((code, out)) => {
                    last = format!("health command exited with code {code}: {}", out.trim());
                    ready = false;
                }
                Err(e) => {
                    last = format!("health command could not run: {e}");
                    ready = false;
                }
            }
        }
        if ready {
            tracing::info!(service = %s.name, elapsed_ms = started.elapsed().as_millis() as u64, "service ready");
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(fail(format!("was not ready after {}: {last}", chengis_model::human_duration(timeout))));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last lines a container wrote.
async fn tail_logs(docker: &Docker, id: &str) -> String {
    let options = LogsOptionsBuilder::default().stdout(true).stderr(true).tail("20").build();
    let mut logs = docker.logs(id, Some(options));
    let mut out = String::new();
    while let Some(Ok(chunk)) = logs.next().await {
        out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_repo_and_tag() {
        assert_eq!(split_reference("alpine"), ("alpine", "latest"));
        assert_eq!(split_reference("alpine:3.20"), ("alpine", "3.20"));
        assert_eq!(split_reference("localhost:5000/team/app"), ("localhost:5000/team/app", "latest"));
        assert_eq!(split_reference("localhost:5000/app:v1"), ("localhost:5000/app", "v1"));
        assert_eq!(split_reference("app@sha256:abc"), ("app@sha256:abc", ""));
    }

    #[test]
    fn privileges_need_the_operator() {
        let o = ContainerOptions { privileged: true, ..ContainerOptions::default() };
        let err = resolve_limits(&DockerSettings::default(), "build", &o).unwrap_err().to_string();
        assert!(err.contains("--docker-allow-privileged build"), "{err}");
        let settings = DockerSettings { allow_privileged: vec!["build".into()], ..DockerSettings::default() };
        assert!(resolve_limits(&settings, "build", &o).unwrap().privileged);
        let sock = ContainerOptions { docker_socket: true, ..ContainerOptions::default() };
        assert!(resolve_limits(&settings, "build", &sock).is_err());
    }
}
