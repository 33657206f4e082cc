//! Shared by the server integration tests: starting `chengis serve` on a free port, the
//! databases to run against (SQLite, and PostgreSQL when configured), git repositories, and
//! API calls.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The admin API token every test server gets (`CHENGIS_ADMIN_TOKEN`): tests call the API as
/// the first admin, as an operator's automation would.
pub const ADMIN_TOKEN: &str = "chgu_7e57ad31e0000000000000000000000000000000000000000000000000000001";
/// The `Authorization` header value of [`ADMIN_TOKEN`].
pub const BEARER: &str = "Bearer chgu_7e57ad31e0000000000000000000000000000000000000000000000000000001";
/// The first admin's password (`CHENGIS_ADMIN_PASSWORD`), user `admin`.
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// A running `chengis serve`, killed when dropped.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Its base URL.
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(data: &Path, db: &str, extra: &[&str]) -> Server {
    start_with_stderr(data, db, extra, Stdio::inherit())
}

/// A server whose log (stderr) goes to `data/server.log`.
pub fn start_logged(data: &Path, db: &str, extra: &[&str]) -> (Server, std::path::PathBuf) {
    std::fs::create_dir_all(data).unwrap();
    let log = data.join("server.log");
    let file = std::fs::File::create(&log).unwrap();
    (start_with_stderr(data, db, extra, Stdio::from(file)), log)
}

pub fn start_with_stderr(data: &Path, db: &str, extra: &[&str], stderr: Stdio) -> Server {
    start_with(data, db, extra, &[], stderr)
}

/// Starts `chengis serve` with extra flags and environment variables.
pub fn start_with(data: &Path, db: &str, extra: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Server {
    let listen: &[&str] = if extra.contains(&"--listen") { &[] } else { &["--listen", "127.0.0.1:0"] };
    let executors: &[&str] = if extra.contains(&"--executors") { &[] } else { &["--executors", "2"] };
    let mut child = Command::new(env!("CARGO_BIN_EXE_chengis"))
        .arg("serve")
        .args(listen)
        .args(executors)
        .arg("--data-dir")
        .arg(data)
        .args(["--database-url", db])
        .args(extra)
        .env("CHENGIS_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("CHENGIS_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .envs(env.iter().copied())
        .env_remove("CHENGIS_MASTER_KEY")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("chengis listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    Server { child, url }
}

/// The databases to run against: a SQLite file, and a fresh PostgreSQL database if configured.
pub fn databases(dir: &Path) -> Vec<String> {
    let mut out = vec![format!("sqlite://{}", dir.join("db.sqlite").display())];
    match std::env::var("CHENGIS_TEST_DATABASE_URL") {
        Ok(base) => {
            let name = format!(
                "chengis_it_{}_{}",
                std::process::id(),
                Instant::now().elapsed().as_nanos() % 1000 + rand_suffix()
            );
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                sqlx::any::install_default_drivers();
                let pool = sqlx::AnyPool::connect(&base).await.expect("CHENGIS_TEST_DATABASE_URL");
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&pool).await.unwrap();
            });
            let (head, _) = base.rsplit_once('/').unwrap();
            out.push(format!("{head}/{name}"));
        }
        Err(_) => assert!(
            !std::env::var("CHENGIS_TEST_REQUIRE").unwrap_or_default().contains("postgres"),
            "CHENGIS_TEST_REQUIRE names postgres but CHENGIS_TEST_DATABASE_URL is not set"
        ),
    }
    out
}

pub fn rand_suffix() -> u128 {
    use std::hash::{BuildHasher, RandomState};
    u128::from(RandomState::new().hash_one(0u8) % 1_000_000)
}

pub fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Ada")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Ada")
        .env("GIT_COMMITTER_EMAIL", "ada@example.com")
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

pub fn repo(dir: &Path, pipeline: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("chengis.yml"), pipeline).unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-qm", "pipeline"]);
    format!("file://{}", dir.display())
}

pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// An HTTP client that does not follow redirects (to see 303s and their `Location`).
pub fn no_redirects() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

pub fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    call_as(BEARER, method, url, body)
}

/// An API call with the `Authorization` header `auth` (empty: none).
pub fn call_as(auth: &str, method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let agent = http();
    let a = |r| if auth.is_empty() { r } else { ureq_auth(r, auth) };
    let resp = match (method, body) {
        ("GET", _) => ureq_auth_get(agent.get(url), auth).call(),
        ("DELETE", _) => ureq_auth_get(agent.delete(url), auth).call(),
        ("POST", Some(b)) => a(agent.post(url)).send_json(b),
        ("POST", None) => a(agent.post(url)).send_empty(),
        ("PUT", Some(b)) => a(agent.put(url)).send_json(b),
        ("PATCH", Some(b)) => a(agent.patch(url)).send_json(b),
        _ => unreachable!(),
    };
    let mut resp = resp.unwrap();
    let status = resp.status().as_u16();
    let mut text = String::new();
    resp.body_mut().as_reader().read_to_string(&mut text).unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn ureq_auth(
    r: ureq::RequestBuilder<ureq::typestate::WithBody>,
    auth: &str,
) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
    r.header("authorization", auth)
}

/// `r` with the `Authorization` header `auth` (none when empty).
pub fn ureq_auth_get(
    r: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
    auth: &str,
) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
    if auth.is_empty() { r } else { r.header("authorization", auth) }
}

/// A GET as the test admin.
pub fn admin_get(url: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
    http().get(url).header("authorization", BEARER)
}

pub fn wait_build(s: &Server, id: i64, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, b) = call("GET", &format!("{}/api/v1/builds/{id}", s.url), None);
        if until(&b) {
            return b;
        }
        assert!(Instant::now() < deadline, "build {id} never got there: {b}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn finished(b: &Value) -> bool {
    !matches!(b["build"]["status"].as_str(), Some("queued" | "running") | None)
}

pub fn log_texts(s: &Server, id: i64, job: &str) -> Vec<String> {
    let (status, v) = call("GET", &format!("{}/api/v1/builds/{id}/jobs/{job}/logs", s.url), None);
    assert_eq!(status, 200, "{v}");
    v["lines"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap().to_string()).collect()
}

/// Runs the CLI against `server` as the admin token; returns (exit code, stdout, stderr).
pub fn cli(server: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    cli_env(server, args, &[("CHENGIS_TOKEN", ADMIN_TOKEN)], stdin)
}

/// Runs the CLI with `--server` and the environment given (no `CHENGIS_TOKEN` unless given).
pub fn cli_env(server: &str, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> (i32, String, String) {
    let mut all = args.to_vec();
    all.extend(["--server", server]);
    cli_bare(&all, env, stdin)
}

/// Runs the CLI with `args` only and the environment given: no `CHENGIS_TOKEN` or
/// `CHENGIS_SERVER` unless given.
#[allow(dead_code)]
pub fn cli_bare(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chengis"))
        .args(args)
        .env_remove("CHENGIS_TOKEN")
        .env_remove("CHENGIS_SERVER")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Creates job `name` building `repo` (default branch `main`).
pub fn create_job(server: &str, name: &str, repo: &str) {
    let (status, v) = call(
        "POST",
        &format!("{server}/api/v1/jobs"),
        Some(serde_json::json!({"name": name, "repo_url": repo, "default_branch": "main"})),
    );
    assert_eq!(status, 201, "{v}");
}

/// Triggers a build of `job`; its id.
pub fn trigger(server: &str, job: &str) -> i64 {
    let (status, v) = call("POST", &format!("{server}/api/v1/jobs/{job}/builds"), Some(serde_json::json!({})));
    assert_eq!(status, 201, "{v}");
    v["id"].as_i64().unwrap()
}

/// The log of a job, empty while the job does not exist yet.
pub fn log_of(server: &str, id: i64, job: &str) -> Vec<String> {
    let (status, v) = call("GET", &format!("{server}/api/v1/builds/{id}/jobs/{job}/logs"), None);
    if status != 200 {
        return Vec::new();
    }
    v["lines"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap().to_string()).collect()
}

/// HMAC-SHA256 of `data` under `secret`, in lower hex (webhook signatures).
pub fn hmac_hex(secret: &str, data: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Posts a webhook body with `headers`; answers status and JSON.
pub fn hook(url: &str, headers: &[(&str, String)], body: &str) -> (u16, Value) {
    let mut req = http().post(url);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let mut resp = req.content_type("application/json").send(body.as_bytes()).unwrap();
    let status = resp.status().as_u16();
    let mut text = String::new();
    resp.body_mut().as_reader().read_to_string(&mut text).unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Creates user `name` with role `role` and the password `{name}-password-1234`.
pub fn add_user(s: &Server, name: &str, role: &str) {
    let (st, v) = call(
        "POST",
        &format!("{}/api/v1/users", s.url),
        Some(serde_json::json!({"username": name, "password": format!("{name}-password-1234"), "role": role})),
    );
    assert_eq!(st, 201, "{v}");
}

/// Signs `user` in through the API; the token.
pub fn token_of(s: &Server, user: &str, password: &str) -> String {
    let (st, v) = call_as(
        "",
        "POST",
        &format!("{}/api/v1/login", s.url),
        Some(serde_json::json!({"username": user, "password": password})),
    );
    assert_eq!(st, 201, "{v}");
    v["token"].as_str().unwrap().to_string()
}

/// An answer as [`send`] read it.
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// Its headers.
    pub headers: ureq::http::HeaderMap,
    /// Its body.
    pub body: String,
}

impl Answer {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// A header's value (empty when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

/// One request with `headers`, redirects not followed; a body is sent as JSON to `/api` and as
/// a form elsewhere.
pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
    let agent = no_redirects();
    let api = url.contains("/api/");
    let mut resp = match method {
        "GET" | "DELETE" => {
            let mut r = if method == "GET" { agent.get(url) } else { agent.delete(url) };
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        _ => {
            let mut r = match method {
                "POST" => agent.post(url),
                "PUT" => agent.put(url),
                _ => agent.patch(url),
            };
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            let ctype = if api { "application/json" } else { "application/x-www-form-urlencoded" };
            r.header("content-type", ctype).send(body.unwrap_or(if api { "{}" } else { "" }).as_bytes())
        }
    }
    .unwrap();
    let mut text = String::new();
    let _ = resp.body_mut().as_reader().read_to_string(&mut text);
    Answer { status: resp.status().as_u16(), headers: resp.headers().clone(), body: text }
}
