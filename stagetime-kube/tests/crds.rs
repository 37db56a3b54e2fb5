//! The CRD manifests committed under `deploy/helm/stagetime/crds/` (the
//! chart's, which Helm installs before the rest) are exactly what the Rust
//! types generate. Regenerate them after changing `src/crd.rs`:
//!
//! ```text
//! UPDATE_CRDS=1 cargo test -p stagetime-kube --test crds
//! ```

use std::path::PathBuf;

use stagetime_kube::crd::{crd_file_name, crd_yaml, crds};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("helm")
        .join("stagetime")
        .join("crds")
}

#[test]
fn committed_crds_match_the_types() {
    let update = std::env::var_os("UPDATE_CRDS").is_some_and(|v| v == "1");
    let mut drifted = Vec::new();
    let mut expected_files = Vec::new();
    for crd in crds() {
        let file = crd_file_name(&crd);
        let want = crd_yaml(&crd).expect("yaml");
        let path = dir().join(&file);
        expected_files.push(file.clone());
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            if update {
                std::fs::create_dir_all(dir()).expect("mkdir the chart's crds/");
                std::fs::write(&path, &want).expect("write the CRD");
                eprintln!("updated {}", path.display());
            } else {
                drifted.push(file);
            }
        }
    }
    assert!(
        drifted.is_empty(),
        "deploy/helm/stagetime/crds/ is out of date with stagetime-kube/src/crd.rs: {drifted:?}\n\
         regenerate with: UPDATE_CRDS=1 cargo test -p stagetime-kube --test crds"
    );
    let mut present: Vec<String> = std::fs::read_dir(dir())
        .expect("deploy/helm/stagetime/crds exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(
        present, expected_files,
        "deploy/helm/stagetime/crds/ holds exactly the generated CRDs (remove stale files)"
    );
}

#[test]
fn generated_crds_read_back_as_crds() {
    for crd in crds() {
        let text = crd_yaml(&crd).expect("yaml");
        let back: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            yaml_serde::from_str(text.split_once("---\n").expect("header").1).expect("reads back");
        assert_eq!(back, crd);
    }
}

#[test]
fn the_example_resolves_to_a_valid_run() {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use stagetime_kube::crd::{PipelineRunTemplate, Repo, RevisionRun};
    use stagetime_kube::operator::{RunIdentity, build_run_spec};

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("examples")
        .join("revisionrun.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/examples/revisionrun.yaml");
    let (mut repos, mut templates, mut runs) = (Vec::new(), BTreeMap::new(), Vec::new());
    for doc in yaml_serde::Deserializer::from_str(&text) {
        let v = serde_json::Value::deserialize(doc).expect("yaml");
        let with_ns = |mut v: serde_json::Value| {
            v["metadata"]["namespace"] = "stagetime".into();
            v["metadata"]["uid"] = "0b7c2a9e-1111-2222-3333-444455556666".into();
            v
        };
        match v["kind"].as_str() {
            Some("Repo") => repos.push(serde_json::from_value::<Repo>(with_ns(v)).expect("Repo")),
            Some("PipelineRunTemplate") => {
                let t: PipelineRunTemplate =
                    serde_json::from_value(with_ns(v)).expect("PipelineRunTemplate");
                templates.insert(t.metadata.name.clone().expect("name"), t);
            }
            Some("RevisionRun") => {
                runs.push(serde_json::from_value::<RevisionRun>(with_ns(v)).expect("RevisionRun"))
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }
    assert_eq!((repos.len(), templates.len(), runs.len()), (1, 2, 1));
    let id = RunIdentity::of(&runs[0]).expect("identity");
    let spec = build_run_spec(&runs[0], &repos[0], &templates, &id, "stagetime")
        .unwrap_or_else(|e| panic!("the example is valid: {e}"));
    let stages: Vec<(&str, Option<u32>)> = spec
        .tasks
        .iter()
        .map(|t| (t.name.as_str(), t.stage.and_then(|s| s.whole())))
        .collect();
    assert_eq!(
        stages,
        [("lint", Some(0)), ("unit", Some(0)), ("app-image", Some(1))]
    );
    let image = spec.tasks[2].pipeline.as_ref().expect("pipeline");
    assert_eq!(image.params["tag"], "4f1c2e9a77");
    assert_eq!(image.params["path"], "services/app");
}
