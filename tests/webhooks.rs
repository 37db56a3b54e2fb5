//! End to end: forge webhooks through the `server` (HTTP surface + intake)
//! on a real redis-server, runs carried out by a `worker` with the local
//! backend, the pipeline files served by a forge API emulator over
//! loopback HTTP (tests/support/forge.rs) in the GitHub, GitLab and Gitea
//! flavours. Payloads are the forges' documented examples
//! (tests/fixtures/forge/), changed where a case needs it.
#![cfg(all(feature = "forge", feature = "redis", feature = "kube"))]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stagetime::forge::signature::{github_signature, hex_hmac};
use stagetime::redis::RedisStore;
use stagetime::store::{Delivery, DeliveryState, RunFilter, RunId, RunState, Store};
use support::forge::Emulator;
use support::{Proc, examples};

const SECRET: &str = "It's a Secret to Everybody";

fn exe(name: &str) -> PathBuf {
    examples(&["server", "worker"]).join(name)
}

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/forge")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// redis-server + server (webhooks on) + one local worker, and a store
/// handle on the same keys for the assertions.
struct Deployment {
    dir: tempfile::TempDir,
    server: Proc,
    redis_url: String,
    prefix: String,
    worker: Proc,
    hooks: String,
    /// The gRPC URL.
    api: String,
    store: Arc<dyn Store>,
    emulator: Emulator,
    http: reqwest::Client,
}

/// `repos` writes the repositories file from the emulator and the test's
/// directory (which holds `hook-secret` and `token`; the server also has
/// `HOOK_SECRET` and `FORGE_TOKEN` in its environment).
async fn deployment(name: &str, repos: impl Fn(&Emulator, &Path) -> String) -> Option<Deployment> {
    let redis = support::redis::shared();
    let Some(redis) = redis else {
        stagetime_core::testkit::skip_or_fail("redis-server (REDIS_SERVER or PATH)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let emulator = Emulator::start().await;
    std::fs::write(d.join("hook-secret"), format!("{SECRET}\n")).unwrap();
    std::fs::write(d.join("token"), "forge-token\n").unwrap();
    std::fs::write(d.join("repos.yaml"), repos(&emulator, d)).unwrap();
    let config = redis.config(name);
    let prefix = config.prefix.clone();
    let url = redis.url();
    let (server, hooks, api) = start_server(d, &url, &prefix);
    let worker = start_worker(d, &url, &prefix);
    let store = RedisStore::connect(config).await.expect("connect to redis");
    Some(Deployment {
        dir,
        server,
        redis_url: url,
        prefix,
        worker,
        hooks,
        api,
        store: Arc::new(store),
        emulator,
        http: reqwest::Client::new(),
    })
}

/// A local worker.
fn start_worker(d: &Path, url: &str, prefix: &str) -> Proc {
    let mut worker = Proc::start(
        &exe("worker"),
        &[
            "--redis-url",
            url,
            "--redis-prefix",
            prefix,
            "--backend",
            "local",
            "--workdir",
            d.join("work").to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
        d,
    );
    worker.wait_line("metrics listening on ");
    worker
}

/// The base URL statuses link runs to.
const RUNS_URL: &str = "https://ci.example.com";

/// A server with webhooks on; it, its hooks URL and its gRPC URL.
fn start_server(d: &Path, url: &str, prefix: &str) -> (Proc, String, String) {
    // A test that wrote `app.pem` runs the server as a GitHub App.
    let key = d.join("app.pem");
    let key = key.to_str().unwrap();
    let mut env = vec![
        ("HOOK_SECRET", SECRET),
        ("FORGE_TOKEN", "forge-token"),
        ("STAGETIME_REPORT_TARGET_URL", RUNS_URL),
        ("STAGETIME_REPORT_POLL", "200ms"),
        // No description-only updates within a test: the status
        // sequences are exact.
        ("STAGETIME_REPORT_COALESCE", "10min"),
    ];
    if d.join("app.pem").exists() {
        env.extend([
            ("STAGETIME_GITHUB_APP_ID", "4242"),
            ("STAGETIME_GITHUB_APP_KEY_FILE", key),
        ]);
    }
    let mut server = Proc::start(
        &exe("server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--repos",
            d.join("repos.yaml").to_str().unwrap(),
            "--redis-url",
            url,
            "--redis-prefix",
            prefix,
        ],
        &env,
        d,
    );
    let hooks = format!("http://{}", server.wait_line("http listening on "));
    let api = format!("http://{}", server.wait_line("grpc listening on "));
    (server, hooks, api)
}

impl Deployment {
    /// kill -9 of the server, and a new one on the same store.
    fn restart_server(&mut self) {
        self.server.kill9();
        let (server, hooks, api) = start_server(self.dir.path(), &self.redis_url, &self.prefix);
        self.server = server;
        self.hooks = hooks;
        self.api = api;
    }

    /// kill -9 of the worker, and a new one on the same store.
    fn restart_worker(&mut self) {
        self.worker.kill9();
        self.worker = start_worker(self.dir.path(), &self.redis_url, &self.prefix);
    }

    /// The states the emulator took for `commit` in `context` once the last
    /// one is final (waits for the reporter).
    async fn final_states(&self, commit: &str, context: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let states = self.emulator.states(commit, context);
            if states
                .last()
                .is_some_and(|s| !["pending", "running"].contains(&s.as_str()))
            {
                // A moment more: anything sent after the final state would show.
                tokio::time::sleep(Duration::from_millis(600)).await;
                return self.emulator.states(commit, context);
            }
            assert!(
                Instant::now() < deadline,
                "no final status for {commit} within 60 s: {:?}",
                self.emulator.statuses(commit)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the emulator took `n` statuses for `commit`.
    async fn statuses_taken(&self, commit: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.emulator.statuses(commit).len() < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} statuses for {commit} within 60 s: {:?}",
                self.emulator.statuses(commit)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs the CLI; its exit code and stdout.
    fn cli(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = std::process::Command::new(examples(&["stagetime"]).join("stagetime"))
            .args(args)
            .env("STAGETIME_SERVER", &self.api)
            .env("STAGETIME_HTTP", &self.hooks)
            .env_remove("STAGETIME_AUTH_TOKEN")
            .output()
            .expect("run the CLI");
        (out.status.code(), support::text(&out))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// POSTs `body` to `/hooks/{provider}` with `headers`; the status and body.
    async fn post(
        &self,
        provider: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/hooks/{provider}", self.hooks))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.expect("post the hook");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A GitHub delivery, signed with `secret` (none: unsigned).
    async fn github(
        &self,
        event: &str,
        delivery: &str,
        payload: &Value,
        secret: Option<&str>,
    ) -> (u16, Value) {
        let body = serde_json::to_vec(payload).unwrap();
        let mut h = vec![
            ("x-github-event", event.to_string()),
            ("x-github-delivery", delivery.to_string()),
        ];
        if let Some(s) = secret {
            h.push(("x-hub-signature-256", github_signature(s.as_bytes(), &body)));
        }
        self.post("github", &h, body).await
    }

    async fn gitlab(&self, event: &str, delivery: &str, payload: &Value) -> (u16, Value) {
        let body = serde_json::to_vec(payload).unwrap();
        let h = vec![
            ("x-gitlab-event", event.to_string()),
            ("x-gitlab-event-uuid", delivery.to_string()),
            ("x-gitlab-token", SECRET.to_string()),
        ];
        self.post("gitlab", &h, body).await
    }

    async fn gitea(&self, event: &str, delivery: &str, payload: &Value) -> (u16, Value) {
        let body = serde_json::to_vec(payload).unwrap();
        let h = vec![
            ("x-gitea-event", event.to_string()),
            ("x-gitea-delivery", delivery.to_string()),
            ("x-gitea-signature", hex_hmac(SECRET.as_bytes(), &body)),
        ];
        self.post("gitea", &h, body).await
    }

    /// The delivery `id` once settled (waits for the intake).
    async fn settled(&self, id: &str) -> Delivery {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all = self.store.list_deliveries(1000).await.unwrap();
            if let Some(d) = all.iter().find(|d| d.id == id)
                && d.state != DeliveryState::Pending
            {
                return d.clone();
            }
            assert!(
                Instant::now() < deadline,
                "delivery {id} not settled within 60 s: {all:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn recorded(&self, id: &str) -> bool {
        self.store
            .list_deliveries(1000)
            .await
            .unwrap()
            .iter()
            .any(|d| d.id == id)
    }

    /// The run once it is in one of `states`.
    async fn run_in(&self, id: &str, states: &[RunState]) -> stagetime::store::RunRecord {
        let id = RunId::new(id).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.store.load_run(&id).await
                && states.contains(&r.state)
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} not in {states:?} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn runs_of(&self, repo: &str) -> Vec<stagetime::store::RunSummary> {
        self.store
            .list_runs(&RunFilter {
                repo: Some(repo.to_string()),
                ..RunFilter::default()
            })
            .await
            .unwrap()
            .runs
    }
}

const DONE: &[RunState] = &[RunState::Succeeded, RunState::Failed, RunState::Cancelled];

fn github_push(branch_ref: &str, after: &str, modified: &[&str]) -> Value {
    let mut p = fixture("github-push.json");
    p["ref"] = json!(branch_ref);
    p["after"] = json!(after);
    p["head_commit"]["id"] = json!(after);
    p["commits"][0]["id"] = json!(after);
    p["commits"][0]["modified"] = json!(modified);
    p["head_commit"]["modified"] = json!(modified);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_pushes_tags_filters_replays_and_bad_input() {
    let Some(d) = deployment("hooks-github", |emu, dir| {
        format!(
            r#"repositories:
  - name: hello
    provider: github
    url: https://github.com/Codertocat/Hello-World
    api_url: {api}
    webhook_secret_file: {dir}/hook-secret
    token_file: {dir}/token
    on:
      push: {{ branches: [main, "release/*"], tags: ["v*"] }}
      pull_request: {{ branches: [main] }}
  - name: paths
    provider: github
    url: https://github.com/Codertocat/Paths
    api_url: {api}
    webhook_secret_file: {dir}/hook-secret
    on:
      push: {{ branches: [main], paths: ["src/**"] }}
"#,
            api = emu.url,
            dir = dir.display()
        )
    })
    .await
    else {
        return;
    };
    let order = d.path("order");
    let pipeline = format!(
        r#"tasks:
  - {{ name: build, stage: 0, command: "echo build >> {o}" }}
  - {{ name: lint, stage: 0, command: "echo lint >> {o}" }}
  - {{ name: test, stage: 1, command: "echo test >> {o}" }}
  - name: deploy
    stage: 2
    command: "echo deploy >> {o}"
    when: {{ branches: [main] }}
  - name: smoke
    stage: 3
    needs: [deploy]
    command: "echo smoke >> {o}"
"#,
        o = order.display()
    );
    let c1 = "1111111111111111111111111111111111111111";
    d.emulator.put_file(c1, ".stagetime.yaml", &pipeline);

    // 1. A push to main runs the file's tasks in stage order.
    let push = github_push("refs/heads/main", c1, &["README.md"]);
    let (status, body) = d.github("push", "d-1", &push, Some(SECRET)).await;
    assert_eq!(status, 202, "{body}");
    let settled = d.settled("github:d-1").await;
    assert_eq!(settled.state, DeliveryState::Done, "{settled:?}");
    let run_id = settled.runs[0].clone();
    let run = d.run_in(&run_id, DONE).await;
    assert_eq!(run.state, RunState::Succeeded);
    let lines: Vec<String> = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    let pos = |t: &str| {
        lines
            .iter()
            .position(|l| l == t)
            .unwrap_or_else(|| panic!("{t} did not run: {lines:?}"))
    };
    assert!(
        pos("build") < pos("test") && pos("lint") < pos("test"),
        "{lines:?}"
    );
    assert!(
        pos("test") < pos("deploy") && pos("deploy") < pos("smoke"),
        "{lines:?}"
    );
    assert_eq!(run.spec.repo, "hello");
    assert_eq!(run.spec.commit, c1);
    assert_eq!(run.spec.branch.as_deref(), Some("main"));
    assert_eq!(
        run.spec.options.concurrency_group.as_deref(),
        Some("hello/branch/main")
    );
    let a = &run.spec.annotations;
    assert_eq!(a["stagetime/event"], "push");
    assert_eq!(a["stagetime/delivery"], "d-1");
    assert_eq!(a["stagetime/sender"], "Codertocat");
    assert_eq!(a["stagetime/ref"], "refs/heads/main");
    let fetches: Vec<_> = d
        .emulator
        .calls()
        .into_iter()
        .filter(|c| c.path.ends_with("/contents/.stagetime.yaml"))
        .collect();
    assert_eq!(fetches.len(), 1, "{fetches:?}");
    assert_eq!(
        fetches[0].path,
        "/repos/Codertocat/Hello-World/contents/.stagetime.yaml"
    );
    assert_eq!(fetches[0].query, format!("ref={c1}"));
    assert_eq!(fetches[0].auth.as_deref(), Some("Bearer forge-token"));

    // 2. The same delivery again: 200, nothing new.
    let (status, body) = d.github("push", "d-1", &push, Some(SECRET)).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("duplicate")),
        "{body}"
    );
    // A redelivery under a new id finds the same run.
    let (status, _) = d.github("push", "d-1-again", &push, Some(SECRET)).await;
    assert_eq!(status, 202);
    let again = d.settled("github:d-1-again").await;
    assert_eq!(again.runs, vec![run_id.clone()], "{again:?}");
    assert_eq!(d.runs_of("hello").await.len(), 1, "one run for one push");

    // 3. Missing and wrong signatures; an unknown repository.
    let c2 = "2222222222222222222222222222222222222222";
    let other = github_push("refs/heads/main", c2, &["README.md"]);
    let (status, _) = d.github("push", "d-unsigned", &other, None).await;
    assert_eq!(status, 401);
    let (status, _) = d
        .github("push", "d-wrong", &other, Some("not the secret"))
        .await;
    assert_eq!(status, 403);
    let mut unknown = other.clone();
    unknown["repository"]["html_url"] = json!("https://github.com/someone/else");
    unknown["repository"]["clone_url"] = json!("https://github.com/someone/else.git");
    unknown["repository"]["url"] = json!("https://github.com/someone/else");
    let (status, _) = d.github("push", "d-unknown", &unknown, Some(SECRET)).await;
    assert_eq!(status, 404);
    for id in ["github:d-unsigned", "github:d-wrong", "github:d-unknown"] {
        assert!(!d.recorded(id).await, "{id} must not be recorded");
    }

    // 4. Branch deletion, a branch not in `on`, a ping: 200, nothing recorded.
    let mut deletion = github_push(
        "refs/heads/main",
        "0000000000000000000000000000000000000000",
        &[],
    );
    deletion["deleted"] = json!(true);
    let (status, body) = d.github("push", "d-delete", &deletion, Some(SECRET)).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ignored")),
        "{body}"
    );
    let feature = github_push("refs/heads/feature/x", c2, &["README.md"]);
    let (status, body) = d.github("push", "d-feature", &feature, Some(SECRET)).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ignored")),
        "{body}"
    );
    let ping =
        json!({"zen": "Design for failure.", "hook_id": 1, "repository": push["repository"]});
    let (status, _) = d.github("ping", "d-ping", &ping, Some(SECRET)).await;
    assert_eq!(status, 200);
    for id in ["github:d-delete", "github:d-feature", "github:d-ping"] {
        assert!(!d.recorded(id).await, "{id} must not be recorded");
    }

    // 5. A tag: a run whose `when: {branches: [main]}` task (and what needs it) is left out.
    d.emulator.put_file(c2, ".stagetime.yaml", &pipeline);
    let tag = github_push("refs/tags/v1.0", c2, &["README.md"]);
    let (status, _) = d.github("push", "d-tag", &tag, Some(SECRET)).await;
    assert_eq!(status, 202);
    let t = d.settled("github:d-tag").await;
    let tag_run = d.run_in(&t.runs[0], DONE).await;
    assert_eq!(tag_run.state, RunState::Succeeded);
    assert_eq!(tag_run.spec.annotations["stagetime/event"], "tag");
    let names: Vec<&str> = tag_run.spec.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["build", "lint", "test"],
        "deploy (when: main) and smoke (needs deploy) dropped"
    );
    assert_eq!(tag_run.spec.options.concurrency_group, None);

    // 6. Path filters: a push that touches only README starts nothing; one touching src/ runs.
    let c3 = "3333333333333333333333333333333333333333";
    d.emulator.put_file(c3, ".stagetime.yaml", &pipeline);
    let paths_repo = |p: &mut Value| {
        p["repository"]["full_name"] = json!("Codertocat/Paths");
        p["repository"]["html_url"] = json!("https://github.com/Codertocat/Paths");
        p["repository"]["clone_url"] = json!("https://github.com/Codertocat/Paths.git");
        p["repository"]["url"] = json!("https://github.com/Codertocat/Paths");
    };
    let mut readme = github_push("refs/heads/main", c3, &["README.md", "docs/src/x.md"]);
    paths_repo(&mut readme);
    let (status, body) = d.github("push", "d-readme", &readme, Some(SECRET)).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ignored")),
        "{body}"
    );
    let mut src = github_push("refs/heads/main", c3, &["src/lib.rs"]);
    paths_repo(&mut src);
    let (status, _) = d.github("push", "d-src", &src, Some(SECRET)).await;
    assert_eq!(status, 202);
    let s = d.settled("github:d-src").await;
    assert_eq!(s.state, DeliveryState::Done);
    assert_eq!(d.runs_of("paths").await.len(), 1);

    // 7. A missing pipeline file and an invalid one: failed deliveries with the reason, no run.
    let c4 = "4444444444444444444444444444444444444444";
    let (status, _) = d
        .github(
            "push",
            "d-missing",
            &github_push("refs/heads/main", c4, &["a"]),
            Some(SECRET),
        )
        .await;
    assert_eq!(status, 202);
    let m = d.settled("github:d-missing").await;
    assert_eq!(m.state, DeliveryState::Failed);
    assert!(
        m.message.as_deref().unwrap_or("").contains("not found"),
        "{m:?}"
    );
    let c5 = "5555555555555555555555555555555555555555";
    d.emulator.put_file(
        c5,
        ".stagetime.yaml",
        "tasks:\n  - { name: a, command: 'true', can_fial: true }\n",
    );
    let (status, _) = d
        .github(
            "push",
            "d-invalid",
            &github_push("refs/heads/main", c5, &["a"]),
            Some(SECRET),
        )
        .await;
    assert_eq!(status, 202);
    let inv = d.settled("github:d-invalid").await;
    assert_eq!(inv.state, DeliveryState::Failed);
    assert!(
        inv.message.as_deref().unwrap_or("").contains("can_fial"),
        "{inv:?}"
    );
    let commits: Vec<String> = d
        .runs_of("hello")
        .await
        .into_iter()
        .map(|r| r.commit)
        .collect();
    assert!(
        !commits.contains(&c4.to_string()) && !commits.contains(&c5.to_string()),
        "{commits:?}"
    );

    // The CLI shows the failed deliveries with their reasons, and lists runs by branch.
    let (code, out) = d.cli(&["intake", "--state", "failed"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("github:d-missing") && out.contains("not found"),
        "{out}"
    );
    assert!(
        out.contains("github:d-invalid") && out.contains("can_fial"),
        "{out}"
    );
    assert!(!out.contains("github:d-1 "), "only failed ones: {out}");
    let (code, out) = d.cli(&[
        "list", "--repo", "hello", "--branch", "main", "--output", "json",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&run_id), "{out}");
    assert!(
        !out.contains(&t.runs[0]),
        "the tag's run is not on branch main: {out}"
    );

    // 8. Oversized and malformed bodies.
    let big = vec![b' '; 26 << 20];
    let (status, _) = d
        .post(
            "github",
            &[
                ("x-github-event", "push".into()),
                ("x-github-delivery", "d-big".into()),
            ],
            big,
        )
        .await;
    assert_eq!(status, 413);
    let (status, _) = d
        .post(
            "github",
            &[
                ("x-github-event", "push".into()),
                ("x-github-delivery", "d-bad".into()),
            ],
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = d.post("bitbucket", &[], b"{}".to_vec()).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_pull_requests_synchronize_cancels_closed_and_forks_start_nothing() {
    let Some(d) = deployment("hooks-github-pr", |emu, _| {
        format!(
            r#"repositories:
  - name: hello
    provider: github
    url: https://github.com/Codertocat/Hello-World
    api_url: {api}
    webhook_secret_env: HOOK_SECRET
"#,
            api = emu.url
        )
    })
    .await
    else {
        return;
    };
    let head1 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let head2 = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    d.emulator.put_file(
        head1,
        ".stagetime.yaml",
        "tasks:\n  - { name: slow, command: 'sleep 60' }\n",
    );
    d.emulator.put_file(
        head2,
        ".stagetime.yaml",
        "tasks:\n  - { name: quick, command: 'true' }\n",
    );
    let mut opened = fixture("github-pull_request.json");
    opened["pull_request"]["head"]["sha"] = json!(head1);
    let (status, _) = d
        .github("pull_request", "pr-1", &opened, Some(SECRET))
        .await;
    assert_eq!(status, 202);
    let first = d.settled("github:pr-1").await.runs[0].clone();
    d.run_in(&first, &[RunState::Running]).await;
    let mut sync = opened.clone();
    sync["action"] = json!("synchronize");
    sync["pull_request"]["head"]["sha"] = json!(head2);
    let (status, _) = d.github("pull_request", "pr-2", &sync, Some(SECRET)).await;
    assert_eq!(status, 202);
    let second = d.settled("github:pr-2").await.runs[0].clone();
    assert_ne!(first, second);
    assert_eq!(
        d.run_in(&first, DONE).await.state,
        RunState::Cancelled,
        "superseded"
    );
    let run = d.run_in(&second, DONE).await;
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(run.spec.annotations["stagetime/pr"], "2");
    assert_eq!(run.spec.annotations["stagetime/target-branch"], "main");
    assert_eq!(
        run.spec.options.concurrency_group.as_deref(),
        Some("hello/pr/2")
    );

    // Closed, and a pull request from a fork: 200, nothing recorded.
    let mut closed = sync.clone();
    closed["action"] = json!("closed");
    let (status, body) = d
        .github("pull_request", "pr-3", &closed, Some(SECRET))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ignored")),
        "{body}"
    );
    let mut fork = opened.clone();
    fork["pull_request"]["head"]["repo"]["full_name"] = json!("someone/Hello-World");
    fork["pull_request"]["head"]["repo"]["fork"] = json!(true);
    fork["pull_request"]["head"]["sha"] = json!(head2);
    let (status, body) = d.github("pull_request", "pr-4", &fork, Some(SECRET)).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ignored")),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap_or("").contains("fork"),
        "{body}"
    );
    for id in ["github:pr-3", "github:pr-4"] {
        assert!(!d.recorded(id).await, "{id} must not be recorded");
    }
    assert_eq!(d.runs_of("hello").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_push_and_merge_request_with_path_filter_from_the_api() {
    let Some(d) = deployment("hooks-gitlab", |emu, _| {
        format!(
            r#"repositories:
  - name: diaspora
    provider: gitlab
    url: http://example.com/mike/diaspora
    api_url: {api}/api/v4
    webhook_secret_env: HOOK_SECRET
    token_env: FORGE_TOKEN
    pipeline: ci/stagetime.yaml
    on:
      push: {{ branches: [master], paths: ["app/**"] }}
      pull_request: {{ branches: [master], paths: ["app/**"] }}
"#,
            api = emu.url
        )
    })
    .await
    else {
        return;
    };
    let sha = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7";
    let marker = d.path("gitlab-ran");
    d.emulator.put_file(
        sha,
        "ci/stagetime.yaml",
        &format!(
            "tasks:\n  - {{ name: a, command: 'touch {}' }}\n",
            marker.display()
        ),
    );
    let (status, body) = d
        .gitlab("Push Hook", "uuid-push-1", &fixture("gitlab-push.json"))
        .await;
    assert_eq!(status, 202, "{body}");
    let p = d.settled("gitlab:uuid-push-1").await;
    assert_eq!(p.state, DeliveryState::Done, "{p:?}");
    assert_eq!(d.run_in(&p.runs[0], DONE).await.state, RunState::Succeeded);
    assert!(marker.exists());
    let fetch = d
        .emulator
        .calls()
        .into_iter()
        .find(|c| c.path.contains("/repository/files/"))
        .unwrap();
    assert_eq!(
        fetch.path,
        "/api/v4/projects/15/repository/files/ci%2Fstagetime.yaml/raw"
    );
    assert_eq!(fetch.auth.as_deref(), Some("forge-token"));

    // A push whose payload lists fewer commits than it had: the compare API decides.
    let truncated_sha = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
    d.emulator.put_compare(truncated_sha, &["docs/only.md"]);
    let mut truncated = fixture("gitlab-push.json");
    truncated["after"] = json!(truncated_sha);
    truncated["checkout_sha"] = json!(truncated_sha);
    truncated["total_commits_count"] = json!(30);
    let (status, _) = d.gitlab("Push Hook", "uuid-push-2", &truncated).await;
    assert_eq!(
        status, 202,
        "the payload cannot tell: recorded, then the API decides"
    );
    let t = d.settled("gitlab:uuid-push-2").await;
    assert_eq!((t.state, t.runs.len()), (DeliveryState::Done, 0), "{t:?}");
    let compare = d
        .emulator
        .calls()
        .into_iter()
        .find(|c| c.path.ends_with("/repository/compare"))
        .unwrap();
    assert_eq!(compare.path, "/api/v4/projects/15/repository/compare");
    assert_eq!(
        compare.query,
        format!("from=95790bf891e76fee5e1747ab589903a6a1f80f22&to={truncated_sha}")
    );

    // A wrong token is refused; a merge request touching only docs starts nothing.
    let body = serde_json::to_vec(&fixture("gitlab-push.json")).unwrap();
    let (status, _) = d
        .post(
            "gitlab",
            &[
                ("x-gitlab-event", "Push Hook".into()),
                ("x-gitlab-event-uuid", "uuid-bad".into()),
                ("x-gitlab-token", "nope".into()),
            ],
            body,
        )
        .await;
    assert_eq!(status, 403);
    d.emulator.put_pr_files(1, &["docs/readme.md"]);
    let (status, _) = d
        .gitlab(
            "Merge Request Hook",
            "uuid-mr-1",
            &fixture("gitlab-merge_request.json"),
        )
        .await;
    assert_eq!(status, 202);
    let mr = d.settled("gitlab:uuid-mr-1").await;
    assert_eq!(mr.state, DeliveryState::Done);
    assert!(mr.runs.is_empty(), "{mr:?}");
    assert!(
        d.emulator
            .calls()
            .iter()
            .any(|c| c.path == "/api/v4/projects/15/merge_requests/1/diffs")
    );
    // An update with new commits (oldrev) touching app/: a run.
    d.emulator.put_pr_files(1, &["app/models/user.rb"]);
    let mut update = fixture("gitlab-merge_request.json");
    update["object_attributes"]["action"] = json!("update");
    update["object_attributes"]["oldrev"] = json!("95790bf891e76fee5e1747ab589903a6a1f80f22");
    let (status, _) = d.gitlab("Merge Request Hook", "uuid-mr-2", &update).await;
    assert_eq!(status, 202);
    let mr2 = d.settled("gitlab:uuid-mr-2").await;
    assert_eq!(mr2.runs.len(), 1, "{mr2:?}");
    assert_eq!(
        d.run_in(&mr2.runs[0], DONE).await.state,
        RunState::Succeeded
    );
    // An update without new commits (title edited) starts nothing.
    let mut edited = fixture("gitlab-merge_request.json");
    edited["object_attributes"]["action"] = json!("update");
    let (status, body) = d.gitlab("Merge Request Hook", "uuid-mr-3", &edited).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ignored")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitea_push_and_pull_request() {
    let Some(d) = deployment("hooks-gitea", |emu, _| {
        format!(
            r#"repositories:
  - name: webhooks
    provider: gitea
    url: http://localhost:3000/gitea/webhooks
    api_url: {api}/api/v1
    webhook_secret_env: HOOK_SECRET
    token_env: FORGE_TOKEN
"#,
            api = emu.url
        )
    })
    .await
    else {
        return;
    };
    let push = fixture("gitea-push.json");
    let sha = push["after"].as_str().unwrap().to_string();
    d.emulator.put_file(
        &sha,
        ".stagetime.yaml",
        "tasks:\n  - { name: a, command: 'true' }\n  - { name: b, stage: 1, command: 'true' }\n",
    );
    let (status, body) = d.gitea("push", "g-1", &push).await;
    assert_eq!(status, 202, "{body}");
    let p = d.settled("gitea:g-1").await;
    let run = d.run_in(&p.runs[0], DONE).await;
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(run.spec.branch.as_deref(), Some("develop"));
    let fetch = d
        .emulator
        .calls()
        .into_iter()
        .find(|c| c.path.contains("/contents/"))
        .unwrap();
    assert_eq!(
        fetch.path,
        "/api/v1/repos/gitea/webhooks/contents/.stagetime.yaml"
    );
    assert_eq!(fetch.auth.as_deref(), Some("token forge-token"));
    // Forgejo's header names are accepted as well; a wrong signature is not.
    let body = serde_json::to_vec(&push).unwrap();
    let (status, _) = d
        .post(
            "gitea",
            &[
                ("x-forgejo-event", "push".into()),
                ("x-forgejo-delivery", "g-bad".into()),
                ("x-forgejo-signature", hex_hmac(b"wrong", &body)),
            ],
            body,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = d
        .gitea(
            "pull_request",
            "g-pr-1",
            &fixture("gitea-pull_request.json"),
        )
        .await;
    assert_eq!(status, 202);
    let pr = d.settled("gitea:g-pr-1").await;
    let pr_run = d.run_in(&pr.runs[0], DONE).await;
    assert_eq!(pr_run.spec.annotations["stagetime/pr"], "3");
    assert_ne!(
        pr_run.id, run.id,
        "a pull request run is not the push run of the same commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_delivery_survives_a_forge_outage_a_rate_limit_and_a_server_kill() {
    let Some(mut d) = deployment("hooks-restart", |emu, _| {
        format!(
            r#"repositories:
  - name: hello
    provider: github
    url: https://github.com/Codertocat/Hello-World
    api_url: {api}
    webhook_secret_env: HOOK_SECRET
"#,
            api = emu.url
        )
    })
    .await
    else {
        return;
    };
    let c = "cccccccccccccccccccccccccccccccccccccccc";
    d.emulator.put_file(
        c,
        ".stagetime.yaml",
        "tasks:\n  - { name: a, command: 'true' }\n",
    );
    d.emulator.set_down(true);
    let (status, _) = d
        .github(
            "push",
            "r-1",
            &github_push("refs/heads/main", c, &["x"]),
            Some(SECRET),
        )
        .await;
    assert_eq!(status, 202, "accepted while the forge is down");
    // The intake tries (and retries) the forge, and the delivery stays pending.
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.emulator.calls().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the intake never asked the forge"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pending = d.store.pending_deliveries(1000).await.unwrap();
    assert!(pending.iter().any(|p| p.id == "github:r-1"), "{pending:?}");
    assert!(d.runs_of("hello").await.is_empty());

    // kill -9 of the server; the forge comes back rate limiting once.
    d.restart_server();
    d.emulator.rate_limit_next(1);
    d.emulator.set_down(false);
    let settled = d.settled("github:r-1").await;
    assert_eq!(settled.state, DeliveryState::Done, "{settled:?}");
    assert_eq!(
        d.run_in(&settled.runs[0], DONE).await.state,
        RunState::Succeeded
    );
    assert_eq!(d.runs_of("hello").await.len(), 1);
}

fn github_repo(emu: &Emulator, extra: &str) -> String {
    format!(
        r#"repositories:
  - name: hello
    provider: github
    url: https://github.com/Codertocat/Hello-World
    api_url: {api}
    webhook_secret_env: HOOK_SECRET
    token_env: FORGE_TOKEN
{extra}"#,
        api = emu.url
    )
}

/// Pushes `commit` to main on GitHub (its pipeline file `file`, when
/// given); the run id (None when the delivery failed).
async fn push_github(
    d: &Deployment,
    delivery: &str,
    commit: &str,
    file: Option<&str>,
) -> Option<String> {
    if let Some(text) = file {
        d.emulator.put_file(commit, ".stagetime.yaml", text);
    }
    let (status, body) = d
        .github(
            "push",
            delivery,
            &github_push("refs/heads/main", commit, &["x"]),
            Some(SECRET),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    d.settled(&format!("github:{delivery}"))
        .await
        .runs
        .first()
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_statuses_for_passing_failing_allowed_cancelled_and_missing_runs() {
    let Some(d) = deployment("report-github", |emu, _| {
        github_repo(emu, "    on: { push: { branches: [main] } }\n")
    })
    .await
    else {
        return;
    };
    let sha = |c: char| c.to_string().repeat(40);

    // A passing run: pending when accepted, success at the end — exactly.
    let c1 = sha('1');
    let run = push_github(
        &d,
        "s-pass",
        &c1,
        Some("tasks:\n  - { name: build, stage: 0, command: 'true' }\n  - { name: test, stage: 1, command: 'true' }\n"),
    )
    .await
    .unwrap();
    assert_eq!(
        d.final_states(&c1, "stagetime").await,
        ["pending", "success"]
    );
    let calls = d.emulator.status_calls(&c1);
    assert_eq!(calls.len(), 2, "{calls:?}");
    for c in &calls {
        assert_eq!(
            c.path,
            format!("/repos/Codertocat/Hello-World/statuses/{c1}")
        );
        assert_eq!(c.auth.as_deref(), Some("Bearer forge-token"));
        let body = c.body.as_ref().unwrap().as_object().unwrap();
        let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["context", "description", "state", "target_url"],
            "GitHub's documented body"
        );
        assert_eq!(body["target_url"], format!("{RUNS_URL}/runs/{run}"));
        assert!(body["description"].as_str().unwrap().chars().count() <= 140);
    }
    let (_, _, last) = d.emulator.statuses(&c1).pop().unwrap();
    assert!(
        last.starts_with("succeeded in ") && last.contains("2 tasks"),
        "{last}"
    );

    // A failing run: failure, naming the task.
    let c2 = sha('2');
    push_github(
        &d,
        "s-fail",
        &c2,
        Some("tasks:\n  - { name: broken, command: 'exit 1' }\n"),
    )
    .await;
    assert_eq!(
        d.final_states(&c2, "stagetime").await,
        ["pending", "failure"]
    );
    let (_, _, last) = d.emulator.statuses(&c2).pop().unwrap();
    assert_eq!(last, "failed: broken (stage 1/1)");

    // An allowed failure: the aggregate context succeeds.
    let c3 = sha('3');
    push_github(
        &d,
        "s-allowed",
        &c3,
        Some("tasks:\n  - { name: ok, command: 'true' }\n  - { name: flaky, command: 'exit 1', can_fail: true }\n"),
    )
    .await;
    assert_eq!(
        d.final_states(&c3, "stagetime").await,
        ["pending", "success"]
    );
    let (_, _, last) = d.emulator.statuses(&c3).pop().unwrap();
    assert!(last.contains("1 allowed failure"), "{last}");

    // A cancelled run: GitHub's closest state, error.
    let c4 = sha('4');
    let run = push_github(
        &d,
        "s-cancel",
        &c4,
        Some("tasks:\n  - { name: long, command: 'sleep 60' }\n"),
    )
    .await
    .unwrap();
    d.run_in(&run, &[RunState::Running]).await;
    d.statuses_taken(&c4, 1).await;
    stagetime_core::control::RunControl::new(Arc::clone(&d.store))
        .cancel(&RunId::new(run.as_str()).unwrap())
        .await
        .unwrap();
    assert_eq!(d.final_states(&c4, "stagetime").await, ["pending", "error"]);
    let (_, _, last) = d.emulator.statuses(&c4).pop().unwrap();
    assert!(last.starts_with("cancelled at stage 1/1"), "{last}");

    // A missing and an invalid pipeline file: error with the reason, no run.
    let c5 = sha('5');
    assert_eq!(push_github(&d, "s-missing", &c5, None).await, None);
    assert_eq!(d.final_states(&c5, "stagetime").await, ["error"]);
    let (_, _, why) = d.emulator.statuses(&c5).pop().unwrap();
    assert_eq!(why, format!(".stagetime.yaml not found at commit {c5}"));
    let c6 = sha('6');
    push_github(
        &d,
        "s-invalid",
        &c6,
        Some("tasks:\n  - { name: a, command: 'true', can_fial: true }\n"),
    )
    .await;
    assert_eq!(d.final_states(&c6, "stagetime").await, ["error"]);
    let (_, _, why) = d.emulator.statuses(&c6).pop().unwrap();
    assert!(why.contains("invalid") && why.contains("can_fial"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_and_gitea_statuses_and_per_stage_contexts() {
    let Some(d) = deployment("report-lab-tea", |emu, _| {
        format!(
            r#"repositories:
  - name: lab
    provider: gitlab
    url: http://example.com/mike/diaspora
    api_url: {api}/api/v4
    webhook_secret_env: HOOK_SECRET
    token_env: FORGE_TOKEN
  - name: tea
    provider: gitea
    url: http://localhost:3000/gitea/webhooks
    api_url: {api}/api/v1
    webhook_secret_env: HOOK_SECRET
    token_env: FORGE_TOKEN
    report: {{ context: ci/stagetime, per_stage: true }}
"#,
            api = emu.url
        )
    })
    .await
    else {
        return;
    };
    // GitLab: pending, running (held by a gate until the forge saw it), success.
    let gate = d.path("gate");
    let lab = fixture("gitlab-push.json");
    let lab_sha = lab["checkout_sha"].as_str().unwrap().to_string();
    d.emulator.put_file(
        &lab_sha,
        ".stagetime.yaml",
        &format!(
            "tasks:\n  - {{ name: wait, command: 'while [ ! -f {} ]; do sleep 0.1; done' }}\n",
            gate.display()
        ),
    );
    let (status, body) = d.gitlab("Push Hook", "lab-1", &lab).await;
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d
        .emulator
        .states(&lab_sha, "stagetime")
        .contains(&"running".to_string())
    {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            d.emulator.statuses(&lab_sha)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(&gate, "").unwrap();
    assert_eq!(
        d.final_states(&lab_sha, "stagetime").await,
        ["pending", "running", "success"]
    );
    for c in d.emulator.status_calls(&lab_sha) {
        assert_eq!(c.path, format!("/api/v4/projects/15/statuses/{lab_sha}"));
        assert_eq!(c.auth.as_deref(), Some("forge-token"), "PRIVATE-TOKEN");
        let body = c.body.unwrap();
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["description", "name", "state", "target_url"],
            "GitLab's documented parameters"
        );
    }

    // Gitea, with its own context and one per stage.
    let tea = fixture("gitea-push.json");
    let tea_sha = tea["after"].as_str().unwrap().to_string();
    d.emulator.put_file(
        &tea_sha,
        ".stagetime.yaml",
        "tasks:\n  - { name: a, stage: 0, command: 'true' }\n  - { name: b, stage: 1, command: 'exit 1', can_fail: true }\n",
    );
    let (status, body) = d.gitea("push", "tea-1", &tea).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        d.final_states(&tea_sha, "ci/stagetime").await,
        ["pending", "success"]
    );
    assert_eq!(
        d.final_states(&tea_sha, "ci/stagetime/stage-0").await,
        ["pending", "success"]
    );
    assert_eq!(
        d.final_states(&tea_sha, "ci/stagetime/stage-1").await,
        ["pending", "success"]
    );
    for c in d.emulator.status_calls(&tea_sha) {
        assert_eq!(
            c.path,
            format!("/api/v1/repos/gitea/webhooks/statuses/{tea_sha}")
        );
        assert_eq!(c.auth.as_deref(), Some("token forge-token"));
        let body = c.body.unwrap();
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["context", "description", "state", "target_url"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_survive_rate_limits_outages_and_kill_9_of_worker_and_server() {
    let Some(mut d) = deployment("report-durable", |emu, _| github_repo(emu, "")).await else {
        return;
    };
    let sha = |c: char| c.to_string().repeat(40);
    let pass = "tasks:\n  - { name: a, command: 'true' }\n";

    // 429 with Retry-After on the first two status calls: waited out.
    let c1 = sha('a');
    d.emulator.rate_limit_statuses(2);
    push_github(&d, "k-429", &c1, Some(pass)).await;
    assert_eq!(
        d.final_states(&c1, "stagetime").await,
        ["pending", "success"]
    );
    let answered: Vec<u16> = d
        .emulator
        .status_calls(&c1)
        .iter()
        .map(|c| c.answered)
        .collect();
    assert_eq!(answered, [429, 429, 201, 201]);

    // The status API down while the run runs to its end, then back.
    let c2 = sha('b');
    d.emulator.set_statuses_down(true);
    let run = push_github(&d, "k-down", &c2, Some(pass)).await.unwrap();
    assert_eq!(d.run_in(&run, DONE).await.state, RunState::Succeeded);
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.emulator.status_calls(&c2).len() < 2 {
        assert!(Instant::now() < deadline, "the reporter never tried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(d.emulator.statuses(&c2).is_empty());
    d.emulator.set_statuses_down(false);
    assert_eq!(
        d.final_states(&c2, "stagetime").await,
        ["pending", "success"]
    );

    // kill -9 of the worker mid-run, then of the server: the attempt the
    // worker took along times out and is retried by a new worker; the
    // final state is reported once, the pending one too.
    let c3 = sha('c');
    let marker = d.path("first-attempt");
    let file = format!(
        "tasks:\n  - name: slow\n    timeout: 5s\n    retries: 1\n    command: 'if [ -f {m} ]; then exit 0; fi; touch {m}; sleep 60'\n",
        m = marker.display()
    );
    let run = push_github(&d, "k-kill", &c3, Some(&file)).await.unwrap();
    d.statuses_taken(&c3, 1).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the first attempt never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.restart_worker();
    d.restart_server();
    let record = d.run_in(&run, DONE).await;
    assert_eq!(record.state, RunState::Succeeded);
    assert_eq!(
        d.final_states(&c3, "stagetime").await,
        ["pending", "success"]
    );
}

/// A GitHub comment on pull request 2 by `login`.
fn github_comment(login: &str, body: &str, action: &str) -> Value {
    let mut c = fixture("github-issue_comment.json");
    c["action"] = json!(action);
    c["comment"]["body"] = json!(body);
    c["comment"]["user"]["login"] = json!(login);
    c["sender"]["login"] = json!(login);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retest_from_a_comment_reruns_only_what_did_not_succeed_and_needs_write_access() {
    let Some(d) = deployment("report-commands", |emu, _| github_repo(emu, "")).await else {
        return;
    };
    let log = d.path("log");
    let fixed = d.path("fixed");
    let pr = fixture("github-pull_request.json");
    let head = pr["pull_request"]["head"]["sha"]
        .as_str()
        .unwrap()
        .to_string();
    d.emulator.put_file(
        &head,
        ".stagetime.yaml",
        &format!(
            "tasks:\n  - {{ name: ok, stage: 0, command: 'echo ok >> {l}' }}\n  - {{ name: flaky, stage: 0, command: 'echo flaky >> {l}; [ -f {f} ]' }}\n  - {{ name: after, stage: 1, command: 'echo after >> {l}' }}\n",
            l = log.display(),
            f = fixed.display()
        ),
    );
    let (status, body) = d.github("pull_request", "pr-open", &pr, Some(SECRET)).await;
    assert_eq!(status, 202, "{body}");
    let run = d.settled("github:pr-open").await.runs[0].clone();
    assert_eq!(d.run_in(&run, DONE).await.state, RunState::Failed);
    assert_eq!(
        d.final_states(&head, "stagetime").await,
        ["pending", "failure"]
    );
    let version = d
        .store
        .load_run(&RunId::new(run.as_str()).unwrap())
        .await
        .unwrap()
        .version;
    // Housekeeping pruned what the backend kept of the attempts.
    std::fs::remove_dir_all(d.path("work")).unwrap();

    // A user without write access: a polite reply, nothing else.
    d.emulator.set_permission("stranger", "read");
    let (status, _) = d
        .github(
            "issue_comment",
            "c-stranger",
            &github_comment("stranger", "/retest", "created"),
            Some(SECRET),
        )
        .await;
    assert_eq!(status, 202);
    let settled = d.settled("github:c-stranger").await;
    assert_eq!(
        settled.message.as_deref(),
        Some("stranger may not command runs")
    );
    let comments = d.emulator.comments();
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert_eq!(
        comments[0].0,
        "/repos/Codertocat/Hello-World/issues/2/comments"
    );
    assert!(
        comments[0].1.starts_with("@stranger ") && comments[0].1.contains("write access"),
        "{comments:?}"
    );
    let permission_asked = d
        .emulator
        .calls()
        .iter()
        .any(|c| c.path == "/repos/Codertocat/Hello-World/collaborators/stranger/permission");
    assert!(permission_asked);
    // An edited or deleted comment does nothing, whoever wrote it.
    for action in ["edited", "deleted"] {
        let (status, body) = d
            .github(
                "issue_comment",
                &format!("c-{action}"),
                &github_comment("Codertocat", "/retest", action),
                Some(SECRET),
            )
            .await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("ignored")),
            "{body}"
        );
    }
    // `/retest nosuch`: no such task, so nothing to do but say so.
    d.emulator.set_permission("Codertocat", "admin");
    let (status, _) = d
        .github(
            "issue_comment",
            "c-nosuch",
            &github_comment("Codertocat", "/retest nosuch", "created"),
            Some(SECRET),
        )
        .await;
    assert_eq!(status, 202);
    d.settled("github:c-nosuch").await;
    assert!(
        d.emulator.comments()[1].1.contains("has no task `nosuch`"),
        "{:?}",
        d.emulator.comments()
    );
    let unchanged = d
        .store
        .load_run(&RunId::new(run.as_str()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        (unchanged.version, unchanged.state),
        (version, RunState::Failed),
        "nothing happened"
    );

    // `/retest` by someone with write access: the failed task and what it
    // held back run again, from stagetime's own record; `ok` does not.
    std::fs::write(&fixed, "").unwrap();
    retest_and_wait(&d, "c-retest", "thanks!\n/retest", &run).await;
    assert_eq!(sorted_lines(&log), ["after", "flaky", "flaky", "ok"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.emulator.states(&head, "stagetime").len() < 4 {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            d.emulator.statuses(&head)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        d.emulator.states(&head, "stagetime"),
        ["pending", "failure", "pending", "success"]
    );

    // `/retest ok`: the succeeded task runs again, with the later stage it
    // holds back; `flaky` (succeeded too, not downstream of `ok`) is kept.
    retest_and_wait(&d, "c-named", "/retest ok", &run).await;
    assert_eq!(
        sorted_lines(&log),
        ["after", "after", "flaky", "flaky", "ok", "ok"]
    );
}

/// Comments `comment` as a user with write access (delivery `delivery`) and
/// waits until it re-ran `run` to success.
async fn retest_and_wait(d: &Deployment, delivery: &str, comment: &str, run: &str) {
    let id = RunId::new(run).unwrap();
    let before = d.store.load_run(&id).await.unwrap().version;
    let (status, _) = d
        .github(
            "issue_comment",
            delivery,
            &github_comment("Codertocat", comment, "created"),
            Some(SECRET),
        )
        .await;
    assert_eq!(status, 202);
    let settled = d.settled(&format!("github:{delivery}")).await;
    assert_eq!(settled.runs, vec![run.to_string()], "{settled:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = d.store.load_run(&id).await.unwrap();
        if r.version > before && r.state == RunState::Succeeded {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{comment:?} did not re-run {run} to success: {:?}",
            r.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lines of `path`, sorted.
fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

/// The JSON of a JWT's header or claims (part 0 or 1).
fn jwt_part(jwt: &str, part: usize) -> Value {
    use base64::Engine as _;
    let text = jwt.split('.').nth(part).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_app_check_runs_created_updated_and_rerequested() {
    let Some(d) = deployment("report-app", |emu, dir| {
        let key = dir.join("app.pem");
        let ok = std::process::Command::new("openssl")
            .args(["genrsa", "-out", key.to_str().unwrap(), "2048"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "openssl genrsa (an RSA key for the test App)");
        // No token: the repository is read and reported as the App.
        format!(
            r#"repositories:
  - name: hello
    provider: github
    url: https://github.com/Codertocat/Hello-World
    api_url: {api}
    webhook_secret_env: HOOK_SECRET
"#,
            api = emu.url
        )
    })
    .await
    else {
        return;
    };
    let log = d.path("log");
    let fixed = d.path("fixed");
    let c1 = "1".repeat(40);
    let run = push_github(
        &d,
        "app-1",
        &c1,
        Some(&format!(
            "tasks:\n  - {{ name: ok, command: 'echo ok >> {l}' }}\n  - {{ name: flaky, command: 'echo flaky >> {l}; [ -f {f} ]' }}\n",
            l = log.display(),
            f = fixed.display()
        )),
    )
    .await
    .unwrap();
    assert_eq!(d.run_in(&run, DONE).await.state, RunState::Failed);
    // The pipeline file was read with an installation token bought with
    // an RS256 App JWT, asked for once.
    let calls = d.emulator.calls();
    let fetch = calls
        .iter()
        .find(|c| c.path.contains("/contents/"))
        .unwrap();
    assert_eq!(
        fetch.auth.as_deref(),
        Some(format!("Bearer {}", support::forge::INSTALLATION_TOKEN).as_str())
    );
    let token_calls: Vec<_> = calls
        .iter()
        .filter(|c| c.path == "/app/installations/77/access_tokens")
        .collect();
    assert_eq!(token_calls.len(), 1, "the token is cached");
    let jwt = token_calls[0]
        .auth
        .as_deref()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    assert_eq!(jwt_part(jwt, 0)["alg"], "RS256");
    assert_eq!(jwt_part(jwt, 1)["iss"], "4242");

    // One check run, created then updated in place by its id.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d
        .emulator
        .check_run_calls()
        .iter()
        .any(|c| c.body.as_ref().is_some_and(|b| b["status"] == "completed"))
    {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            d.emulator.check_run_calls()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let checks = d.emulator.check_run_calls();
    let summary: Vec<(String, String, String)> = checks
        .iter()
        .map(|c| {
            let b = c.body.clone().unwrap_or_default();
            (
                c.method.clone(),
                c.path.clone(),
                format!(
                    "{}/{}",
                    b["status"].as_str().unwrap_or(""),
                    b["conclusion"].as_str().unwrap_or("")
                ),
            )
        })
        .collect();
    // Created queued, updated in place (in_progress when the reporter saw
    // it running), completed.
    let creations: Vec<_> = summary.iter().filter(|(m, _, _)| m == "POST").collect();
    assert_eq!(creations.len(), 1, "{summary:?}");
    assert_eq!(summary[0].2, "queued/", "{summary:?}");
    assert_eq!(
        summary.last().unwrap().2,
        "completed/failure",
        "{summary:?}"
    );
    for (method, path, state) in &summary[1..] {
        assert_eq!(method, "PATCH", "{summary:?}");
        assert_eq!(path, "/repos/Codertocat/Hello-World/check-runs/1001");
        assert!(
            ["in_progress/", "completed/failure"].contains(&state.as_str()),
            "{summary:?}"
        );
    }
    assert!(checks.iter().all(|c| c.answered < 300), "{checks:?}");
    let created = checks[0].body.clone().unwrap();
    assert_eq!(
        (
            created["head_sha"].as_str(),
            created["external_id"].as_str()
        ),
        (Some(c1.as_str()), Some(run.as_str()))
    );
    assert_eq!(created["details_url"], format!("{RUNS_URL}/runs/{run}"));
    let done = checks.last().unwrap().body.clone().unwrap();
    let text = done["output"]["summary"].as_str().unwrap();
    assert!(
        text.contains("| stage 0 | `flaky` | ❌ failed | 1 |"),
        "{text}"
    );
    assert!(
        d.emulator.status_calls(&c1).is_empty(),
        "a check run instead of a status"
    );

    // "Re-run" on GitHub: check_run rerequested reruns what failed, in a new check run.
    std::fs::write(&fixed, "").unwrap();
    let rerequest = json!({
        "action": "rerequested",
        "check_run": {"id": 1001, "head_sha": c1, "external_id": run, "status": "completed", "conclusion": "failure", "name": "stagetime"},
        "repository": github_push("refs/heads/main", &c1, &[])["repository"],
        "sender": {"login": "Codertocat"}
    });
    let (status, body) = d
        .github("check_run", "app-rerun", &rerequest, Some(SECRET))
        .await;
    assert_eq!(status, 202, "{body}");
    let settled = d.settled("github:app-rerun").await;
    assert_eq!(settled.runs, vec![run.clone()], "{settled:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while d
        .emulator
        .check_run_calls()
        .iter()
        .filter(|c| {
            c.body
                .as_ref()
                .is_some_and(|b| b["conclusion"] == "success")
        })
        .count()
        < 1
    {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            d.emulator.check_run_calls()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A new check run for the rerun: created (queued, in progress or
    // already completed, as the reporter first saw it), then updated by its id.
    let checks = d.emulator.check_run_calls();
    let first_done = checks
        .iter()
        .position(|c| {
            c.body
                .as_ref()
                .is_some_and(|b| b["conclusion"] == "failure")
        })
        .unwrap();
    let rerun_calls = &checks[first_done + 1..];
    assert_eq!(rerun_calls[0].method, "POST", "{rerun_calls:?}");
    assert_eq!(
        rerun_calls[0].path,
        "/repos/Codertocat/Hello-World/check-runs"
    );
    for c in &rerun_calls[1..] {
        assert_eq!(
            (c.method.as_str(), c.path.as_str()),
            ("PATCH", "/repos/Codertocat/Hello-World/check-runs/1002")
        );
    }
    assert_eq!(
        rerun_calls.last().unwrap().body.as_ref().unwrap()["conclusion"],
        "success"
    );
    let mut lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(lines, ["flaky", "flaky", "ok"], "ok kept its success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_to_test_runs_a_fork_pull_request_for_a_user_with_write_access() {
    let Some(d) = deployment("report-ok-to-test", |emu, _| github_repo(emu, "")).await else {
        return;
    };
    let mut pr = fixture("github-pull_request.json");
    pr["pull_request"]["head"]["repo"]["full_name"] = json!("someone/Hello-World");
    let head = pr["pull_request"]["head"]["sha"]
        .as_str()
        .unwrap()
        .to_string();
    d.emulator.put_file(
        &head,
        ".stagetime.yaml",
        "tasks:\n  - { name: a, command: 'true' }\n",
    );
    let (status, body) = d
        .github("pull_request", "fork-open", &pr, Some(SECRET))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ignored")),
        "a fork: {body}"
    );
    let mut pull = pr["pull_request"].clone();
    pull["state"] = json!("open");
    d.emulator.put_pull(2, pull);

    // Someone without write access: a reply, no run.
    let (status, _) = d
        .github(
            "issue_comment",
            "ok-stranger",
            &github_comment("stranger", "/ok-to-test", "created"),
            Some(SECRET),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        d.settled("github:ok-stranger").await.message.as_deref(),
        Some("stranger may not command runs")
    );
    assert!(d.runs_of("hello").await.is_empty());

    // A maintainer: the fork's pull request runs and is reported.
    d.emulator.set_permission("Codertocat", "write");
    let (status, _) = d
        .github(
            "issue_comment",
            "ok-maintainer",
            &github_comment("Codertocat", "/ok-to-test", "created"),
            Some(SECRET),
        )
        .await;
    assert_eq!(status, 202);
    let settled = d.settled("github:ok-maintainer").await;
    assert_eq!(settled.state, DeliveryState::Done, "{settled:?}");
    let run = d.run_in(&settled.runs[0], DONE).await;
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(run.spec.commit, head);
    assert_eq!(run.spec.annotations["stagetime/pr"], "2");
    assert_eq!(
        d.final_states(&head, "stagetime").await,
        ["pending", "success"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_retest_needs_developer_access() {
    let Some(d) = deployment("report-gitlab-retest", |emu, _| {
        format!(
            r#"repositories:
  - name: diaspora
    provider: gitlab
    url: http://example.com/mike/diaspora
    api_url: {api}/api/v4
    webhook_secret_env: HOOK_SECRET
    token_env: FORGE_TOKEN
"#,
            api = emu.url
        )
    })
    .await
    else {
        return;
    };
    let log = d.path("log");
    let fixed = d.path("fixed");
    let mr = fixture("gitlab-merge_request.json");
    let sha = mr["object_attributes"]["last_commit"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.emulator.put_file(
        &sha,
        ".stagetime.yaml",
        &format!(
            "tasks:\n  - {{ name: ok, command: 'echo ok >> {l}' }}\n  - {{ name: flaky, command: 'echo flaky >> {l}; [ -f {f} ]' }}\n",
            l = log.display(),
            f = fixed.display()
        ),
    );
    let (status, body) = d.gitlab("Merge Request Hook", "mr-open", &mr).await;
    assert_eq!(status, 202, "{body}");
    let run = d.settled("gitlab:mr-open").await.runs[0].clone();
    assert_eq!(d.run_in(&run, DONE).await.state, RunState::Failed);
    assert_eq!(
        d.final_states(&sha, "stagetime")
            .await
            .last()
            .map(String::as_str),
        Some("failed")
    );
    let note = |uuid: &str, user_id: u64, username: &str| {
        let mut n = fixture("gitlab-note.json");
        n["project"] = mr["project"].clone();
        n["merge_request"]["iid"] = json!(1);
        n["user"]["id"] = json!(user_id);
        n["user"]["username"] = json!(username);
        (uuid.to_string(), n)
    };
    // A Reporter (20) may not; the reply is a note on the merge request.
    d.emulator.set_access_level(2, 20);
    let (uuid, n) = note("note-reporter", 2, "reporter");
    assert_eq!(d.gitlab("Note Hook", &uuid, &n).await.0, 202);
    assert_eq!(
        d.settled("gitlab:note-reporter").await.message.as_deref(),
        Some("reporter may not command runs")
    );
    assert!(
        d.emulator
            .calls()
            .iter()
            .any(|c| c.path == "/api/v4/projects/15/members/all/2")
    );
    let comments = d.emulator.comments();
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert_eq!(comments[0].0, "/api/v4/projects/15/merge_requests/1/notes");
    assert!(comments[0].1.starts_with("@reporter "), "{comments:?}");
    // A Developer (30) may.
    d.emulator.set_access_level(1, 30);
    std::fs::write(&fixed, "").unwrap();
    let (uuid, n) = note("note-developer", 1, "root");
    assert_eq!(d.gitlab("Note Hook", &uuid, &n).await.0, 202);
    assert_eq!(
        d.settled("gitlab:note-developer").await.runs,
        vec![run.clone()]
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while d
        .emulator
        .states(&sha, "stagetime")
        .last()
        .map(String::as_str)
        != Some("success")
    {
        assert!(Instant::now() < deadline, "{:?}", d.emulator.statuses(&sha));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(lines, ["flaky", "flaky", "ok"]);
}
