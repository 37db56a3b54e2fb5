//! The operator's custom resources, group `stagetime.sthings.tiab.ssc.sva.de`,
//! version `v1beta1`, namespaced — with the earlier system's field names
//! unchanged, so its objects apply as they are:
//!
//! * [`RevisionRun`]: one revision run of a [`Repo`] — its `technologies`
//!   each name a [`PipelineRunTemplate`] (`kind`) and may override its
//!   defaults (`resolver`, `params`, `listparams`, `vclaims`, written
//!   `k=v; k2=v2`); status subresource with phase, stage, per-stage and
//!   per-task summaries and the `Ready` / `Succeeded` conditions;
//! * [`Repo`]: a repository (`name`, `organization`, `branch`);
//! * [`PipelineRunTemplate`]: a pipeline's defaults (`stage`, and `resolver`,
//!   `params`, `vclaims`, `listparams` as lists of `k=v` entries).
//!
//! The CRD manifests in `deploy/helm/stagetime/crds/` are generated from these types
//! ([`crds`], [`crd_yaml`]); a test fails when they drift.

// `printcolumn(type_ = "string", ...)` repeats per column inside `#[kube(...)]`,
// which clippy's duplicated_attributes lint mistakes for a duplicate.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the three resources.
pub const GROUP: &str = "stagetime.sthings.tiab.ssc.sva.de";
/// Their version.
pub const VERSION: &str = "v1beta1";
/// `technologies[].stage` that means "take the template's stage".
pub const TEMPLATE_STAGE: i64 = 99;

fn template_stage() -> i64 {
    TEMPLATE_STAGE
}

/// `spec` of a `RevisionRun`: which repository, which commit, and which
/// technologies (pipelines) to run for it.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stagetime.sthings.tiab.ssc.sva.de",
    version = "v1beta1",
    kind = "RevisionRun",
    plural = "revisionruns",
    shortname = "rr",
    category = "stagetime",
    namespaced,
    status = "RevisionRunStatus",
    doc = "One revision run: the technologies (pipelines) of one commit of a Repo, run stage by stage.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Running, Succeeded, Failed, Cancelled or Error"
    ),
    printcolumn(
        name = "Stage",
        type_ = "string",
        json_path = ".status.stage",
        description = "The stage running now (the last one reached once finished)"
    ),
    printcolumn(
        name = "Run",
        type_ = "string",
        json_path = ".status.runId",
        priority = 1,
        description = "The stagetime run id"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct RevisionRunSpec {
    /// Name of the `Repo` (in the same namespace).
    pub repository: String,
    /// The commit to run; empty or absent: the Repo's `branch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The pipelines to run, one task each.
    #[serde(default)]
    pub technologies: Vec<Technology>,
}

/// One entry of `spec.technologies`: a task made from a `PipelineRunTemplate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Technology {
    /// The task's name (a DNS-1123 label, unique within the RevisionRun).
    pub id: String,
    /// Name of the `PipelineRunTemplate` (in the same namespace).
    pub kind: String,
    /// Location of the technology in the repository; passed as the param
    /// `path` (unless `params` sets `path` itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Stage; 99 (the default) takes the template's stage.
    #[serde(default = "template_stage")]
    pub stage: i64,
    /// A failure of this task does not fail the run.
    #[serde(default)]
    pub canfail: bool,
    /// Resolver param overrides, `k=v; k2=v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    /// Param overrides, `k=v; k2=v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<String>,
    /// Array param overrides, `name=a,b,c; name2=x`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listparams: Option<String>,
    /// Volume claim template overrides, `name=storageClass,accessMode,size; ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vclaims: Option<String>,
}

impl Default for Technology {
    fn default() -> Self {
        Technology {
            id: String::new(),
            kind: String::new(),
            path: None,
            stage: TEMPLATE_STAGE,
            canfail: false,
            resolver: None,
            params: None,
            listparams: None,
            vclaims: None,
        }
    }
}

/// `status` of a `RevisionRun`, written by the operator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRunStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Cancelled`, or `Error`
    /// (the RevisionRun cannot be run as it is; see the `Ready` condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The stage running now (`finally` during finally tasks); once the run
    /// is over, the last stage that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The stagetime run id (what `stagetime status` takes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The commit that runs (the Repo's branch when `spec.revision` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One entry per stage (and `finally`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageSummary>,
    /// One entry per task, in stage order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskSummary>,
    /// `Ready` (the RevisionRun was resolved and submitted) and `Succeeded`
    /// (Unknown while it runs, then True or False), each with a reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One stage in `status.stages`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageSummary {
    /// The stage number, or `finally`.
    pub stage: String,
    /// `Pending`, `Running`, `Succeeded` (every task succeeded or was allowed
    /// to fail), `Failed`, `Cancelled` or `Skipped`.
    pub phase: String,
    /// Tasks in the stage.
    pub tasks: u32,
    /// Of those, succeeded.
    pub succeeded: u32,
    /// Of those, failed or timed out.
    pub failed: u32,
    /// Of those, running (or waiting to retry).
    pub running: u32,
}

/// One task in `status.tasks`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskSummary {
    /// The technology's `id`.
    pub id: String,
    /// Its stage number, or `finally`.
    pub stage: String,
    /// `waiting`, `ready`, `running`, `backoff`, `succeeded`, `failed`,
    /// `timed_out`, `cancelled` or `skipped`.
    pub status: String,
    /// Attempts so far.
    pub attempt: u32,
    /// The PipelineRun of the current or last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_run: Option<String>,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `spec` of a `Repo`: a source repository.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stagetime.sthings.tiab.ssc.sva.de",
    version = "v1beta1",
    kind = "Repo",
    plural = "repos",
    category = "stagetime",
    namespaced,
    doc = "A source repository RevisionRuns refer to.",
    printcolumn(
        name = "Organization",
        type_ = "string",
        json_path = ".spec.organization"
    ),
    printcolumn(name = "Repository", type_ = "string", json_path = ".spec.name"),
    printcolumn(name = "Branch", type_ = "string", json_path = ".spec.branch"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct RepoSpec {
    /// Repository name (the runs' `repo`).
    pub name: String,
    /// Organization (or group, or owner) of the repository.
    pub organization: String,
    /// Branch: the revision of RevisionRuns that give none.
    pub branch: String,
}

/// `spec` of a `PipelineRunTemplate`: a pipeline and its defaults.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stagetime.sthings.tiab.ssc.sva.de",
    version = "v1beta1",
    kind = "PipelineRunTemplate",
    plural = "pipelineruntemplates",
    shortname = "prt",
    category = "stagetime",
    namespaced,
    doc = "A pipeline (git resolver) and its default stage, params and volume claims.",
    printcolumn(name = "Stage", type_ = "integer", json_path = ".spec.stage"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct PipelineRunTemplateSpec {
    /// Default stage of technologies of this kind (0 when absent).
    #[serde(default)]
    pub stage: i64,
    /// Git resolver params, one `k=v` entry each (`url=...`, `revision=...`,
    /// `pathInRepo=...`).
    #[serde(default)]
    pub resolver: Vec<String>,
    /// Default params, one `k=v` entry each.
    #[serde(default)]
    pub params: Vec<String>,
    /// Default volume claim templates, one `name=storageClass;accessMode;size` entry each.
    #[serde(default)]
    pub vclaims: Vec<String>,
    /// Default array params, one `name=a;b;c` entry each.
    #[serde(default)]
    pub listparams: Vec<String>,
}

/// The three CustomResourceDefinitions, in a stable order
/// (RevisionRun, Repo, PipelineRunTemplate).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![RevisionRun::crd(), Repo::crd(), PipelineRunTemplate::crd()]
}

/// A CRD as the YAML committed under `deploy/helm/stagetime/crds/` (file name:
/// `<plural>.<group>.yaml`).
///
/// # Errors
/// [`stagetime_core::Error::Corrupt`] if serialising fails (it does not for CRDs).
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, stagetime_core::Error> {
    let body = yaml_serde::to_string(crd)
        .map_err(|e| stagetime_core::Error::corrupt("CustomResourceDefinition", e))?;
    Ok(format!(
        "# Generated from stagetime-kube/src/crd.rs — do not edit by hand.\n\
         # Regenerate: UPDATE_CRDS=1 cargo test -p stagetime-kube --test crds\n---\n{body}"
    ))
}

/// The file name of a CRD under `deploy/helm/stagetime/crds/`: `<plural>.<group>.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_objects_read_unchanged_with_defaults() {
        let rr: RevisionRun = yaml_serde::from_str(
            r#"
apiVersion: stagetime.sthings.tiab.ssc.sva.de/v1beta1
kind: RevisionRun
metadata: { name: demo, namespace: ci }
spec:
  repository: stuttgart-things
  revision: 4f1c2e9a77
  technologies:
    - id: build
      kind: docker
      path: ./Dockerfile
      params: "image=app; tag=v1"
    - id: lint
      kind: lint
      stage: 0
      canfail: true
"#,
        )
        .expect("reads");
        assert_eq!(rr.spec.repository, "stuttgart-things");
        assert_eq!(rr.spec.technologies[0].stage, TEMPLATE_STAGE);
        assert!(!rr.spec.technologies[0].canfail);
        assert_eq!(rr.spec.technologies[1].stage, 0);
        assert!(rr.spec.technologies[1].canfail);
        assert!(rr.status.is_none());
    }

    #[test]
    fn crds_have_the_legacy_group_status_and_columns() {
        let all = crds();
        let names: Vec<_> = all.iter().map(crd_file_name).collect();
        assert_eq!(
            names,
            [
                "revisionruns.stagetime.sthings.tiab.ssc.sva.de.yaml",
                "repos.stagetime.sthings.tiab.ssc.sva.de.yaml",
                "pipelineruntemplates.stagetime.sthings.tiab.ssc.sva.de.yaml"
            ]
        );
        let rr = serde_json::to_value(&all[0]).expect("json");
        let v = &rr["spec"]["versions"][0];
        assert_eq!(rr["spec"]["scope"], "Namespaced");
        assert_eq!(v["name"], VERSION);
        assert!(v["subresources"]["status"].is_object());
        let cols: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c["name"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(cols, ["Phase", "Stage", "Run", "Age"]);
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["required"], serde_json::json!(["repository"]));
        let tech = &spec["properties"]["technologies"]["items"];
        assert_eq!(tech["required"], serde_json::json!(["id", "kind"]));
        assert_eq!(tech["properties"]["stage"]["default"], 99);
        let repo = serde_json::to_value(&all[1]).expect("json");
        assert_eq!(
            repo["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["required"],
            serde_json::json!(["branch", "name", "organization"])
        );
    }
}
