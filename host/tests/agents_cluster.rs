//! Remote agents across real hosts: `chengis serve --agents 0` on PostgreSQL and three
//! `chengis agent` containers on a private Docker network, cloning from a git daemon on the host.
//! Labels spread jobs; a killed agent's job runs again on another; a partitioned agent's job is
//! taken over and its late result refused; agents ride out a server restart; a revoked token
//! stops an agent. Skipped without Docker (unless `CHENGIS_TEST_REQUIRE` names docker).

mod cluster;
mod support;

use cluster::{Container, Network};
use serde_json::Value;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "chengis-test/chengis:latest";
const POSTGRES: &str = "chengis-test/postgres:latest";
/// How long a build may take, restarts and lease expiries included, on a loaded machine.
const BUILD_WITHIN: Duration = Duration::from_secs(180);
/// How long agents may take to (re)connect and show up online.
const ONLINE_WITHIN: Duration = Duration::from_secs(90);

const SPREAD: &str = r#"
name: spread
jobs:
  on-alpha:
    runs-on: [alpha]
    steps:
      - run: echo "ran on $CHENGIS_AGENT_NAME"
  on-beta:
    runs-on: [beta]
    steps:
      - run: echo "ran on $CHENGIS_AGENT_NAME"
"#;

const SLOW: &str = r#"
name: slow
jobs:
  work:
    runs-on: [alpha]
    steps:
      - run: echo "start on $CHENGIS_AGENT_NAME"; sleep 8; echo "done on $CHENGIS_AGENT_NAME"
"#;

/// `(name, labels)` of the agent containers.
const AGENTS: [(&str, &str); 3] = [("agent-1", "linux,alpha"), ("agent-2", "linux,beta"), ("agent-3", "linux,alpha")];

#[test]
fn agents_on_separate_hosts_spread_jobs_survive_kills_partitions_and_restarts_and_stop_when_revoked() {
    if !cluster::require_docker() {
        return;
    }
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>5.1}s] {what}", t0.elapsed().as_secs_f64());
    build_images();
    phase("images ready");
    let dir = tempfile::tempdir().unwrap();
    let repos = dir.path().join("git");
    make_repo(&repos.join("spread"), SPREAD);
    make_repo(&repos.join("slow"), SLOW);
    // Dropped in reverse order: the containers go first, then the git daemon, then the files.
    let net = Network::create("chengis-agents");
    let git = GitDaemon::start(&repos, &net.gateway(), &dir.path().join("git-daemon.log"));
    let c = Cluster::start(net, dir.path());
    phase("server up");

    // Three agents, each with its own token, created through the CLI from the host.
    let agents: Vec<Container> = AGENTS
        .iter()
        .map(|(name, labels)| {
            let token = c.token(name);
            let args =
                ["agent", "--server", "http://server:8080", "--token", &token, "--name", name, "--labels", labels];
            let args = [&args[..], &["--executors", "2", "--work-dir", "/data/work"]].concat();
            c.net.run(name, IMAGE, &args, &[("CHENGIS_LOG", "info")])
        })
        .collect();
    let c = Cluster { agents, ..c };
    c.wait_online(&["agent-1", "agent-2", "agent-3"]);
    phase("agents online");

    // Labels spread the jobs: beta only on agent-2, alpha on agent-1 or agent-3.
    c.create_job("spread", &git.url("spread"));
    let id = c.trigger("spread");
    let build = c.wait_build(id);
    c.assert_success(&build);
    let alpha = c.log(id, "on-alpha");
    assert!(
        alpha.iter().any(|l| l == "ran on agent-1" || l == "ran on agent-3"),
        "the alpha job ran elsewhere: {alpha:?}"
    );
    assert_eq!(c.log(id, "on-beta"), vec!["ran on agent-2".to_string()], "the beta job ran elsewhere");
    phase("jobs spread by label");

    // `docker kill` of the agent running a job: its lease runs out and the other alpha agent
    // runs the job again.
    c.create_job("slow", &git.url("slow"));
    let id = c.trigger("slow");
    let (victim, other) = c.started(id);
    c.agent(&victim).kill();
    let build = c.wait_build(id);
    c.assert_success(&build);
    let log = c.log(id, "work");
    assert_eq!(c.done_lines(&log), vec![format!("done on {other}")], "log: {log:?}\n{}", c.logs());
    let events = c.events(id);
    assert!(events.contains(&format!("agent {victim} lost")), "no agent_lost event for {victim}: {events}");
    c.agent(&victim).start();
    c.wait_online(&["agent-1", "agent-3"]);
    phase(&format!("killed {victim}'s job ran again on {other}"));

    // A partition: the agent running the job is cut off past its lease; the other alpha agent
    // takes the job over. Reconnected, the cut-off agent finds its lease stale and stops; the
    // build ends once, with the other agent's result.
    let id = c.trigger("slow");
    let (victim, other) = c.started(id);
    let cut = c.agent(&victim);
    cut.disconnect();
    let took_over = c.wait(&format!("{other} to take over the job of the cut-off {victim}"), BUILD_WITHIN, || {
        c.log(id, "work").contains(&format!("start on {other}")).then_some(())
    });
    cut.connect();
    took_over.unwrap_or_else(|e| panic!("{e}"));
    let build = c.wait_build(id);
    c.assert_success(&build);
    let log = c.log(id, "work");
    assert_eq!(c.done_lines(&log), vec![format!("done on {other}")], "log: {log:?}\n{}", c.logs());
    c.wait(&format!("{victim} to notice its stale lease"), BUILD_WITHIN, || {
        let logs = cut.logs();
        (logs.contains("lease lost") || logs.contains("stale lease")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // Nothing the cut-off agent sent late was stored.
    let after = c.wait_build(id);
    c.assert_success(&after);
    let log = c.log(id, "work");
    assert_eq!(c.done_lines(&log), vec![format!("done on {other}")], "a late result was stored: {log:?}");
    assert!(c.events(id).contains(&format!("agent {victim} lost")), "no agent_lost event for {victim}");
    c.wait_online(&["agent-1", "agent-2", "agent-3"]);
    phase(&format!("cut-off {victim}'s job taken over by {other}"));

    // The server restarts mid-build: the agents retry until it is back, and the build ends once.
    let id = c.trigger("slow");
    let (runner, _) = c.started(id);
    std::thread::sleep(Duration::from_secs(1));
    c.server.restart();
    c.server.wait_http_ok(8080, "/health", Duration::from_secs(120));
    let build = c.wait_build(id);
    c.assert_success(&build);
    let log = c.log(id, "work");
    assert_eq!(c.done_lines(&log).len(), 1, "log: {log:?}\n{}", c.logs());
    c.wait_online(&["agent-1", "agent-2", "agent-3"]);
    let logs = c.agent(&runner).logs();
    assert!(logs.contains("retrying"), "{runner} never noticed the restart:\n{logs}");
    phase(&format!("build started on {runner} rode out a server restart: {log:?}"));

    // Revoking agent-2's token stops agent-2 (exit code 3) and shows it revoked.
    let (code, out, err) = support::cli(&c.url(), &["agent-token", "revoke", "agent-2"], None);
    assert_eq!(code, 0, "agent-token revoke: {out}{err}");
    let beta = c.agent("agent-2");
    let exit = c.wait("agent-2 to exit after its token was revoked", ONLINE_WITHIN, || beta.exit_code());
    let exit = exit.unwrap_or_else(|e| panic!("{e}"));
    let logs = beta.logs();
    assert!(exit == 3 || logs.contains("refused the agent token"), "agent-2 exited with {exit}:\n{logs}");
    c.wait("agent-2 to be listed revoked", ONLINE_WITHIN, || {
        let list = c.agent_list().ok()?;
        list.iter().any(|a| a["name"] == "agent-2" && a["status"] == "revoked").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // The alpha agents carry on (polled: an idle agent long-polls for 5 s, and with a 3 s lease
    // time the list shows it offline during part of each poll).
    c.wait_online(&["agent-1", "agent-3"]);
    phase("revoked agent-2 stopped");
    drop(c);
    drop(git);
}

/// Builds the chengis image from the binary under test and the PostgreSQL image (quick when they
/// are up to date).
fn build_images() {
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images");
    for (script, args) in [("chengis.sh", &[env!("CARGO_BIN_EXE_chengis")][..]), ("postgres.sh", &[])] {
        let out = Command::new("bash")
            .arg(images.join(script))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run tests/images/{script}: {e}"));
        assert!(
            out.status.success(),
            "tests/images/{script} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A git repository in `dir` on branch `main` holding `chengis.yml`.
fn make_repo(dir: &Path, pipeline: &str) {
    std::fs::create_dir_all(dir).unwrap();
    support::git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("chengis.yml"), pipeline).unwrap();
    support::git(dir, &["add", "."]);
    support::git(dir, &["commit", "-qm", "pipeline"]);
}

/// `git daemon` on the host serving the repositories under a directory to the containers (at the
/// network's gateway); killed when dropped.
struct GitDaemon {
    child: Child,
    addr: SocketAddr,
}

impl GitDaemon {
    fn start(base: &Path, gateway: &str, log: &Path) -> GitDaemon {
        let exec_path = Command::new("git").arg("--exec-path").output().expect("git --exec-path");
        let daemon = Path::new(String::from_utf8_lossy(&exec_path.stdout).trim()).join("git-daemon");
        let ip: IpAddr = gateway.parse().unwrap();
        let port = TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).expect("a free port on the gateway").port();
        let addr = SocketAddr::new(ip, port);
        let mut cmd = Command::new(&daemon);
        cmd.args([&format!("--listen={gateway}"), &format!("--port={port}"), "--export-all", "--reuseaddr"])
            .arg(format!("--base-path={}", base.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        // SAFETY: prctl is async-signal-safe. The daemon dies with the thread that started it,
        // also when the test process is killed before `Drop` runs.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", daemon.display()));
        let mut daemon = GitDaemon { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            let exited = daemon.child.try_wait().unwrap();
            let log = || std::fs::read_to_string(log).unwrap_or_default();
            assert!(exited.is_none(), "git-daemon exited ({exited:?}):\n{}", log());
            assert!(Instant::now() < deadline, "git-daemon does not listen on {addr}:\n{}", log());
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon
    }

    /// The URL the containers clone the repository `name` from.
    fn url(&self, name: &str) -> String {
        format!("git://{}/{name}", self.addr)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The network with PostgreSQL (`db`), the server (`server`) and the agents.
struct Cluster {
    net: Network,
    db: Container,
    server: Container,
    agents: Vec<Container>,
}

impl Cluster {
    /// Starts PostgreSQL and the server on `net`, the server's data directory in `dir/server`
    /// (its plugin cache shared across runs, so only the first start compiles the plugins).
    fn start(net: Network, dir: &Path) -> Cluster {
        let db = net.run("db", POSTGRES, &["-c", "fsync=off"], &[]);
        let deadline = Instant::now() + Duration::from_secs(90);
        while !db.exec(&["pg_isready", "-q", "-h", "127.0.0.1", "-U", "postgres"]).status.success() {
            assert!(Instant::now() < deadline, "PostgreSQL did not get ready:\n{}", db.logs());
            assert!(db.exit_code().is_none(), "PostgreSQL stopped:\n{}", db.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
        let data = dir.join("server");
        std::fs::create_dir_all(&data).unwrap();
        let cache = Path::new(env!("CARGO_BIN_EXE_chengis")).with_file_name("cluster-plugin-cache");
        std::fs::create_dir_all(&cache).unwrap();
        // As the user running the test, so that it can remove what the server writes.
        let meta = std::fs::metadata(&data).unwrap();
        let user = format!("{}:{}", meta.uid(), meta.gid());
        let mounts =
            [format!("{}:/data/server", data.display()), format!("{}:/data/server/plugin-cache", cache.display())];
        let options = ["--user", &user, "-v", &mounts[0], "-v", &mounts[1]];
        let args = [
            "serve",
            "--listen",
            "0.0.0.0:8080",
            "--agents",
            "0",
            "--lease-ttl",
            "3s",
            "--max-attempts",
            "3",
            "--data-dir",
            "/data/server",
            "--database-url",
            "postgres://postgres:chengis@db/postgres",
        ];
        let server = net.run_with(
            "server",
            IMAGE,
            &options,
            &args,
            &[("CHENGIS_LOG", "info"), ("CHENGIS_ADMIN_TOKEN", support::ADMIN_TOKEN)],
        );
        server.wait_http_ok(8080, "/health", Duration::from_secs(180));
        let first = server.logs();
        assert!(first.contains("chengis listening on http://0.0.0.0:8080"), "unexpected server output:\n{first}");
        Cluster { net, db, server, agents: Vec::new() }
    }

    /// The server's URL from the host (its address may change when it restarts).
    fn url(&self) -> String {
        format!("http://{}:8080", self.server.ip())
    }

    fn agent(&self, name: &str) -> &Container {
        self.agents.iter().find(|a| a.name() == name).unwrap_or_else(|| panic!("no agent {name}"))
    }

    /// The last lines of every container's output, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for c in [&self.server, &self.db].into_iter().chain(&self.agents) {
            let logs = c.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            out.push_str(&format!("\n----- {} (last {} lines) -----\n{tail}\n", c.name(), lines.len().min(60)));
        }
        out
    }

    /// Calls `check` every 200 ms until it gives a value; an error naming `what`, with every
    /// container's output, when that takes longer than `within`.
    fn wait<T>(&self, what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = check() {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(format!("timed out after {within:?} waiting for {what}{}", self.logs()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Creates an agent token named `name` through the CLI; the token is the last line printed.
    fn token(&self, name: &str) -> String {
        let (code, out, err) = support::cli(&self.url(), &["agent-token", "create", "--name", name], None);
        assert_eq!(code, 0, "agent-token create: {out}{err}");
        let token = out.lines().last().unwrap_or_default().trim().to_string();
        assert!(token.starts_with("chga_"), "not a token: {out}");
        token
    }

    fn agent_list(&self) -> Result<Vec<Value>, String> {
        Ok(get(&format!("{}/api/v1/agents", self.url()))?["agents"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until the agents `names` are online.
    fn wait_online(&self, names: &[&str]) {
        let mut last = Vec::new();
        self.wait(&format!("agents {names:?} to be online"), ONLINE_WITHIN, || {
            last = self.agent_list().unwrap_or_default();
            names.iter().all(|n| last.iter().any(|a| a["name"] == *n && a["status"] == "online")).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\nagents: {last:?}"));
    }

    fn create_job(&self, name: &str, repo: &str) {
        let body = serde_json::json!({"name": name, "repo_url": repo, "default_branch": "main"});
        let (status, v) = support::call("POST", &format!("{}/api/v1/jobs", self.url()), Some(body));
        assert_eq!(status, 201, "creating job {name}: {v}");
    }

    fn trigger(&self, job: &str) -> i64 {
        let url = format!("{}/api/v1/jobs/{job}/builds", self.url());
        let (status, v) = support::call("POST", &url, Some(serde_json::json!({})));
        assert_eq!(status, 201, "triggering {job}: {v}");
        v["id"].as_i64().unwrap_or_else(|| panic!("no build id: {v}"))
    }

    /// Waits until build `id` finished (riding out a server that does not answer for a while).
    fn wait_build(&self, id: i64) -> Value {
        let mut last = Value::Null;
        self.wait(&format!("build {id} to finish"), BUILD_WITHIN, || {
            let b = get(&format!("{}/api/v1/builds/{id}", self.url())).ok()?;
            last = b.clone();
            (!matches!(b["build"]["status"].as_str(), Some("queued" | "running") | None)).then_some(b)
        })
        .unwrap_or_else(|e| panic!("{e}\nbuild: {last}"))
    }

    fn assert_success(&self, build: &Value) {
        assert_eq!(build["build"]["status"], "success", "{build}\n{}", self.logs());
    }

    /// The log lines of a job of build `id`; empty while it has none (or the server is away).
    fn log(&self, id: i64, job: &str) -> Vec<String> {
        let Ok(v) = get(&format!("{}/api/v1/builds/{id}/jobs/{job}/logs", self.url())) else { return Vec::new() };
        v["lines"].as_array().into_iter().flatten().filter_map(|l| l["text"].as_str().map(str::to_string)).collect()
    }

    /// The `done on ...` lines of a log.
    fn done_lines(&self, log: &[String]) -> Vec<String> {
        log.iter().filter(|l| l.starts_with("done on ")).cloned().collect()
    }

    /// Waits until the `work` job of build `id` started on an alpha agent; that agent and the
    /// other alpha agent.
    fn started(&self, id: i64) -> (String, String) {
        let name = self
            .wait(&format!("build {id} to start on an agent"), BUILD_WITHIN, || {
                self.log(id, "work").iter().find_map(|l| l.strip_prefix("start on ").map(str::to_string))
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let other = match name.as_str() {
            "agent-1" => "agent-3",
            "agent-3" => "agent-1",
            _ => panic!("the alpha job started on {name}"),
        };
        (name, other.to_string())
    }

    /// The event stream of finished build `id`, as text.
    fn events(&self, id: i64) -> String {
        let url = format!("{}/api/v1/builds/{id}/events", self.url());
        let mut resp = support::admin_get(&url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let mut text = String::new();
        resp.body_mut().as_reader().read_to_string(&mut text).unwrap();
        text
    }
}

/// `GET url` as JSON; an error for a failed connection or a status other than 200.
fn get(url: &str) -> Result<Value, String> {
    let mut resp = support::admin_get(url).call().map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let mut text = String::new();
    resp.body_mut().as_reader().read_to_string(&mut text).map_err(|e| format!("GET {url}: {e}"))?;
    if status != 200 {
        return Err(format!("GET {url}: HTTP {status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("GET {url}: {e}: {text}"))
}
