//! The web dashboard against a real `chengis serve`: every page renders from the server alone
//! (no JavaScript needed), forms validate on the server, badges escape and cache correctly;
//! then the live parts in a real headless Chromium driven over WebDriver (chromedriver).
//! The browser test fails instead of skipping when `CHENGIS_TEST_REQUIRE` names `browser`.

mod support;

use serde_json::{Value, json};
use std::io::Read;

use chengis::agent::remote::percent_encode as enc;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::*;

const PIPELINE: &str = r#"params:
  count:
    description: lines to print
    default: "5"
  mode:
    choices: [slow, fast]
    default: fast
  loud:
    type: boolean
jobs:
  build:
    artifacts:
      - name: report
        paths: [out/report.txt]
    steps:
      - name: greet
        run: printf 'hello \033[31mred\033[0m <b>bold</b>\n'
      - name: count
        run: |
          for i in $(seq 1 ${{ params.count }}); do
            echo "line-$i"
            if [ "${{ params.mode }}" = slow ]; then sleep 0.1; fi
          done
      - name: pack
        run: mkdir -p out && echo "report of ${{ params.count }} lines" > out/report.txt
  after:
    needs: [build]
    steps:
      - run: echo "loud=${{ params.loud }}"
"#;

/// GET `url`: status, headers we look at, body.
fn get(url: &str, headers: &[(&str, &str)]) -> (u16, ureq::http::HeaderMap, String) {
    let mut req = no_redirects().get(url).header("authorization", BEARER);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.call().unwrap();
    let mut body = String::new();
    resp.body_mut().as_reader().read_to_string(&mut body).unwrap();
    (resp.status().as_u16(), resp.headers().clone(), body)
}

/// POST a form: status, Location, body.
fn post_form(url: &str, form: &[(&str, &str)]) -> (u16, String, String) {
    let body: String = form.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&");
    let mut resp = no_redirects()
        .post(url)
        .header("authorization", BEARER)
        .header("content-type", "application/x-www-form-urlencoded")
        .send(body.as_bytes())
        .unwrap();
    let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let mut text = String::new();
    resp.body_mut().as_reader().read_to_string(&mut text).unwrap();
    (resp.status().as_u16(), location, text)
}

/// The attribute value after `marker` in `page`, HTML entities of `&` undone.
fn href_after(page: &str, marker: &str) -> String {
    let v = page.split(marker).nth(1).unwrap_or_else(|| panic!("no {marker} in {page}")).split('"').next().unwrap();
    v.replace("&#38;", "&").replace("&amp;", "&")
}

fn trigger(s: &Server, job: &str, body: Value) -> i64 {
    let (st, b) = call("POST", &format!("{}/api/v1/jobs/{job}/builds", s.url), Some(body));
    assert_eq!(st, 201, "{b}");
    b["id"].as_i64().unwrap()
}

#[test]
fn pages_render_on_the_server_forms_validate_and_badges_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let url = repo(&tmp.path().join("repo"), PIPELINE);
    for (n, db) in databases(tmp.path()).iter().enumerate() {
        let s = start(&tmp.path().join(format!("data{n}")), db, &[]);
        let (st, _) = call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "app", "repo_url": url})));
        assert_eq!(st, 201);

        // Before any build: the badge says unknown, the job page has a form without parameters.
        let (st, h, svg) = get(&format!("{}/badge/app.svg", s.url), &[]);
        assert_eq!(st, 200);
        assert!(svg.contains(">unknown<"), "{svg}");
        assert_eq!(h["content-type"], "image/svg+xml; charset=utf-8");
        assert_eq!(h["cache-control"], "no-cache");

        let first = trigger(&s, "app", json!({}));
        let b = wait_build(&s, first, finished);
        assert_eq!(b["build"]["status"], "success", "{b}");
        // Steps know where their lines begin (the log viewer folds by step).
        let steps = &b["jobs"][0]["steps"];
        assert_eq!(
            steps.as_array().unwrap().iter().map(|s| s["first_line"].as_i64().unwrap()).collect::<Vec<_>>(),
            [1, 2, 7],
            "{steps}"
        );

        // Home: the build row, filters that keep, security headers, no inline script.
        let (st, h, home) = get(&format!("{}/", s.url), &[]);
        assert_eq!(st, 200);
        assert!(home.contains(&format!("href=\"/builds/{first}\"")), "{home}");
        assert!(home.contains("<title>Builds · Chengis</title>"));
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(!home.contains("<script>") && !home.contains("onclick="), "no inline script");
        let (_, _, filtered) = get(&format!("{}/?status=failure", s.url), &[]);
        assert!(!filtered.contains(&format!("href=\"/builds/{first}\"")) && filtered.contains("No builds."));
        let (st, _, bad) = get(&format!("{}/?status=green", s.url), &[]);
        assert_eq!(st, 400);
        assert!(bad.contains("unknown status `green`"), "{bad}");

        // Cursor pagination: 51 more builds make two pages each way, filters kept in the links.
        let more: Vec<i64> = (0..51).map(|_| trigger(&s, "app", json!({"params": {"count": "1"}}))).collect();
        for id in more {
            wait_build(&s, id, finished);
        }
        let (_, _, page1) = get(&format!("{}/?job=app", s.url), &[]);
        assert_eq!(page1.matches("class=\"build-row\"").count(), 50);
        let older = href_after(&page1, "rel=\"next\" href=\"");
        assert!(older.starts_with("/?job=app&before="), "{older}");
        assert!(!page1.contains("rel=\"prev\""), "the newest page has no newer link");
        let (_, _, page2) = get(&format!("{}{older}", s.url), &[]);
        assert_eq!(page2.matches("class=\"build-row\"").count(), 2);
        assert!(page2.contains(&format!("href=\"/builds/{first}\"")));
        let newer = href_after(&page2, "rel=\"prev\" href=\"");
        let (_, _, back) = get(&format!("{}{newer}", s.url), &[]);
        assert_eq!(back.matches("class=\"build-row\"").count(), 50);
        assert_eq!(
            back.split("data-build=\"").nth(1).unwrap().split('"').next(),
            page1.split("data-build=\"").nth(1).unwrap().split('"').next(),
            "newer from page 2 is page 1"
        );

        // Job page: success rate, trend chart, the declared parameters as form fields, badge.
        let (st, _, job) = get(&format!("{}/jobs/app", s.url), &[]);
        assert_eq!(st, 200);
        assert!(job.contains("<svg class=\"trend\""), "{job}");
        assert!(job.contains("name=\"param.count\" value=\"5\""), "{job}");
        assert!(
            job.contains("<select name=\"param.mode\">")
                && job.contains("<option value=\"fast\" selected>fast</option>")
        );
        assert!(job.contains("type=\"checkbox\" name=\"param.loud\" value=\"true\""));
        assert!(job.contains("/badge/app.svg"));

        // The form: a wrong choice and an undeclared parameter are refused with the form again.
        let trig = format!("{}/jobs/app/trigger", s.url);
        let (st, _, page) = post_form(&trig, &[("branch", ""), ("param.count", "3"), ("param.mode", "turbo")]);
        assert_eq!(st, 400);
        assert!(page.contains("mode must be one of: slow, fast"), "{page}");
        let (st, _, page) = post_form(&trig, &[("param.nope", "1")]);
        assert_eq!(st, 400);
        assert!(page.contains("declares no parameter `nope`"), "{page}");
        let (st, _, page) = post_form(&trig, &[("branch", "--upload-pack=x")]);
        assert_eq!(st, 400);
        assert!(page.contains("is not a branch name"), "{page}");
        // A good one starts a build with the values (the unticked box is `false`) and redirects.
        let (st, location, _) = post_form(&trig, &[("branch", "main"), ("param.count", "3"), ("param.mode", "slow")]);
        assert_eq!(st, 303, "{location}");
        let id: i64 = location.strip_prefix("/builds/").unwrap().parse().unwrap();
        let b = wait_build(&s, id, finished);
        assert_eq!(b["build"]["trigger"], "manual");
        assert_eq!(log_texts(&s, id, "after"), ["loud=false"]);
        assert_eq!(log_texts(&s, id, "build")[1..4], ["line-1", "line-2", "line-3"]);
        // The API's triggers are checked at planning: a boolean takes only true or false.
        let bad = trigger(&s, "app", json!({"params": {"loud": "maybe"}}));
        let b = wait_build(&s, bad, finished);
        assert_eq!(b["build"]["status"], "error");
        assert!(b["build"]["reason"].as_str().unwrap().contains("is a boolean"), "{b}");
        let (st, location, _) = post_form(&trig, &[("param.loud", "true")]);
        assert_eq!(st, 303);
        let loud: i64 = location.strip_prefix("/builds/").unwrap().parse().unwrap();
        wait_build(&s, loud, finished);
        assert_eq!(log_texts(&s, loud, "after"), ["loud=true"]);

        // Build page: graph with both jobs and the edge, steps, artifacts, retry (no cancel).
        let (st, _, page) = get(&format!("{}/builds/{id}", s.url), &[]);
        assert_eq!(st, 200);
        assert!(page.contains(r#"class="node st-success" data-job="build""#), "{page}");
        assert!(page.contains(r#"<path class="edge st-success""#));
        assert!(page.contains("<span class=\"step-name\">count</span>"));
        assert!(page.contains(&format!("action=\"/builds/{id}/retry\"")) && !page.contains("/cancel\""));
        assert!(page.contains(">1 file</a>"));
        // Retry from the page: a new attempt; the attempts list links both.
        let (st, location, _) = post_form(&format!("{}/builds/{id}/retry", s.url), &[]);
        assert_eq!(st, 303);
        let retried: i64 = location.strip_prefix("/builds/").unwrap().parse().unwrap();
        wait_build(&s, retried, finished);
        let (_, _, page) = get(&format!("{}/builds/{retried}", s.url), &[]);
        assert!(page.contains(&format!("<a href=\"/builds/{id}\">#")) && page.contains("Attempts"), "{page}");
        // Retrying a running build is refused with a page, not a 500.
        let slow = trigger(&s, "app", json!({"params": {"count": "50", "mode": "slow"}}));
        wait_build(&s, slow, |b| b["build"]["status"] == "running");
        let (st, _, page) = post_form(&format!("{}/builds/{slow}/retry", s.url), &[]);
        assert_eq!(st, 409, "{page}");
        assert!(page.contains("cancel it first"), "{page}");
        let (_, _, page) = get(&format!("{}/builds/{slow}", s.url), &[]);
        assert!(page.contains(&format!("action=\"/builds/{slow}/cancel\"")) && page.contains("data-events="));
        let (st, location, _) = post_form(&format!("{}/builds/{slow}/cancel", s.url), &[]);
        assert_eq!((st, location.as_str()), (303, format!("/builds/{slow}").as_str()));
        wait_build(&s, slow, finished);

        // Log page without JavaScript: the lines, escaped, ANSI stripped, anchors; steps JSON.
        let (st, _, log) = get(&format!("{}/builds/{id}/jobs/build/log", s.url), &[]);
        assert_eq!(st, 200);
        assert!(log.contains("id=\"L1\"><a href=\"#L1\">1</a> hello red &#60;b&#62;bold&#60;/b&#62;"), "{log}");
        assert!(log.contains("data-lines-url=\"/api/v1/builds/") && log.contains("id=\"log-steps\""));
        assert!(log.contains(r#""name":"count","status":"success","first_line":2"#), "{log}");
        let (st, _, _) = get(&format!("{}/builds/{id}/jobs/nope/log", s.url), &[]);
        assert_eq!(st, 404);

        // Artifacts page: name, size, checksum, a download link that serves the file.
        let (_, _, arts) = get(&format!("{}/builds/{id}/artifacts", s.url), &[]);
        assert!(arts.contains(">report<") && arts.contains("out/report.txt"), "{arts}");
        let href = arts.split("class=\"download\" href=\"").nth(1).unwrap().split('"').next().unwrap();
        let (st, _, content) = get(&format!("{}{href}", s.url), &[]);
        assert_eq!((st, content.as_str()), (200, "report of 3 lines\n"));
        use sha2::Digest;
        assert!(arts.contains(&hex::encode(sha2::Sha256::digest(content.as_bytes()))));

        // Plugins and agents pages, once the builtins (compiled in the background after start)
        // are pinned.
        let mut ready = String::new();
        for _ in 0..600 {
            ready = get(&format!("{}/ready", s.url), &[]).2;
            if ready.contains(r#""plugins":{"status":"ready"}"#) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        assert!(ready.contains(r#""plugins":{"status":"ready"}"#), "builtins never pinned: {ready}");
        let (_, _, plugins) = get(&format!("{}/plugins", s.url), &[]);
        assert!(plugins.contains("data-plugin=\"slack\"") && plugins.contains("trust-allowed"), "{plugins}");
        let (st, location, _) = post_form(&format!("{}/plugins/slack/deny", s.url), &[]);
        assert_eq!((st, location.as_str()), (303, "/plugins"));
        let (_, _, plugins) = get(&format!("{}/plugins", s.url), &[]);
        let slack = plugins.split("data-plugin=\"slack\"").nth(1).unwrap().split("</tr>").next().unwrap();
        assert!(slack.contains("trust-denied") && slack.contains("/plugins/slack/allow"), "{slack}");
        post_form(&format!("{}/plugins/slack/allow", s.url), &[]);
        let (st, _, _) = post_form(&format!("{}/plugins/slack/bless", s.url), &[]);
        assert_eq!(st, 404);
        let (_, _, agents) = get(&format!("{}/agents", s.url), &[]);
        assert!(agents.contains("data-agent=\"embedded-0@") || agents.contains("embedded</span>"), "{agents}");

        // Badges: status of the newest build (per branch), escaped labels, ETag and 304.
        let (st, h, svg) = get(&format!("{}/badge/app.svg?branch=main", s.url), &[]);
        assert_eq!(st, 200);
        assert!(svg.contains(">cancelled<"), "the newest build was cancelled: {svg}");
        let etag = h["etag"].to_str().unwrap().to_string();
        let (st, _, body) = get(&format!("{}/badge/app.svg?branch=main", s.url), &[("if-none-match", &etag)]);
        assert_eq!((st, body.as_str()), (304, ""));
        let (_, _, svg) = get(&format!("{}/badge/app.svg?branch=%3Cscript%3E&label=%3Cscript%3Ealert(1)", s.url), &[]);
        assert!(svg.contains(">unknown<") && !svg.contains("<script>") && svg.contains("&lt;script&gt;"), "{svg}");
        let (st, _, _) = get(&format!("{}/badge/nope.svg", s.url), &[]);
        assert_eq!(st, 404);
        let (st, _, _) = get(&format!("{}/badge/app.png", s.url), &[]);
        assert_eq!(st, 404);

        // Unknown pages are HTML 404s; unknown API routes stay JSON.
        let (st, h, page) = get(&format!("{}/no/such/page", s.url), &[]);
        assert_eq!(st, 404);
        assert!(h["content-type"].to_str().unwrap().starts_with("text/html") && page.contains("no page at"));
        let (st, h, _) = get(&format!("{}/api/v1/nope", s.url), &[]);
        assert_eq!((st, h["content-type"].to_str().unwrap()), (404, "application/json"));
        let (st, h, css) = get(&format!("{}/static/app.css", s.url), &[]);
        assert_eq!(st, 200);
        assert!(
            h["content-type"].to_str().unwrap().starts_with("text/css") && css.contains("color-scheme: light dark")
        );
        let (st, _, _) = get(&format!("{}/static/../Cargo.toml", s.url), &[]);
        assert_eq!(st, 404);
        let (st, _, _) = get(&format!("{}/builds/999999", s.url), &[]);
        assert_eq!(st, 404);
        let (st, _, _) = get(&format!("{}/builds/abc", s.url), &[]);
        assert_eq!(st, 400);
    }
}

// ---------------------------------------------------------------------------------------------
// The browser suite.

/// Whether the browser tests must run (CI) rather than skip when Chromium is missing.
fn browser_required() -> bool {
    std::env::var("CHENGIS_TEST_REQUIRE").unwrap_or_default().split(',').any(|w| w.trim() == "browser")
}

/// A chromedriver process on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver() -> Option<Driver> {
    let exe = ["chromedriver", "/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok());
    let Some(exe) = exe else {
        assert!(!browser_required(), "chromedriver is not installed and CHENGIS_TEST_REQUIRE names browser");
        eprintln!("skipping: chromedriver is not installed");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child =
        Command::new(exe).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Driver { child, url })
}

/// A headless Chromium session; `dark` makes the OS preference dark.
async fn browser(driver: &Driver, downloads: &Path, dark: bool) -> fantoccini::Client {
    let mut args =
        vec!["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"];
    if dark {
        args.push("--force-dark-mode");
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": args, "prefs": {"download.default_directory": downloads.display().to_string(), "download.prompt_for_download": false}}),
    );
    fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session")
}

/// A TCP proxy between the browser and the server that can cut every connection (and refuse
/// new ones) until restored: a real network drop for the SSE streams.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let (tx, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(tx);
        let (d, g) = (down.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let mut cut = g.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { port, down, generation }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

async fn sign_in(c: &fantoccini::Client, user: &str, password: &str) {
    let field = |id: &'static str| c.find(fantoccini::Locator::Id(id));
    field("username").await.unwrap().clear().await.unwrap();
    field("username").await.unwrap().send_keys(user).await.unwrap();
    field("password").await.unwrap().send_keys(password).await.unwrap();
    field("login-button").await.unwrap().click().await.unwrap();
}

async fn js(c: &fantoccini::Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap_or_else(|e| panic!("script `{script}`: {e}"))
}

/// Polls `script` until it returns something truthy (or panics after `secs`).
async fn until(c: &fantoccini::Client, script: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = js(c, script).await;
        if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
            return v;
        }
        assert!(Instant::now() < deadline, "never true: {script}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(c: &fantoccini::Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = screenshot_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

#[test]
fn the_dashboard_works_in_a_real_browser() {
    let Some(driver) = start_driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let url = repo(&tmp.path().join("repo"), PIPELINE);
    let db = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let s = start(&tmp.path().join("data"), &db, &[]);
    call("POST", &format!("{}/api/v1/jobs", s.url), Some(json!({"name": "app", "repo_url": url})));
    // A first build, so the job page knows the pipeline's parameters.
    let first = trigger(&s, "app", json!({}));
    wait_build(&s, first, finished);
    let downloads = tmp.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let target = s.url.trim_start_matches("http://").to_string();
        let proxy = Proxy::start(target).await;
        let base = format!("http://127.0.0.1:{}", proxy.port);
        let c = browser(&driver, &downloads, false).await;

        // Signed out, a page sends the browser to the sign-in form and back after it. A viewer
        // sees builds but no Run form and no plugin decisions; signing out ends the session.
        call("POST", &format!("{}/api/v1/users", s.url), Some(json!({"username": "vera", "password": "vera-password-1234", "role": "viewer"})));
        c.goto(&format!("{base}/jobs/app")).await.unwrap();
        until(&c, "return location.pathname === '/login'", 10).await;
        sign_in(&c, "vera", "vera-password-1234").await;
        until(&c, "return location.pathname === '/jobs/app'", 10).await;
        assert_eq!(js(&c, "return document.getElementById('me').textContent").await, json!("vera"));
        assert_eq!(js(&c, "return document.getElementById('trigger-button') === null").await, json!(true));
        c.goto(&format!("{base}/plugins")).await.unwrap();
        assert_eq!(js(&c, "return document.querySelectorAll('form[action^=\"/plugins/\"]').length").await, json!(0));
        c.find(fantoccini::Locator::Id("logout-button")).await.unwrap().click().await.unwrap();
        until(&c, "return location.pathname === '/login'", 10).await;
        c.goto(&format!("{base}/")).await.unwrap();
        until(&c, "return location.pathname === '/login'", 10).await;
        // A wrong password shows the one sign-in error.
        sign_in(&c, "admin", "not the password").await;
        let error = until(&c, "const e = document.getElementById('login-error'); return e && e.textContent", 10).await;
        assert!(error.as_str().unwrap().contains("wrong username or password"), "{error}");
        c.goto(&format!("{base}/login?next=/jobs/app")).await.unwrap();
        sign_in(&c, "admin", ADMIN_PASSWORD).await;
        until(&c, "return location.pathname === '/jobs/app'", 10).await;

        // Trigger from the form: 60 slow lines, so the log is live for a few seconds.
        let count = c.find(fantoccini::Locator::Css("input[name='param.count']")).await.unwrap();
        count.clear().await.unwrap();
        count.send_keys("60").await.unwrap();
        c.find(fantoccini::Locator::Css("select[name='param.mode']"))
            .await
            .unwrap()
            .select_by_value("slow")
            .await
            .unwrap();
        c.find(fantoccini::Locator::Id("trigger-button")).await.unwrap().click().await.unwrap();
        let landed = until(&c, "return /\\/builds\\/\\d+$/.test(location.pathname) && location.pathname", 20).await;
        let id: i64 = landed.as_str().unwrap().trim_start_matches("/builds/").parse().unwrap();
        assert!(id > first);

        // The build page: graph node of `build` running, its colour recorded.
        let node_fill = "return getComputedStyle(document.querySelector('a.node[data-job=\"build\"] rect')).fill";
        until(&c, "return document.querySelector('a.node[data-job=\"build\"].st-running') !== null", 20).await;
        let running_fill = js(&c, node_fill).await;
        shoot(&c, "build-running-light").await;

        // The log viewer: lines appear within 2 s of being produced.
        c.goto(&format!("{base}/builds/{id}/jobs/build/log")).await.unwrap();
        until(&c, "return window.chengisLog && window.chengisLog.connected", 10).await;
        let mut seen: Vec<(u64, i64)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = js(&c, "return [window.chengisLog.last, Date.now()]").await;
            let (last, now) = (v[0].as_u64().unwrap_or(0), v[1].as_i64().unwrap());
            if seen.last().is_none_or(|(l, _)| *l < last) {
                seen.push((last, now));
            }
            if last >= 15 {
                break;
            }
            assert!(Instant::now() < deadline, "the log never reached 15 lines: {seen:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let lines: Value = serde_json::from_str(
            &reqwest_like_get(&format!("{}/api/v1/builds/{id}/jobs/build/logs", s.url)),
        )
        .unwrap();
        let time_of = |n: u64| lines["lines"][(n - 1) as usize]["time_ms"].as_i64().unwrap();
        let delays: Vec<i64> = seen.iter().filter(|(l, _)| *l > 1).map(|(l, at)| at - time_of(*l)).collect();
        assert!(!delays.is_empty());
        assert!(delays.iter().all(|d| *d < 2000), "a line took 2 s or more to show: {delays:?} ms");
        let visible = until(
            &c,
            "const t = [...document.querySelectorAll('#log-viewer .log-line .log-text')].map(e => e.textContent); \
             return t.some(x => x.startsWith('line-')) && t",
            10,
        )
        .await;
        assert!(visible.as_array().unwrap().iter().any(|t| t == "hello red <b>bold</b>"), "{visible}");

        // Drop the network mid-stream for 2 s, then restore: no duplicate, no gap.
        proxy.cut();
        until(&c, "return window.chengisLog.connected === false", 10).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.restore();
        until(&c, "return window.chengisLog.finished", 40).await;
        let numbers = js(&c, "return window.chengisLog.lines.map(l => l.number)").await;
        let stored = reqwest_like_get(&format!("{}/api/v1/builds/{id}/jobs/build/logs", s.url));
        let stored: Value = serde_json::from_str(&stored).unwrap();
        let total = stored["lines"].as_array().unwrap().len() as u64;
        assert_eq!(numbers, json!((1..=total).collect::<Vec<u64>>()), "every line once, in order");
        let texts = js(&c, "return window.chengisLog.lines.map(l => l.text)").await;
        let stored_texts: Vec<&str> = stored["lines"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap()).collect();
        assert_eq!(texts, json!(stored_texts));
        assert!(js(&c, "return window.chengisLog.reconnects").await.as_u64().unwrap() >= 1);

        // The ANSI colour of the first line is rendered (the view followed the tail: go up).
        js(&c, "window.chengisLog.scrollToLine(1); return true").await;
        let red = until(&c, "const e = document.querySelector('#log-viewer .log-line .log-text span[class*=\"ansi-fg-1\"]'); return e && e.textContent", 5).await;
        assert_eq!(red, json!("red"));

        // Search: `line-1` matches line-1 and line-10..19 (11), next/previous move the current match.
        let search = c.find(fantoccini::Locator::Id("log-search")).await.unwrap();
        search.send_keys("line-1").await.unwrap();
        until(&c, "return document.getElementById('log-search-count').textContent.includes('/ 11')", 10).await;
        c.find(fantoccini::Locator::Id("log-search-next")).await.unwrap().click().await.unwrap();
        until(&c, "return document.getElementById('log-search-count').textContent.startsWith('2 / 11')", 5).await;
        let marks = js(&c, "return document.querySelectorAll('#log-viewer mark').length").await;
        assert!(marks.as_u64().unwrap() >= 1, "matches are highlighted");
        c.find(fantoccini::Locator::Id("log-search-prev")).await.unwrap().click().await.unwrap();
        until(&c, "return document.getElementById('log-search-count').textContent.startsWith('1 / 11')", 5).await;
        shoot(&c, "log-light").await;

        // Permalink: #L40 scrolls line 40 into view and highlights it.
        c.goto(&format!("{base}/builds/{id}/jobs/build/log#L40")).await.unwrap();
        until(
            &c,
            "const a = [...document.querySelectorAll('#log-viewer .log-line a.log-ln')].find(a => a.textContent === '40'); \
             return a && a.closest('.log-line').className.includes('selected')",
            10,
        )
        .await;

        // The graph turned green when the build finished.
        let b = wait_build(&s, id, finished);
        assert_eq!(b["build"]["status"], "success", "{b}");
        c.goto(&format!("{base}/builds/{id}")).await.unwrap();
        let done_fill = js(&c, node_fill).await;
        assert_ne!(running_fill, done_fill, "the node's colour changes with its status");
        shoot(&c, "build-light").await;

        // Retry from the page, and watch it finish without reloading (live updates).
        c.find(fantoccini::Locator::Id("retry-button")).await.unwrap().click().await.unwrap();
        let landed = until(&c, &format!("return location.pathname !== '/builds/{id}' && location.pathname"), 20).await;
        js(&c, "window.__samePage = true; return true").await;
        until(&c, "return document.getElementById('build-status').textContent.trim() === 'success'", 40).await;
        until(&c, "return document.querySelector('a.node[data-job=\"after\"].st-success') !== null", 10).await;
        assert_eq!(js(&c, "return window.__samePage === true").await, json!(true), "updated in place");
        assert!(landed.as_str().unwrap().starts_with("/builds/"));

        // Download the artifact through its link.
        c.goto(&format!("{base}/builds/{id}/artifacts")).await.unwrap();
        c.find(fantoccini::Locator::Css("a.download")).await.unwrap().click().await.unwrap();
        let file = downloads.join("report.txt");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&file).map_or(true, |t| t.is_empty()) {
            assert!(Instant::now() < deadline, "the download never arrived in {}", downloads.display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "report of 60 lines\n");

        // Screenshots: home in light, and home, build and log in dark; a phone-width home.
        c.goto(&format!("{base}/")).await.unwrap();
        shoot(&c, "home-light").await;
        c.set_window_size(390, 844).await.unwrap();
        c.goto(&format!("{base}/")).await.unwrap();
        let overflow = js(&c, "return document.documentElement.scrollWidth <= window.innerWidth + 1").await;
        assert_eq!(overflow, json!(true), "no horizontal scrolling at phone width");
        shoot(&c, "home-phone").await;
        c.close().await.unwrap();

        let dark = browser(&driver, &downloads, true).await;
        dark.goto(&format!("{base}/login")).await.unwrap();
        sign_in(&dark, "admin", ADMIN_PASSWORD).await;
        until(&dark, "return location.pathname === '/'", 10).await;
        shoot(&dark, "home-dark").await;
        let bg = js(&dark, "return getComputedStyle(document.body).backgroundColor").await;
        assert_eq!(bg, json!("rgb(13, 17, 23)"), "the dark theme follows the OS preference");
        dark.goto(&format!("{base}/builds/{id}")).await.unwrap();
        shoot(&dark, "build-dark").await;
        dark.goto(&format!("{base}/builds/{id}/jobs/build/log")).await.unwrap();
        until(&dark, "return window.chengisLog && window.chengisLog.loaded", 10).await;
        shoot(&dark, "log-dark").await;
        dark.close().await.unwrap();
    });
}

fn reqwest_like_get(url: &str) -> String {
    let (_, _, body) = get(url, &[]);
    body
}
