//! Users, sessions, tokens, roles and the security middleware against a real `chengis serve`:
//! every route of the route table for every role and for anonymous callers; sessions ending on
//! a password change; revoked tokens; lockout; CSRF; rate limits; the audit chain catching a
//! tampered database; and the CLI signing in.

mod support;

use chengis::server::auth::rules::{Access, RULES};
use chengis::store::users::Role;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;

/// The route with its parameters filled with names of things that do not exist, so that an
/// allowed call does nothing (404 or 400) and a refused one shows the refusal.
fn concrete(path: &str) -> String {
    path.replace("{id}", "999999")
        .replace("{name}", "nope")
        .replace("{job}", "nope")
        .replace("{number}", "1")
        .replace("{file}", "nope.svg")
        .replace("{decision}", "allow")
        .replace("{provider}", "github")
        .replace("{entry}", "999999")
        .replace("{sha256}", "00")
        .replace("{digest}", "00")
        .replace("{action}", "renew")
}

#[test]
fn every_role_gets_exactly_what_the_route_table_allows() {
    let tmp = tempfile::tempdir().unwrap();
    let db = databases(tmp.path()).remove(0);
    let s = start(&tmp.path().join("data"), &db, &["--agents", "0"]);
    add_user(&s, "vera", "viewer");
    add_user(&s, "dev", "developer");
    add_user(&s, "ada", "admin");
    let callers: Vec<(Option<Role>, String)> = vec![
        (None, String::new()),
        (Some(Role::Viewer), format!("Bearer {}", token_of(&s, "vera", "vera-password-1234"))),
        (Some(Role::Developer), format!("Bearer {}", token_of(&s, "dev", "dev-password-1234"))),
        (Some(Role::Admin), format!("Bearer {}", token_of(&s, "ada", "ada-password-1234"))),
    ];
    let mut checked = 0;
    for rule in RULES {
        if (rule.method, rule.path) == ("DELETE", "/api/v1/me/token") {
            // Signing out revokes the caller's token: checked below, with tokens of their own.
            continue;
        }
        let min = match rule.access {
            Access::Public | Access::Agent | Access::Badge => continue,
            Access::SignedIn => Role::Viewer,
            Access::Role(role, _) => role,
            // Without `?job=`: global secrets, admins only.
            Access::Secrets => Role::Admin,
        };
        let url = format!("{}{}", s.url, concrete(rule.path));
        let api = rule.path.starts_with("/api/");
        for (role, auth) in &callers {
            let headers: Vec<(&str, &str)> =
                if auth.is_empty() { vec![] } else { vec![("authorization", auth.as_str())] };
            let a = send(rule.method, &url, &headers, None);
            let what = format!("{} {} as {role:?}: {} {}", rule.method, rule.path, a.status, a.body);
            match role {
                None if api => {
                    assert_eq!(a.status, 401, "{what}");
                    assert!(a.body.contains("\"unauthorized\""), "{what}");
                }
                None => {
                    assert_eq!(a.status, 303, "{what}");
                    assert!(a.headers["location"].to_str().unwrap().starts_with("/login?next="), "{what}");
                }
                Some(r) if *r < min => assert_eq!(a.status, 403, "{what}"),
                Some(_) => assert!(![401, 403, 429, 500].contains(&a.status), "{what}"),
            }
            checked += 1;
        }
    }
    assert!(checked > 200, "{checked} calls");
    // `DELETE /api/v1/me/token`: anonymous 401; any signed-in caller ends the token it calls
    // with, whatever its scopes (a builds:read token too), and nothing else.
    let me_token = format!("{}/api/v1/me/token", s.url);
    assert_eq!(send("DELETE", &me_token, &[], None).status, 401);
    for user in ["vera", "dev", "ada"] {
        let own = format!("Bearer {}", token_of(&s, user, &format!("{user}-password-1234")));
        let (st, v) = call_as(
            &own,
            "POST",
            &format!("{}/api/v1/tokens", s.url),
            Some(json!({"name": "ro", "scopes": ["builds:read"]})),
        );
        assert_eq!(st, 201, "{v}");
        let narrow = format!("Bearer {}", v["token"].as_str().unwrap());
        assert_eq!(send("DELETE", &me_token, &[("authorization", narrow.as_str())], None).status, 204, "{user}");
        assert_eq!(call_as(&narrow, "GET", &format!("{}/api/v1/me", s.url), None).0, 401, "{user}: revoked");
        assert_eq!(call_as(&own, "GET", &format!("{}/api/v1/me", s.url), None).0, 200, "{user}: the parent lives on");
        assert_eq!(send("DELETE", &me_token, &[("authorization", own.as_str())], None).status, 204, "{user}");
        assert_eq!(call_as(&own, "GET", &format!("{}/api/v1/me", s.url), None).0, 401, "{user}: revoked");
    }

    // A job's secrets are for developers; global ones for admins.
    let dev = &callers[2].1;
    call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "app", "repo_url": "file:///nowhere"})));
    let (st, v) =
        call_as(dev, "PUT", &format!("{}/api/v1/secrets/X?job=app", s.url), Some(json!({"value": "value-1"})));
    assert_eq!(st, 204, "a developer sets a job's secret: {v}");
    let (st, _) = call_as(dev, "PUT", &format!("{}/api/v1/secrets/X", s.url), Some(json!({"value": "value-1"})));
    assert_eq!(st, 403);
    // A token is limited by its scopes as well as its owner's role.
    let (st, v) = call_as(
        &callers[3].1,
        "POST",
        &format!("{}/api/v1/tokens", s.url),
        Some(json!({"name": "read-only", "scopes": ["builds:read"]})),
    );
    assert_eq!(st, 201, "{v}");
    let reader = format!("Bearer {}", v["token"].as_str().unwrap());
    assert_eq!(call_as(&reader, "GET", &format!("{}/api/v1/builds", s.url), None).0, 200);
    let (st, v) = call_as(&reader, "GET", &format!("{}/api/v1/users", s.url), None);
    assert_eq!(st, 403);
    assert!(v["error"]["message"].as_str().unwrap().contains("`server:admin` scope"), "{v}");
    // A developer cannot mint an admin-scoped token; a bad bearer is refused.
    let (st, v) = call_as(
        dev,
        "POST",
        &format!("{}/api/v1/tokens", s.url),
        Some(json!({"name": "x", "scopes": ["plugins:admin"]})),
    );
    assert_eq!(st, 400, "{v}");
    assert_eq!(call_as("Bearer chgu_nope", "GET", &format!("{}/api/v1/builds", s.url), None).0, 401);
    assert_eq!(call_as("Bearer chga_agenttoken", "GET", &format!("{}/api/v1/builds", s.url), None).0, 401);
}

/// The `chengis_session` cookie of a `Set-Cookie` answer.
fn session_cookie(a: &Answer) -> String {
    let set = a.headers["set-cookie"].to_str().unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Path=/"), "{set}");
    set.split(';').next().unwrap().to_string()
}

fn form_login(s: &Server, user: &str, password: &str) -> Answer {
    let body = format!("username={user}&password={}&next=%2Fjobs%2Fapp", password.replace(' ', "+"));
    send("POST", &format!("{}/login", s.url), &[], Some(&body))
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> String {
    page.split("name=\"_csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string()
}

#[test]
fn sessions_tokens_lockout_csrf_rate_limits_and_the_audit_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let url = repo(&tmp.path().join("repo"), "jobs:\n  a:\n    steps:\n      - run: echo hi\n");
    for (n, db) in databases(tmp.path()).iter().enumerate() {
        let data = tmp.path().join(format!("data{n}"));
        let s = start(
            &data,
            db,
            &[
                "--login-max-failures",
                "3",
                "--login-lockout",
                "3s",
                "--rate-limit",
                "40/3s",
                "--login-rate-limit",
                "12/3s",
                "--trusted-proxies",
                "127.0.0.1",
            ],
        );
        call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "app", "repo_url": url})));
        add_user(&s, "dev", "developer");

        // Signing in through the form: a session cookie, then back to where the user was going.
        let a = form_login(&s, "dev", "dev-password-1234");
        assert_eq!(a.status, 303, "{}", a.body);
        assert_eq!(a.headers["location"], "/jobs/app");
        let cookie = session_cookie(&a);
        let page = send("GET", &format!("{}/jobs/app", s.url), &[("cookie", &cookie)], None);
        assert_eq!(page.status, 200);
        assert!(page.body.contains("id=\"me\">dev<") && page.body.contains("id=\"trigger-button\""));
        let csrf = csrf_of(&page.body);
        // Signing in again rotates the session.
        let again = form_login(&s, "dev", "dev-password-1234");
        assert_ne!(session_cookie(&again), cookie);

        // CSRF: a cookie-authenticated form post without the token, with a wrong one, or from
        // another origin is refused; with it, it goes through.
        let trigger = format!("{}/jobs/app/trigger", s.url);
        let a = send("POST", &trigger, &[("cookie", &cookie)], Some("branch=main"));
        assert_eq!(a.status, 403);
        assert!(a.body.contains("CSRF"), "{}", a.body);
        let a = send("POST", &trigger, &[("cookie", &cookie)], Some("branch=main&_csrf=wrong"));
        assert_eq!(a.status, 403);
        let body = format!("branch=main&_csrf={csrf}");
        let a = send("POST", &trigger, &[("cookie", &cookie), ("origin", "http://evil.example")], Some(&body));
        assert_eq!(a.status, 403);
        let a = send("POST", &trigger, &[("cookie", &cookie)], Some(&body));
        assert_eq!(a.status, 303, "{}", a.body);
        // Bearer-token calls need no CSRF token.
        assert_eq!(call("POST", &format!("{}/api/v1/jobs/app/builds", s.url), None).0, 201);

        // The same error for an unknown user and a wrong password.
        let login = |user: &str, password: &str| {
            call_as(
                "",
                "POST",
                &format!("{}/api/v1/login", s.url),
                Some(json!({"username": user, "password": password})),
            )
        };
        let (st1, unknown) = login("nobody", "whatever-password");
        let (st2, wrong) = login("dev", "wrong-password-here");
        assert_eq!((st1, st2), (401, 401));
        assert_eq!(unknown["error"]["message"], wrong["error"]["message"]);

        // A password change ends every other session and token at once.
        let old_token = format!("Bearer {}", token_of(&s, "dev", "dev-password-1234"));
        assert_eq!(call_as(&old_token, "GET", &format!("{}/api/v1/me", s.url), None).0, 200);
        let a = send(
            "POST",
            &format!("{}/api/v1/me/password", s.url),
            &[("cookie", &cookie), ("x-csrf-token", &csrf)],
            Some(r#"{"current": "dev-password-1234", "new": "dev-password-5678"}"#),
        );
        assert_eq!(a.status, 200, "{}", a.body);
        let fresh = session_cookie(&a);
        assert_eq!(send("GET", &format!("{}/", s.url), &[("cookie", &cookie)], None).status, 303, "old session ended");
        assert_eq!(send("GET", &format!("{}/", s.url), &[("cookie", &fresh)], None).status, 200, "this one goes on");
        assert_eq!(call_as(&old_token, "GET", &format!("{}/api/v1/me", s.url), None).0, 401, "old token ended");

        // A revoked token fails at once.
        let t = format!("Bearer {}", token_of(&s, "dev", "dev-password-5678"));
        let (_, mine) = call_as(&t, "GET", &format!("{}/api/v1/tokens", s.url), None);
        let id = mine["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["revoked_ms"].is_null())
            .map(|t| t["id"].as_i64().unwrap())
            .max()
            .unwrap();
        assert_eq!(call_as(&t, "GET", &format!("{}/api/v1/builds", s.url), None).0, 200);
        assert_eq!(call_as(&t, "DELETE", &format!("{}/api/v1/tokens/{id}", s.url), None).0, 204);
        assert_eq!(call_as(&t, "GET", &format!("{}/api/v1/builds", s.url), None).0, 401);

        // Lockout: failures from 3 client addresses (behind the trusted proxy) lock the account
        // for 3 s, even for the right password. (One address alone cannot: security_auth.rs.)
        add_user(&s, "lou", "viewer");
        let login_from = |ip: &str, user: &str, password: &str| {
            let body = json!({"username": user, "password": password}).to_string();
            let a = send("POST", &format!("{}/api/v1/login", s.url), &[("x-forwarded-for", ip)], Some(&body));
            (a.status, serde_json::from_str::<Value>(&a.body).unwrap())
        };
        for ip in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            assert_eq!(login_from(ip, "lou", "not-the-password").0, 401);
        }
        let locked_at = Instant::now();
        let (st, v) = login_from("192.0.2.4", "lou", "lou-password-1234");
        assert_eq!(st, 401, "locked: {v}");
        assert_eq!(v["error"]["message"], wrong["error"]["message"]);
        while locked_at.elapsed() < Duration::from_millis(3200) {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(login("lou", "lou-password-1234").0, 201, "unlocked after the period");

        // Rate limit: 40 requests per 3 s per user, then 429 with Retry-After, then recovery.
        let viewer = format!("Bearer {}", token_of(&s, "lou", "lou-password-1234"));
        let jobs = format!("{}/api/v1/jobs", s.url);
        let mut limited = None;
        for i in 0..60 {
            let a = send("GET", &jobs, &[("authorization", &viewer)], None);
            if a.status == 429 {
                limited = Some((i, a.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap()));
                break;
            }
            assert_eq!(a.status, 200);
        }
        let (count, wait) = limited.expect("the rate limit never tripped");
        assert!(count <= 40 && (1..=3).contains(&wait), "{count} requests, retry after {wait}");
        std::thread::sleep(Duration::from_secs(wait + 1));
        assert_eq!(send("GET", &jobs, &[("authorization", &viewer)], None).status, 200, "recovered");

        // A role change and a secret, for the audit log.
        assert_eq!(call("PATCH", &format!("{}/api/v1/users/lou", s.url), Some(json!({"role": "developer"}))).0, 200);
        assert_eq!(
            call("PUT", &format!("{}/api/v1/secrets/TOKEN", s.url), Some(json!({"value": "s3cret-value"}))).0,
            204
        );
        // The last admin cannot be demoted.
        let (st, _) = call("PATCH", &format!("{}/api/v1/users/admin", s.url), Some(json!({"role": "viewer"})));
        assert_eq!(st, 409);

        // The audit log has them all, without secrets; the chain checks out.
        let (st, log) = call("GET", &format!("{}/api/v1/audit", s.url), None);
        assert_eq!(st, 200);
        let actions: Vec<&str> =
            log["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
        for want in [
            "login.success",
            "login.failure",
            "token.create",
            "token.revoke",
            "user.password",
            "user.change",
            "build.trigger",
            "secret.set",
            "user.create",
        ] {
            assert!(actions.contains(&want), "no {want} in {actions:?}");
        }
        assert!(!log.to_string().contains("s3cret-value") && !log.to_string().contains("dev-password"));
        let e = log["entries"].as_array().unwrap().iter().find(|e| e["action"] == "build.trigger").unwrap();
        assert_eq!((e["actor"].as_str(), e["target"].as_str()), (Some("dev"), Some("/jobs/app/trigger")));
        assert_eq!(e["ip"], "127.0.0.1");
        let a = send("GET", &format!("{}/api/v1/audit?format=csv", s.url), &[("authorization", BEARER)], None);
        assert!(a.headers["content-type"].to_str().unwrap().starts_with("text/csv"));
        assert!(
            a.body.starts_with("id,at,actor,ip,action,target,details,hash\n") && a.body.contains(",login.failure,")
        );
        let (code, out, err) = cli(&s.url, &["audit", "verify"], None);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("intact"), "{out}");
        let page = send("GET", &format!("{}/audit", s.url), &[("authorization", BEARER)], None);
        assert!(
            page.body.contains("id=\"audit-ok\"") && page.body.contains("<code>login.failure</code>"),
            "{}",
            page.body
        );

        // Tampering with the database: a changed entry, a removed one, a removed last one.
        let entries = log["entries"].as_array().unwrap().len() as i64;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let exec = |sql: String| {
            rt.block_on(async {
                let store = chengis::store::Store::open(db).await.unwrap();
                sqlx::query(&sql).execute(store.pool()).await.unwrap();
            })
        };
        exec("UPDATE audit_log SET actor = 'mallory' WHERE id = 3".into());
        let (code, out, _) = cli(&s.url, &["audit", "verify"], None);
        assert_eq!(code, 1);
        assert!(out.contains("entry 3") && out.contains("modified"), "{out}");
        let (_, v) = call("GET", &format!("{}/api/v1/audit/verify", s.url), None);
        assert_eq!(v["ok"], false);
        let page = send("GET", &format!("{}/audit", s.url), &[("authorization", BEARER)], None);
        assert!(page.body.contains("id=\"audit-problem\"") && page.body.contains("entry 3"), "{}", page.body);
        exec("UPDATE audit_log SET actor = (SELECT actor FROM audit_log WHERE id = 2) WHERE id = 3".into());
        let (_, v) = call("GET", &format!("{}/api/v1/audit/verify", s.url), None);
        if v["ok"] == true {
            // Entry 3 was written by the same actor as entry 2: the chain is whole again.
            exec("DELETE FROM audit_log WHERE id = 4".into());
            let (code, out, _) = cli(&s.url, &["audit", "verify"], None);
            assert_eq!(code, 1);
            assert!(out.contains("entry 4 is missing"), "{out}");
        }
        let last = rt.block_on(async {
            let store = chengis::store::Store::open(db).await.unwrap();
            sqlx::query_scalar::<_, i64>("SELECT MAX(id) FROM audit_log").fetch_one(store.pool()).await.unwrap()
        });
        assert!(last >= entries);
        exec("DELETE FROM audit_log WHERE id < 4".into());
        exec(format!("DELETE FROM audit_log WHERE id = {last}"));
        let (_, v) = call("GET", &format!("{}/api/v1/audit/verify", s.url), None);
        assert_eq!(v["ok"], false, "{v}");
    }
}

#[test]
fn the_cli_signs_in_and_uses_its_token() {
    let tmp = tempfile::tempdir().unwrap();
    let db = databases(tmp.path()).remove(0);
    let s = start(&tmp.path().join("data"), &db, &["--agents", "0"]);
    add_user(&s, "dev", "developer");
    let config = tmp.path().join("config");
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chengis"))
            .args(args)
            .args(["--server", &s.url])
            .env("CHENGIS_CONFIG_DIR", &config)
            .env_remove("CHENGIS_TOKEN")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Before signing in: a clear 401 that says what to do.
    let (code, _, err) = run(&["job", "list"], None);
    assert_ne!(code, 0);
    assert!(err.contains("HTTP 401") && err.contains("chengis login"), "{err}");
    let (code, _, err) = run(&["login", "--username", "dev", "--password-stdin"], Some("wrong-password-1\n"));
    assert_ne!(code, 0);
    assert!(err.contains("wrong username or password"), "{err}");
    let (code, out, err) = run(&["login", "--username", "dev", "--password-stdin"], Some("dev-password-1234\n"));
    assert_eq!(code, 0, "{out}{err}");
    let file = config.join("credentials.toml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let (code, out, err) = run(&["job", "list"], None);
    assert_eq!(code, 0, "{out}{err}");
    // A developer is not an admin.
    let (code, _, err) = run(&["user", "list"], None);
    assert_ne!(code, 0);
    assert!(err.contains("HTTP 403") && err.contains("admin"), "{err}");
    // CHENGIS_TOKEN overrides the stored token; `login --token` stores a given one.
    let (code, out, err) = cli(&s.url, &["user", "add", "vic", "--role", "viewer"], Some("vic-password-1234\n"));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = cli(&s.url, &["user", "list"], None);
    assert_eq!(code, 0);
    assert!(out.contains("vic (viewer)") && out.contains("dev (developer)"), "{out}");
    let (code, out, err) = run(&["login", "--token", ADMIN_TOKEN], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("as admin"), "{out}");
    let (code, _, _) = run(&["user", "disable", "vic"], None);
    assert_eq!(code, 0);
    let (st, _) = call_as(
        "",
        "POST",
        &format!("{}/api/v1/login", s.url),
        Some(json!({"username": "vic", "password": "vic-password-1234"})),
    );
    assert_eq!(st, 401, "a disabled user cannot sign in");
    let _: Value = Value::Null;
}
