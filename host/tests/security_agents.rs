//! Trust boundaries between agents (issue 24): an agent token acts only on leases its agent
//! holds, with the lease's secret; agent names are bound to the token that registered them and
//! the embedded agents' names are no remote token's; a lease reads only artifact files its
//! build's jobs uploaded. Agents are played over raw HTTP against the real `chengis serve`, on
//! SQLite and, when `CHENGIS_TEST_DATABASE_URL` is set, on PostgreSQL.

mod support;

use serde_json::{Value, json};
use std::io::Read;
use std::time::{Duration, Instant};
use support::*;

/// An agent played by the test: its token and name.
struct Raw {
    url: String,
    token: String,
    name: String,
}

fn answer(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut resp = resp.unwrap();
    let status = resp.status().as_u16();
    let mut text = String::new();
    resp.body_mut().as_reader().read_to_string(&mut text).unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

impl Raw {
    fn new(url: &str, token: &str, name: &str) -> Raw {
        Raw { url: url.into(), token: token.into(), name: name.into() }
    }

    /// The same token under another name.
    fn named(&self, name: &str) -> Raw {
        Raw::new(&self.url, &self.token, name)
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        answer(
            http()
                .post(&format!("{}{path}", self.url))
                .header("Authorization", &format!("Bearer {}", self.token))
                .header("Chengis-Agent", &self.name)
                .send_json(body),
        )
    }

    fn get(&self, path: &str, secret: Option<&str>) -> (u16, Value) {
        let mut req = http()
            .get(&format!("{}{path}", self.url))
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Chengis-Agent", &self.name);
        if let Some(s) = secret {
            req = req.header("Chengis-Lease-Secret", s);
        }
        answer(req.call())
    }

    fn put(&self, path: &str, secret: Option<&str>, body: &[u8]) -> (u16, Value) {
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body));
        let mut req = http()
            .put(&format!("{}{path}", self.url))
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Chengis-Agent", &self.name)
            .header("X-Checksum-Sha256", &sha);
        if let Some(s) = secret {
            req = req.header("Chengis-Lease-Secret", s);
        }
        answer(req.send(body))
    }

    fn register(&self) -> (u16, Value) {
        let info = json!({"name": self.name, "labels": ["remote"], "executors": 1, "os": "linux", "arch": "x86_64"});
        self.post("/api/v1/agent/register", info)
    }

    fn poll_once(&self) -> (u16, Value) {
        self.post("/api/v1/agent/lease", json!({"capacity": 1, "labels": ["remote"], "wait_ms": 1000}))
    }

    /// Polls until a job is leased; its assignment.
    fn lease(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, v) = self.poll_once();
            assert_eq!(status, 200, "{v}");
            if let Some(a) = v["assignments"].as_array().and_then(|a| a.first()) {
                return a.clone();
            }
            assert!(Instant::now() < deadline, "no job was leased to {}", self.name);
        }
    }

    /// A lease call about `lease` with the call's fields `call`.
    fn call(&self, lease: &Value, action: &str, call: Value) -> (u16, Value) {
        let mut body = call;
        body["lease"] = lease.clone();
        self.post(&format!("/api/v1/agent/leases/{}/{action}", lease["entry"]), body)
    }
}

fn agent_token(url: &str, name: &str) -> String {
    let (status, v) = call("POST", &format!("{url}/api/v1/agent-tokens"), Some(json!({"name": name})));
    assert_eq!(status, 201, "{v}");
    v["token"].as_str().unwrap().to_string()
}

fn build(url: &str, id: i64) -> Value {
    let (status, v) = call("GET", &format!("{url}/api/v1/builds/{id}"), None);
    assert_eq!(status, 200, "{v}");
    v
}

fn work_job(b: &Value) -> Value {
    b["jobs"].as_array().unwrap().iter().find(|j| j["job"]["job_key"] == "work").unwrap()["job"].clone()
}

fn agents(url: &str) -> Vec<Value> {
    let (status, v) = call("GET", &format!("{url}/api/v1/agents"), None);
    assert_eq!(status, 200, "{v}");
    v["agents"].as_array().unwrap().clone()
}

fn line(number: u64, text: &str) -> Value {
    json!({"number": number, "stream": "stdout", "time_ms": 0, "text": text})
}

/// Every lease call, with a plausible body each.
fn every_call() -> Vec<(&'static str, Value)> {
    let fp = "0".repeat(64);
    vec![
        ("renew", json!({})),
        ("log-offset", json!({})),
        ("log", json!({"lines": [line(1, "forged line")]})),
        ("update", json!({"kind": "step_started", "step": 0, "name": "forged", "at_ms": 0})),
        ("report", json!({"lines": [line(1, "forged line")], "updates": []})),
        ("finish", json!({"status": "success", "reason": null, "outputs": {"forged": "yes"}, "sandbox": "remote"})),
        ("downloads", json!({})),
        ("artifacts", json!({"files": []})),
        ("cache-find", json!({"key": "k"})),
        ("result-find", json!({"fingerprint": fp})),
        ("result-record", json!({"fingerprint": fp})),
        ("plugins", json!({"references": []})),
    ]
}

const REMOTE: &str = "name: remote\njobs:\n  work:\n    runs-on: [remote]\n    steps:\n      - run: echo hi\n";

#[test]
fn an_agent_token_acts_only_on_leases_its_agent_holds_with_the_lease_secret() {
    let dir = tempfile::tempdir().unwrap();
    let repo_url = repo(&dir.path().join("repo"), REMOTE);
    for (i, db) in databases(dir.path()).into_iter().enumerate() {
        let server = start(&dir.path().join(format!("data{i}")), &db, &["--agents", "0", "--lease-ttl", "60s"]);
        let url = server.url.clone();
        let one = Raw::new(&url, &agent_token(&url, "one"), "agent-one");
        let two = Raw::new(&url, &agent_token(&url, "two"), "agent-two");
        assert_eq!(one.register().0, 200);
        assert_eq!(two.register().0, 200);
        let (status, v) = call(
            "POST",
            &format!("{url}/api/v1/jobs"),
            Some(json!({"name": "remote", "repo_url": repo_url, "default_branch": "main"})),
        );
        assert_eq!(status, 201, "{v}");

        let id = trigger(&url, "remote");
        let a = one.lease();
        let lease = a["lease"].clone();
        let secret = lease["secret"].as_str().unwrap_or_default().to_string();
        assert_eq!(one.call(&lease, "renew", json!({})).0, 200, "the holder renews");

        // Another agent's token, even with the whole lease (secret included), under its own name
        // or under the holder's: 403 on every call.
        let posing = two.named("agent-one");
        let mut bare = lease.clone();
        bare.as_object_mut().unwrap().remove("secret");
        let mut guessed = lease.clone();
        guessed["secret"] = json!(format!("chgl_{}", "0".repeat(64)));
        for (action, body) in every_call() {
            for (who, l) in [(&two, &lease), (&posing, &lease), (&one, &bare), (&one, &guessed)] {
                let (status, v) = who.call(l, action, body.clone());
                assert_eq!(status, 403, "{action} by {} answered {status}: {v}", who.name);
                assert!(
                    v["error"]["code"] == "not_lease_holder" || v["error"]["code"] == "agent_name_not_yours",
                    "{v}"
                );
            }
        }
        assert!(secret.len() >= 64, "the lease carries its secret: {lease}");
        let entry = lease["entry"].as_i64().unwrap();
        let token = lease["token"].as_i64().unwrap();
        let sha = "a".repeat(64);
        for (who, s) in [(&two, Some(secret.as_str())), (&one, None), (&one, Some("chgl_wrong"))] {
            let q = format!("?token={token}");
            let blob = who.get(&format!("/api/v1/agent/leases/{entry}/blobs/{sha}{q}"), s);
            let cache = who.get(&format!("/api/v1/agent/leases/{entry}/caches/1{q}"), s);
            let plugin = who.get(&format!("/api/v1/agent/leases/{entry}/plugins/sha256:{sha}{q}"), s);
            let upload = who.put(&format!("/api/v1/agent/leases/{entry}/blobs{q}"), s, b"forged");
            let save = who.put(&format!("/api/v1/agent/leases/{entry}/caches{q}&key=k"), s, b"forged");
            for (status, v) in [blob, cache, plugin, upload, save] {
                assert_eq!(status, 403, "a transfer by {} answered {status}: {v}", who.name);
            }
        }

        // Nothing of that reached the job: still running, no forged line, no outputs.
        let b = build(&url, id);
        let job = work_job(&b);
        assert_eq!(job["status"], "running", "{b}");
        assert_eq!(job["outputs"], json!({}), "{b}");
        let texts = log_texts(&server, id, "work");
        assert!(!texts.iter().any(|t| t.contains("forged")), "{texts:?}");

        // The holder, with its secret, uploads and records an artifact and finishes.
        let content = b"built by agent-one".to_vec();
        let (status, v) =
            one.put(&format!("/api/v1/agent/leases/{entry}/blobs?token={token}"), Some(&secret), &content);
        assert_eq!(status, 200, "{v}");
        let made = v["sha256"].as_str().unwrap().to_string();
        let file = json!({"name": "out", "path": "out.txt", "size": content.len(), "sha256": made, "expires_ms": null});
        let (status, v) = one.call(&lease, "artifacts", json!({"files": [file]}));
        assert_eq!(status, 200, "{v}");
        let (status, v) = one.get(&format!("/api/v1/agent/leases/{entry}/blobs/{made}?token={token}"), Some(&secret));
        assert_eq!(status, 200, "the holder reads its build's file: {v}");
        let first = a["first_line"].as_u64().unwrap_or(1);
        let (status, v) = one.call(
            &lease,
            "finish",
            json!({"status": "success", "reason": null, "outputs": {"made": "1"}, "sandbox": "remote",
                   "lines": [line(first, "hi from agent-one")]}),
        );
        assert_eq!(status, 200, "{v}");
        let b = wait_build(&server, id, finished);
        assert_eq!(b["build"]["status"], "success", "{b}");
        assert_eq!(work_job(&b)["outputs"], json!({"made": "1"}), "{b}");

        // A lease of another build cannot make that file its own by recording its digest
        // without uploading it, so it cannot read it; what it uploads itself it can.
        let other = trigger(&url, "remote");
        let b2 = two.lease();
        let lease2 = b2["lease"].clone();
        let (entry2, token2) = (lease2["entry"].as_i64().unwrap(), lease2["token"].as_i64().unwrap());
        let secret2 = lease2["secret"].as_str().unwrap().to_string();
        let (status, v) = two.call(&lease2, "artifacts", json!({"files": [file]}));
        assert_eq!(status, 400, "recorded a file it never uploaded: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("not uploaded through this lease"), "{v}");
        let (status, v) =
            two.get(&format!("/api/v1/agent/leases/{entry2}/blobs/{made}?token={token2}"), Some(&secret2));
        assert_eq!(status, 404, "read another build's file: {v}");
        let (status, v) =
            two.put(&format!("/api/v1/agent/leases/{entry2}/blobs?token={token2}"), Some(&secret2), b"by two");
        assert_eq!(status, 200, "{v}");
        let own = v["sha256"].as_str().unwrap().to_string();
        let mine = json!({"name": "o", "path": "o.txt", "size": 6, "sha256": own, "expires_ms": null});
        assert_eq!(two.call(&lease2, "artifacts", json!({"files": [mine]})).0, 200);
        let (status, v) = two.get(&format!("/api/v1/agent/leases/{entry2}/blobs/{own}?token={token2}"), Some(&secret2));
        assert_eq!(status, 200, "{v}");
        let (status, v) = two.call(&lease2, "finish", json!({"status": "success", "reason": null, "outputs": {}}));
        assert_eq!(status, 200, "{v}");
        let b = wait_build(&server, other, finished);
        assert_eq!(b["build"]["status"], "success", "{b}");
    }
}

#[test]
fn agent_names_are_bound_to_their_token_and_embedded_names_to_no_token() {
    let dir = tempfile::tempdir().unwrap();
    for (i, db) in databases(dir.path()).into_iter().enumerate() {
        let server = start(&dir.path().join(format!("data{i}")), &db, &["--agents", "1"]);
        let url = server.url.clone();
        let embedded = agents(&url)
            .into_iter()
            .find(|a| a["embedded"] == true)
            .and_then(|a| a["name"].as_str().map(str::to_string))
            .expect("an embedded agent is listed");
        let one = Raw::new(&url, &agent_token(&url, "one"), "agent-one");
        let two = Raw::new(&url, &agent_token(&url, "two"), "agent-two");
        assert_eq!(one.register().0, 200);
        assert_eq!(one.register().0, 200, "its own token registers it again");

        // Another token can neither register the name nor use it.
        let posing = two.named("agent-one");
        let (status, v) = posing.register();
        assert_eq!(status, 409, "{v}");
        assert_eq!(v["error"]["code"], "agent_name_taken", "{v}");
        let (status, v) = posing.poll_once();
        assert_eq!(status, 403, "{v}");
        let (status, v) = posing.post("/api/v1/agent/state", json!({"state": "drained"}));
        assert_eq!(status, 403, "{v}");

        // Nor an embedded agent's, on any route.
        let as_embedded = two.named(&embedded);
        let (status, v) = as_embedded.register();
        assert_eq!(status, 409, "{v}");
        let (status, v) = as_embedded.poll_once();
        assert_eq!(status, 403, "leased as the embedded agent: {v}");
        assert_eq!(v["error"]["code"], "agent_name_not_yours", "{v}");
        let (status, v) = as_embedded.post("/api/v1/agent/state", json!({"state": "drained"}));
        assert_eq!(status, 403, "drained the embedded agent: {v}");
        let (status, v) = as_embedded.call(
            &json!({"entry": 1, "build_job_id": 1, "token": 1, "expires_ms": 0, "attempt": 1, "lost_from": null}),
            "renew",
            json!({}),
        );
        assert_eq!(status, 403, "{v}");
        let shaped = two.named("embedded-7@elsewhere");
        assert_eq!(shaped.register().0, 409, "names shaped like an embedded agent's are reserved");

        let listed = agents(&url);
        let status_of = |name: &str| listed.iter().find(|a| a["name"] == name).unwrap()["status"].clone();
        assert_eq!(status_of("agent-one"), "online");
        assert_eq!(status_of(&embedded), "online");
        assert!(!listed.iter().any(|a| a["name"] == "agent-two"), "{listed:?}");

        // Once the first token is revoked, another may take the name.
        let (code, out, err) = cli(&url, &["agent-token", "revoke", "one"], None);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(posing.register().0, 200);
        assert_eq!(posing.poll_once().0, 200);
    }
}
