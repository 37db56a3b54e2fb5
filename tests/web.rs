//! The web page and its JSON API over real HTTP: in a real headless
//! chromium (Debian's `chromium` + `chromium-driver`, driven through
//! fantoccini), and bad input on every endpoint. The runs live in a real
//! redis-server (the shared harness) and are run by an in-process engine
//! whose tasks end when the test says; logs come from a small LogSource
//! of this file that serves chunks the test controls.
#![cfg(all(feature = "forge", feature = "redis"))]

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use futures::StreamExt;
use futures::stream::BoxStream;
use stagetime::redis::RedisStore;
use stagetime::web::{WebState, router};
use stagetime::{
    AttemptOutcome, Capabilities, Engine, FnBackend, LogChunk, LogQuery, LogSource,
    RevisionRunSpec, RunId, RunState, Store, TaskSpec,
};
use tokio::sync::watch;

/// The names of the tasks the test has let finish.
type Released = watch::Sender<HashSet<String>>;

/// Serves `<task> started` for every attempt, and `<task> done` once the
/// test released the task; following waits for that release.
struct TestLogs {
    released: watch::Receiver<HashSet<String>>,
}

#[async_trait::async_trait]
impl LogSource for TestLogs {
    async fn open(
        &self,
        query: LogQuery,
    ) -> stagetime::Result<BoxStream<'static, stagetime::Result<LogChunk>>> {
        let task = query.task.unwrap_or_else(|| "build".into());
        let attempt = query.attempt.unwrap_or(1);
        let chunk = move |text: String| LogChunk {
            task: task.clone(),
            attempt,
            step: None,
            text,
        };
        let name = chunk(String::new()).task;
        let first = chunk(format!("{name} started\n"));
        let last = chunk(format!("{name} done\n"));
        let mut released = self.released.clone();
        if !query.follow {
            let done = released.borrow().contains(&name);
            let chunks = if done { vec![first, last] } else { vec![first] };
            return Ok(futures::stream::iter(chunks.into_iter().map(Ok)).boxed());
        }
        let rest = futures::stream::once(async move {
            let _ = released.wait_for(|r| r.contains(&name)).await;
            Ok(last)
        });
        Ok(futures::stream::once(async { Ok(first) })
            .chain(rest)
            .boxed())
    }
}

struct Fixture {
    base: String,
    store: Arc<dyn Store>,
    engine: Arc<Engine>,
    released: Released,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A store on the shared redis-server, an engine whose tasks wait until
/// released, and the web router on a real port; `None` (skipped) without
/// redis-server.
async fn fixture(name: &str, configure: impl FnOnce(WebState) -> WebState) -> Option<Fixture> {
    let redis = support::redis::shared()?;
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(redis.config(name)).await.unwrap());
    // The finally task ends at once (it runs after a cancel too).
    let (released, rx) = watch::channel(HashSet::from(["notify".to_string()]));
    let gate = rx.clone();
    let backend = FnBackend::new("gated", Capabilities::CUSTOM, move |request, _cancel| {
        let mut gate = gate.clone();
        async move {
            let name = request.task.name.clone();
            let _ = gate.wait_for(|r| r.contains(&name)).await;
            AttemptOutcome::Succeeded
        }
    });
    let engine = Arc::new(Engine::new(Arc::clone(&store), Arc::new(backend)));
    let handle = engine.spawn();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let logs: Arc<dyn LogSource> = Arc::new(TestLogs { released: rx });
    let state = configure(
        WebState::new(Arc::clone(&store))
            .with_logs(Some(logs))
            .with_poll(Duration::from_millis(100)),
    );
    tokio::spawn(async move {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(stagetime::http::serve(listener, router(state), async {
            let _ = rx.await;
        }));
        let _ = stopped.await;
        let _ = tx.send(());
        let _ = handle.shutdown().await;
        let _ = server.await;
    });
    Some(Fixture {
        base,
        store,
        engine,
        released,
        _stop: stop,
    })
}

fn spec(commit: &str) -> RevisionRunSpec {
    let mut spec = RevisionRunSpec::new("web-app", commit)
        .task(TaskSpec::new("build").custom(1.into()))
        .task(TaskSpec::new("test").stage(1).custom(1.into()))
        .task(TaskSpec::new("lint").stage(1).can_fail().custom(1.into()))
        .task(
            TaskSpec::new("package")
                .stage(2)
                .needs(["test"])
                .custom(1.into()),
        )
        .finally_task(TaskSpec::new("notify").custom(1.into()));
    spec.branch = Some("main".into());
    spec
}

/// Waits (up to a minute: a stuck run fails the test, it does not time it)
/// until `ok` holds for the run.
async fn until(
    store: &Arc<dyn Store>,
    id: &RunId,
    what: &str,
    ok: impl Fn(&stagetime::RunRecord) -> bool,
) {
    for _ in 0..600 {
        let r = store.load_run(id).await.unwrap();
        if ok(&r) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("run {id}: {what} did not happen");
}

fn task_status(r: &stagetime::RunRecord, task: &str) -> &'static str {
    r.task(task).map(|t| t.status.as_str()).unwrap_or("?")
}

/// chromedriver on a free port, or `None` (skipped; a failure under
/// STAGETIME_REQUIRE_SERVERS=1) when it is not installed.
fn chromedriver() -> Option<(Child, u16)> {
    let exe = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    match Command::new(&exe)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => Some((child, port)),
        Err(e) => {
            let reason = format!("cannot start {exe} ({e})");
            if std::env::var("STAGETIME_REQUIRE_SERVERS").as_deref() == Ok("1") {
                panic!(
                    "{reason}, and STAGETIME_REQUIRE_SERVERS=1 requires it (apt-get install chromium chromium-driver)"
                );
            }
            eprintln!("*** skipped: {reason} (install chromium and chromium-driver) ***");
            None
        }
    }
}

async fn browser(port: u16) -> Client {
    let mut caps = serde_json::Map::new();
    let mut args = vec![
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1400",
    ];
    if std::env::var("CI").is_ok() {
        args.push("--disable-extensions");
    }
    let mut options = serde_json::json!({ "args": args });
    if let Ok(bin) = std::env::var("CHROMIUM") {
        options["binary"] = bin.into();
    } else if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = "/usr/bin/chromium".into();
    }
    caps.insert("goog:chromeOptions".into(), options);
    let url = format!("http://127.0.0.1:{port}");
    // chromedriver needs a moment to listen.
    for attempt in 0.. {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => return c,
            Err(e) if attempt < 100 => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot start a chromium session through chromedriver: {e}"),
        }
    }
    unreachable!()
}

async fn wait_css(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(60))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("the page never showed {css}: {e}"))
}

async fn wait_text(c: &Client, css: &str, text: &str) {
    for _ in 0..600 {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
            && t.contains(text)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => "<missing>".into(),
    };
    panic!("{css} never said {text:?}; it says {shown:?}");
}

fn artifact(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs `steps` in a browser session, then closes it and chromedriver; a
/// failed step leaves a screenshot named `failed`.
async fn with_browser<Fut: std::future::Future<Output = ()>>(
    mut driver: Child,
    port: u16,
    failed: &str,
    steps: impl FnOnce(Client) -> Fut,
) {
    let c = browser(port).await;
    let outcome =
        futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(steps(c.clone()))).await;
    if outcome.is_err() {
        // What the page showed when a step failed.
        if let Ok(shot) = c.screenshot().await {
            let path = artifact(failed);
            let _ = std::fs::write(&path, shot);
            eprintln!("screenshot of the failure: {}", path.display());
        }
    }
    let _ = c.close().await;
    let _ = driver.kill();
    let _ = driver.wait();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_page_asks_for_it_once_and_keeps_it_for_the_tab() {
    let token = stagetime::grpc::AuthToken::new("page-s3cret").unwrap();
    let Some(f) = fixture("web-token", |s| s.with_auth(Some(token))).await else {
        return;
    };
    let Some((driver, port)) = chromedriver() else {
        return;
    };
    let run = f.engine.submit(spec("70ken")).await.unwrap().id;
    until(&f.store, &run, "build running", |r| {
        task_status(r, "build") == "running"
    })
    .await;
    let base = f.base.clone();
    with_browser(driver, port, "token-page-failed.png", |c| async move {
        c.goto(&format!("{base}/runs")).await.unwrap();
        // No run data without the token; the page asks for it.
        let html = c.source().await.unwrap();
        assert!(!html.contains(run.as_str()), "no run data before the token");
        wait_css(&c, "#login:not([hidden])").await;
        c.find(Locator::Css("#token"))
            .await
            .unwrap()
            .send_keys("wrong")
            .await
            .unwrap();
        c.find(Locator::Css("#login button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&c, "#status", "refused").await;
        wait_css(&c, "#login:not([hidden])").await;
        let input = c.find(Locator::Css("#token")).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys("page-s3cret").await.unwrap();
        c.find(Locator::Css("#login button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let link = wait_css(&c, &format!("#runs-body a[href='/runs/{run}']")).await;
        link.click().await.unwrap();
        // A new page of the same tab: the token is remembered, not asked again.
        wait_css(&c, "#tasks tr[data-task='build'][data-status='running']").await;
        let hidden = c
            .find(Locator::Css("#login"))
            .await
            .unwrap()
            .attr("hidden")
            .await
            .unwrap();
        assert!(hidden.is_some(), "the token is not asked for again");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_a_running_task_turns_succeeded_live_its_log_shows_and_cancel_ends_the_run() {
    let Some(f) = fixture("web-browser", |s| s).await else {
        return;
    };
    let Some((driver, port)) = chromedriver() else {
        return;
    };
    let run = f.engine.submit(spec("c0ffee1")).await.unwrap().id;
    until(&f.store, &run, "build running", |r| {
        task_status(r, "build") == "running"
    })
    .await;

    let base = f.base.clone();
    let released = f.released.clone();
    let shown = run.clone();
    with_browser(driver, port, "run-page-failed.png", |c| async move {
        let run = shown;
        c.goto(&format!("{base}/runs")).await.unwrap();
        let link = wait_css(&c, &format!("#runs-body a[href='/runs/{run}']")).await;
        wait_text(&c, &format!("#runs-body tr[data-run='{run}']"), "running").await;
        wait_text(&c, &format!("#runs-body tr[data-run='{run}']"), "main").await;
        link.click().await.unwrap();

        // The run page: graph and table show build running; its log follows.
        wait_css(&c, "#tasks tr[data-task='build'][data-status='running']").await;
        wait_css(&c, "svg a.task.st-running[data-task='build']").await;
        wait_css(&c, "svg a.task.can-fail[data-task='lint']").await;
        wait_css(&c, "svg a.task.finally[data-task='notify']").await;
        wait_css(&c, "svg path.edge").await;
        wait_text(&c, "#log-text", "build started").await;
        // A mark a reload would wipe.
        c.execute("window.stagetimeMark = 42; return null;", vec![])
            .await
            .unwrap();

        released.send_modify(|r| {
            r.insert("build".into());
        });
        wait_css(&c, "#tasks tr[data-task='build'][data-status='succeeded']").await;
        wait_css(&c, "svg a.task.st-succeeded[data-task='build']").await;
        // The pane moved on to the running task of stage 1; show build's
        // finished log again.
        wait_text(&c, "#log-text", "test started").await;
        c.find(Locator::Css("button.show-log[data-task='build']"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&c, "#log-text", "build done").await;
        wait_text(&c, "#log-state", "finished").await;
        let mark = c
            .execute("return window.stagetimeMark || null;", vec![])
            .await
            .unwrap();
        assert_eq!(mark, serde_json::json!(42), "the page was not reloaded");

        // Stage 1 runs; cancel (confirming the dialog) ends the run cancelled.
        wait_css(&c, "#tasks tr[data-task='test'][data-status='running']").await;
        c.find(Locator::Css("#cancel"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        c.accept_alert().await.unwrap();
        wait_text(&c, "#run-state", "cancelled").await;
        wait_css(&c, "#rerun:not([disabled])").await;
        let shot = c.screenshot().await.unwrap();
        let path = artifact("run-page-cancelled.png");
        std::fs::write(&path, &shot).unwrap();
        println!("screenshot: {}", path.display());
        assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");
    })
    .await;
    let record = f.store.load_run(&run).await.unwrap();
    assert_eq!(record.state, RunState::Cancelled);
    assert_eq!(task_status(&record, "build"), "succeeded");
}

/// An HTTP answer: status and JSON body.
async fn call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// Asserts a 4xx problem naming `field` (when given).
fn refused(answer: &(u16, serde_json::Value), status: u16, field: Option<&str>, what: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{what}: {body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: a message: {body}"
    );
    if let Some(f) = field {
        assert_eq!(body["field"], f, "{what}: names the field: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_endpoint_is_a_4xx_problem_naming_the_field_and_changes_nothing() {
    let token = stagetime::grpc::AuthToken::new("web-s3cret").unwrap();
    let Some(f) = fixture("web-bad", |s| s.with_auth(Some(token))).await else {
        return;
    };
    let run = f.engine.submit(spec("bad1")).await.unwrap().id;
    until(&f.store, &run, "build running", |r| {
        task_status(r, "build") == "running"
    })
    .await;
    let before = f.store.load_run(&run).await.unwrap();
    let b = &f.base;
    let auth = ("authorization", "Bearer web-s3cret");
    let json = ("content-type", "application/json");
    let long = "x".repeat(300);

    // Every endpoint wants the token.
    for (method, path) in [
        ("GET", "/api/v1/runs".to_string()),
        ("GET", "/api/v1/events/runs".to_string()),
        ("GET", format!("/api/v1/runs/{run}")),
        ("GET", format!("/api/v1/runs/{run}/events")),
        ("GET", format!("/api/v1/runs/{run}/logs")),
        ("POST", format!("/api/v1/runs/{run}/cancel")),
        ("POST", format!("/api/v1/runs/{run}/rerun")),
    ] {
        let a = call(method, &format!("{b}{path}"), &[json], Some("{}")).await;
        refused(
            &a,
            401,
            Some("authorization"),
            &format!("{method} {path} without token"),
        );
        let a = call(
            method,
            &format!("{b}{path}"),
            &[json, ("authorization", "Bearer wrong")],
            Some("{}"),
        )
        .await;
        refused(
            &a,
            401,
            Some("authorization"),
            &format!("{method} {path} wrong token"),
        );
    }

    // The list and its stream.
    for (list, q, field) in [
        ("/api/v1/runs", "limit=0", "limit"),
        ("/api/v1/runs", "limit=201", "limit"),
        ("/api/v1/runs", "limit=ten", "limit"),
        ("/api/v1/runs", "state=done", "state"),
        ("/api/v1/runs", &format!("repo={long}") as &str, "repo"),
        ("/api/v1/runs", "repo=a&repo=b", "repo"),
        ("/api/v1/runs", "colour=red", "colour"),
        ("/api/v1/runs", "after=not-a-cursor", "after"),
        ("/api/v1/events/runs", "format=xml", "format"),
        ("/api/v1/events/runs", "limit=-1", "limit"),
        ("/api/v1/events/runs", "state=running,nope", "state"),
        ("/api/v1/events/runs", "after=x", "after"),
    ] {
        let a = call("GET", &format!("{b}{list}?{q}"), &[auth], None).await;
        refused(&a, 400, Some(field), &format!("{list}?{q}"));
    }

    // One run: get, events, logs.
    for (path, status, field) in [
        ("/api/v1/runs/Not_An_Id".to_string(), 400, "id"),
        ("/api/v1/runs/no-such-run".to_string(), 404, "id"),
        (format!("/api/v1/runs/{run}?verbose=1"), 400, "verbose"),
        ("/api/v1/runs/-bad-/events".to_string(), 400, "id"),
        ("/api/v1/runs/no-such-run/events".to_string(), 404, "id"),
        (
            format!("/api/v1/runs/{run}/events?format=xml"),
            400,
            "format",
        ),
        ("/api/v1/runs/UPPER/logs".to_string(), 400, "id"),
        ("/api/v1/runs/no-such-run/logs".to_string(), 404, "id"),
        (format!("/api/v1/runs/{run}/logs?attempt=0"), 400, "attempt"),
        (format!("/api/v1/runs/{run}/logs?attempt="), 400, "attempt"),
        (format!("/api/v1/runs/{run}/logs?attempt=x"), 400, "attempt"),
        (
            format!("/api/v1/runs/{run}/logs?follow=maybe"),
            400,
            "follow",
        ),
        (format!("/api/v1/runs/{run}/logs?task=nope"), 404, "task"),
        (format!("/api/v1/runs/{run}/logs?task={long}"), 400, "task"),
        (format!("/api/v1/runs/{run}/logs?step=1"), 400, "step"),
    ] {
        let a = call("GET", &format!("{b}{path}"), &[auth], None).await;
        refused(&a, status, Some(field), &path);
    }

    // Cancel and rerun.
    let cancel = format!("{b}/api/v1/runs/{run}/cancel");
    let rerun = format!("{b}/api/v1/runs/{run}/rerun");
    for url in [&cancel, &rerun] {
        refused(
            &call("POST", url, &[auth], Some("{}")).await,
            415,
            Some("content-type"),
            "no JSON content type",
        );
        refused(
            &call(
                "POST",
                url,
                &[auth, ("content-type", "text/plain")],
                Some("{}"),
            )
            .await,
            415,
            Some("content-type"),
            "a form's content type",
        );
        refused(
            &call("POST", url, &[auth, json], Some("{nope")).await,
            400,
            Some("body"),
            "not JSON",
        );
        refused(
            &call("POST", url, &[auth, json], Some("[1]")).await,
            400,
            Some("body"),
            "not an object",
        );
        refused(
            &call("POST", url, &[auth, json], Some("{\"force\": true}")).await,
            400,
            Some("force"),
            "unknown field",
        );
        refused(
            &call(
                "POST",
                url,
                &[auth, json],
                Some(&format!("{{\"x\": \"{}\"}}", "y".repeat(5000))),
            )
            .await,
            413,
            Some("body"),
            "too large",
        );
        refused(
            &call("POST", &format!("{url}?now=1"), &[auth, json], Some("{}")).await,
            400,
            Some("now"),
            "unknown parameter",
        );
    }
    for (path, status, field) in [
        ("/api/v1/runs/Bad_Id/cancel", 400, "id"),
        ("/api/v1/runs/no-such-run/cancel", 404, "id"),
        ("/api/v1/runs/no-such-run/rerun", 404, "id"),
    ] {
        let a = call("POST", &format!("{b}{path}"), &[auth, json], Some("{}")).await;
        refused(&a, status, Some(field), path);
    }
    for body in [
        "{\"expected_version\": 0}",
        "{\"expected_version\": \"3\"}",
        "{\"expected_version\": -2}",
    ] {
        let a = call("POST", &rerun, &[auth, json], Some(body)).await;
        refused(&a, 400, Some("expected_version"), body);
    }
    // A running run cannot be rerun: a conflict with its state, not a server error.
    let a = call("POST", &rerun, &[auth, json], Some("{}")).await;
    refused(&a, 409, Some("id"), "rerun of a running run");

    let after = f.store.load_run(&run).await.unwrap();
    assert_eq!(after.version, before.version, "nothing changed");
    assert_eq!(after.state, RunState::Running);

    // A good call works, with the headers a page sends.
    let (status, ok) = call("GET", &format!("{b}/api/v1/runs/{run}"), &[auth], None).await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["tasks"][0]["name"], "build");
    let (status, list) = call(
        "GET",
        &format!("{b}/api/v1/runs?repo=web-app&state=running"),
        &[auth],
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert!(
        list["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == run.as_str() && r["branch"] == "main")
    );
    let (status, answer) = call("POST", &cancel, &[auth, json], Some("{}")).await;
    assert_eq!(status, 202, "{answer}");
    until(&f.store, &run, "cancelled", |r| {
        r.state == RunState::Cancelled
    })
    .await;
    // Finished now: a rerun at a stale version is refused and changes nothing.
    let stale = format!("{{\"expected_version\": {}}}", before.version);
    let a = call("POST", &rerun, &[auth, json], Some(&stale)).await;
    refused(&a, 409, Some("expected_version"), "stale version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_refuses_changes_and_no_log_source_answers_404_and_pages_render() {
    let Some(f) = fixture("web-ro", |s| s.read_only(true).with_logs(None)).await else {
        return;
    };
    let run = f.engine.submit(spec("ro1")).await.unwrap().id;
    until(&f.store, &run, "build running", |r| {
        task_status(r, "build") == "running"
    })
    .await;
    let b = &f.base;
    let json = ("content-type", "application/json");
    for action in ["cancel", "rerun"] {
        let a = call(
            "POST",
            &format!("{b}/api/v1/runs/{run}/{action}"),
            &[json],
            Some("{}"),
        )
        .await;
        refused(&a, 403, None, action);
    }
    let a = call(
        "GET",
        &format!("{b}/api/v1/runs/{run}/logs?task=build"),
        &[],
        None,
    )
    .await;
    refused(&a, 404, None, "no log source");
    assert_eq!(
        f.store.load_run(&run).await.unwrap().state,
        RunState::Running
    );

    // Pages: read-only pages have no buttons; bad ids are a 4xx page.
    let page = reqwest::get(format!("{b}/runs/{run}")).await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("data-task=\"build\""), "{html}");
    assert!(
        !html.contains("id=\"cancel\""),
        "read-only: no cancel button"
    );
    let page = reqwest::get(format!("{b}/runs/{run}/tasks/build"))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    for (path, status) in [
        ("/runs/Bad_Id".to_string(), 400),
        ("/runs/no-such-run".to_string(), 404),
        (format!("/runs/{run}/tasks/nope"), 404),
        ("/runs?state=done".to_string(), 400),
    ] {
        let page = reqwest::get(format!("{b}{path}")).await.unwrap();
        assert_eq!(page.status().as_u16(), status, "{path}");
        assert!(
            page.text().await.unwrap().contains("class=\"problem\""),
            "{path}"
        );
    }
    // The API describes itself.
    let (status, doc) = call("GET", &format!("{b}/api/v1/openapi.json"), &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/api/v1/runs/{id}/rerun"]["post"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_stream_sends_each_change_and_ends_after_the_finished_run() {
    let Some(f) = fixture("web-sse", |s| s).await else {
        return;
    };
    let run = f.engine.submit(spec("sse1")).await.unwrap().id;
    // Two pages on one run share one poller; each gets every change.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let resp = reqwest::get(format!("{}/api/v1/runs/{run}/events", f.base))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        streams.push(resp);
    }
    f.released.send_modify(|r| {
        for t in ["build", "test", "lint", "package", "notify"] {
            r.insert(t.into());
        }
    });
    for resp in streams {
        // The stream ends by itself once the finished run was sent.
        let text = resp.text().await.unwrap();
        check_stream(&text);
    }
}

fn check_stream(text: &str) {
    let runs: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect();
    assert!(runs.len() >= 2, "several versions: {text}");
    let versions: Vec<u64> = runs
        .iter()
        .map(|r| r["version"].as_u64().unwrap())
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    let last = runs.last().unwrap();
    assert_eq!(last["state"], "succeeded");
    assert_eq!(
        last["stages"].as_array().unwrap().len(),
        4,
        "3 stages and finally"
    );
}
