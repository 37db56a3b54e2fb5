//! Request building: a [`LaunchRequest`] becomes a [`PipelineRun`] (pure; no IO).
//!
//! The mapping follows what the earlier system rendered (see docs/tekton.md):
//! `spec.pipelineRef` by name or by resolver with name/value params;
//! `spec.params` with list params as arrays; workspaces from a Secret, a PVC,
//! a ConfigMap or a volume claim template; `spec.timeouts.pipeline`;
//! `spec.taskRunTemplate` (service account; pod template, by default only
//! `securityContext.fsGroup`, as the earlier system); `stagetime/*`
//! labels and the `canfail` annotation.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;
use stagetime_core::backend::LaunchRequest;
use stagetime_core::plan::Plan;
use stagetime_core::spec::{PipelineSpec, WorkspaceSpec};
use stagetime_core::{Error, FieldErrors, RunId};

use crate::config::TektonConfig;
use crate::naming::{pipelinerun_name, sanitize_label_value};
use crate::types::{
    ClaimSource, ConfigMapSource, Param, ParamValue, PipelineRef, PipelineRun, PipelineRunSpec,
    PodSecurityContext, PodTemplate, SecretSource, TaskRunTemplate, Timeouts, VolumeClaimSpec,
    VolumeClaimTemplate, VolumeResources, WorkspaceBinding,
};

/// Label: the run id.
pub const LABEL_RUN: &str = "run";
/// Label: the repository name.
pub const LABEL_REPO: &str = "repo";
/// Label: the commit id.
pub const LABEL_COMMIT: &str = "commit";
/// Label: the author.
pub const LABEL_AUTHOR: &str = "author";
/// Label: the stage number (`finally` for finally tasks).
pub const LABEL_STAGE: &str = "stage";
/// Label: the task name.
pub const LABEL_TASK: &str = "task";
/// Label: the attempt (1 for the first).
pub const LABEL_ATTEMPT: &str = "attempt";
/// Label: who manages the object; its value is [`MANAGED_BY_VALUE`].
pub const LABEL_MANAGED_BY: &str = "managed-by";
/// Value of the managed-by label.
pub const MANAGED_BY_VALUE: &str = "stagetime";
/// Annotation (unprefixed, as the earlier system wrote it): `"true"` or `"false"`.
pub const ANNOTATION_CANFAIL: &str = "canfail";
/// Annotation: the launch key `run/task#attempt`, unsanitised.
pub const ANNOTATION_KEY: &str = "launch-key";
/// Annotation: the repository URL.
pub const ANNOTATION_REPO_URL: &str = "repo-url";
/// Annotation: the push time as written.
pub const ANNOTATION_PUSHED_AT: &str = "pushed-at";
/// Run annotation (`<prefix>/owner`, e.g. `stagetime/owner`) naming the object
/// that owns the run's PipelineRuns, as an [`OwnerAnnotation`] in JSON. The
/// renderer turns it into `metadata.ownerReferences` (instead of copying it).
pub const ANNOTATION_OWNER: &str = "owner";

/// The value of the [`ANNOTATION_OWNER`] run annotation: an owner reference
/// plus the owner's namespace. Owner references cannot cross namespaces, so
/// the reference is only written on PipelineRuns in that namespace.
///
/// ```
/// use stagetime_kube::render::OwnerAnnotation;
/// let owner = OwnerAnnotation {
///     api_version: "stagetime.sthings.tiab.ssc.sva.de/v1beta1".into(),
///     kind: "RevisionRun".into(),
///     name: "demo".into(),
///     uid: "0b7c2a9e".into(),
///     namespace: "ci".into(),
/// };
/// let text = owner.to_json();
/// assert_eq!(OwnerAnnotation::parse(&text).unwrap(), owner);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnerAnnotation {
    /// The owner's `apiVersion` (`group/version`).
    pub api_version: String,
    /// The owner's kind.
    pub kind: String,
    /// The owner's name.
    pub name: String,
    /// The owner's `metadata.uid`.
    pub uid: String,
    /// The owner's namespace.
    pub namespace: String,
}

impl OwnerAnnotation {
    /// The annotation value (compact JSON).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads an annotation value.
    ///
    /// # Errors
    /// A message saying what is wrong with the JSON.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("not an owner reference: {e}"))
    }

    /// The owner reference (a controller reference; it does not block the
    /// owner's deletion, so creating it needs no permission on the owner).
    pub fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }
}

/// Formats a duration as Go's `time.Duration` prints it (`30m0s`, `1h0m0s`, `1.5s`).
pub fn go_duration(d: Duration) -> String {
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, (total / 60) % 60, total % 60);
    let millis = d.subsec_millis();
    let secs = if millis == 0 {
        format!("{s}s")
    } else {
        let frac = format!("{millis:03}");
        format!("{s}.{}s", frac.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

/// The `stagetime/*` labels of one attempt, sanitised to valid label values.
pub fn labels(req: &LaunchRequest, cfg: &TektonConfig) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        l.insert(cfg.key(k), sanitize_label_value(v));
    };
    put(LABEL_MANAGED_BY, MANAGED_BY_VALUE);
    put(LABEL_RUN, req.key.run.as_str());
    put(LABEL_REPO, &req.run.repo);
    put(LABEL_COMMIT, &req.run.commit);
    if let Some(a) = &req.run.author {
        put(LABEL_AUTHOR, a);
    }
    put(
        LABEL_STAGE,
        &req.stage
            .map_or_else(|| "finally".to_string(), |s| s.to_string()),
    );
    put(LABEL_TASK, &req.key.task);
    put(LABEL_ATTEMPT, &req.key.attempt.to_string());
    l
}

fn workspace(ws: &WorkspaceSpec) -> WorkspaceBinding {
    WorkspaceBinding {
        name: ws.name.clone(),
        secret: ws.secret.as_ref().map(|s| SecretSource {
            secret_name: s.clone(),
        }),
        persistent_volume_claim: ws.persistent_volume_claim.as_ref().map(|c| ClaimSource {
            claim_name: c.clone(),
        }),
        config_map: ws
            .config_map
            .as_ref()
            .map(|c| ConfigMapSource { name: c.clone() }),
        volume_claim_template: ws
            .volume_claim_template
            .as_ref()
            .map(|v| VolumeClaimTemplate {
                spec: VolumeClaimSpec {
                    storage_class_name: v.storage_class.clone(),
                    access_modes: vec![
                        v.access_mode
                            .clone()
                            .unwrap_or_else(|| "ReadWriteOnce".to_string()),
                    ],
                    resources: VolumeResources {
                        requests: BTreeMap::from([(
                            "storage".to_string(),
                            v.storage.trim().to_string(),
                        )]),
                    },
                },
            }),
    }
}

fn pipeline_ref(p: &PipelineSpec) -> PipelineRef {
    match (&p.pipeline_ref, &p.resolver) {
        (Some(name), _) => PipelineRef {
            name: Some(name.clone()),
            ..PipelineRef::default()
        },
        (None, resolver) => PipelineRef {
            name: None,
            resolver: Some(resolver.clone().unwrap_or_else(|| "git".to_string())),
            params: p
                .resolver_params
                .iter()
                .map(|(k, v)| Param {
                    name: k.clone(),
                    value: ParamValue::String(v.clone()),
                })
                .collect(),
        },
    }
}

/// `spec.taskRunTemplate`: the configured service account and pod template;
/// without a configured `securityContext`, the default `fsGroup`.
fn task_run_template(cfg: &TektonConfig) -> Option<TaskRunTemplate> {
    let mut pod = cfg.pod_template.clone().unwrap_or_default();
    if pod.security_context.is_none() {
        pod.security_context = cfg.fs_group.map(|g| PodSecurityContext {
            fs_group: Some(g),
            ..PodSecurityContext::default()
        });
    }
    let pod_template = (pod != PodTemplate::default()).then_some(pod);
    (pod_template.is_some() || cfg.service_account.is_some()).then(|| TaskRunTemplate {
        service_account_name: cfg.service_account.clone(),
        pod_template,
    })
}

/// The PipelineRun of one attempt.
///
/// The run's `annotations` are copied onto the PipelineRun, except
/// `<prefix>/owner` ([`ANNOTATION_OWNER`]), which becomes
/// `metadata.ownerReferences` when the owner is in the PipelineRun's namespace.
///
/// # Errors
/// [`Error::Unsupported`] when the task has no `pipeline` (it is a
/// command-only task, which the Tekton backend cannot run);
/// [`Error::Invalid`] naming `annotations."stagetime/owner"` when that
/// annotation is not an [`OwnerAnnotation`].
pub fn render_pipelinerun(req: &LaunchRequest, cfg: &TektonConfig) -> Result<PipelineRun, Error> {
    let Some(p) = &req.task.pipeline else {
        return Err(Error::Unsupported {
            message: format!(
                "task {:?} has no `pipeline`, which the tekton backend needs",
                req.key.task
            ),
        });
    };
    let name = pipelinerun_name(req.key.run.as_str(), &req.key.task, req.key.attempt);
    let owner_key = cfg.key(ANNOTATION_OWNER);
    let mut owner_references = Vec::new();
    // The run's own annotations first: stagetime's below win over them.
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &req.run.annotations {
        if *k != owner_key {
            annotations.insert(k.clone(), v.clone());
            continue;
        }
        let owner = OwnerAnnotation::parse(v).map_err(|message| {
            let mut e = FieldErrors::default();
            e.push(format!("annotations.{owner_key:?}"), message);
            Error::Invalid(e)
        })?;
        if owner.namespace == cfg.namespace_for(&req.run.repo) {
            owner_references.push(owner.owner_reference());
        }
    }
    annotations.insert(
        ANNOTATION_CANFAIL.to_string(),
        req.task.can_fail.to_string(),
    );
    annotations.insert(cfg.key(ANNOTATION_KEY), req.key.to_string());
    if let Some(u) = &req.run.repo_url {
        annotations.insert(cfg.key(ANNOTATION_REPO_URL), u.clone());
    }
    if let Some(t) = &req.run.pushed_at {
        annotations.insert(cfg.key(ANNOTATION_PUSHED_AT), t.clone());
    }
    let mut params: Vec<Param> = p
        .params
        .iter()
        .map(|(k, v)| Param {
            name: k.clone(),
            value: ParamValue::String(v.clone()),
        })
        .collect();
    params.extend(p.list_params.iter().map(|(k, v)| Param {
        name: k.clone(),
        value: ParamValue::Array(v.clone()),
    }));
    let timeout = req.timeout.or(cfg.default_timeout);
    let task_run_template = task_run_template(cfg);
    let spec = PipelineRunSpec {
        pipeline_ref: Some(pipeline_ref(p)),
        params,
        workspaces: p.workspaces.iter().map(workspace).collect(),
        timeouts: timeout.map(|t| Timeouts {
            pipeline: Some(go_duration(t)),
        }),
        task_run_template,
        status: None,
    };
    Ok(PipelineRun {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(cfg.namespace_for(&req.run.repo).to_string()),
            labels: Some(labels(req, cfg)),
            annotations: Some(annotations),
            owner_references: (!owner_references.is_empty()).then_some(owner_references),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    })
}

/// The PipelineRuns of every task of `plan` that has a `pipeline`, first
/// attempts, in plan order (main tasks by document order, then finally
/// tasks): what `stagetime plan FILE --output yaml` prints.
///
/// Tasks with only a `command` are left out (they cannot run on Tekton).
pub fn render_plan(run: &RunId, plan: &Plan, cfg: &TektonConfig) -> Vec<PipelineRun> {
    (0..plan.len() as u32)
        .map(|i| LaunchRequest::for_task(run, plan, i, 1))
        .filter_map(|req| render_pipelinerun(&req, cfg).ok())
        .collect()
}

/// [`render_plan`] as a multi-document YAML stream (`---` between documents).
///
/// # Errors
/// [`Error::Corrupt`] if serialising fails (it does not for these types).
pub fn render_plan_yaml(run: &RunId, plan: &Plan, cfg: &TektonConfig) -> Result<String, Error> {
    let mut out = String::new();
    for pr in render_plan(run, plan, cfg) {
        let doc = yaml_serde::to_string(&pr).map_err(|e| Error::corrupt("PipelineRun", e))?;
        out.push_str("---\n");
        out.push_str(&doc);
    }
    Ok(out)
}
