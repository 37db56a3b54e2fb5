//! The operator end to end on the Kubernetes-API emulator, with a real
//! redis-server as the shared store and an in-process engine with the Tekton
//! backend as the worker; a simulated Tekton controller ends PipelineRuns.
//!
//! * a Repo, two templates and a RevisionRun: PipelineRuns appear stage by
//!   stage, each owned by the RevisionRun; the status ends Succeeded with its
//!   conditions; reconciling again submits nothing new;
//! * deleting a running RevisionRun cancels its PipelineRuns (finalizer);
//! * changing a running RevisionRun submits a new run and cancels the old one;
//! * invalid RevisionRuns (missing Repo, missing template, bad override) get
//!   a `Ready=False` condition with the reason, and recover when fixed.
//!
//! Each test also checks that every Kubernetes call the operator and the
//! worker made is allowed by the RBAC of the Helm chart (`deploy/helm/stagetime`).

mod support;

use std::collections::BTreeSet;

use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use stagetime_core::RunState;
use stagetime_kube::crd::RevisionRun;
use stagetime_kube::operator::FINALIZER;
use stagetime_kube::operator::status::{CONDITION_READY, CONDITION_SUCCEEDED, condition};
use stagetime_kube::types::PipelineRun;
use support::operator::{Stack, eventually, label, tech};
use support::rbac::{Rbac, assert_allowed};

fn cond(rr: &RevisionRun, t: &str) -> Option<(String, String, String)> {
    let c = condition(rr.status.as_ref()?, t)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// From the emulator's request log (in serving order): PipelineRun creations
/// as (request index, name, stage label), and for each PipelineRun the index
/// of the status patch that ended it (Succeeded True or False).
async fn pipelinerun_history(
    stack: &Stack,
) -> (
    Vec<(usize, String, String)>,
    std::collections::BTreeMap<String, usize>,
) {
    let base = format!("/namespaces/{}/pipelineruns", stack.ns);
    let mut created = Vec::new();
    let mut finished = std::collections::BTreeMap::new();
    for (i, r) in stack.emu.requests().await.iter().enumerate() {
        let path = r["path"].as_str().unwrap_or("");
        if !path.contains(&base) {
            continue;
        }
        let body: serde_json::Value =
            serde_json::from_str(r["body"].as_str().unwrap_or("")).unwrap_or_default();
        if r["method"] == "POST" {
            let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
            let stage = body["metadata"]["labels"]["stagetime/stage"]
                .as_str()
                .unwrap_or("")
                .to_string();
            created.push((i, name, stage));
        } else if r["method"] == "PATCH" && path.ends_with("/status") {
            let ended = body["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["status"] == "True" || c["status"] == "False")
            });
            if ended {
                let name = path
                    .trim_end_matches("/status")
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_string();
                finished.entry(name).or_insert(i);
            }
        }
    }
    (created, finished)
}

async fn check_rbac(stack: &Stack) {
    let requests = stack.emu.requests_in(&stack.ns).await;
    let rbac = Rbac::load();
    for actor in ["operator", "worker"] {
        assert!(
            requests.iter().any(|r| r["actor"] == actor),
            "the {actor} made calls"
        );
        assert_allowed(&rbac, &requests, actor);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_run_runs_stage_by_stage_and_succeeds() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    stack.repo("app", "main").await;
    stack
        .template("lint", 0, &["outcome=succeed", "delay_ms=300"])
        .await;
    stack
        .template("docker", 1, &["outcome=succeed", "delay_ms=100"])
        .await;
    let mut unit = tech("unit", "lint");
    unit.params = Some("delay_ms=500; mode=unit;".into());
    let mut optional = tech("optional", "docker");
    optional.canfail = true;
    optional.params = Some("outcome=fail".into());
    let rr = stack
        .revision_run(
            "demo",
            None,
            vec![
                tech("lint", "lint"),
                unit,
                tech("image", "docker"),
                optional,
            ],
        )
        .await;
    let uid = rr.uid().expect("uid");

    // Stage by stage: whenever a stage-1 PipelineRun exists, every stage-0
    // one has finished (and stage 1 starts only once stage 0 is complete).
    let api = stack.revision_runs();
    let done = eventually("the RevisionRun to finish", || async {
        let prs = stack.pipelineruns().await;
        let stage0: Vec<&PipelineRun> = prs.iter().filter(|p| label(p, "stage") == "0").collect();
        let stage1: Vec<&PipelineRun> = prs.iter().filter(|p| label(p, "stage") == "1").collect();
        if !stage1.is_empty() {
            assert_eq!(stage0.len(), 2, "both stage-0 tasks ran before stage 1");
            assert!(
                stage0
                    .iter()
                    .all(|p| stagetime_kube::status::is_finished(p)),
                "stage 1 started before stage 0 finished"
            );
        }
        let rr = api.get("demo").await.ok()?;
        let phase = rr.status.as_ref()?.phase.clone()?;
        (phase == "Succeeded" || phase == "Failed").then_some(rr)
    })
    .await;
    // The same from the API server's request log, in the order it served
    // them: every stage-1 PipelineRun was created after the last stage-0 one
    // was completed by (simulated) Tekton.
    let (created, finished) = pipelinerun_history(&stack).await;
    let last_stage0_end = created
        .iter()
        .filter(|(_, _, stage)| stage == "0")
        .map(|(_, name, _)| {
            finished
                .get(name)
                .copied()
                .expect("stage-0 PipelineRun finished")
        })
        .max()
        .expect("stage-0 PipelineRuns");
    let first_stage1_create = created
        .iter()
        .filter(|(_, _, stage)| stage == "1")
        .map(|(i, _, _)| *i)
        .min()
        .expect("stage-1 PipelineRuns");
    assert!(
        last_stage0_end < first_stage1_create,
        "stage 1 was created (request {first_stage1_create}) only after stage 0 completed (request {last_stage0_end})"
    );
    let status = done.status.clone().expect("status");
    assert_eq!(status.phase.as_deref(), Some("Succeeded"), "{status:#?}");
    assert_eq!(status.observed_generation, done.metadata.generation);
    assert_eq!(
        status.revision.as_deref(),
        Some("main"),
        "empty revision: the Repo's branch"
    );
    assert_eq!(
        cond(&done, CONDITION_READY).map(|c| (c.0, c.1)),
        Some(("True".into(), "Submitted".into()))
    );
    assert_eq!(
        cond(&done, CONDITION_SUCCEEDED).map(|c| (c.0, c.1)),
        Some(("True".into(), "Succeeded".into()))
    );
    let stages: Vec<(&str, &str)> = status
        .stages
        .iter()
        .map(|s| (s.stage.as_str(), s.phase.as_str()))
        .collect();
    assert_eq!(stages, [("0", "Succeeded"), ("1", "Succeeded")]);
    assert!(done.finalizers().iter().any(|f| f == FINALIZER));

    // Every task names its PipelineRun; each exists and is owned by the RevisionRun.
    let prs = stack.pipelineruns().await;
    assert_eq!(prs.len(), 4, "one PipelineRun per task");
    for t in &status.tasks {
        let name = t.pipeline_run.as_deref().expect("pipelineRun name");
        let pr = prs.iter().find(|p| p.name_any() == name).expect("exists");
        let owners = pr.owner_references();
        assert_eq!(owners.len(), 1, "{owners:?}");
        assert_eq!(owners[0].kind, "RevisionRun");
        assert_eq!(owners[0].name, "demo");
        assert_eq!(owners[0].uid, uid);
        assert_eq!(label(pr, "task"), t.id);
    }
    let unit = prs
        .iter()
        .find(|p| label(p, "task") == "unit")
        .expect("unit");
    let params: BTreeSet<(String, String)> = unit
        .spec
        .params
        .iter()
        .filter_map(|p| match &p.value {
            stagetime_kube::types::ParamValue::String(s) => Some((p.name.clone(), s.clone())),
            _ => None,
        })
        .collect();
    assert!(
        params.contains(&("mode".into(), "unit".into())),
        "override: {params:?}"
    );
    assert!(
        params.contains(&("outcome".into(), "succeed".into())),
        "default: {params:?}"
    );
    assert_eq!(
        status
            .tasks
            .iter()
            .find(|t| t.id == "optional")
            .map(|t| t.status.as_str()),
        Some("failed"),
        "allowed to fail"
    );

    // Reconciling again (a metadata change, and the operator's own status
    // updates) submits nothing new: one run, one submission.
    api.patch(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await
    .expect("touch");
    eventually("the touch to be reconciled", || async {
        let n = stack
            .metrics
            .reconciles
            .get_or_create(&stagetime_kube::operator::reconcile::ResultLabel {
                result: "unchanged".into(),
            })
            .get();
        (n > 0).then_some(())
    })
    .await;
    assert_eq!(stack.metrics.submitted.get(), 1, "submitted once");
    let runs = stack
        .store
        .list_runs(&stagetime_core::store::RunFilter {
            repo: Some("app".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("list runs");
    assert_eq!(runs.runs.len(), 1, "one run in the store");
    assert_eq!(stack.pipelineruns().await.len(), 4, "no new PipelineRuns");
    let run = stack.run(status.run_id.as_deref().expect("run id")).await;
    assert_eq!(run.state, RunState::Succeeded);

    // Once the finished run expires from the store, the status stays the
    // record of it: reconciling again does not run it again.
    let far_future = run.updated_ms + 366 * 24 * 3600 * 1000;
    assert!(stack.store.purge_expired(far_future).await.expect("purge") >= 1);
    api.patch(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touched": "again"}}})),
    )
    .await
    .expect("touch");
    eventually("the expired run to be noticed", || async {
        let n = stack
            .metrics
            .reconciles
            .get_or_create(&stagetime_kube::operator::reconcile::ResultLabel {
                result: "expired".into(),
            })
            .get();
        (n > 0).then_some(())
    })
    .await;
    assert_eq!(stack.metrics.submitted.get(), 1, "not submitted again");
    let after = api.get("demo").await.expect("get");
    assert_eq!(
        after.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded")
    );
    assert_eq!(stack.pipelineruns().await.len(), 4, "no new PipelineRuns");
    check_rbac(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_revision_run_cancels_its_pipelineruns() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    stack.app_with_quick_and_long().await;
    stack
        .revision_run(
            "doomed",
            Some("4f1c2e9a77"),
            vec![tech("prepare", "quick"), tech("soak", "long")],
        )
        .await;
    let api = stack.revision_runs();
    let rr = eventually("the long PipelineRun to run", || async {
        let prs = stack.pipelineruns().await;
        let running = prs.iter().any(|p| {
            label(p, "task") == "soak"
                && p.status.as_ref().is_some_and(|s| !s.conditions.is_empty())
        });
        let rr = api.get("doomed").await.ok()?;
        let st = rr.status.as_ref()?;
        // The status follows the run: stage 1 running, as the PipelineRun says.
        (running && st.phase.as_deref() == Some("Running") && st.stage.as_deref() == Some("1"))
            .then_some(rr)
    })
    .await;
    let run_id = rr
        .status
        .as_ref()
        .and_then(|s| s.run_id.clone())
        .expect("run id");
    api.delete("doomed", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("the RevisionRun to be gone (finalizer removed)", || async {
        api.get_opt("doomed").await.ok()?.is_none().then_some(())
    })
    .await;
    let soak = eventually("the PipelineRun to be cancelled", || async {
        let prs = stack.pipelineruns().await;
        let soak = prs.into_iter().find(|p| label(p, "task") == "soak")?;
        let reason = soak.status.as_ref()?.conditions.first()?.reason.clone()?;
        (reason == "Cancelled").then_some(soak)
    })
    .await;
    assert_eq!(
        soak.spec.status.as_deref(),
        Some("Cancelled"),
        "cancelled by the worker"
    );
    let run = eventually("the run to be cancelled", || async {
        let r = stack.run(&run_id).await;
        r.state.is_finished().then_some(r)
    })
    .await;
    assert_eq!(run.state, RunState::Cancelled);
    check_rbac(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_revision_runs_get_a_failure_condition() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    let api = stack.revision_runs();
    let reason_of = |name: &'static str| {
        let api = api.clone();
        move || {
            let api = api.clone();
            async move {
                let rr = api.get(name).await.ok()?;
                let (status, reason, message) = cond(&rr, CONDITION_READY)?;
                Some((status, reason, message, rr))
            }
        }
    };
    // No Repo yet.
    let mut bad = tech("build", "docker");
    bad.params = Some("tag=v1; x".into());
    stack
        .revision_run("orphan", None, vec![tech("build", "docker")])
        .await;
    stack.revision_run("broken", None, vec![bad]).await;
    let (status, reason, message, rr) = eventually("RepoNotFound", {
        let probe = reason_of("orphan");
        move || {
            let probe = probe.clone();
            async move { probe().await.filter(|c| c.1 == "RepoNotFound") }
        }
    })
    .await;
    assert_eq!(status, "False");
    assert_eq!(
        message,
        format!("Repo \"app\" not found in namespace {:?}", stack.ns),
        "{reason}"
    );
    assert_eq!(
        rr.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Error")
    );
    assert_eq!(
        cond(&rr, CONDITION_SUCCEEDED).map(|c| (c.0, c.1)),
        Some(("Unknown".into(), "NotSubmitted".into()))
    );

    // The Repo appears: now the template is missing (the Repo's watch re-triggers).
    stack.repo("app", "main").await;
    let (_, _, message, _) = eventually("TemplateNotFound", {
        let probe = reason_of("orphan");
        move || {
            let probe = probe.clone();
            async move { probe().await.filter(|c| c.1 == "TemplateNotFound") }
        }
    })
    .await;
    assert!(message.contains("\"docker\""), "{message}");

    // The template appears: `orphan` runs; `broken` stays invalid, naming the field.
    stack.template("docker", 0, &["outcome=succeed"]).await;
    eventually("orphan to succeed", || async {
        let rr = api.get("orphan").await.ok()?;
        (rr.status.as_ref()?.phase.as_deref() == Some("Succeeded")).then_some(())
    })
    .await;
    let (status, _, message, rr) = eventually("InvalidSpec", {
        let probe = reason_of("broken");
        move || {
            let probe = probe.clone();
            async move { probe().await.filter(|c| c.1 == "InvalidSpec") }
        }
    })
    .await;
    assert_eq!(status, "False");
    assert_eq!(message, "technologies[0].params: entry \"x\" has no '='");
    assert_eq!(
        rr.status.as_ref().and_then(|s| s.run_id.as_deref()),
        None,
        "nothing submitted"
    );

    // Fixing the override (a new generation) submits it.
    api.patch(
        "broken",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"technologies": [{"id": "build", "kind": "docker", "params": "tag=v1"}]}})),
    )
    .await
    .expect("fix");
    let fixed = eventually("broken to succeed once fixed", || async {
        let rr = api.get("broken").await.ok()?;
        (rr.status.as_ref()?.phase.as_deref() == Some("Succeeded")).then_some(rr)
    })
    .await;
    assert_eq!(fixed.metadata.generation, Some(2));
    assert_eq!(
        fixed.status.as_ref().and_then(|s| s.observed_generation),
        Some(2)
    );
    assert!(
        fixed
            .status
            .as_ref()
            .and_then(|s| s.run_id.as_deref())
            .is_some_and(|id| id.ends_with("-g2")),
        "{:?}",
        fixed.status
    );
    assert_eq!(
        stack.pipelineruns().await.len(),
        2,
        "one PipelineRun each for orphan and broken, none for the invalid generations"
    );
    check_rbac(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_running_revision_run_supersedes_its_run() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    stack.repo("app", "main").await;
    stack.template("long", 0, &["outcome=hang"]).await;
    stack.template("quick", 0, &["outcome=succeed"]).await;
    stack
        .revision_run("evolving", None, vec![tech("soak", "long")])
        .await;
    let api = stack.revision_runs();
    let first = eventually("generation 1 to run", || async {
        let rr = api.get("evolving").await.ok()?;
        let st = rr.status.as_ref()?;
        (st.phase.as_deref() == Some("Running") && st.tasks.first()?.status == "running")
            .then(|| st.run_id.clone())
            .flatten()
    })
    .await;
    api.patch(
        "evolving",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"technologies": [{"id": "check", "kind": "quick"}]}})),
    )
    .await
    .expect("change the spec");
    let done = eventually("generation 2 to succeed", || async {
        let rr = api.get("evolving").await.ok()?;
        (rr.status.as_ref()?.phase.as_deref() == Some("Succeeded")).then_some(rr)
    })
    .await;
    let second = done
        .status
        .as_ref()
        .and_then(|s| s.run_id.clone())
        .expect("run id");
    assert_ne!(first, second, "a new generation is a new run");
    assert!(second.ends_with("-g2"), "{second}");
    assert_eq!(
        done.status.as_ref().and_then(|s| s.observed_generation),
        Some(2)
    );
    let old = eventually("generation 1's run to be cancelled", || async {
        let r = stack.run(&first).await;
        r.state.is_finished().then_some(r)
    })
    .await;
    assert_eq!(old.state, RunState::Cancelled, "superseded");
    eventually("generation 1's PipelineRun to be cancelled", || async {
        let prs = stack.pipelineruns().await;
        prs.iter()
            .any(|p| label(p, "task") == "soak" && p.spec.status.as_deref() == Some("Cancelled"))
            .then_some(())
    })
    .await;
    check_rbac(&stack).await;
    stack.stop().await;
}
