//! The API client behind `chengis job|build|secret|schedule|token|...`: plain HTTP+JSON to
//! `--server` (a URL without a scheme is `http://`; without `--server`, the server last signed in
//! to), errors shown as the server's JSON error message and typed by their exit code
//! ([`CliError`]), `--format json` for tools.

use super::Format;
use super::error::CliError;
use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::io::Read;
use std::time::Duration;

/// Where the server is and how to print answers.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// The server's URL; `http://` when no scheme is given [default: the server last signed in
    /// to with `chengis login`, else http://127.0.0.1:8080].
    #[arg(long, env = "CHENGIS_SERVER", global = true)]
    pub server: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub format: Format,
    /// PEM file of the CA (or self-signed certificate) of an https:// server.
    #[arg(long, env = "CHENGIS_CA_FILE", global = true)]
    pub ca_file: Option<std::path::PathBuf>,
}

/// `chengis job ...`.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Create a job that builds a git repository.
    Create {
        /// Job name.
        name: String,
        /// Repository URL.
        #[arg(long)]
        repo: String,
        /// Default branch.
        #[arg(long, default_value = "main")]
        branch: String,
        /// Pipeline file in the repository (default: the documented lookup order).
        #[arg(long)]
        pipeline: Option<String>,
        /// Check out git submodules too.
        #[arg(long)]
        submodules: bool,
        /// The secret its SCM webhooks are signed with (POST /hooks/PROVIDER/NAME).
        #[arg(long, env = "CHENGIS_WEBHOOK_SECRET")]
        webhook_secret: Option<String>,
    },
    /// Change a job.
    Update {
        /// Job name.
        name: String,
        /// Repository URL.
        #[arg(long)]
        repo: Option<String>,
        /// Default branch.
        #[arg(long)]
        branch: Option<String>,
        /// A new webhook secret; the previous one keeps working until the next change.
        #[arg(long, env = "CHENGIS_WEBHOOK_SECRET")]
        webhook_secret: Option<String>,
        /// Keep only the newest N finished builds (0 keeps all).
        #[arg(long)]
        keep_builds: Option<i64>,
        /// Give builds of pull requests from forks the job's secrets (admins only; off by
        /// default: a fork's pipeline file decides what its steps do with them).
        #[arg(long, value_name = "true|false")]
        fork_secrets: Option<bool>,
    },
    /// List jobs.
    List,
    /// Delete a job and its builds.
    Delete {
        /// Job name.
        name: String,
    },
}

/// `chengis secret ...`.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set a secret; the value is read from standard input unless --value is given.
    Set {
        /// Secret name.
        name: String,
        /// Scope it to one job.
        #[arg(long)]
        job: Option<String>,
        /// The value (visible in the process list; prefer standard input).
        #[arg(long)]
        value: Option<String>,
    },
    /// List secret names.
    List {
        /// A job's scope instead of the global one.
        #[arg(long)]
        job: Option<String>,
    },
    /// Add a new master key and re-encrypt every secret with it (run on the server host).
    RotateKey {
        /// The server's database settings.
        #[command(flatten)]
        db: super::account::LocalDb,
    },
    /// Delete a secret.
    Rm {
        /// Secret name.
        name: String,
        /// A job's scope.
        #[arg(long)]
        job: Option<String>,
    },
}

/// `chengis schedule ...`.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add a server-side cron schedule to a job.
    Add {
        /// Job name.
        job: String,
        /// Cron expression: 5 fields, or 6 with seconds first (quote it).
        cron: String,
        /// Branch to build (default: the job's default branch).
        #[arg(long)]
        branch: Option<String>,
        /// IANA time zone the expression is read in, such as Europe/Berlin.
        #[arg(long, default_value = "UTC")]
        timezone: String,
    },
    /// List schedules (the pipelines' `on.schedule` and server-side ones) with their next run.
    List {
        /// Only this job's schedules.
        #[arg(long)]
        job: Option<String>,
    },
    /// Delete a server-side schedule.
    Rm {
        /// Schedule id.
        id: i64,
    },
}

/// The `what` of a password sign-in: a 401 there is a wrong password, not a missing sign-in.
pub(super) const LOGIN: &str = "signing in";

/// Why a stream could not be opened.
pub(super) enum StreamError {
    /// No answer (refused, reset, timed out) or a 5xx/429: worth trying again.
    Unreachable(anyhow::Error),
    /// The server refused (401, 403, 404, ...): final.
    Refused(anyhow::Error),
}

/// A connection to the server's API.
pub(super) struct Client {
    base: String,
    agent: ureq::Agent,
    /// `Bearer ...`: `CHENGIS_TOKEN`, else what `chengis login` stored for this server.
    auth: Option<String>,
}

/// Where the CLI goes without `--server`, `CHENGIS_SERVER` or a server signed in to.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// A server URL as the CLI uses it: `http://` added when no scheme is given, no trailing `/`.
/// Other schemes and URLs that do not parse are usage errors.
pub fn normalize_server(raw: &str) -> Result<String, CliError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(CliError::Usage("the server URL is empty".into()));
    }
    let url = match raw.split_once("://") {
        Some((_, rest)) if rest.trim_matches('/').is_empty() => {
            return Err(CliError::Usage(format!("server `{raw}`: no host name")));
        }
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" => format!("{}://{rest}", scheme.to_ascii_lowercase()),
            _ => {
                return Err(CliError::Usage(format!(
                    "server `{raw}`: the scheme must be http:// or https://, not {scheme}://"
                )));
            }
        },
        None => format!("http://{raw}"),
    };
    let url = url.trim_end_matches('/').to_string();
    match ureq::http::Uri::try_from(url.as_str()) {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => Ok(url),
        Ok(_) => Err(CliError::Usage(format!("server `{raw}`: no host name"))),
        Err(e) => Err(CliError::Usage(format!("server `{raw}` is not a URL: {e}"))),
    }
}

impl ClientArgs {
    /// The server to talk to: `--server` or `CHENGIS_SERVER`, else the one last signed in to,
    /// else [`DEFAULT_SERVER`].
    pub fn server_url(&self) -> Result<String, CliError> {
        match &self.server {
            Some(s) => normalize_server(s),
            None => Ok(super::account::current_server().unwrap_or_else(|| DEFAULT_SERVER.to_string())),
        }
    }
}

/// The rustls error behind a transport error, if TLS failed.
fn rustls_error(e: &ureq::Error) -> Option<&tokio_rustls::rustls::Error> {
    match e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => io.get_ref().and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>()),
        _ => None,
    }
}

/// A request that got no HTTP answer, typed: a wrong scheme for the server named with the URL to
/// use instead, a malformed URL as usage, anything else as unreachable.
pub(super) fn transport_error(base: &str, what: &str, e: ureq::Error) -> CliError {
    use tokio_rustls::rustls::Error as Tls;
    if let Some(rest) = base.strip_prefix("https://")
        && matches!(rustls_error(&e), Some(Tls::InvalidMessage(_)))
    {
        return CliError::Unreachable(format!("the server at {base} does not speak TLS; use http://{rest}"));
    }
    if let Some(Tls::InvalidCertificate(why)) = rustls_error(&e) {
        return CliError::Unreachable(format!(
            "the certificate of the server at {base} is not trusted ({why:?}): give the PEM file of its CA (or of a self-signed certificate) with --ca-file or CHENGIS_CA_FILE"
        ));
    }
    if let Some(rest) = base.strip_prefix("http://")
        && matches!(e, ureq::Error::Protocol(_))
    {
        return CliError::Unreachable(format!(
            "the server at {base} did not answer in HTTP ({e}); if it speaks TLS, use https://{rest}"
        ));
    }
    match e {
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => CliError::Usage(format!("{base} ({what}): {e}")),
        ureq::Error::BodyExceedsLimit(_) | ureq::Error::Json(_) => CliError::Failed(format!("{what}: {e}")),
        e => CliError::Unreachable(format!("cannot reach the server at {base} ({what}): {e}")),
    }
}

impl Client {
    pub(super) fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let server = args.server_url()?;
        let token = super::account::token_for(&server);
        Self::at(&server, args, token)
    }

    pub(super) fn with_token(args: &ClientArgs, token: Option<String>) -> anyhow::Result<Client> {
        Self::at(&args.server_url()?, args, token)
    }

    fn at(server: &str, args: &ClientArgs, token: Option<String>) -> anyhow::Result<Client> {
        let mut config =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(60)));
        if let Some(path) = &args.ca_file {
            config = config.tls_config(crate::agent::remote::tls_roots(path).map_err(CliError::Usage)?);
        }
        Ok(Client {
            base: server.to_string(),
            agent: config.build().into(),
            auth: token.map(|t| format!("Bearer {t}")),
        })
    }

    /// The server's URL.
    pub(super) fn base(&self) -> &str {
        &self.base
    }

    fn req<B>(&self, r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.auth {
            Some(a) => r.header("authorization", a),
            None => r,
        }
    }

    /// Streams the body of a GET into `out`; returns the bytes written.
    pub(super) fn download(&self, path: &str, out: &mut dyn std::io::Write) -> anyhow::Result<u64> {
        let resp = self.req(self.agent.get(&format!("{}{path}", self.base))).call();
        let mut resp = resp.map_err(|e| transport_error(&self.base, path, e))?;
        if !resp.status().is_success() {
            return self.answer(path, Ok(resp)).map(|_| 0);
        }
        let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
        std::io::copy(&mut body, out).with_context(|| format!("downloading {path}"))
    }

    fn answer(&self, what: &str, resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> anyhow::Result<Value> {
        let mut resp = resp.map_err(|e| transport_error(&self.base, what, e))?;
        let status = resp.status();
        let mut text = String::new();
        resp.body_mut().as_reader().read_to_string(&mut text).context("reading the answer")?;
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let msg = value["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
            if status.as_u16() == 401 && what != LOGIN {
                return Err(CliError::Denied(format!(
                    "{what}: {msg} (HTTP 401): sign in with `chengis login --server {}` or set CHENGIS_TOKEN",
                    self.base
                ))
                .into());
            }
            return Err(
                CliError::from_status(status.as_u16(), format!("{what}: {msg} (HTTP {})", status.as_u16())).into()
            );
        }
        Ok(value)
    }

    pub(super) fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.get_as(path, path)
    }

    /// A GET whose errors start with `what` (`build hello#3: ...`) instead of the path.
    pub(super) fn get_as(&self, what: &str, path: &str) -> anyhow::Result<Value> {
        self.answer(what, self.req(self.agent.get(&format!("{}{path}", self.base))).call())
    }

    pub(super) fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.post_as(path, path, body)
    }

    /// A POST whose errors start with `what` instead of the path.
    pub(super) fn post_as(&self, what: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        self.answer(what, self.req(self.agent.post(&format!("{}{path}", self.base))).send_json(body))
    }

    /// Opens a server-sent event stream, resuming after `last_event_id`; `window` bounds how long
    /// the connection is kept (`None`: for as long as the server sends).
    pub(super) fn stream(
        &self,
        path: &str,
        last_event_id: Option<&str>,
        window: Option<Duration>,
    ) -> Result<ureq::http::Response<ureq::Body>, StreamError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .req(self.agent.get(&url).config().timeout_global(window).build())
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        match req.call() {
            Ok(r) if r.status().is_success() => Ok(r),
            Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                Err(StreamError::Unreachable(anyhow!("{path}: HTTP {}", r.status().as_u16())))
            }
            Ok(r) => Err(StreamError::Refused(match self.answer(path, Ok(r)) {
                Err(e) => e,
                Ok(v) => anyhow!("{path}: unexpected answer {v}"),
            })),
            Err(e) => Err(StreamError::Unreachable(transport_error(&self.base, path, e).into())),
        }
    }

    pub(super) fn put(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.answer(path, self.req(self.agent.put(&format!("{}{path}", self.base))).send_json(body))
    }

    pub(super) fn patch(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.answer(path, self.req(self.agent.patch(&format!("{}{path}", self.base))).send_json(body))
    }

    pub(super) fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.answer(path, self.req(self.agent.delete(&format!("{}{path}", self.base))).call())
    }
}

/// Percent-encodes a path segment or query value.
pub(super) use crate::agent::remote::percent_encode as enc;

/// Prints JSON, or the text rendering.
pub(super) fn print(format: Format, value: &Value, text: impl FnOnce(&Value) -> String) {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        Format::Text => print!("{}", text(value)),
    }
}

/// A JSON value as plain text (`-` for null).
pub(super) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Runs `chengis job ...`.
pub fn job(args: &ClientArgs, cmd: JobCommand) -> anyhow::Result<i32> {
    let c = Client::new(args)?;
    match cmd {
        JobCommand::Create { name, repo, branch, pipeline, submodules, webhook_secret } => {
            let mut body = json!({"name": name, "repo_url": repo, "default_branch": branch, "pipeline_path": pipeline, "submodules": submodules});
            if let Some(secret) = webhook_secret {
                body["webhook_secret"] = json!(secret);
            }
            let v = c.post_as(&format!("creating job `{name}`"), "/api/v1/jobs", body)?;
            print(args.format, &v, |v| format!("created job {} ({})\n", s(&v["name"]), s(&v["repo_url"])));
        }
        JobCommand::Update { name, repo, branch, webhook_secret, keep_builds, fork_secrets } => {
            let mut body = json!({});
            if let Some(n) = keep_builds {
                body["keep_builds"] = json!(n);
            }
            if let Some(on) = fork_secrets {
                body["fork_secrets"] = json!(on);
            }
            for (key, value) in [("repo_url", repo), ("default_branch", branch), ("webhook_secret", webhook_secret)] {
                if let Some(v) = value {
                    body[key] = json!(v);
                }
            }
            let v = c.put(&format!("/api/v1/jobs/{}", enc(&name)), body)?;
            print(args.format, &v, |v| format!("updated job {}\n", s(&v["name"])));
        }
        JobCommand::List => {
            let v = c.get("/api/v1/jobs")?;
            print_list(args.format, &v, "jobs", "no jobs", |v| {
                let mut out = format!("{:<24} {:<10} REPOSITORY\n", "NAME", "BRANCH");
                for j in v["jobs"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "{:<24} {:<10} {}\n",
                        s(&j["name"]),
                        s(&j["default_branch"]),
                        s(&j["repo_url"])
                    ));
                }
                out
            });
        }
        JobCommand::Delete { name } => {
            c.delete(&format!("/api/v1/jobs/{}", enc(&name)))?;
            print(args.format, &json!({"deleted": name}), |_| format!("deleted job {name}\n"));
        }
    }
    Ok(0)
}

/// Runs `chengis secret ...`.
pub fn secret(args: &ClientArgs, cmd: SecretCommand) -> anyhow::Result<i32> {
    let c = Client::new(args)?;
    let scope = |job: &Option<String>| job.as_ref().map(|j| format!("?job={}", enc(j))).unwrap_or_default();
    match cmd {
        SecretCommand::Set { name, job, value } => {
            let value = match value {
                Some(v) => v,
                None => {
                    let mut v = String::new();
                    std::io::stdin().read_to_string(&mut v).context("reading the secret from standard input")?;
                    v.trim_end_matches(['\n', '\r']).to_string()
                }
            };
            c.put(&format!("/api/v1/secrets/{}{}", enc(&name), scope(&job)), json!({"value": value}))?;
            print(args.format, &json!({"set": name}), |_| format!("secret {name} set\n"));
        }
        SecretCommand::List { job } => {
            let v = c.get(&format!("/api/v1/secrets{}", scope(&job)))?;
            let empty = match &job {
                Some(j) => format!("no secrets for job {j}"),
                None => "no global secrets".to_string(),
            };
            print_list(args.format, &v, "secrets", &empty, |v| {
                v["secrets"].as_array().into_iter().flatten().map(|n| format!("{}\n", s(n))).collect()
            });
        }
        SecretCommand::RotateKey { db } => return super::serve::rotate_key(db.serve_args()),
        SecretCommand::Rm { name, job } => {
            c.delete(&format!("/api/v1/secrets/{}{}", enc(&name), scope(&job)))?;
            print(args.format, &json!({"deleted": name}), |_| format!("secret {name} deleted\n"));
        }
    }
    Ok(0)
}

/// A time in milliseconds since the epoch as RFC 3339 (UTC, seconds); `-` when out of range.
pub(super) fn time_of(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) if ms < u64::MAX / 2 => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        _ => "-".into(),
    }
}

/// Prints a list answer: the line `empty` when its array `key` has no rows (text), else as
/// [`print`] does.
pub(super) fn print_list(format: Format, value: &Value, key: &str, empty: &str, text: impl FnOnce(&Value) -> String) {
    if format == Format::Text && value[key].as_array().is_none_or(Vec::is_empty) {
        println!("{empty}");
    } else {
        print(format, value, text);
    }
}

fn schedule_line(v: &Value) -> String {
    let at = |ms: &Value| ms.as_i64().map_or_else(|| "-".to_string(), time_of);
    format!(
        "{:<5} {:<20} {:<18} {:<16} {:<12} {:<9} next {}  last {}\n",
        s(&v["id"]),
        s(&v["job"]),
        s(&v["cron"]),
        s(&v["timezone"]),
        v["branch"].as_str().unwrap_or("(default)"),
        s(&v["source"]),
        at(&v["next_run_ms"]),
        at(&v["last_run_ms"]),
    )
}

/// Runs `chengis schedule ...`.
pub fn schedule(args: &ClientArgs, cmd: ScheduleCommand) -> anyhow::Result<i32> {
    let c = Client::new(args)?;
    match cmd {
        ScheduleCommand::Add { job, cron, branch, timezone } => {
            let v =
                c.post("/api/v1/schedules", json!({"job": job, "cron": cron, "branch": branch, "timezone": timezone}))?;
            print(args.format, &v, |v| format!("schedule {} added\n{}", s(&v["id"]), schedule_line(v)));
        }
        ScheduleCommand::List { job } => {
            let query = job.map(|j| format!("?job={}", enc(&j))).unwrap_or_default();
            let v = c.get(&format!("/api/v1/schedules{query}"))?;
            print_list(args.format, &v, "schedules", "no schedules", |v| {
                v["schedules"].as_array().into_iter().flatten().map(schedule_line).collect()
            });
        }
        ScheduleCommand::Rm { id } => {
            c.delete(&format!("/api/v1/schedules/{id}"))?;
            print(args.format, &json!({"deleted": id}), |_| format!("schedule {id} deleted\n"));
        }
    }
    Ok(0)
}
