//! Fuzzing of RevisionRun custom resources: whatever JSON a user applies,
//! reading its spec and laying each technology over a (just as arbitrary)
//! PipelineRunTemplate never panics, and the run that results is validated
//! by the same `Plan::build` as every other entry point.

use proptest::prelude::*;
use serde_json::json;
use stagetime_core::plan::Plan;
use stagetime_kube::crd::{PipelineRunTemplate, PipelineRunTemplateSpec, RevisionRunSpec};
use stagetime_kube::operator::merge_technology;

fn compact() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "",
        "k=v",
        "k=v; k2=v2",
        "=x",
        "k",
        "a=b=c",
        "url=https://g/x.git; revision=main; pathInRepo=p.yaml",
        "source=standard,ReadWriteOnce,1Gi",
        "c=,,",
        "t=a,b; t=c",
        ";;;",
        "platforms=amd64;arm64",
    ])
    .prop_map(String::from)
}

fn stage() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        (0i64..4).prop_map(|n| json!(n)),
        Just(json!(99)),
        Just(json!(-1)),
        Just(json!(5_000_000_000i64)),
        Just(json!(i64::MAX)),
        Just(json!(1.5)),
        Just(json!("1")),
        Just(json!(null)),
    ]
}

/// A `spec` as a user might apply it: fields of the wrong type included.
fn cr_spec() -> impl Strategy<Value = serde_json::Value> {
    let technology = (
        prop::sample::select(vec!["build", "test", "", "Bad_Id", "x-", "build"]),
        prop::sample::select(vec!["docker", "missing", ""]),
        stage(),
        prop::option::of(compact()),
        prop::option::of(compact()),
        prop::option::of(compact()),
        prop::option::of(compact()),
        any::<bool>(),
    )
        .prop_map(
            |(id, kind, stage, resolver, params, listparams, vclaims, canfail)| {
                json!({
                    "id": id, "kind": kind, "stage": stage, "canfail": canfail,
                    "resolver": resolver, "params": params,
                    "listparams": listparams, "vclaims": vclaims,
                })
            },
        );
    (
        prop::sample::select(vec!["demo", "", " "]),
        prop::option::of(prop::sample::select(vec!["main", "4f1c2e9a77", ""])),
        prop::collection::vec(technology, 0..5),
    )
        .prop_map(|(repository, revision, technologies)| {
            json!({"repository": repository, "revision": revision, "technologies": technologies})
        })
}

fn template() -> impl Strategy<Value = PipelineRunTemplate> {
    (
        prop_oneof![0i64..3, Just(-1), Just(i64::MAX)],
        prop::collection::vec(compact(), 0..3),
        prop::collection::vec(compact(), 0..3),
        prop::collection::vec(compact(), 0..3),
        prop::collection::vec(compact(), 0..3),
    )
        .prop_map(|(stage, resolver, params, vclaims, listparams)| {
            PipelineRunTemplate::new(
                "docker",
                PipelineRunTemplateSpec {
                    stage,
                    resolver,
                    params,
                    vclaims,
                    listparams,
                },
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn reading_and_merging_any_revision_run_never_panics(spec in cr_spec(), t in template()) {
        // Wrong types are the API server's (and serde's) to refuse.
        let Ok(spec) = serde_json::from_value::<RevisionRunSpec>(spec) else {
            return Ok(());
        };
        let mut errors = stagetime_core::FieldErrors::default();
        let tasks = spec
            .technologies
            .iter()
            .enumerate()
            .map(|(i, tech)| merge_technology(tech, &format!("technologies[{i}]"), &t, &mut errors))
            .collect();
        let run = stagetime_core::RevisionRunSpec {
            repo: "demo".into(),
            commit: "c".into(),
            tasks,
            ..stagetime_core::RevisionRunSpec::default()
        };
        if let Ok(plan) = Plan::build(run) {
            for task in &plan.tasks {
                prop_assert!(task.stage.is_some());
            }
        }
    }
}
