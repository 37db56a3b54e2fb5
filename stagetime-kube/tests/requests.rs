//! Request shapes, checked with tower-test: URL, verb, label selector, patch
//! content type, delete propagation — and how responses are classified.

use std::time::Duration;

use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use stagetime_core::backend::{Backend, Housekeeping, LaunchKey, LaunchRequest, RunMeta};
use stagetime_core::spec::{PipelineSpec, TaskSpec};
use stagetime_core::{AttemptOutcome, ErrorKind, RunId};
use stagetime_kube::{RetryPolicy, TektonBackend, TektonConfig, render_pipelinerun};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Reply = tower_test::mock::SendResponse<Response<Body>>;

const BASE: &str = "/apis/tekton.dev/v1/namespaces/ci/pipelineruns";

fn backend() -> (TektonBackend, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let cfg = TektonConfig {
        rate_limit: None,
        retry: RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        },
        ..TektonConfig::new("ci")
    };
    (TektonBackend::new(Client::new(svc, "ci"), cfg), handle)
}

fn request(task: &str, attempt: u32) -> LaunchRequest {
    LaunchRequest {
        key: LaunchKey {
            run: RunId::new("run-1").unwrap(),
            task: task.into(),
            attempt,
        },
        run: RunMeta {
            repo: "demo".into(),
            commit: "abc1234".into(),
            ..RunMeta::default()
        },
        task: TaskSpec {
            name: task.into(),
            pipeline: Some(PipelineSpec {
                pipeline_ref: Some("p".into()),
                ..PipelineSpec::default()
            }),
            ..TaskSpec::default()
        },
        stage: Some(0),
        is_finally: false,
        timeout: None,
    }
}

fn object(req: &LaunchRequest) -> Value {
    serde_json::to_value(render_pipelinerun(req, &TektonConfig::new("ci")).unwrap()).unwrap()
}

fn with_condition(mut obj: Value, status: &str, reason: &str) -> Value {
    obj["status"] = json!({"conditions": [{"type": "Succeeded", "status": status, "reason": reason, "message": "m"}]});
    obj
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn query(parts: &http::request::Parts, key: &str) -> Option<String> {
    parts.uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| decode(v))
    })
}

async fn next(h: &mut Handle) -> (http::request::Parts, Value, Reply) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), h.next_request())
        .await
        .expect("a request within 5 s")
        .expect("a request");
    let (parts, body) = req.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (parts, value, send)
}

fn respond(send: Reply, code: u16, body: Value) {
    send.send_response(
        Response::builder()
            .status(StatusCode::from_u16(code).unwrap())
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("refused: {reason}"), "reason": reason, "code": code})
}

#[tokio::test]
async fn launch_posts_the_rendered_object() {
    let (b, mut h) = backend();
    let req = request("build", 1);
    let want = object(&req);
    let task = tokio::spawn(async move { b.launch(req).await });
    let (parts, body, send) = next(&mut h).await;
    assert_eq!(parts.method, Method::POST);
    assert_eq!(parts.uri.path(), BASE);
    assert_eq!(parts.headers["content-type"], "application/json");
    assert_eq!(body, want);
    respond(send, 201, body);
    let launched = task.await.unwrap().unwrap();
    assert!(launched.created);
    assert_eq!(launched.handle, want["metadata"]["name"]);
}

#[tokio::test]
async fn already_exists_adopts_the_same_attempt() {
    let (b, mut h) = backend();
    let req = request("build", 1);
    let existing = with_condition(object(&req), "Unknown", "Running");
    let name = existing["metadata"]["name"].as_str().unwrap().to_string();
    let task = tokio::spawn(async move { b.launch(req).await });
    let (_, _, send) = next(&mut h).await;
    respond(send, 409, status(409, "AlreadyExists"));
    let (parts, _, send) = next(&mut h).await;
    assert_eq!(parts.method, Method::GET);
    assert_eq!(parts.uri.path(), format!("{BASE}/{name}"));
    respond(send, 200, existing);
    let launched = task.await.unwrap().unwrap();
    assert!(!launched.created, "adopted, not created");
    assert_eq!(launched.handle, name);
}

#[tokio::test]
async fn already_exists_with_foreign_labels_is_an_error() {
    let (b, mut h) = backend();
    let req = request("build", 1);
    let mut foreign = object(&req);
    foreign["metadata"]["labels"]["stagetime/run"] = json!("another-run");
    let task = tokio::spawn(async move { b.launch(req).await });
    let (_, _, send) = next(&mut h).await;
    respond(send, 409, status(409, "AlreadyExists"));
    let (_, _, send) = next(&mut h).await;
    respond(send, 200, foreign);
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    let msg = err.to_string();
    assert!(
        msg.contains("another-run") && msg.contains("run-1/build#1"),
        "{msg}"
    );
}

#[tokio::test]
async fn unavailable_is_retried_then_reported() {
    let (b, mut h) = backend();
    let req = request("build", 1);
    let b2 = b.clone();
    let r2 = req.clone();
    let task = tokio::spawn(async move { b2.launch(r2).await });
    let (_, _, send) = next(&mut h).await;
    respond(send, 503, status(503, "ServiceUnavailable"));
    let (_, _, send) = next(&mut h).await;
    respond(send, 429, status(429, "TooManyRequests"));
    let (_, body, send) = next(&mut h).await;
    respond(send, 201, body);
    assert!(
        task.await.unwrap().unwrap().created,
        "the third try succeeds"
    );

    // Three failures in a row: Unavailable (retryable by the engine).
    let task = tokio::spawn(async move { b.launch(req).await });
    for _ in 0..3 {
        let (_, _, send) = next(&mut h).await;
        respond(send, 500, status(500, "InternalError"));
    }
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.is_retryable());
}

#[tokio::test]
async fn forbidden_names_verb_and_resource() {
    let (b, mut h) = backend();
    let task = tokio::spawn(async move { b.launch(request("build", 1)).await });
    let (_, _, send) = next(&mut h).await;
    respond(send, 403, status(403, "Forbidden"));
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Forbidden);
    let msg = err.to_string();
    assert!(
        msg.contains("\"create\"")
            && msg.contains("pipelineruns.tekton.dev")
            && msg.contains("\"ci\""),
        "{msg}"
    );
}

#[tokio::test]
async fn cancel_merge_patches_spec_status() {
    let (b, mut h) = backend();
    let req = request("build", 2);
    let running = with_condition(object(&req), "Unknown", "Running");
    let name = running["metadata"]["name"].as_str().unwrap().to_string();
    let key = req.key.clone();
    let task = tokio::spawn(async move { b.cancel(&key).await });
    let (parts, _, send) = next(&mut h).await;
    assert_eq!(
        (parts.method.clone(), parts.uri.path().to_string()),
        (Method::GET, format!("{BASE}/{name}"))
    );
    respond(send, 200, running.clone());
    let (parts, body, send) = next(&mut h).await;
    assert_eq!(parts.method, Method::PATCH);
    assert_eq!(parts.uri.path(), format!("{BASE}/{name}"));
    assert_eq!(
        parts.headers["content-type"],
        "application/merge-patch+json"
    );
    assert_eq!(body, json!({"spec": {"status": "Cancelled"}}));
    respond(send, 200, running);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn cancel_of_unknown_or_finished_attempts_writes_nothing() {
    let (b, mut h) = backend();
    let req = request("build", 1);
    let key = req.key.clone();
    let b2 = b.clone();
    let task = tokio::spawn(async move { b2.cancel(&key).await });
    let (parts, _, send) = next(&mut h).await;
    assert_eq!(parts.method, Method::GET);
    respond(send, 404, status(404, "NotFound"));
    task.await.unwrap().expect("unknown: ok");

    let key = req.key.clone();
    let task = tokio::spawn(async move { b.cancel(&key).await });
    let (_, _, send) = next(&mut h).await;
    respond(send, 200, with_condition(object(&req), "True", "Succeeded"));
    task.await.unwrap().expect("finished: ok");
    assert!(
        !matches!(
            tokio::time::timeout(Duration::from_millis(100), h.next_request()).await,
            Ok(Some(_))
        ),
        "no patch for a finished PipelineRun"
    );
}

#[tokio::test]
async fn reconcile_lists_by_run_label() {
    let (b, mut h) = backend();
    let done = with_condition(object(&request("a", 1)), "True", "Succeeded");
    let failed = with_condition(object(&request("b", 1)), "False", "Failed");
    let running = with_condition(object(&request("c", 1)), "Unknown", "Running");
    let task = tokio::spawn(async move { b.reconcile(&RunId::new("run-1").unwrap()).await });
    let (parts, _, send) = next(&mut h).await;
    assert_eq!(parts.method, Method::GET);
    assert_eq!(parts.uri.path(), BASE);
    assert_eq!(
        query(&parts, "labelSelector").as_deref(),
        Some("stagetime/managed-by=stagetime,stagetime/run=run-1")
    );
    respond(
        send,
        200,
        json!({"apiVersion": "tekton.dev/v1", "kind": "PipelineRunList", "metadata": {"resourceVersion": "9"},
               "items": [done, failed, running]}),
    );
    let mut found = task.await.unwrap().unwrap();
    found.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(found.len(), 2, "the running one is not reported: {found:?}");
    assert_eq!(found[0].key.task, "a");
    assert_eq!(found[0].outcome, AttemptOutcome::Succeeded);
    assert_eq!(
        found[1].outcome,
        AttemptOutcome::Failed {
            message: "Failed: m".into()
        }
    );
}

#[tokio::test]
async fn housekeeping_deletes_with_background_propagation() {
    let (b, mut h) = backend();
    let mut old = with_condition(object(&request("old", 1)), "True", "Succeeded");
    old["status"]["completionTime"] = json!("2024-01-01T00:00:00Z");
    let mut new = with_condition(object(&request("new", 1)), "False", "Failed");
    new["status"]["completionTime"] = json!("2024-01-02T00:00:00Z");
    let running = with_condition(object(&request("running", 1)), "Unknown", "Running");
    let old_name = old["metadata"]["name"].as_str().unwrap().to_string();
    let policy = Housekeeping {
        ttl: Duration::from_secs(3600),
        keep_last: 1,
        now_ms: 1_800_000_000_000,
    };
    let task = tokio::spawn(async move { b.housekeeping(&policy).await });
    let (parts, _, send) = next(&mut h).await;
    assert_eq!(
        query(&parts, "labelSelector").as_deref(),
        Some("stagetime/managed-by=stagetime")
    );
    respond(
        send,
        200,
        json!({"metadata": {"resourceVersion": "3"}, "items": [old.clone(), new, running]}),
    );
    let (parts, body, send) = next(&mut h).await;
    assert_eq!(parts.method, Method::DELETE);
    assert_eq!(parts.uri.path(), format!("{BASE}/{old_name}"));
    assert_eq!(body["propagationPolicy"], "Background");
    respond(send, 200, old);
    let report = task.await.unwrap().unwrap();
    assert_eq!(
        report.deleted,
        [old_name],
        "the newest per repo and running ones stay"
    );
}

#[tokio::test]
async fn observe_watches_with_the_managed_selector() {
    let (b, mut h) = backend();
    let mut obs = b.observe();
    let done = with_condition(object(&request("a", 1)), "False", "PipelineRunTimeout");
    let (parts, _, send) = next(&mut h).await;
    assert_eq!(parts.method, Method::GET);
    assert_eq!(
        query(&parts, "labelSelector").as_deref(),
        Some("stagetime/managed-by=stagetime")
    );
    respond(
        send,
        200,
        json!({"metadata": {"resourceVersion": "5"}, "items": [done]}),
    );
    let (parts, _, _send) = next(&mut h).await;
    assert_eq!(query(&parts, "watch").as_deref(), Some("true"));
    assert_eq!(
        query(&parts, "resourceVersion").as_deref(),
        Some("5"),
        "the watch continues from the list"
    );
    assert_eq!(
        query(&parts, "labelSelector").as_deref(),
        Some("stagetime/managed-by=stagetime")
    );
    let o = tokio::time::timeout(Duration::from_secs(5), obs.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.key.task, "a");
    assert_eq!(
        o.outcome,
        AttemptOutcome::TimedOut {
            message: "PipelineRunTimeout: m".into()
        }
    );
}

#[tokio::test]
async fn cancel_mode_run_finally_is_configurable() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let cfg = TektonConfig {
        rate_limit: None,
        cancel_mode: stagetime_kube::CancelMode::CancelledRunFinally,
        ..TektonConfig::new("ci")
    };
    let b = TektonBackend::new(Client::new(svc, "ci"), cfg);
    let req = request("build", 1);
    let key = req.key.clone();
    let task = tokio::spawn(async move { b.cancel(&key).await });
    let (_, _, send) = next(&mut h).await;
    respond(
        send,
        200,
        with_condition(object(&req), "Unknown", "Running"),
    );
    let (parts, body, send) = next(&mut h).await;
    assert_eq!(parts.method, Method::PATCH);
    assert_eq!(body, json!({"spec": {"status": "CancelledRunFinally"}}));
    respond(send, 200, object(&req));
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn client_side_rate_limit_paces_api_calls() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let cfg = TektonConfig {
        rate_limit: Some(stagetime_kube::RateLimit {
            per_second: 2.0,
            burst: 1,
        }),
        ..TektonConfig::new("ci")
    };
    let b = TektonBackend::new(Client::new(svc, "ci"), cfg);
    let task = tokio::spawn(async move {
        for _ in 0..3 {
            b.reconcile(&RunId::new("run-1").unwrap()).await.unwrap();
        }
    });
    let start = tokio::time::Instant::now();
    let mut at = Vec::new();
    for _ in 0..3 {
        let (_, _, send) = next(&mut h).await;
        at.push(start.elapsed());
        respond(
            send,
            200,
            json!({"metadata": {"resourceVersion": "1"}, "items": []}),
        );
    }
    task.await.unwrap();
    assert_eq!(
        at[0],
        Duration::ZERO,
        "the burst allows the first call at once"
    );
    assert!(
        at[1] >= Duration::from_millis(500) && at[2] >= Duration::from_millis(1000),
        "{at:?}"
    );
}
