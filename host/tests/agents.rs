//! Remote agents on this host: `chengis agent` processes against `chengis serve --agents 0` over
//! HTTP (and HTTPS): labels spread jobs, a job no agent can take waits with its reason, a
//! revoked token stops an agent, a lost agent's job is leased again and its late writes are
//! refused, and a server restart mid-build does not lose the build.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// A running `chengis agent`, killed when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits for the process to exit; its exit code.
    fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

fn start_agent(dir: &Path, server: &str, token: &str, name: &str, labels: &str, extra: &[&str]) -> Agent {
    let work = dir.join(name);
    std::fs::create_dir_all(&work).unwrap();
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_chengis"))
        .args(["agent", "--server", server, "--token", token, "--name", name, "--labels", labels])
        .args(["--executors", "2"])
        .arg("--work-dir")
        .arg(&work)
        .args(extra)
        .env("CHENGIS_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Agent { child, log }
}

/// Creates an agent token through the CLI; the token is the last line printed.
fn agent_token(server: &str, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["agent-token", "create", "--name", name];
    args.extend_from_slice(extra);
    let (code, out, err) = cli(server, &args, None);
    assert_eq!(code, 0, "{out}{err}");
    let token = out.lines().last().unwrap().trim().to_string();
    assert!(token.starts_with("chga_"), "{out}");
    token
}

fn agents(server: &str) -> Vec<Value> {
    let (status, v) = call("GET", &format!("{server}/api/v1/agents"), None);
    assert_eq!(status, 200, "{v}");
    v["agents"].as_array().unwrap().clone()
}

fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn job_of<'a>(build: &'a Value, key: &str) -> &'a Value {
    build["jobs"].as_array().unwrap().iter().find(|j| j["job"]["job_key"] == key).unwrap_or(&Value::Null)
}

const SPREAD: &str = r#"
name: spread
jobs:
  on-a:
    runs-on: [a]
    steps:
      - run: echo "ran on $CHENGIS_AGENT_NAME"
  on-b:
    runs-on: [b]
    steps:
      - run: echo "ran on $CHENGIS_AGENT_NAME"
  after:
    needs: [on-a, on-b]
    steps:
      - run: echo "needs saw ${{ needs.on-a.result }}"
"#;

const RELAY: &str = r#"
name: relay
jobs:
  make:
    runs-on: [a]
    artifacts:
      - name: app
        paths: ["out/**"]
    cache:
      - key: out-${{ git.sha }}
        paths: [out]
    steps:
      - run: mkdir -p out && echo "made on $CHENGIS_AGENT_NAME" > out/app.txt && head -c 300000 /dev/urandom > out/blob.bin && sha256sum out/blob.bin > out/blob.sha
  use:
    needs: [make]
    runs-on: [b]
    download: [app]
    cache-result: true
    steps:
      - run: cat out/app.txt && sha256sum -c out/blob.sha
"#;

const PLUGGED: &str = r#"
name: plugged
jobs:
  p:
    runs-on: [a]
    steps:
      - id: s
        uses: script
        with:
          run: echo "from the script plugin"; echo hi > made-by-plugin
      - run: test -f made-by-plugin && echo "script exit ${{ steps.s.outputs.exit-code }} on $CHENGIS_AGENT_NAME"
      - uses: no-such-plugin
        continue-on-error: true
"#;

const GPU: &str = r#"
name: gpu
jobs:
  train:
    runs-on: [gpu]
    steps:
      - run: echo never
"#;

const BIG: &str = r#"
name: big
jobs:
  huge:
    runs-on: [a]
    resources: {cpus: "512", memory: 64g}
    steps:
      - run: echo never
"#;

#[test]
fn remote_agents_take_jobs_by_label_and_a_revoked_token_stops_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    for (i, db) in databases(dir.path()).iter().enumerate() {
        let base = dir.path().join(format!("db{i}"));
        let (server, _log) = start_logged(&base.join("data"), db, &["--agents", "0", "--lease-ttl", "3s"]);
        let url = server.url.clone();
        let token_a = agent_token(&url, "a", &[]);
        let token_b = agent_token(&url, "b", &[]);
        let _a = start_agent(&base, &url, &token_a, "agent-a", "linux,a", &[]);
        let mut b = start_agent(&base, &url, &token_b, "agent-b", "linux,b", &[]);
        wait_for("two agents online", Duration::from_secs(20), || {
            agents(&url).iter().filter(|a| a["status"] == "online").count() == 2
        });

        create_job(&url, "spread", &repo(&base.join("spread"), SPREAD));
        let id = trigger(&url, "spread");
        let build = wait_build(&server, id, finished);
        assert_eq!(build["build"]["status"], "success", "{build}");
        assert!(log_texts(&server, id, "on-a").contains(&"ran on agent-a".to_string()));
        assert!(log_texts(&server, id, "on-b").contains(&"ran on agent-b".to_string()));
        assert_eq!(log_texts(&server, id, "after"), vec!["needs saw success".to_string()]);
        for key in ["on-a", "on-b"] {
            let steps = job_of(&build, key)["steps"].as_array().unwrap().clone();
            assert_eq!(steps.len(), 1, "{build}");
            assert_eq!(steps[0]["status"], "success");
        }

        // Artifacts go from a job on agent-a through the server to a job on agent-b, checked.
        create_job(&url, "relay", &repo(&base.join("relay"), RELAY));
        let id = trigger(&url, "relay");
        let build = wait_build(&server, id, finished);
        assert_eq!(build["build"]["status"], "success", "{build}");
        let made = log_texts(&server, id, "make");
        assert!(made.iter().any(|l| l.starts_with("artifacts: kept `app` (3 files")), "{made:?}");
        assert!(made.iter().any(|l| l.ends_with(": miss")), "{made:?}");
        assert!(made.iter().any(|l| l.contains("saved for main (3 files")), "{made:?}");
        let used = log_texts(&server, id, "use");
        assert!(used.iter().any(|l| l.starts_with("download: placed 3 artifact files")), "{used:?}");
        assert!(used.contains(&"made on agent-a".to_string()), "{used:?}");
        assert!(used.contains(&"out/blob.bin: OK".to_string()), "{used:?}");
        let (status, files) = call("GET", &format!("{url}/api/v1/builds/{id}/artifacts"), None);
        assert_eq!(status, 200, "{files}");
        assert_eq!(files["artifacts"].as_array().map_or(0, Vec::len), 3, "{files}");
        // The second run restores the cache the first saved on agent-a (through the server).
        let again = trigger(&url, "relay");
        let build = wait_build(&server, again, finished);
        assert_eq!(build["build"]["status"], "success", "{build}");
        let made = log_texts(&server, again, "make");
        assert!(made.iter().any(|l| l.contains(": restored `out-") && l.contains("(3 files")), "{made:?}");
        assert!(made.iter().any(|l| l.ends_with("hit on the exact key, not saved again")), "{made:?}");
        // Same tree, job and inputs: `use` reuses the first build's result (looked up on the server).
        assert_eq!(job_of(&build, "use")["job"]["reason"], "result reused from build #1", "{build}");
        assert!(log_texts(&server, again, "use").iter().any(|l| l.starts_with("result cache: build #1 ran this job")));
        let (_, caches) = call("GET", &format!("{url}/api/v1/caches"), None);
        assert_eq!(caches["caches"].as_array().map_or(0, Vec::len), 1, "{caches}");
        // A lease is no key to other builds' files, and a stale one none at all.
        let sha = files["artifacts"][0]["sha256"].as_str().unwrap().to_string();
        let resp = http()
            .get(&format!("{url}/api/v1/agent/leases/1/blobs/{sha}?token=1"))
            .header("Authorization", &format!("Bearer {token_a}"))
            .header("Chengis-Agent", "agent-a")
            .call()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 409);

        // `uses:` steps on a remote agent: the server's allowed `script` plugin, with its grants;
        // an unknown plugin fails its step as on the embedded agent.
        create_job(&url, "plugged", &repo(&base.join("plugged"), PLUGGED));
        let id = trigger(&url, "plugged");
        let build = wait_build(&server, id, finished);
        assert_eq!(build["build"]["status"], "success", "{build}");
        let texts = log_texts(&server, id, "p");
        assert!(texts.contains(&"from the script plugin".to_string()), "{texts:?}");
        assert!(texts.contains(&"script exit 0 on agent-a".to_string()), "{texts:?}");
        let steps = job_of(&build, "p")["steps"].as_array().unwrap().clone();
        assert_eq!(steps.len(), 3, "{build}");
        assert_eq!(steps[2]["status"], "error", "{build}");

        // Nobody has `gpu`; nobody labelled `a` is big enough: both wait, saying why.
        create_job(&url, "gpu", &repo(&base.join("gpu"), GPU));
        create_job(&url, "big", &repo(&base.join("big"), BIG));
        let gpu = trigger(&url, "gpu");
        let big = trigger(&url, "big");
        let waiting = wait_build(&server, gpu, |b| !job_of(b, "train")["waiting_reason"].is_null());
        assert_eq!(job_of(&waiting, "train")["waiting_reason"], "no agent has the labels [gpu]", "{waiting}");
        let waiting = wait_build(&server, big, |b| !job_of(b, "huge")["waiting_reason"].is_null());
        let reason = job_of(&waiting, "huge")["waiting_reason"].as_str().unwrap().to_string();
        assert!(reason.contains("has 512 CPU and 65536 MiB"), "{reason}");
        let (code, out, err) = cli(&url, &["build", "show", &gpu.to_string()], None);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("no agent has the labels [gpu]"), "{out}");
        for id in [gpu, big] {
            assert_eq!(call("POST", &format!("{url}/api/v1/builds/{id}/cancel"), None).0, 200);
        }

        // The list, from the API and the CLI.
        let list = agents(&url);
        let a = list.iter().find(|a| a["name"] == "agent-a").unwrap();
        assert_eq!(a["labels"], serde_json::json!(["linux", "a"]));
        assert_eq!(a["executors"], 2);
        assert_eq!(a["embedded"], false);
        assert!(a["cpus"].as_i64().unwrap() >= 1 && a["memory_mb"].as_i64().unwrap() > 0, "{a}");
        let (code, out, _) = cli(&url, &["agent", "list"], None);
        assert_eq!(code, 0);
        assert!(out.contains("agent-a") && out.contains("agent-b") && out.contains("online"), "{out}");

        // Revoking b's token: b stops at its next call (exit code 4: not signed in) and is shown revoked;
        // a is untouched.
        let (code, out, err) = cli(&url, &["agent-token", "revoke", "b"], None);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(b.exit_code(Duration::from_secs(15)), Some(4), "{}", b.log());
        assert!(b.log().contains("refused the agent token"), "{}", b.log());
        let list = agents(&url);
        assert_eq!(list.iter().find(|a| a["name"] == "agent-b").unwrap()["status"], "revoked");
        // A wrong token is the same 401 as a revoked one.
        let resp = http()
            .post(&format!("{url}/api/v1/agent/lease"))
            .header("Authorization", "Bearer chga_wrong")
            .header("Chengis-Agent", "x")
            .send_json(serde_json::json!({"capacity": 1}))
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        let id = trigger(&url, "spread");
        let build = wait_build(&server, id, |b| !job_of(b, "on-b")["waiting_reason"].is_null());
        assert_eq!(job_of(&build, "on-a")["job"]["status"], "success", "{build}");
        assert_eq!(job_of(&build, "on-b")["waiting_reason"], "no agent has the labels [b]", "{build}");
    }
}

const SLOW: &str = r#"
name: slow
jobs:
  work:
    steps:
      - run: echo "start on $CHENGIS_AGENT_NAME"; sleep 5; echo "done on $CHENGIS_AGENT_NAME"
"#;

#[test]
fn a_lost_agents_job_runs_again_elsewhere_and_its_late_result_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let (server, log) =
        start_logged(&dir.path().join("data"), &db, &["--agents", "0", "--lease-ttl", "2s", "--max-attempts", "3"]);
    let url = server.url.clone();
    let token = agent_token(&url, "pool", &[]);
    let a = start_agent(dir.path(), &url, &token, "agent-a", "linux", &[]);
    wait_for("agent-a online", Duration::from_secs(20), || agents(&url).iter().any(|a| a["status"] == "online"));
    create_job(&url, "slow", &repo(&dir.path().join("repo"), SLOW));

    // A partition: agent-a stops answering mid-job; its lease runs out and agent-b takes over.
    let id = trigger(&url, "slow");
    wait_build(&server, id, |_| log_of(&url, id, "work").iter().any(|l| l == "start on agent-a"));
    a.signal(nix::sys::signal::Signal::SIGSTOP);
    let b = start_agent(dir.path(), &url, &token, "agent-b", "linux", &[]);
    let build = wait_build(&server, id, finished);
    assert_eq!(build["build"]["status"], "success", "{build}");
    let texts = log_texts(&server, id, "work");
    assert!(texts.contains(&"done on agent-b".to_string()), "{texts:?}");
    // agent-a comes back: its renewals and its result are refused (409), it stops its job and
    // cleans up; the build keeps exactly the one result.
    a.signal(nix::sys::signal::Signal::SIGCONT);
    wait_for("agent-a to see its lease is gone", Duration::from_secs(20), || {
        a.log().contains("lease lost") || a.log().contains("stale lease")
    });
    std::thread::sleep(Duration::from_secs(1));
    let after = wait_build(&server, id, finished);
    assert_eq!(after["build"]["status"], "success");
    assert_eq!(job_of(&after, "work")["job"]["status"], "success");
    let texts = log_texts(&server, id, "work");
    assert!(!texts.contains(&"done on agent-a".to_string()), "a stale write was stored: {texts:?}");
    assert_eq!(texts.iter().filter(|l| *l == "done on agent-b").count(), 1, "{texts:?}");
    let (_, events) = call("GET", &format!("{url}/api/v1/builds/{id}/events"), None);
    let events = events.to_string();
    assert!(events.contains("agent agent-a lost"), "{events}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.path().join("agent-a/workspaces").read_dir().is_ok_and(|mut d| d.next().is_some()) {
        assert!(Instant::now() < deadline, "agent-a left its stale workspace:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // A killed agent: its job is leased again by the other one.
    let id = trigger(&url, "slow");
    let first = loop {
        let started = log_of(&url, id, "work").iter().find_map(|l| l.strip_prefix("start on ").map(str::to_string));
        if let Some(name) = started {
            break name;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (mut victim, survivor) = if first == "agent-a" { (a, b) } else { (b, a) };
    victim.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = victim.exit_code(Duration::from_secs(5));
    let build = wait_build(&server, id, finished);
    assert_eq!(build["build"]["status"], "success", "{build}\n{}", survivor.log());
    let texts = log_texts(&server, id, "work");
    let other = if first == "agent-a" { "agent-b" } else { "agent-a" };
    assert!(texts.contains(&format!("done on {other}")), "{texts:?}");
    assert!(std::fs::read_to_string(&log).unwrap().contains(&format!("agent {first} lost")));
}

#[test]
fn sigterm_drains_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let (server, _) = start_logged(&dir.path().join("data"), &db, &["--agents", "0"]);
    let url = server.url.clone();
    let token = agent_token(&url, "pool", &[]);
    let mut a = start_agent(dir.path(), &url, &token, "agent-a", "linux", &[]);
    wait_for("agent-a online", Duration::from_secs(20), || agents(&url).iter().any(|a| a["status"] == "online"));
    create_job(&url, "slow", &repo(&dir.path().join("repo"), SLOW));
    let id = trigger(&url, "slow");
    wait_build(&server, id, |_| log_of(&url, id, "work").iter().any(|l| l == "start on agent-a"));
    a.signal(nix::sys::signal::Signal::SIGTERM);
    wait_for("agent-a draining", Duration::from_secs(10), || agents(&url)[0]["status"] == "draining");
    // Draining: the running job finishes; a new one is not taken.
    let next = trigger(&url, "slow");
    let build = wait_build(&server, id, finished);
    assert_eq!(build["build"]["status"], "success", "{build}");
    assert!(log_of(&url, id, "work").contains(&"done on agent-a".to_string()));
    assert_eq!(a.exit_code(Duration::from_secs(20)), Some(0), "{}", a.log());
    assert_eq!(agents(&url)[0]["status"], "drained");
    let (_, queued) = call("GET", &format!("{url}/api/v1/builds/{next}"), None);
    assert_eq!(queued["build"]["status"], "queued", "{queued}");
}

#[test]
fn agents_ride_out_a_server_restart_and_talk_https() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    // A private CA and a server certificate for 127.0.0.1 signed by it (openssl from the system).
    let (ca, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    let (cert, key, csr) = (dir.path().join("cert.pem"), dir.path().join("key.pem"), dir.path().join("leaf.csr"));
    let ext = dir.path().join("leaf.ext");
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    let openssl = |args: &[&str]| {
        let ok = Command::new("openssl").args(args).current_dir(dir.path()).stderr(Stdio::null()).status();
        assert!(ok.expect("openssl").success(), "openssl {args:?}");
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-days", "1", "-subj", "/CN=chengis-test-ca", "-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    );
    openssl(&[&["req"][..], &ec, &["-subj", "/CN=127.0.0.1", "-keyout", "key.pem", "-out", "leaf.csr"]].concat());
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        "cert.pem",
        "-extfile",
        "leaf.ext",
    ]);
    let _ = (&ca_key, &csr);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let tls = [
        "--agents",
        "0",
        "--lease-ttl",
        "30s",
        "--listen",
        &listen,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let (server, _) = start_logged(&dir.path().join("data"), &db, &tls);
    assert_eq!(server.url, format!("https://{listen}"));
    let url = server.url.clone();
    let ca = ["--ca-file", ca.to_str().unwrap()];
    let ca_path = ca[1].to_string();
    let token = agent_token(&url, "tls", &ca);
    // Without the CA the agent cannot verify the server and registers nowhere.
    let blind = start_agent(dir.path(), &url, &token, "blind", "linux", &[]);
    let a = start_agent(dir.path(), &url, &token, "agent-a", "linux", &ca);
    let list = |url: &str| {
        let (code, out, err) = cli(url, &["agent", "list", "--format", "json", "--ca-file", &ca_path], None);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()["agents"].as_array().unwrap().clone()
    };
    wait_for("agent-a online over https", Duration::from_secs(20), || {
        list(&url).iter().any(|a| a["name"] == "agent-a" && a["status"] == "online")
    });
    wait_for("the blind agent to fail verification", Duration::from_secs(10), || {
        let log = blind.log().to_lowercase();
        log.contains("certificate") || log.contains("unknownissuer")
    });
    assert!(!list(&url).iter().any(|a| a["name"] == "blind"));

    // Restart the server mid-job (same database, same address): the agent keeps its job and
    // finishes it once the server is back.
    let repo_url = repo(&dir.path().join("repo"), SLOW);
    let (code, out, err) = cli(&url, &["job", "create", "slow", "--repo", &repo_url, "--ca-file", &ca_path], None);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(&url, &["build", "trigger", "slow", "--ca-file", &ca_path], None);
    assert_eq!(code, 0, "{out}{err}");
    let tls_call = |path: &str| -> Value {
        let (code, out, err) = cli(&url, &["build", "show", path, "--format", "json", "--ca-file", &ca_path], None);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    wait_for("the job to start", Duration::from_secs(30), || tls_call("1")["build"]["status"] == "running");
    std::thread::sleep(Duration::from_secs(1));
    drop(server);
    std::thread::sleep(Duration::from_secs(2));
    let (server, _) = start_logged(&dir.path().join("data"), &db, &tls);
    wait_for("the build to finish after the restart", Duration::from_secs(60), || {
        let b = tls_call("1");
        !matches!(b["build"]["status"].as_str(), Some("queued" | "running"))
    });
    let b = tls_call("1");
    assert_eq!(b["build"]["status"], "success", "{b}\n{}", a.log());
    let (code, out, _) = cli(&server.url, &["build", "logs", "1", "--ca-file", &ca_path], None);
    assert_eq!(code, 0);
    assert_eq!(out.matches("done on agent-a").count(), 1, "{out}");
    assert!(a.log().contains("retrying"), "the agent never noticed the restart: {}", a.log());
}
