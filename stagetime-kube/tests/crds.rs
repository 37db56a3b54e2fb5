//! The CRD manifests committed under `deploy/crds/` are exactly what the
//! Rust types generate. Regenerate them after changing `src/crd.rs`:
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
                std::fs::create_dir_all(dir()).expect("mkdir deploy/crds");
                std::fs::write(&path, &want).expect("write the CRD");
                eprintln!("updated {}", path.display());
            } else {
                drifted.push(file);
            }
        }
    }
    assert!(
        drifted.is_empty(),
        "deploy/crds/ is out of date with stagetime-kube/src/crd.rs: {drifted:?}\n\
         regenerate with: UPDATE_CRDS=1 cargo test -p stagetime-kube --test crds"
    );
    let mut present: Vec<String> = std::fs::read_dir(dir())
        .expect("deploy/crds exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(
        present, expected_files,
        "deploy/crds/ holds exactly the generated CRDs (remove stale files)"
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
