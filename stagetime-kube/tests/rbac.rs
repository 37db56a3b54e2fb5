//! The RBAC of the Helm chart (`deploy/helm/stagetime`) is exactly what the
//! code needs: a RevisionRun that succeeds, one deleted while running
//! (finalizer, cancel) and a housekeeping pass, on the emulator with the real
//! operator and worker code; every call they make must be allowed by the
//! rules bound to their ServiceAccounts, and every rule must have been needed
//! by some call — with the default values (Roles) and cluster-wide
//! (ClusterRoles). The chart's renderings are read from
//! `deploy/helm/tests/rendered/` (see support/rbac.rs).

mod support;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use stagetime_core::Backend;
use stagetime_core::backend::Housekeeping;
use stagetime_core::store::RunId;
use stagetime_core::{LogQuery, LogSource};
use stagetime_kube::TektonBackend;
use stagetime_kube::TektonLogSource;
use support::config;
use support::operator::{Stack, eventually, label, tech};
use support::rbac::{RENDERINGS, Rbac, assert_allowed, unused_rules};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rbac_allows_every_call_and_nothing_more() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    stack.app_with_quick_and_long().await;
    let api = stack.revision_runs();

    stack
        .revision_run("fine", None, vec![tech("prepare", "quick")])
        .await;
    eventually("fine to succeed", || async {
        let rr = api.get("fine").await.ok()?;
        (rr.status.as_ref()?.phase.as_deref() == Some("Succeeded")).then_some(())
    })
    .await;

    stack
        .revision_run(
            "doomed",
            None,
            vec![tech("prepare", "quick"), tech("soak", "long")],
        )
        .await;
    eventually("soak to run", || async {
        let prs = stack.pipelineruns().await;
        prs.iter()
            .any(|p| {
                label(p, "task") == "soak"
                    && p.status.as_ref().is_some_and(|s| !s.conditions.is_empty())
            })
            .then_some(())
    })
    .await;
    api.delete("doomed", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("soak to be cancelled", || async {
        let prs = stack.pipelineruns().await;
        prs.iter()
            .any(|p| {
                label(p, "task") == "soak"
                    && p.spec.status.as_deref() == Some("Cancelled")
                    && stagetime_kube::status::is_finished(p)
            })
            .then_some(())
    })
    .await;
    eventually("doomed to be gone", || async {
        api.get_opt("doomed").await.ok()?.is_none().then_some(())
    })
    .await;

    // The worker keeps a Tekton attempt's log tail when it ends
    // (`LogCapture` over `TektonLogSource`): PipelineRun -> its pods -> each
    // step's log, as the worker's client. A pod of fine's PipelineRun plays
    // Tekton's.
    let fine_pr = stack
        .pipelineruns()
        .await
        .into_iter()
        .find(|p| label(p, "task") == "prepare" && stagetime_kube::status::is_finished(p))
        .expect("fine's PipelineRun");
    let pr_name = fine_pr.metadata.name.clone().expect("name");
    let pod_name = format!("{pr_name}-prepare-pod");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "labels": {
            "tekton.dev/pipelineRun": pr_name, "tekton.dev/pipelineTask": "prepare"}},
        "spec": {"containers": [{"name": "step-build", "image": "busybox"}]},
        "status": {"phase": "Succeeded", "containerStatuses": [
            {"name": "step-build", "ready": false, "restartCount": 0, "image": "busybox", "imageID": "",
             "state": {"terminated": {"exitCode": 0}}}]},
    }))
    .expect("pod");
    Api::<Pod>::namespaced(stack.client.clone(), &stack.ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    stack
        .emu
        .append_pod_log(&stack.ns, &pod_name, "step-build", "built\n")
        .await;
    let key_label = |k: &str| {
        fine_pr
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(&format!("stagetime/{k}")))
            .cloned()
            .unwrap_or_default()
    };
    let pods_source = TektonLogSource::new(
        stack.emu.client_as(&stack.ns, "worker"),
        Some(stack.ns.clone()),
    );
    let chunks: Vec<_> = pods_source
        .open(LogQuery {
            run: RunId::new(key_label("run")).expect("run label"),
            task: Some("prepare".into()),
            attempt: Some(key_label("attempt").parse().expect("attempt label")),
            follow: false,
        })
        .await
        .expect("open the pod logs as the worker")
        .collect()
        .await;
    let text: String = chunks.into_iter().map(|c| c.expect("chunk").text).collect();
    assert!(text.contains("built"), "{text:?}");

    // The worker's housekeeping (deletes finished PipelineRuns), as the worker's client.
    let worker = TektonBackend::new(stack.emu.client_as(&stack.ns, "worker"), config(&stack.ns));
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
        + Duration::from_secs(3600).as_millis() as u64;
    let report = worker
        .housekeeping(&Housekeeping {
            ttl: Duration::from_secs(1),
            keep_last: 0,
            now_ms,
        })
        .await
        .expect("housekeeping");
    assert!(
        !report.deleted.is_empty(),
        "housekeeping deleted finished PipelineRuns"
    );
    let (emu, ns) = (stack.emu, stack.ns.clone());
    stack.stop().await;

    let requests = emu.requests_in(&ns).await;
    for rendering in RENDERINGS {
        let rbac = Rbac::load_rendering(rendering);
        for actor in ["operator", "worker"] {
            assert_allowed(&rbac, &requests, actor);
            let unused = unused_rules(&rbac, &requests, actor);
            assert!(
                unused.is_empty(),
                "{rendering}: the chart's RBAC of stagetime-{actor} grants what no call needed (least privilege): {unused:?}"
            );
        }
        assert!(
            rbac.granted("server").is_empty(),
            "{rendering}: the server needs no Kubernetes API access"
        );
        // Each Deployment runs as its own ServiceAccount.
        for d in rbac.documents("Deployment") {
            let name = d["metadata"]["name"].as_str().unwrap_or("");
            assert_eq!(
                d["spec"]["template"]["spec"]["serviceAccountName"], name,
                "{rendering}: Deployment {name} runs as the ServiceAccount of the same name"
            );
        }
        assert_eq!(rbac.documents("Deployment").count(), 3, "{rendering}");
    }
    // Namespaced by default, cluster-wide on request: never both.
    let default = Rbac::load_rendering(RENDERINGS[0]);
    let cluster = Rbac::load_rendering(RENDERINGS[1]);
    assert_eq!(default.documents("ClusterRole").count(), 0);
    assert_eq!(cluster.documents("Role").count(), 0);
}

#[test]
fn chart_deployments_have_probes_the_redis_secret_and_a_service() {
    let rbac = Rbac::load();
    let mut seen = Vec::new();
    for d in rbac.documents("Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap_or("").to_string();
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
        let ports: Vec<i64> = c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .filter_map(|p| p["containerPort"].as_i64())
            .collect();
        assert!(ports.contains(&9090), "{name}: metrics port");
        let args: Vec<&str> = c["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w == ["--metrics-listen", "0.0.0.0:9090"]),
            "{name}: {args:?}"
        );
        let env = |var: &str| {
            c["env"]
                .as_array()
                .expect("env")
                .iter()
                .find(|e| e["name"] == var)
                .unwrap_or_else(|| panic!("{name}: {var}"))
                .clone()
        };
        // The bundled Redis: the URL names its Service, the password comes
        // from the Secret (Kubernetes expands $(REDIS_PASSWORD) in the URL).
        assert_eq!(
            env("REDIS_URL")["value"],
            "redis://:$(REDIS_PASSWORD)@stagetime-redis.stagetime.svc:6379/0",
            "{name}"
        );
        assert_eq!(
            env("REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]["name"],
            "stagetime-redis",
            "{name}: the Redis password comes from the Secret"
        );
        assert!(
            c["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("ghcr.io/stagetime/stagetime:")),
            "{name}"
        );
        assert_eq!(
            c["command"][0],
            format!("/usr/local/bin/{}", name.trim_start_matches("stagetime-")),
            "{name}: the binary of the Dockerfile"
        );
        seen.push(name);
    }
    seen.sort();
    assert_eq!(
        seen,
        ["stagetime-operator", "stagetime-server", "stagetime-worker"]
    );
    // The server requires its token: the file comes from a required Secret.
    let server = rbac
        .documents("Deployment")
        .find(|d| d["metadata"]["name"] == "stagetime-server")
        .expect("server");
    let pod = &server["spec"]["template"]["spec"];
    let token_env = pod["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "STAGETIME_AUTH_TOKEN_FILE")
        .expect("STAGETIME_AUTH_TOKEN_FILE");
    assert_eq!(token_env["value"], "/var/run/stagetime/auth/token");
    let auth = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["secret"]["secretName"] == "stagetime-auth")
        .expect("the auth Secret volume");
    assert_eq!(
        auth["secret"]["optional"], false,
        "a missing token file stops the server"
    );
    let svc = rbac
        .documents("Service")
        .find(|s| s["metadata"]["name"] == "stagetime-server")
        .expect("the server's Service");
    let ports: Vec<(i64, &str)> = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().unwrap_or(0),
                p["name"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(ports, [(50051, "grpc"), (9090, "metrics")]);
    let dockerfile = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile"),
    )
    .expect("deploy/Dockerfile");
    for bin in ["server", "worker", "operator", "stagetime"] {
        assert!(dockerfile.contains(&format!("--example {bin}")), "{bin}");
    }
}
