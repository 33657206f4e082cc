//! `chengis plugin`: install, list, inspect, allow, deny, remove and configure plugins in the
//! trust allowlist of a server's database (run on the server host, with its data directory and
//! database settings), and scaffold a new plugin crate on the SDK.

use super::error::CliError;
use super::serve::{ServeArgs, open_store};
use crate::plugins::{PluginService, requested, world_name};
use crate::store::plugins::TrustState;
use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use std::path::{Path, PathBuf};

/// `chengis plugin ...`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Validate a component (a known world and version), copy it into the data directory and
    /// record its digest; pending until allowed.
    Install {
        /// A `.wasm` file or an `http(s)://` URL.
        source: String,
        /// Allow it right away (you are the admin of the server host).
        #[arg(long)]
        allow: bool,
        /// Grant a capability (repeatable): `http:https://host:443`, `secret:NAME`,
        /// `workspace:read`, `workspace:write`, `exec`.
        #[arg(long = "grant", value_name = "CAPABILITY")]
        grants: Vec<String>,
    },
    /// List recorded plugins with their state and capabilities.
    List,
    /// Show a component's manifest, requested capabilities and world (a file is run with no
    /// capabilities at all; a name shows the recorded plugin).
    Inspect {
        /// A `.wasm` file or a recorded plugin name.
        target: String,
    },
    /// Allow a plugin (every version, or `--version`), optionally setting its grants.
    Allow {
        /// Plugin name.
        name: String,
        /// Only this version.
        #[arg(long)]
        version: Option<String>,
        /// Grant a capability (repeatable); replaces the current grants when given.
        #[arg(long = "grant", value_name = "CAPABILITY")]
        grants: Vec<String>,
    },
    /// Deny a plugin: it is never instantiated.
    Deny {
        /// Plugin name.
        name: String,
        /// Only this version.
        #[arg(long)]
        version: Option<String>,
    },
    /// Remove a plugin from the allowlist.
    Remove {
        /// Plugin name.
        name: String,
        /// Only this version.
        #[arg(long)]
        version: Option<String>,
    },
    /// Show or change a plugin's server-side configuration.
    Config {
        /// Plugin name.
        name: String,
        /// Set a key (repeatable).
        #[arg(long = "set", value_name = "K=V")]
        set: Vec<String>,
        /// Remove a key (repeatable).
        #[arg(long = "unset", value_name = "K")]
        unset: Vec<String>,
    },
    /// Create a plugin crate on the SDK that builds for wasm32-wasip2 and passes its own test.
    New {
        /// Plugin (and crate directory) name.
        name: String,
        /// The kind of plugin.
        #[arg(long, value_enum)]
        kind: NewKind,
        /// Parent directory [default: the current directory].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Path of the SDK crate [default: the SDK of this Chengis source tree].
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

/// Kinds `chengis plugin new` can scaffold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NewKind {
    /// A notifier.
    Notifier,
    /// A step executor.
    Step,
    /// An SCM status reporter.
    ScmStatus,
    /// A policy check.
    Policy,
}

/// Runs `chengis plugin ...`.
pub fn plugin(db: ServeArgs, command: PluginCommand) -> anyhow::Result<i32> {
    if let PluginCommand::New { name, kind, dir, sdk } = command {
        return scaffold(&name, kind, dir, sdk);
    }
    let cfg = db.resolve()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let store = open_store(&cfg).await?;
        let data_dir = std::fs::canonicalize(cfg.data_dir.clone().unwrap_or_default())?;
        let service = PluginService::new(store.clone(), &data_dir)?;
        let who = std::env::var("USER").unwrap_or_else(|_| "admin".into());
        // These commands work on the database itself: whoever runs them is the operator (an
        // admin); each decision goes to the audit log as `cli:USER`.
        let actor = format!("cli:{who}");
        let audit = |action: &'static str, target: String, details: String| {
            let (store, actor) = (store.clone(), actor.clone());
            async move {
                if let Err(e) = store.audit(&actor, "local", action, &target, &details).await {
                    tracing::warn!("audit log: {e}");
                }
            }
        };
        match command {
            PluginCommand::Install { source, allow, grants } => {
                // A source that cannot be read or is no loadable component is bad usage.
                let bytes = read_source(&source).map_err(super::error::as_usage)?;
                let p = service.install(&bytes, allow, &grants, &who, false).await.map_err(super::error::as_usage)?;
                audit(
                    "plugin.install",
                    format!("plugin:{}", p.name),
                    format!("{} {} {}", p.version, p.state.as_str(), p.digest),
                )
                .await;
                println!("installed {} {} ({}) as {}: {}", p.name, p.version, p.world, p.state.as_str(), p.digest);
                if p.state == TrustState::Pending {
                    println!("allow it with: chengis plugin allow {}", p.name);
                }
            }
            PluginCommand::List => {
                for p in store.plugins().await? {
                    println!(
                        "{:<18} {:<8} {:<14} {:<8} {}{}\n    requested: {}\n    granted:   {}",
                        p.name,
                        p.version,
                        p.world,
                        p.state.as_str(),
                        &p.digest[..19.min(p.digest.len())],
                        if p.builtin { " (builtin)" } else { "" },
                        list_or_none(&p.requested),
                        list_or_none(&p.granted)
                    );
                }
            }
            PluginCommand::Inspect { target } => {
                if Path::new(&target).exists() || target.starts_with("http://") || target.starts_with("https://") {
                    let bytes = read_source(&target)?;
                    let i = service.inspect(&bytes)?;
                    println!("name:        {}", i.manifest.name);
                    println!("version:     {}", i.manifest.version);
                    println!("description: {}", i.manifest.description);
                    println!("world:       {} ({})", world_name(i.world), chengis_plugin_host::WIT_PACKAGE);
                    println!("digest:      {}", i.digest);
                    println!("requests:    {}", list_or_none(&requested(&i.manifest)));
                    for f in &i.manifest.config {
                        let default = f.default.as_deref().map(|d| format!(" (default {d})")).unwrap_or_default();
                        let required = if f.required { " (required)" } else { "" };
                        println!("config:      {}{required}{default}: {}", f.name, f.description);
                    }
                } else {
                    let found: Vec<_> = store.plugins().await?.into_iter().filter(|p| p.name == target).collect();
                    if found.is_empty() {
                        return Err(
                            CliError::NotFound(format!("no file and no recorded plugin called `{target}`")).into()
                        );
                    }
                    println!("{}", serde_json::to_string_pretty(&found)?);
                }
            }
            PluginCommand::Allow { name, version, grants } => {
                let grants_opt = (!grants.is_empty()).then_some(grants.as_slice());
                if let Some(g) = grants_opt {
                    chengis_plugin_host::Grants::parse(g.iter().map(String::as_str))
                        .map_err(|e| anyhow::anyhow!("invalid grant: {e}"))?;
                }
                let decided =
                    store.decide_plugin(&name, version.as_deref(), TrustState::Allowed, grants_opt, &who).await;
                for p in decided.map_err(|e| not_pinned_yet(e, &name))? {
                    audit(
                        "plugin.allow",
                        format!("plugin:{}", p.name),
                        format!("{} granted {}", p.version, p.granted.join(" ")),
                    )
                    .await;
                    println!("allowed {} {}; granted: {}", p.name, p.version, list_or_none(&p.granted));
                }
            }
            PluginCommand::Deny { name, version } => {
                let decided = store.decide_plugin(&name, version.as_deref(), TrustState::Denied, None, &who).await;
                for p in decided.map_err(|e| not_pinned_yet(e, &name))? {
                    audit("plugin.deny", format!("plugin:{}", p.name), p.version.clone()).await;
                    println!("denied {} {}", p.name, p.version);
                }
            }
            PluginCommand::Remove { name, version } => {
                for p in store.remove_plugin(&name, version.as_deref()).await? {
                    audit("plugin.remove", format!("plugin:{}", p.name), p.version.clone()).await;
                    let _ = std::fs::remove_file(&p.path);
                    println!("removed {} {}", p.name, p.version);
                }
            }
            PluginCommand::Config { name, set, unset } => {
                let mut config = store.plugin_config(&name).await?;
                for kv in &set {
                    let Some((k, v)) = kv.split_once('=') else {
                        return Err(CliError::Usage(format!("--set takes K=V, got `{kv}`")).into());
                    };
                    config.insert(k.to_string(), serde_json::Value::String(v.to_string()));
                }
                for k in &unset {
                    config.remove(k);
                }
                if !set.is_empty() || !unset.is_empty() {
                    store.set_plugin_config(&name, &config).await?;
                }
                println!("{}", serde_json::Value::Object(config));
            }
            PluginCommand::New { .. } => unreachable!("handled above"),
        }
        Ok(0)
    })
}

/// A store error, with a hint when `name` is a builtin not found: a server pins its builtins
/// in the background at the first start of its database.
fn not_pinned_yet(e: crate::store::StoreError, name: &str) -> anyhow::Error {
    let builtin = crate::plugins::BUILTINS.iter().any(|b| b.name == name);
    match e {
        crate::store::StoreError::NotFound(_) if builtin => anyhow::anyhow!(
            "{e}; `{name}` is a builtin plugin, which a server pins in the background at the first start of its \
             database: `GET /ready` answers `\"plugins\": {{\"status\": \"ready\"}}` once it has"
        ),
        e => e.into(),
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() { "(none)".into() } else { items.join(", ") }
}

/// The bytes of a file or of an `http(s)://` URL (at most 64 MiB).
fn read_source(source: &str) -> anyhow::Result<Vec<u8>> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let mut response = ureq::get(source).call().with_context(|| format!("cannot download {source}"))?;
        let bytes = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .with_context(|| format!("cannot download {source}"))?;
        return Ok(bytes);
    }
    std::fs::read(source).with_context(|| format!("cannot read {source}"))
}

/// Writes a plugin crate for `kind`.
fn scaffold(name: &str, kind: NewKind, dir: Option<PathBuf>, sdk: Option<PathBuf>) -> anyhow::Result<i32> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err(CliError::Usage(format!("a plugin name is lowercase letters, digits and `-`, got `{name}`")).into());
    }
    let root = dir.unwrap_or_else(|| PathBuf::from(".")).join(name);
    if root.exists() {
        return Err(CliError::Usage(format!("{} already exists", root.display())).into());
    }
    let sdk = match sdk {
        Some(p) => p,
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk"),
    };
    let sdk = std::fs::canonicalize(&sdk)
        .with_context(|| format!("the SDK is not at {} (give its path with --sdk)", sdk.display()))?;
    let (feature, body) = template(kind);
    let ident: String = name.split('-').map(|w| w[..1].to_uppercase() + &w[1..]).collect();
    let cargo = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n\
         [dependencies]\nchengis-plugin-sdk = {{ path = {sdk:?}, features = [\"{feature}\"] }}\n\n\
         # Its own workspace, so that it builds wherever it is created.\n[workspace]\n"
    );
    let lib = body.replace("NAME", name).replace("Ident", &ident);
    std::fs::create_dir_all(root.join("src"))?;
    std::fs::write(root.join("Cargo.toml"), cargo)?;
    std::fs::write(root.join("src/lib.rs"), lib)?;
    std::fs::write(
        root.join("README.md"),
        format!(
            "# {name}\n\nA Chengis {feature} plugin.\n\n```sh\ncargo test                              # natively, against the SDK's fake host\ncargo build --release --target wasm32-wasip2\nchengis plugin install target/wasm32-wasip2/release/{}.wasm\n```\n",
            name.replace('-', "_")
        ),
    )?;
    println!("created {} ({feature}); `cargo test` there runs its test", root.display());
    Ok(0)
}

fn template(kind: NewKind) -> (&'static str, &'static str) {
    match kind {
        NewKind::Notifier => ("notifier", NOTIFIER),
        NewKind::Step => ("step-executor", STEP),
        NewKind::ScmStatus => ("scm-status", SCM_STATUS),
        NewKind::Policy => ("policy", POLICY),
    }
}

const NOTIFIER: &str = r#"//! NAME: a Chengis notifier.

use chengis_plugin_sdk::notifier::Event;
use chengis_plugin_sdk::{Failure, Host, Kind, Manifest, Notifier, export};

/// The plugin.
pub struct Ident;

impl Notifier for Ident {
    fn manifest() -> Manifest {
        Manifest::new("NAME", "0.1.0", "Tells the log about builds", Kind::Notifier)
    }

    fn notify(host: &dyn Host, event: Event) -> Result<(), Failure> {
        host.info(&format!("{} #{}: {}", event.build.pipeline, event.build.number, event.build.status.as_str()));
        Ok(())
    }
}

export!(Ident as notifier);

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::notifier::EventKind;
    use chengis_plugin_sdk::testing::FakeHost;
    use chengis_plugin_sdk::types::{Build, Commit, Status};

    #[test]
    fn logs_the_build() {
        let host = FakeHost::new();
        let commit = Commit { sha: "abc".into(), repository: "r".into(), branch: None, tag: None, message: String::new(), author: String::new() };
        let build = Build { id: 1, number: 7, pipeline: "web".into(), status: Status::Success, commit, trigger: "push".into(), url: None, duration_ms: None };
        Ident::notify(&host, Event { kind: EventKind::BuildFinished, build, job: None, previous_status: None }).unwrap();
        assert_eq!(host.log_text(), "web #7: success\n");
    }
}
"#;

const STEP: &str = r#"//! NAME: a Chengis step executor.

use chengis_plugin_sdk::step_executor::Invocation;
use chengis_plugin_sdk::{Failure, Host, Kind, Manifest, StepExecutor, export};

/// The plugin.
pub struct Ident;

impl StepExecutor for Ident {
    fn manifest() -> Manifest {
        Manifest::new("NAME", "0.1.0", "Greets and sets an output", Kind::StepExecutor).config("who", "Whom to greet", false, Some("world"))
    }

    fn run(host: &dyn Host, invocation: Invocation) -> Result<(), Failure> {
        let who: String = host.config().or("who", "world".to_string())?;
        host.info(&format!("hello, {who}, from step {}", invocation.step.name));
        host.set_output("greeted", &who);
        Ok(())
    }
}

export!(Ident as step_executor);

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::testing::FakeHost;
    use chengis_plugin_sdk::types::{Build, Commit, Job, Status, Step};

    #[test]
    fn greets() {
        let host = FakeHost::new().with_config("who", "team");
        let commit = Commit { sha: "abc".into(), repository: "r".into(), branch: None, tag: None, message: String::new(), author: String::new() };
        let build = Build { id: 1, number: 7, pipeline: "web".into(), status: Status::Running, commit, trigger: "push".into(), url: None, duration_ms: None };
        let job = Job { id: 1, name: "build".into(), status: Status::Running, image: None, duration_ms: None };
        let step = Step { index: 0, name: "greet".into(), uses: "NAME".into() };
        Ident::run(&host, Invocation { build, job, step, env: Vec::new() }).unwrap();
        assert_eq!(host.log_text(), "hello, team, from step greet\n");
    }
}
"#;

const SCM_STATUS: &str = r#"//! NAME: a Chengis SCM status reporter.

use chengis_plugin_sdk::scm_status::StatusUpdate;
use chengis_plugin_sdk::{Failure, Host, Kind, Manifest, ScmStatus, export};

/// The plugin.
pub struct Ident;

impl ScmStatus for Ident {
    fn manifest() -> Manifest {
        Manifest::new("NAME", "0.1.0", "Logs commit statuses", Kind::ScmStatus)
    }

    fn report(host: &dyn Host, update: StatusUpdate) -> Result<(), Failure> {
        host.info(&format!("{} {}: {}", update.build.commit.sha, update.context, update.state.as_str()));
        Ok(())
    }
}

export!(Ident as scm_status);

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::testing::FakeHost;
    use chengis_plugin_sdk::types::{Build, Commit, Status};

    #[test]
    fn reports() {
        let host = FakeHost::new();
        let commit = Commit { sha: "abc".into(), repository: "r".into(), branch: None, tag: None, message: String::new(), author: String::new() };
        let build = Build { id: 1, number: 7, pipeline: "web".into(), status: Status::Success, commit, trigger: "push".into(), url: None, duration_ms: None };
        let update = StatusUpdate { build, job: None, state: Status::Success, context: "chengis/build".into(), description: "ok".into() };
        Ident::report(&host, update).unwrap();
        assert_eq!(host.log_text(), "abc chengis/build: success\n");
    }
}
"#;

const POLICY: &str = r#"//! NAME: a Chengis policy.

use chengis_plugin_sdk::policy::{Decision, Plan};
use chengis_plugin_sdk::{Diagnostic, Failure, Host, Kind, Manifest, Policy, Severity, export};

/// The plugin.
pub struct Ident;

impl Policy for Ident {
    fn manifest() -> Manifest {
        Manifest::new("NAME", "0.1.0", "Refuses jobs without an image", Kind::Policy)
    }

    fn check(_host: &dyn Host, plan: Plan) -> Result<Decision, Failure> {
        let missing: Vec<Diagnostic> = plan
            .jobs
            .iter()
            .filter(|j| j.image.is_none())
            .map(|j| Diagnostic { severity: Severity::Error, code: "no-image".into(), message: format!("job {} has no image", j.name), field: None, help: None })
            .collect();
        Ok(if missing.is_empty() { Decision::Allow(Vec::new()) } else { Decision::Deny(missing) })
    }
}

export!(Ident as policy);

#[cfg(test)]
mod tests {
    use super::*;
    use chengis_plugin_sdk::policy::PlannedJob;
    use chengis_plugin_sdk::testing::FakeHost;
    use chengis_plugin_sdk::types::Commit;

    #[test]
    fn denies_jobs_without_an_image() {
        let commit = Commit { sha: "abc".into(), repository: "r".into(), branch: None, tag: None, message: String::new(), author: String::new() };
        let job = PlannedJob {
            name: "build".into(),
            image: None,
            needs: Vec::new(),
            uses: Vec::new(),
            services: Vec::new(),
            step_images: Vec::new(),
            privileged: false,
            docker_socket: false,
            approval: false,
        };
        let plan = Plan { pipeline: "web".into(), commit, trigger: "push".into(), actor: None, jobs: vec![job] };
        assert!(matches!(Ident::check(&FakeHost::new(), plan).unwrap(), Decision::Deny(d) if d.len() == 1));
    }
}
"#;
