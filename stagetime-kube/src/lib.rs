//! stagetime's Tekton backend on kube-rs.
//!
//! Each task attempt of a revision run becomes one `tekton.dev/v1`
//! PipelineRun with a deterministic name and `stagetime/*` labels; outcomes
//! come back from a kube-runtime watcher. The pieces, from the inside out:
//!
//! * [`naming`]: DNS-1123 names from (run, task, attempt) and valid label values;
//! * [`render`]: a launch request (or a whole plan) as PipelineRun objects — pure;
//! * [`status`]: the `Succeeded` condition as an attempt outcome — pure;
//! * [`error`]: kube errors classified as [`stagetime_core::Error`];
//! * [`logs`]: [`TektonLogSource`], task logs from the pods' step containers;
//! * [`backend`]: [`TektonBackend`], the [`stagetime_core::Backend`] itself;
//! * [`config`]: [`TektonConfig`] (namespace, fsGroup, pod template, default timeout,
//!   service account, label prefix, cancel mode, rate limit, retries);
//! * [`crd`]: the operator's custom resources (RevisionRun, Repo,
//!   PipelineRunTemplate) and their generated CRDs;
//! * [`operator`]: RevisionRuns → runs in the shared store → status: the
//!   pure merge and status functions, and the kube-runtime controller.
//!
//! ```
//! use stagetime_core::{plan::Plan, spec::parse_document, RunId};
//! use stagetime_kube::{render_plan_yaml, TektonConfig};
//!
//! let (spec, _) = parse_document("demo.yaml", r#"
//! repo: demo
//! commit: 4f1c2e9a77
//! tasks:
//!   - name: build
//!     pipeline: { ref: build }
//! "#).unwrap();
//! let run = RunId::derive(&spec);
//! let plan = Plan::build(spec).unwrap();
//! let yaml = render_plan_yaml(&run, &plan, &TektonConfig::new("ci")).unwrap();
//! assert!(yaml.starts_with("---\napiVersion: tekton.dev/v1\nkind: PipelineRun\n"));
//! ```

pub mod backend;
pub mod config;
pub mod crd;
pub mod error;
pub mod logs;
pub mod naming;
pub mod operator;
pub mod ratelimit;
pub mod render;
pub mod status;
pub mod types;

pub use backend::TektonBackend;
pub use config::{CancelMode, RateLimit, RetryPolicy, TektonConfig};
pub use logs::TektonLogSource;
pub use render::{render_pipelinerun, render_plan, render_plan_yaml};
pub use types::{PipelineRun, PipelineRunSpec, PipelineRunStatus};
