//! The part of Tekton's `tekton.dev/v1` PipelineRun that stagetime writes and reads.
//!
//! Only the fields stagetime sets or inspects are typed; fields a Tekton
//! controller adds are ignored when read (and never written back: changes go
//! out as merge patches). Reading is lenient — missing fields take defaults —
//! so that one odd object cannot break the watch.

use std::collections::BTreeMap;

pub use k8s_openapi::api::core::v1::PodSecurityContext;
use k8s_openapi::api::core::v1::{Affinity, LocalObjectReference, Toleration};
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// `spec` of a Tekton PipelineRun. [`PipelineRun`] is the object.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "tekton.dev",
    version = "v1",
    kind = "PipelineRun",
    plural = "pipelineruns",
    namespaced,
    status = "PipelineRunStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRunSpec {
    /// The pipeline to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_ref: Option<PipelineRef>,
    /// Parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    /// Workspace bindings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<WorkspaceBinding>,
    /// Timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Settings of every TaskRun of this PipelineRun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_run_template: Option<TaskRunTemplate>,
    /// `Cancelled`, `CancelledRunFinally`, `StoppedRunFinally` or `PipelineRunPending`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// `spec.pipelineRef`: an in-cluster Pipeline by name, or a resolver.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRef {
    /// Name of an in-cluster `Pipeline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Resolver, e.g. `git`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    /// Resolver params (`url`, `revision`, `pathInRepo`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
}

/// A name/value parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Param {
    /// Name.
    pub name: String,
    /// A string or an array.
    pub value: ParamValue,
}

/// A parameter value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// A string param.
    String(String),
    /// An array param.
    Array(Vec<String>),
    /// An object param (read only; stagetime never writes these).
    Object(BTreeMap<String, String>),
}

/// One workspace binding: exactly one source is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceBinding {
    /// Workspace name as the Pipeline declares it.
    pub name: String,
    /// A Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretSource>,
    /// An existing PersistentVolumeClaim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<ClaimSource>,
    /// A ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapSource>,
    /// A claim created for this PipelineRun (and deleted with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim_template: Option<VolumeClaimTemplate>,
}

/// `secret: {secretName}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretSource {
    /// The Secret's name.
    #[serde(default)]
    pub secret_name: String,
}

/// `persistentVolumeClaim: {claimName}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSource {
    /// The claim's name.
    #[serde(default)]
    pub claim_name: String,
}

/// `configMap: {name}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigMapSource {
    /// The ConfigMap's name.
    #[serde(default)]
    pub name: String,
}

/// `volumeClaimTemplate: {spec: {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeClaimTemplate {
    /// The claim's spec.
    #[serde(default)]
    pub spec: VolumeClaimSpec,
}

/// The subset of a PersistentVolumeClaim spec stagetime sets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeClaimSpec {
    /// Storage class (absent: the cluster default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Access modes, e.g. `[ReadWriteOnce]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    /// `requests.storage`.
    #[serde(default)]
    pub resources: VolumeResources,
}

/// `resources: {requests: {storage}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeResources {
    /// E.g. `{storage: 1Gi}`.
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
}

/// `spec.timeouts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Timeout of the whole PipelineRun, a Go duration (`30m0s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
}

/// `spec.taskRunTemplate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunTemplate {
    /// Service account of the TaskRuns' pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplate>,
}

/// `spec.taskRunTemplate.podTemplate`: the fields of Tekton's pod template
/// a worker may set (`--pod-template`, see [`crate::config::parse_pod_template`]).
/// Read leniently like the rest (unknown fields are ignored); the parser of
/// the configuration is the strict one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Pod security context (`fsGroup`, `runAsUser`, `runAsNonRoot`, `seccompProfile`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// Node labels the TaskRun pods must run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the TaskRun pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the TaskRun pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Priority class of the TaskRun pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Runtime class of the TaskRun pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    /// Pull secrets for the step images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

impl PodTemplate {
    /// The keys of a pod template stagetime accepts, as written in YAML.
    pub const FIELDS: &'static [&'static str] = &[
        "securityContext",
        "nodeSelector",
        "tolerations",
        "affinity",
        "priorityClassName",
        "runtimeClassName",
        "imagePullSecrets",
    ];
}

/// `status` of a PipelineRun (the part stagetime reads).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRunStatus {
    /// Knative-style conditions; the one of type `Succeeded` tells the outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

/// A status condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Succeeded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason, e.g. `PipelineRunTimeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the condition last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_a_tekton_controller_writes() {
        let pr: PipelineRun = serde_json::from_value(serde_json::json!({
            "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": {"name": "x", "namespace": "ci"},
            "spec": {
                "pipelineRef": {"resolver": "bundles", "params": [{"name": "kind", "value": "pipeline"}]},
                "params": [{"name": "s", "value": "v"}, {"name": "a", "value": ["1", "2"]}, {"name": "o", "value": {"k": "v"}}],
                "workspaces": [{"name": "e", "emptyDir": {}}, {"name": "v", "volumeClaimTemplate": {"metadata": {}, "spec": {}}}],
                "timeouts": {"pipeline": "1h0m0s", "tasks": "50m0s"},
                "taskRunTemplate": {"serviceAccountName": "default", "podTemplate": {"nodeSelector": {"a": "b"}}}
            },
            "status": {"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}],
                       "startTime": "2024-01-13T13:40:36Z", "childReferences": []}
        }))
        .expect("lenient read");
        assert_eq!(
            pr.spec.params[1].value,
            ParamValue::Array(vec!["1".into(), "2".into()])
        );
        assert!(matches!(pr.spec.params[2].value, ParamValue::Object(_)));
        assert_eq!(pr.spec.workspaces.len(), 2);
        assert_eq!(
            pr.spec.timeouts.and_then(|t| t.pipeline).as_deref(),
            Some("1h0m0s")
        );
        assert_eq!(
            pr.status.unwrap().conditions[0].reason.as_deref(),
            Some("Running")
        );
    }
}
