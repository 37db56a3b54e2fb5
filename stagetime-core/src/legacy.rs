//! The earlier Go system's input: the protobuf-JSON `CreateRevisionRunRequest`
//! and its compact string fields, mapped onto the native model.
//!
//! Compact fields are parsed with errors naming the entry and field, never a
//! panic; empty strings mean "none"; short commit ids are fine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, FieldErrors};
use crate::spec::{
    PipelineSpec, RevisionRunSpec, Stage, TaskSpec, VolumeClaimTemplateSpec, WorkspaceSpec,
};

/// The earlier system's `CreateRevisionRunRequest` (protobuf JSON mapping;
/// lowerCamel names are accepted too).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyRevisionRun {
    /// Repository name.
    #[serde(default, alias = "repoName")]
    pub repo_name: String,
    /// Push time as written.
    #[serde(default, alias = "pushedAt")]
    pub pushed_at: String,
    /// Author.
    #[serde(default)]
    pub author: String,
    /// Repository URL.
    #[serde(default, alias = "repoUrl")]
    pub repo_url: String,
    /// Commit id.
    #[serde(default, alias = "commitId")]
    pub commit_id: String,
    /// One entry per PipelineRun.
    #[serde(default)]
    pub pipelineruns: Vec<LegacyPipelinerun>,
}

/// The earlier system's `Pipelinerun` message.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyPipelinerun {
    /// Entry name (becomes the task name).
    #[serde(default)]
    pub name: String,
    /// May fail without failing the run.
    #[serde(default)]
    pub canfail: bool,
    /// Stage as a double; must be a non-negative whole number.
    #[serde(default)]
    pub stage: Stage,
    /// `k=v, k2=v2`.
    #[serde(default)]
    pub params: String,
    /// `k=v, k2=v2` for the git resolver.
    #[serde(default, rename = "resolverParams", alias = "resolver_params")]
    pub resolver_params: String,
    /// `name=a;b;c, name2=x;y`.
    #[serde(default)]
    pub listparams: String,
    /// `name=kind;ref;refField, ...`.
    #[serde(default)]
    pub workspaces: String,
    /// `name=storageClass;accessMode;size, ...`.
    #[serde(
        default,
        rename = "volumeClaimTemplates",
        alias = "volume_claim_templates"
    )]
    pub volume_claim_templates: String,
}

impl LegacyRevisionRun {
    /// Maps the request onto the native model.
    ///
    /// An entry with resolver params becomes `resolver: git` with those
    /// params; an entry without becomes a `ref` to the in-cluster Pipeline
    /// named like the entry (what the earlier system rendered).
    ///
    /// # Errors
    /// [`Error::Invalid`] listing every malformed compact field with its path
    /// (`pipelineruns[1].params`). Names, stages and the rest are checked
    /// later by [`crate::plan::Plan::build`].
    pub fn into_spec(self) -> Result<RevisionRunSpec, Error> {
        let mut errors = FieldErrors::default();
        let mut tasks = Vec::with_capacity(self.pipelineruns.len());
        for (i, pr) in self.pipelineruns.into_iter().enumerate() {
            let path = format!("pipelineruns[{i}]");
            tasks.push(pr.into_task(&path, &mut errors));
        }
        let opt = |s: String| (!s.trim().is_empty()).then(|| s.trim().to_string());
        errors.into_result(RevisionRunSpec {
            id: None,
            repo: self.repo_name,
            repo_url: opt(self.repo_url),
            branch: None,
            commit: self.commit_id,
            author: opt(self.author),
            pushed_at: opt(self.pushed_at),
            annotations: BTreeMap::new(),
            options: Default::default(),
            tasks,
            finally: Vec::new(),
        })
    }
}

impl LegacyPipelinerun {
    fn into_task(self, path: &str, errors: &mut FieldErrors) -> TaskSpec {
        let params = parse_pairs(&self.params, &format!("{path}.params"), errors);
        let resolver_params = parse_pairs(
            &self.resolver_params,
            &format!("{path}.resolverParams"),
            errors,
        );
        let list_params =
            parse_list_params(&self.listparams, &format!("{path}.listparams"), errors);
        let mut workspaces =
            parse_workspaces(&self.workspaces, &format!("{path}.workspaces"), errors);
        workspaces.extend(parse_volume_claims(
            &self.volume_claim_templates,
            &format!("{path}.volumeClaimTemplates"),
            errors,
        ));
        let (resolver, pipeline_ref) = if resolver_params.is_empty() {
            (None, Some(self.name.clone()))
        } else {
            (Some("git".to_string()), None)
        };
        TaskSpec {
            name: self.name,
            stage: Some(self.stage),
            can_fail: self.canfail,
            pipeline: Some(PipelineSpec {
                pipeline_ref,
                resolver,
                resolver_params,
                params,
                list_params,
                workspaces,
            }),
            ..TaskSpec::default()
        }
    }
}

/// One `name=value` entry of a compact field, split on its first `=`, name
/// and value trimmed: `Ok(None)` for a blank entry (a trailing separator),
/// an empty value is kept.
///
/// This is the one parser of the compact syntax: the legacy request's fields
/// (entries separated by `,`) and the operator's RevisionRun overrides and
/// template entries use it.
///
/// ```
/// use stagetime_core::legacy::parse_entry;
/// assert_eq!(parse_entry(" b = x=y "), Ok(Some(("b", "x=y"))));
/// assert_eq!(parse_entry("c="), Ok(Some(("c", ""))));
/// assert_eq!(parse_entry("  "), Ok(None));
/// assert_eq!(parse_entry("oops").unwrap_err(), "entry \"oops\" has no '='");
/// ```
///
/// # Errors
/// Why the entry is not `name=value`: it has no `=`, or an empty name.
pub fn parse_entry(entry: &str) -> Result<Option<(&str, &str)>, String> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Ok(None);
    }
    match entry.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok(Some((k.trim(), v.trim()))),
        Some(_) => Err(format!("entry {entry:?} has an empty name")),
        None => Err(format!("entry {entry:?} has no '='")),
    }
}

/// The items of a list value such as `a;b;c`: split on any of
/// `separators`, trimmed, blank ones skipped.
pub fn split_items(value: &str, separators: &[char]) -> Vec<String> {
    value
        .split(separators)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Splits a legacy field `a=1, b=2` into entries ([`parse_entry`]): comma
/// separated, blank ones (trailing commas) skipped, malformed ones reported
/// at `path[i]`, `i` counting the comma-separated pieces.
pub fn split_compact<'a>(
    text: &'a str,
    path: &str,
    errors: &mut FieldErrors,
) -> Vec<(&'a str, &'a str)> {
    let mut out = Vec::new();
    for (i, entry) in text.split(',').enumerate() {
        match parse_entry(entry) {
            Ok(Some(kv)) => out.push(kv),
            Ok(None) => {}
            Err(why) => errors.push(format!("{path}[{i}]"), why),
        }
    }
    out
}

/// Parses `k=v, k2=v2` into a map; duplicate keys are errors.
pub fn parse_pairs(text: &str, path: &str, errors: &mut FieldErrors) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for (k, v) in split_compact(text, path, errors) {
        if map.insert(k.to_string(), v.to_string()).is_some() {
            errors.push(path, format!("{k:?} is given twice"));
        }
    }
    map
}

/// Parses `name=a;b;c, name2=x;y` into array params.
pub fn parse_list_params(
    text: &str,
    path: &str,
    errors: &mut FieldErrors,
) -> BTreeMap<String, Vec<String>> {
    let mut map = BTreeMap::new();
    for (k, v) in split_compact(text, path, errors) {
        if map.insert(k.to_string(), split_items(v, &[';'])).is_some() {
            errors.push(path, format!("{k:?} is given twice"));
        }
    }
    map
}

/// Parses `name=kind;ref;refField` workspace bindings.
pub fn parse_workspaces(text: &str, path: &str, errors: &mut FieldErrors) -> Vec<WorkspaceSpec> {
    let mut out = Vec::new();
    for (name, v) in split_compact(text, path, errors) {
        let parts: Vec<&str> = v.split(';').map(str::trim).collect();
        let [kind, reference, field] = parts.as_slice() else {
            errors.push(
                path,
                format!("workspace {name:?}: expected kind;ref;refField, got {v:?}"),
            );
            continue;
        };
        if reference.is_empty() {
            errors.push(path, format!("workspace {name:?}: the reference is empty"));
            continue;
        }
        let mut ws = WorkspaceSpec {
            name: name.to_string(),
            ..WorkspaceSpec::default()
        };
        let expected_field = match *kind {
            "secret" => {
                ws.secret = Some(reference.to_string());
                "secretName"
            }
            "persistentVolumeClaim" => {
                ws.persistent_volume_claim = Some(reference.to_string());
                "claimName"
            }
            "configMap" => {
                ws.config_map = Some(reference.to_string());
                "name"
            }
            other => {
                errors.push(
                    path,
                    format!("workspace {name:?}: unknown kind {other:?} (expected secret, persistentVolumeClaim or configMap)"),
                );
                continue;
            }
        };
        if *field != expected_field {
            errors.push(
                path,
                format!("workspace {name:?}: a {kind} is referenced by {expected_field:?}, not {field:?}"),
            );
            continue;
        }
        out.push(ws);
    }
    out
}

/// Parses `name=storageClass;accessMode;size` volume claim templates.
pub fn parse_volume_claims(text: &str, path: &str, errors: &mut FieldErrors) -> Vec<WorkspaceSpec> {
    split_compact(text, path, errors)
        .into_iter()
        .filter_map(|(name, v)| parse_volume_claim(name, v, &[';'], path, errors))
        .collect()
}

/// The volume claim template `name` from `storageClass;accessMode;size`
/// (split on any of `separators`; class and mode may be empty), or `None`
/// after reporting at `path` why not.
pub fn parse_volume_claim(
    name: &str,
    value: &str,
    separators: &[char],
    path: &str,
    errors: &mut FieldErrors,
) -> Option<WorkspaceSpec> {
    let parts: Vec<&str> = value.split(separators).map(str::trim).collect();
    let [class, mode, size] = parts.as_slice() else {
        errors.push(
            path,
            format!(
                "volume claim {name:?}: expected storageClass{s}accessMode{s}size, got {value:?}",
                s = separators[0]
            ),
        );
        return None;
    };
    if size.is_empty() {
        errors.push(path, format!("volume claim {name:?}: the size is empty"));
        return None;
    }
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Some(WorkspaceSpec {
        name: name.to_string(),
        volume_claim_template: Some(VolumeClaimTemplateSpec {
            storage_class: opt(class),
            access_mode: opt(mode),
            storage: size.to_string(),
        }),
        ..WorkspaceSpec::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{DocumentFormat, parse_document};

    const EXAMPLE: &str = r#"{"repo_name": "demo", "pushed_at": "2024-01-13T13:40:36Z", "author": "someone",
 "repo_url": "https://git.example.com/demo.git", "commit_id": "4f1c2e9a77",
 "pipelineruns": [
  {"name": "unit-tests", "canfail": false, "stage": 0,
   "resolverParams": "url=https://git.example.com/pipelines.git, revision=main, pathInRepo=pipelines/test.yaml",
   "params": "gitRevision=main, scriptTimeout=25s",
   "listparams": "targets=amd64;arm64",
   "workspaces": "ssh-credentials=secret;git-ssh;secretName",
   "volumeClaimTemplates": "source=standard;ReadWriteOnce;20Mi"}]}"#;

    #[test]
    fn legacy_example_maps_every_field() {
        let (spec, format) = parse_document("legacy.json", EXAMPLE).unwrap();
        assert_eq!(format, DocumentFormat::Legacy);
        assert_eq!(spec.repo, "demo");
        assert_eq!(spec.commit, "4f1c2e9a77");
        assert_eq!(spec.author.as_deref(), Some("someone"));
        let t = &spec.tasks[0];
        assert_eq!(t.name, "unit-tests");
        assert_eq!(t.stage.unwrap().whole(), Some(0));
        let p = t.pipeline.as_ref().unwrap();
        assert_eq!(p.resolver.as_deref(), Some("git"));
        assert_eq!(p.resolver_params["pathInRepo"], "pipelines/test.yaml");
        assert_eq!(p.params["scriptTimeout"], "25s");
        assert_eq!(p.list_params["targets"], vec!["amd64", "arm64"]);
        assert_eq!(p.workspaces[0].secret.as_deref(), Some("git-ssh"));
        let vct = p.workspaces[1].volume_claim_template.as_ref().unwrap();
        assert_eq!(vct.storage_class.as_deref(), Some("standard"));
        assert_eq!(vct.storage, "20Mi");
    }

    #[test]
    fn camel_case_names_are_accepted() {
        let text = r#"{"repoName": "r", "commitId": "abc", "pipelineruns": [{"name": "a", "resolver_params": ""}]}"#;
        let (spec, _) = parse_document("x", text).unwrap();
        assert_eq!(spec.repo, "r");
        assert_eq!(spec.commit, "abc");
        // no resolver params: a reference to the Pipeline named like the entry
        assert_eq!(
            spec.tasks[0]
                .pipeline
                .as_ref()
                .unwrap()
                .pipeline_ref
                .as_deref(),
            Some("a")
        );
    }

    #[test]
    fn empty_compact_fields_mean_none_and_trailing_commas_are_fine() {
        let mut errors = FieldErrors::default();
        assert!(parse_pairs("", "p", &mut errors).is_empty());
        assert_eq!(parse_pairs(" a = 1 , b=x=y, ", "p", &mut errors).len(), 2);
        assert!(errors.is_empty(), "{errors}");
        assert_eq!(parse_pairs("b=x=y", "p", &mut errors)["b"], "x=y");
    }

    #[test]
    fn malformed_compact_fields_are_all_reported_with_paths() {
        let text = r#"{"repo_name": "r", "commit_id": "abc", "pipelineruns": [
            {"name": "a", "params": "novalue, =x", "workspaces": "w=secret;s;claimName, v=tape;x;y, z=secret"},
            {"name": "b", "volumeClaimTemplates": "c=std;RWO", "listparams": "t=a;b, t=c"}]}"#;
        let err = parse_document("x", text).unwrap_err();
        let Error::Invalid(errors) = err else {
            panic!("{err}")
        };
        let text = errors.to_string();
        for needle in [
            "pipelineruns[0].params[0]",
            "pipelineruns[0].params[1]",
            "\"secretName\", not \"claimName\"",
            "unknown kind \"tape\"",
            "expected kind;ref;refField",
            "pipelineruns[1].volumeClaimTemplates",
            "pipelineruns[1].listparams: \"t\" is given twice",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert_eq!(errors.0.len(), 7, "{text}");
    }

    #[test]
    fn unknown_legacy_key_is_named() {
        let err = parse_document(
            "x",
            r#"{"repo_name": "r", "pipelineruns": [{"name": "a", "canfial": true}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("canfial"), "{err}");
    }
}
