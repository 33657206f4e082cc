//! Trust boundaries of sign-in and tokens (issue 24) against a real `chengis serve`: a token
//! cannot grow its powers or outlive its parent; the sign-in form refuses cross-site posts,
//! unsafe `next` targets and oversized usernames; one client cannot lock an account and the
//! server host can always recover one; forwarded addresses count only from trusted proxies;
//! every answer carries `nosniff` and a CSP; CSV exports never start a formula.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::*;

/// Signs in over the API (optionally as forwarded by a proxy for `ip`).
fn api_login(s: &Server, ip: Option<&str>, user: &str, password: &str) -> Answer {
    let headers: Vec<(&str, &str)> = ip.map(|ip| vec![("x-forwarded-for", ip)]).unwrap_or_default();
    let body = json!({"username": user, "password": password}).to_string();
    send("POST", &format!("{}/api/v1/login", s.url), &headers, Some(&body))
}

fn bearer(token: &Value) -> String {
    format!("Bearer {}", token.as_str().unwrap())
}

/// The audit entries (as the test admin).
fn audit(s: &Server) -> Vec<Value> {
    let (st, v) = call("GET", &format!("{}/api/v1/audit?limit=100000", s.url), None);
    assert_eq!(st, 200, "{v}");
    v["entries"].as_array().unwrap().clone()
}

fn sql(db: &str, statement: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = chengis::store::Store::open(db).await.unwrap();
        sqlx::query(statement).execute(store.pool()).await.unwrap();
    });
}

#[test]
fn a_token_cannot_grow_its_powers_or_outlive_its_parent() {
    let tmp = tempfile::tempdir().unwrap();
    for (n, db) in databases(tmp.path()).iter().enumerate() {
        let s = start(&tmp.path().join(format!("data{n}")), db, &["--agents", "0"]);
        add_user(&s, "dev", "developer");
        let login = api_login(&s, None, "dev", "dev-password-1234");
        assert_eq!(login.status, 201, "{}", login.body);
        let full = bearer(&login.json()["token"]);
        let tokens = format!("{}/api/v1/tokens", s.url);
        let me = format!("{}/api/v1/me", s.url);

        // A narrow token, for an hour.
        let (st, v) = call_as(
            &full,
            "POST",
            &tokens,
            Some(json!({"name": "narrow", "scopes": ["builds:read", "tokens:write"], "expires_in": "1h"})),
        );
        assert_eq!(st, 201, "{v}");
        let (narrow, narrow_id, narrow_expiry) =
            (bearer(&v["token"]), v["info"]["id"].as_i64().unwrap(), v["info"]["expires_ms"].as_i64().unwrap());

        // It cannot grant a scope it does not hold (though its owner's role could)...
        let (st, v) = call_as(&narrow, "POST", &tokens, Some(json!({"name": "wider", "scopes": ["builds:write"]})));
        assert_eq!(st, 400, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("does not hold it"), "{v}");
        // ...nor outlive itself.
        let (st, v) = call_as(&narrow, "POST", &tokens, Some(json!({"name": "longer", "expires_in": "2h"})));
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["details"]["field"], "expires_in", "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("cannot outlive"), "{v}");
        // By default a child gets its parent's scopes and expiry.
        let (st, v) = call_as(&narrow, "POST", &tokens, Some(json!({"name": "child"})));
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["info"]["scopes"], json!(["builds:read", "tokens:write"]));
        assert_eq!(v["info"]["expires_ms"].as_i64(), Some(narrow_expiry));
        assert_eq!(v["info"]["parent_id"].as_i64(), Some(narrow_id));
        let child = bearer(&v["token"]);
        let (st, v) = call_as(&child, "POST", &tokens, Some(json!({"name": "grandchild", "scopes": ["builds:read"]})));
        assert_eq!(st, 201, "{v}");
        let grandchild = bearer(&v["token"]);

        // Without `tokens:write` a token cannot mint or revoke tokens or change the password.
        for (method, url, body) in [
            ("POST", tokens.clone(), Some(json!({"name": "x"}))),
            ("DELETE", format!("{tokens}/{narrow_id}"), None),
            (
                "POST",
                format!("{}/api/v1/me/password", s.url),
                Some(json!({"current": "dev-password-1234", "new": "dev-password-5678"})),
            ),
        ] {
            let (st, v) = call_as(&grandchild, method, &url, body);
            assert_eq!(st, 403, "{method} {url}: {v}");
            assert!(v["error"]["message"].as_str().unwrap().contains("`tokens:write` scope"), "{v}");
        }

        // Revoking the parent ends its children and theirs.
        for t in [&narrow, &child, &grandchild] {
            assert_eq!(call_as(t, "GET", &me, None).0, 200);
        }
        assert_eq!(call_as(&full, "DELETE", &format!("{tokens}/{narrow_id}"), None).0, 204);
        for t in [&narrow, &child, &grandchild] {
            assert_eq!(call_as(t, "GET", &me, None).0, 401, "alive after its parent was revoked");
        }
        assert_eq!(call_as(&full, "GET", &me, None).0, 200, "the sign-in token lives on");

        // A parent expiring ends its children too.
        let (_, v) = call_as(&full, "POST", &tokens, Some(json!({"name": "parent"})));
        let (parent, parent_id) = (bearer(&v["token"]), v["info"]["id"].as_i64().unwrap());
        let (st, v) = call_as(&parent, "POST", &tokens, Some(json!({"name": "child2"})));
        assert_eq!(st, 201, "{v}");
        let child2 = bearer(&v["token"]);
        assert_eq!(call_as(&child2, "GET", &me, None).0, 200);
        sql(db, &format!("UPDATE api_tokens SET expires_ms = 1 WHERE id = {parent_id}"));
        assert_eq!(call_as(&parent, "GET", &me, None).0, 401);
        assert_eq!(call_as(&child2, "GET", &me, None).0, 401, "alive after its parent expired");

        // `expires_in` is bounded: past a year (or past what a duration can hold) is a 400 that
        // names the field and the bound, never a silent wrap.
        for text in ["366d", "5000000y", "99999999999999999999999y", "0s"] {
            let (st, v) = call_as(&full, "POST", &tokens, Some(json!({"name": "long", "expires_in": text})));
            assert_eq!(st, 400, "{text}: {v}");
            assert_eq!(v["error"]["details"], json!({"field": "expires_in", "max": "365d"}), "{text}: {v}");
            assert!(v["error"]["message"].as_str().unwrap().contains("expires_in"), "{v}");
        }
        let (st, v) = call_as(&full, "POST", &tokens, Some(json!({"name": "a year", "expires_in": "365d"})));
        assert_eq!(st, 201, "{v}");
    }
}

#[test]
fn the_sign_in_form_refuses_cross_site_posts_unsafe_next_and_long_usernames() {
    let tmp = tempfile::tempdir().unwrap();
    let db = databases(tmp.path()).remove(0);
    let s = start(&tmp.path().join("data"), &db, &["--agents", "0"]);
    let form = |next: &str| format!("username=admin&password={}&next={next}", ADMIN_PASSWORD.replace(' ', "+"));
    let login = format!("{}/login", s.url);

    // Login CSRF: a post from another site's page is refused; from this server's it passes.
    for origin in ["http://evil.example", "null", &s.url.replace("127.0.0.1", "localhost")] {
        let a = send("POST", &login, &[("origin", origin)], Some(&form("%2Fjobs")));
        assert_eq!(a.status, 403, "Origin {origin}: {}", a.body);
        assert!(a.headers.get("set-cookie").is_none());
        assert!(a.body.contains("cross-site"), "{}", a.body);
    }
    let a = send("POST", &login, &[("origin", &s.url)], Some(&form("%2Fjobs")));
    assert_eq!((a.status, a.header("location")), (303, "/jobs"), "{}", a.body);

    // `next` is a path of this server, without control characters or white space.
    for next in [
        "%2F%09%2Fevil.example",
        "%2F%0A%2Fevil.example",
        "%2F%0D%0A%2Fevil",
        "%2F%5Cevil.example",
        "%2F%2Fevil",
        "%2Fx%20y",
    ] {
        let a = send("POST", &login, &[], Some(&form(next)));
        assert_eq!((a.status, a.header("location")), (303, "/"), "next={next}: {}", a.body);
        let page = send("GET", &format!("{login}?next={next}"), &[], None);
        assert_eq!(page.status, 200, "next={next}");
        assert!(page.body.contains("name=\"next\" value=\"/\""), "next={next}: {}", page.body);
    }

    // Usernames over 64 characters are refused before lookup, rate limiting or audit: 25 of
    // them (the sign-in limit is 20 a minute) leave no trace and do not use up the limit.
    let before = audit(&s).len();
    let long = "u".repeat(65);
    for _ in 0..25 {
        let a = api_login(&s, None, &long, "whatever-password");
        assert_eq!(a.status, 400, "{}", a.body);
        assert_eq!(a.json()["error"]["details"], json!({"field": "username", "max": 64}), "{}", a.body);
    }
    let a = send("POST", &login, &[], Some(&format!("username={}&password=x&next=%2Fjobs", "u".repeat(1 << 16))));
    assert_eq!(a.status, 400);
    assert!(a.body.contains("id=\"login-error\"") && a.body.contains("at most 64 characters"), "{}", a.body);
    assert!(!a.body.contains("uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu"), "not echoed back");
    assert_eq!(audit(&s).len(), before, "refused usernames are not audited");
    assert_eq!(api_login(&s, None, "admin", ADMIN_PASSWORD).status, 201, "the sign-in limit was not used up");
    // A 64-character one is an ordinary failure.
    assert_eq!(api_login(&s, None, &"u".repeat(64), "whatever-password").status, 401);
}

#[test]
fn one_client_cannot_lock_an_account_and_the_server_host_can_always_recover_it() {
    let tmp = tempfile::tempdir().unwrap();
    for (n, db) in databases(tmp.path()).iter().enumerate() {
        let data = tmp.path().join(format!("data{n}"));
        let s = start(
            &data,
            db,
            &["--agents", "0", "--trusted-proxies", "127.0.0.1", "--login-max-failures", "3", "--login-lockout", "1h"],
        );
        let (attacker, admin_ip) = ("203.0.113.9", "198.51.100.7");
        // One attacker: three failures, then it has to wait, longer each time...
        for _ in 0..3 {
            assert_eq!(api_login(&s, Some(attacker), "admin", "wrong-password-1").status, 401);
        }
        let a = api_login(&s, Some(attacker), "admin", "wrong-password-1");
        assert_eq!(a.status, 429, "{}", a.body);
        assert_eq!(a.header("retry-after"), "1");
        // ...but the admin is not locked out.
        let a = api_login(&s, Some(admin_ip), "admin", ADMIN_PASSWORD);
        assert_eq!(a.status, 201, "one client locked the admin: {}", a.body);
        std::thread::sleep(Duration::from_millis(1100));
        for _ in 0..5 {
            let a = api_login(&s, Some(attacker), "admin", "wrong-password-1");
            if a.status == 429 {
                assert_eq!(a.header("retry-after"), "2", "the wait doubles");
                break;
            }
            assert_eq!(a.status, 401);
        }
        assert_eq!(api_login(&s, Some(admin_ip), "admin", ADMIN_PASSWORD).status, 201);

        // Distributed guessing: failures from three addresses lock the account.
        for ip in ["192.0.2.1", "192.0.2.2", "2001:db8::1"] {
            assert_eq!(api_login(&s, Some(ip), "admin", "wrong-password-2").status, 401);
        }
        assert_eq!(api_login(&s, Some(admin_ip), "admin", ADMIN_PASSWORD).status, 401, "locked");
        let entries = audit(&s);
        assert!(entries.iter().any(|e| e["action"] == "login.failure" && e["details"] == "wrong password; locked"));

        // The recovery path on the server host: a new password, and the lock is lifted.
        let db_arg = db.as_str();
        let (code, out, err) = cli_env(
            &s.url,
            &["user", "reset-password", "admin", "--data-dir", data.to_str().unwrap(), "--database-url", db_arg],
            &[],
            Some("a-brand-new-password\n"),
        );
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("lockout lifted"), "{out}");
        assert_eq!(api_login(&s, Some(admin_ip), "admin", "a-brand-new-password").status, 201);
        assert_eq!(api_login(&s, Some(admin_ip), "admin", ADMIN_PASSWORD).status, 401, "the old password is gone");
    }
}

#[test]
fn ipv6_addresses_of_one_network_count_as_one_client() {
    let tmp = tempfile::tempdir().unwrap();
    let db = databases(tmp.path()).remove(0);
    let s = start(
        &tmp.path().join("data"),
        &db,
        &["--agents", "0", "--trusted-proxies", "127.0.0.1", "--login-max-failures", "2", "--login-lockout", "1h"],
    );
    for ip in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2::3"] {
        assert_eq!(api_login(&s, Some(ip), "admin", "wrong-password-1").status, 401);
    }
    // A fourth address of the same /64 waits like one client.
    assert_eq!(api_login(&s, Some("2001:db8:1:2::4"), "admin", "wrong-password-1").status, 429);
    assert_eq!(api_login(&s, Some("192.0.2.1"), "admin", ADMIN_PASSWORD).status, 201, "not locked");
}

#[test]
fn forwarded_addresses_count_only_from_trusted_proxies() {
    let tmp = tempfile::tempdir().unwrap();
    let db = databases(tmp.path()).remove(0);
    let failure_ip = |s: &Server, user: &str| -> String {
        let e = audit(s).into_iter().rev().find(|e| e["action"] == "login.failure" && e["actor"] == user).unwrap();
        e["ip"].as_str().unwrap().to_string()
    };
    // Without trusted proxies (or from an address that is not one), the headers are ignored:
    // the audit log and the rate limits see the connection's address.
    for (n, extra) in [vec![], vec!["--trusted-proxies", "10.0.0.0/8"]].into_iter().enumerate() {
        let mut args = vec!["--agents", "0", "--login-rate-limit", "3/1m"];
        args.extend(extra);
        let s = start(&tmp.path().join(format!("plain{n}")), &db.replace("db.sqlite", &format!("p{n}.sqlite")), &args);
        let a = send(
            "POST",
            &format!("{}/api/v1/login", s.url),
            &[("x-forwarded-for", "203.0.113.5"), ("forwarded", "for=203.0.113.6")],
            Some(&json!({"username": "ghost", "password": "nope-nope-nope"}).to_string()),
        );
        assert_eq!(a.status, 401);
        assert_eq!(failure_ip(&s, "ghost"), "127.0.0.1");
        // Spoofed addresses do not escape the per-address limit (3 a minute; 1 used).
        for ip in ["192.0.2.1", "192.0.2.2"] {
            assert_eq!(api_login(&s, Some(ip), "admin", ADMIN_PASSWORD).status, 201);
        }
        let a = api_login(&s, Some("192.0.2.3"), "admin", ADMIN_PASSWORD);
        assert_eq!(a.status, 429, "a spoofed X-Forwarded-For escaped the rate limit: {}", a.body);
    }

    // Behind a trusted proxy: the nearest address the proxies did not add is the client.
    let s = start(
        &tmp.path().join("proxied"),
        &db,
        &["--agents", "0", "--login-rate-limit", "3/1m", "--trusted-proxies", "10.0.0.0/8,127.0.0.1"],
    );
    let fail_as = |user: &str, headers: &[(&str, &str)]| {
        let body = json!({"username": user, "password": "nope-nope-nope"}).to_string();
        assert_eq!(send("POST", &format!("{}/api/v1/login", s.url), headers, Some(&body)).status, 401);
    };
    // The client may put anything in front; the proxies' own hops (10.1.2.3) are skipped.
    fail_as("xff", &[("x-forwarded-for", "198.51.100.1, 203.0.113.5, 10.1.2.3")]);
    assert_eq!(failure_ip(&s, "xff"), "203.0.113.5");
    fail_as("fwd", &[("forwarded", "for=198.51.100.1, for=\"[2001:db8::7]:4711\";proto=https")]);
    assert_eq!(failure_ip(&s, "fwd"), "2001:db8::7");
    fail_as("none", &[]);
    assert_eq!(failure_ip(&s, "none"), "127.0.0.1");
    // Limits are per forwarded client: three sign-ins for 192.0.2.1, then it waits; another
    // client does not.
    for _ in 0..3 {
        assert_eq!(api_login(&s, Some("192.0.2.1"), "admin", ADMIN_PASSWORD).status, 201);
    }
    assert_eq!(api_login(&s, Some("192.0.2.1"), "admin", ADMIN_PASSWORD).status, 429);
    assert_eq!(api_login(&s, Some("192.0.2.2"), "admin", ADMIN_PASSWORD).status, 201);
}

#[test]
fn every_answer_says_nosniff_and_only_html_pages_may_load_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let db = databases(tmp.path()).remove(0);
    let s = start(&tmp.path().join("data"), &db, &["--agents", "0", "--trusted-proxies", "127.0.0.1"]);
    // Something for the CSV export to defuse: usernames starting with white space and a formula
    // (from four clients, so that none has to wait).
    for (n, user) in ["\t=HYPERLINK(\"http://evil.example\")", " +1+1", "\r\n@SUM(A1)", "-2"].iter().enumerate() {
        assert_eq!(api_login(&s, Some(&format!("192.0.2.{n}")), user, "whatever-password").status, 401);
    }
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(2 << 20));
    let cases: Vec<(&str, Answer)> = vec![
        ("json", send("GET", &format!("{}/api/v1/jobs", s.url), &[("authorization", BEARER)], None)),
        ("public json", send("GET", &format!("{}/health", s.url), &[], None)),
        ("json 401", send("GET", &format!("{}/api/v1/jobs", s.url), &[], None)),
        ("json 404", send("GET", &format!("{}/api/v1/nope", s.url), &[], None)),
        ("json 400", send("POST", &format!("{}/api/v1/login", s.url), &[], Some("{\"nope\": 1}"))),
        ("json 413", send("POST", &format!("{}/api/v1/jobs", s.url), &[("authorization", BEARER)], Some(&big))),
        ("csv", send("GET", &format!("{}/api/v1/audit?format=csv", s.url), &[("authorization", BEARER)], None)),
        ("badge", send("GET", &format!("{}/badge/nope.svg", s.url), &[], None)),
        ("static", send("GET", &format!("{}/static/app.css", s.url), &[], None)),
        ("redirect", send("GET", &format!("{}/", s.url), &[], None)),
        ("page", send("GET", &format!("{}/login", s.url), &[], None)),
        ("page 404", send("GET", &format!("{}/nope", s.url), &[], None)),
    ];
    for (what, a) in &cases {
        assert_eq!(a.header("x-content-type-options"), "nosniff", "{what}: {} {:?}", a.status, a.headers);
        let csp = a.header("content-security-policy");
        if a.header("content-type").starts_with("text/html") {
            assert!(csp.starts_with("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
        } else {
            assert_eq!(csp, "default-src 'none'; frame-ancestors 'none'", "{what}: {:?}", a.headers);
        }
    }
    assert_eq!(cases[5].1.status, 413);
    let csv = &cases[6].1.body;
    assert!(csv.contains(",\"'\t=HYPERLINK(\"\"http"), "{csv}");
    assert!(csv.contains(",' +1+1,192.0.2.1,"), "{csv}");
    assert!(csv.contains(",\"'\r\n@SUM(A1)\","), "{csv}");
    assert!(csv.contains(",'-2,192.0.2.3,"), "{csv}");
}
