//! The `chengis` command line against a real `chengis serve`, as a `gh`/`glab` user meets it:
//! every documented exit code (0 ok, 1 build failed, 2 usage, 3 unreachable, 4 not signed in or
//! forbidden, 5 not found, 6 conflict), server URLs with and without a scheme (and `https://`
//! against a plain server), empty lists that say so, `login` (with the password asked on a
//! terminal, without echo), `whoami`, `logout`, `passwd`, `token create|list|revoke`, the last
//! signed-in server as the default, help that lists only a command's own options, and `lint`
//! naming each file.

use serde_json::Value;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::*;

const FAILING: &str = "jobs:\n  bad:\n    steps:\n      - run: echo broken; exit 3\n";

/// Runs the CLI with `args` only (no `--server` added) and the environment given; no
/// `CHENGIS_TOKEN` or `CHENGIS_SERVER` unless given.
fn run(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> (i32, String, String) {
    cli_bare(args, env, stdin)
}

/// `host:port` of a server URL (`http://` taken off).
fn bare(url: &str) -> &str {
    url.strip_prefix("http://").unwrap()
}

#[test]
fn every_exit_code_and_the_scheme_handling() {
    let tmp = tempfile::tempdir().unwrap();
    let failing = repo(&tmp.path().join("failing"), FAILING);

    // 3: nothing listens on the port.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (code, _, err) = cli(&format!("127.0.0.1:{closed}"), &["job", "list"], None);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&format!("cannot reach the server at http://127.0.0.1:{closed}")), "{err}");

    let db = databases(tmp.path()).remove(0);
    let s = start(&tmp.path().join("data"), &db, &[]);
    let host = bare(&s.url);

    // A URL without a scheme is http://; empty lists say so.
    for (args, says) in [
        (&["job", "list"][..], "no jobs\n"),
        (&["build", "list"], "no builds\n"),
        (&["build", "list", "--job", "x"], "no builds match\n"),
        (&["cache", "list"], "no caches\n"),
        (&["secret", "list"], "no global secrets\n"),
        (&["schedule", "list"], "no schedules\n"),
        (&["agent-token", "list"], "no agent tokens\n"),
    ] {
        let (code, out, err) = cli(host, args, None);
        assert_eq!((code, out.as_str()), (0, says), "{args:?}: {err}");
    }
    // JSON stays JSON when empty.
    let (code, out, _) = cli(host, &["job", "list", "--format", "json"], None);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["jobs"], Value::Array(vec![]));
    // https:// against a plain server: a clear error naming the URL to use, not `corrupt message`.
    let (code, _, err) = cli(&format!("https://{host}"), &["job", "list"], None);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&format!("the server at https://{host} does not speak TLS; use http://{host}")), "{err}");
    assert!(!err.contains("corrupt message"), "{err}");
    // Another scheme, or no host: usage.
    for bad in ["ftp://example.org", "https://"] {
        let (code, _, err) = cli(bad, &["job", "list"], None);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains(&format!("server `{bad}`")), "{err}");
    }

    // 0 and 6: a job, then the same name again.
    assert_eq!(cli(host, &["job", "create", "flaky", "--repo", &failing], None).0, 0);
    let (code, _, err) = cli(host, &["job", "create", "flaky", "--repo", &failing], None);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("creating job `flaky`: job `flaky` already exists (HTTP 409)"), "{err}");

    // 5: unknown job, unknown build.
    for args in [&["job", "delete", "nope"][..], &["build", "trigger", "nope"], &["build", "show", "flaky#7"]] {
        let (code, _, err) = cli(host, args, None);
        assert_eq!(code, 5, "{args:?}: {err}");
        assert!(err.contains("not found (HTTP 404)"), "{err}");
    }

    // 4: a wrong token, and a viewer's token on a developer's route.
    let (code, _, err) = cli_env(host, &["job", "list"], &[("CHENGIS_TOKEN", "chgu_wrong")], None);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("HTTP 401") && err.contains("chengis login"), "{err}");
    add_user(&s, "vera", "viewer");
    let vera = token_of(&s, "vera", "vera-password-1234");
    let (code, _, err) = cli_env(host, &["job", "delete", "flaky"], &[("CHENGIS_TOKEN", &vera)], None);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("HTTP 403"), "{err}");
    // No token at all: 4 too.
    let (code, _, err) = cli_env(host, &["job", "list"], &[], None);
    assert_eq!(code, 4, "{err}");

    // 2: clap, a malformed argument the CLI checks, and one the server refuses (HTTP 400).
    for args in [
        &["job", "frobnicate"][..],
        &["build", "show", "flaky#x"],
        &["build", "trigger", "flaky", "--param", "novalue"],
        &["token", "create", "t", "--scope", "no:such"],
        &["token", "create", "t", "--expires-in", "400d"],
    ] {
        let (code, _, err) = cli(host, args, None);
        assert_eq!(code, 2, "{args:?}: {err}");
    }

    // 1: a failed build (--wait).
    let (code, out, err) = cli(host, &["build", "trigger", "flaky", "--wait"], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.lines().last().unwrap().starts_with("build flaky#1 (id 1): failure"), "{out}");
}

/// Reads a child's output into a buffer in the background.
fn collect(mut from: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let into = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

/// Waits until `buf` holds `text`; the text so far.
fn wait_text(buf: &Arc<Mutex<Vec<u8>>>, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = String::from_utf8_lossy(&buf.lock().unwrap()).to_string();
        if now.contains(text) {
            return now;
        }
        assert!(Instant::now() < deadline, "waited for {text:?}; got {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `chengis login` with no password flag, on a terminal (a pseudo-terminal from `script`): it
/// asks for the username and the password, and the password is not echoed. `url` has no scheme.
fn login_on_a_terminal(url: &str, config: &str, user: &str, password: &str) -> (i32, String) {
    let script = which("script");
    let command = format!("'{}' login --server '{url}'", env!("CARGO_BIN_EXE_chengis"));
    let mut child = Command::new(script)
        .args(["-qec", &command, "/dev/null"])
        .env("CHENGIS_CONFIG_DIR", config)
        .env_remove("CHENGIS_TOKEN")
        .env_remove("CHENGIS_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = collect(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    // The server given without a scheme is shown as the URL used.
    wait_text(&out, &format!("Username for http://{url}: "));
    stdin.write_all(format!("{user}\n").as_bytes()).unwrap();
    // The password goes in only once echo is off (the prompt comes after that).
    wait_text(&out, &format!("Password for {user}: "));
    std::thread::sleep(Duration::from_millis(200));
    stdin.write_all(format!("{password}\n").as_bytes()).unwrap();
    let status = child.wait().unwrap();
    drop(stdin);
    std::thread::sleep(Duration::from_millis(100));
    let text = String::from_utf8_lossy(&out.lock().unwrap()).to_string();
    (status.code().unwrap_or(-1), text)
}

fn which(program: &str) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{program}` (util-linux) is needed for the terminal test"))
        .display()
        .to_string()
}

#[test]
fn login_whoami_logout_passwd_and_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let db = databases(tmp.path()).remove(0);
    let s = start(&tmp.path().join("data"), &db, &[]);
    add_user(&s, "dev", "developer");
    let config = tmp.path().join("config");
    let config = config.to_str().unwrap();
    let env = [("CHENGIS_CONFIG_DIR", config)];
    let host = bare(&s.url);

    // Not signed in anywhere: whoami and logout say so (4).
    let (code, _, err) = run(&["whoami", "--server", host], &env, None);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains(&format!("not signed in to {}", s.url)), "{err}");
    // No terminal and no --password-stdin: usage, with what to give instead.
    let (code, _, err) = run(&["login", "--server", host, "--username", "dev"], &env, None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--password-stdin"), "{err}");
    // A wrong password says so, without telling to run `chengis login`.
    let (code, _, err) =
        run(&["login", "--server", host, "--username", "dev", "--password-stdin"], &env, Some("wrong-password-1\n"));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("wrong username or password"), "{err}");
    assert!(!err.contains("chengis login"), "{err}");

    // Signed in on a terminal: asked for both, the password not echoed.
    let (code, shown) = login_on_a_terminal(host, config, "dev", "dev-password-1234");
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains(&format!("signed in to {} as dev", s.url)), "{shown}");
    assert!(shown.contains("dev\r\n"), "the username is echoed: {shown:?}");
    assert!(!shown.contains("dev-password-1234"), "the password was echoed: {shown:?}");

    // Later commands without --server go to the server signed in to, not 127.0.0.1:8080.
    let (code, out, err) = run(&["whoami"], &env, None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("server:  {}\n", s.url)), "{out}");
    assert!(out.contains("user:    dev\n") && out.contains("role:    developer\n"), "{out}");
    assert!(out.contains("via:     API token ") && out.contains("(never expires)"), "{out}");
    assert!(out.contains("scopes:  builds:read, builds:write, jobs:write, secrets:write, tokens:write\n"), "{out}");
    assert_eq!(run(&["job", "list"], &env, None), (0, "no jobs\n".into(), String::new()));
    // CHENGIS_SERVER and --server still win.
    let (code, _, err) = run(&["job", "list"], &[env[0], ("CHENGIS_SERVER", "127.0.0.1:1")], None);
    assert_eq!(code, 3, "{err}");

    // Tokens: created with scopes and an expiry, shown once, listed, used, revoked.
    let (code, out, err) = run(&["token", "create", "ci", "--scope", "builds:read", "--expires-in", "30d"], &env, None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(ci); scopes: builds:read; expires: ") && out.contains("it is shown only now:"), "{out}");
    let ci = out.lines().last().unwrap().to_string();
    assert!(ci.starts_with("chgu_"), "{out}");
    let ci_env = [env[0], ("CHENGIS_TOKEN", ci.as_str())];
    let (code, out, err) = run(&["whoami"], &ci_env, None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("scopes:  builds:read\n") && out.contains("(expires 20"), "{out}");
    assert_eq!(run(&["build", "list"], &ci_env, None).0, 0);
    let (code, _, err) = run(&["job", "create", "x", "--repo", "/nowhere"], &ci_env, None);
    assert_eq!(code, 4, "builds:read cannot create jobs: {err}");
    let (code, out, err) = run(&["token", "list"], &env, None);
    assert_eq!(code, 0, "{err}");
    let row = out.lines().find(|l| l.contains(" ci ")).unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("live") && row.ends_with("builds:read") && !row.contains("never "), "{row}");
    assert!(!out.contains(&ci), "a token's secret is shown only once: {out}");
    let (code, out, _) = run(&["token", "list", "--format", "json"], &env, None);
    assert_eq!(code, 0);
    let tokens: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 2, "{tokens}");
    let (code, out, err) = run(&["token", "revoke", "ci"], &env, None);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("revoked API token "), "{out}");
    assert_eq!(run(&["whoami"], &ci_env, None).0, 4, "a revoked token is refused");
    let (code, _, err) = run(&["token", "revoke", "ci"], &env, None);
    assert_eq!(code, 5, "{err}");
    let (code, _, err) = run(&["token", "revoke", "999"], &env, None);
    assert_eq!(code, 5, "{err}");

    // passwd: the current password is required; the CLI signs in again with the new one.
    let (code, _, err) = run(&["passwd", "--password-stdin"], &env, Some("not-the-password\nnew-password-5678\n"));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("the current password is wrong"), "{err}");
    let (code, _, err) = run(&["passwd", "--password-stdin"], &env, Some("dev-password-1234\nshort\n"));
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = run(&["passwd", "--password-stdin"], &env, Some("dev-password-1234\nnew-password-5678\n"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("password of dev changed") && out.contains("signed this CLI in again"), "{out}");
    assert_eq!(run(&["whoami"], &env, None).0, 0, "the CLI holds a fresh token");
    let (code, _, _) =
        run(&["login", "--server", host, "--username", "dev", "--password-stdin"], &env, Some("dev-password-1234\n"));
    assert_eq!(code, 4, "the old password no longer works");
    let (st, audit) = call("GET", &format!("{}/api/v1/audit?format=json", s.url), None);
    assert_eq!(st, 200);
    let changed = audit
        .as_array()
        .or(audit["entries"].as_array())
        .unwrap_or_else(|| panic!("{audit}"))
        .iter()
        .any(|e| e["action"] == "user.password" && e["actor"] == "dev");
    assert!(changed, "the change is audited: {audit}");

    // logout: the token is revoked on the server and forgotten here.
    let stored = std::fs::read_to_string(std::path::Path::new(config).join("credentials.toml")).unwrap();
    let token: toml::Table = toml::from_str(&stored).unwrap();
    let token = token[&s.url]["token"].as_str().unwrap().to_string();
    let (code, out, err) = run(&["logout"], &env, None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("signed out of {}: token forgotten here and revoked on the server\n", s.url));
    let (st, _) = call_as(&format!("Bearer {token}"), "GET", &format!("{}/api/v1/me", s.url), None);
    assert_eq!(st, 401, "the stored token was revoked");
    let stored = std::fs::read_to_string(std::path::Path::new(config).join("credentials.toml")).unwrap();
    assert!(!stored.contains(&token) && !stored.contains(&s.url), "{stored}");
    let (code, _, err) = run(&["logout", "--server", host], &env, None);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not signed in"), "{err}");
}

#[test]
fn help_lists_only_a_commands_own_options() {
    let help = |args: &[&str]| {
        let (code, out, err) = run(args, &[], None);
        assert_eq!(code, 0, "{err}");
        out
    };
    let plugin = help(&["plugin", "--help"]);
    for serve_only in ["--executors", "--listen", "--tls-cert", "--host-steps", "--max-jobs", "--work-dir"] {
        assert!(!plugin.contains(serve_only), "`plugin --help` lists {serve_only}:\n{plugin}");
    }
    assert!(plugin.contains("--data-dir") && plugin.contains("--database-url"), "{plugin}");
    assert!(plugin.lines().filter(|l| l.trim_start().starts_with("--")).count() <= 4, "{plugin}");
    for local in
        [&["secret", "rotate-key", "--help"][..], &["migrate", "--help"], &["user", "reset-password", "--help"]]
    {
        let text = help(local);
        assert!(!text.contains("--executors") && text.contains("--data-dir"), "{local:?}: {text}");
    }
    let token = help(&["token", "create", "--help"]);
    assert!(token.contains("--scope") && token.contains("--expires-in") && token.contains("--server"), "{token}");
    let top = help(&["--help"]);
    for command in ["login", "logout", "whoami", "passwd", "token"] {
        assert!(top.lines().any(|l| l.trim_start().starts_with(command)), "{command} missing:\n{top}");
    }
    // Bad usage is 2 (clap).
    assert_eq!(run(&["token", "frobnicate"], &[], None).0, 2);
}

#[test]
fn lint_names_each_file() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("a.yml");
    let bad = tmp.path().join("b.yml");
    std::fs::write(&good, "jobs:\n  j:\n    steps:\n      - run: echo hi\n").unwrap();
    std::fs::write(&bad, "jobs:\n  j:\n    stepz:\n      - run: echo hi\n").unwrap();
    let (code, out, err) = run(&["lint", good.to_str().unwrap(), bad.to_str().unwrap()], &[], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains(&format!("{}: no problems found\n", good.display())), "{out}");
    let summary = out.lines().find(|l| l.starts_with(&format!("{}: ", bad.display())) && l.contains(" error"));
    assert!(summary.is_some_and(|l| l.ends_with("warnings") || l.ends_with("warning")), "{out}");
    assert!(out.contains(&format!("{}:3:5: error[", bad.display())), "{out}");
    assert_eq!(out.matches("no problems found").count(), 1, "{out}");
    // Two good files: each named.
    let (code, out, _) = run(&["lint", good.to_str().unwrap(), good.to_str().unwrap()], &[], None);
    assert_eq!(code, 0);
    assert_eq!(out, format!("{0}: no problems found\n{0}: no problems found\n", good.display()));
    // No pipeline file in the directory: usage.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chengis")).arg("lint").current_dir(empty.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
