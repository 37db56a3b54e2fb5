//! A [`RevisionRun`], its [`Repo`] and its [`PipelineRunTemplate`]s as a
//! stagetime [`RevisionRunSpec`](stagetime_core::RevisionRunSpec) — pure.
//!
//! Template entries are defaults; a technology's overrides are laid over
//! them key by key:
//!
//! | technology field | written | template field | written |
//! |---|---|---|---|
//! | `resolver` | `k=v; k2=v2` | `resolver` | `[k=v, ...]` |
//! | `params` | `k=v; k2=v2` | `params` | `[k=v, ...]` |
//! | `listparams` | `name=a,b; name2=x` | `listparams` | `[name=a;b, ...]` (`;` or `,`) |
//! | `vclaims` | `name=class,mode,size; ...` | `vclaims` | `[name=class;mode;size, ...]` (`;` or `,`) |
//!
//! Entries are split on `;` (overrides) and on their first `=`; whitespace is
//! trimmed and empty entries (trailing separators) are ignored. An empty
//! value is kept as an empty value (`k=` sets `k` to `""`, a list param to
//! `[]`), except in `vclaims`, where `name=` drops the template's claim of
//! that name. `stage: 99` (the default) takes the template's stage. Every
//! problem is reported at once, each naming its field
//! (`technologies[1].params: entry "x" has no '='`).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use stagetime_core::legacy::{parse_entry, parse_volume_claim, split_items};
use stagetime_core::plan::{Plan, is_dns1123_label};
use stagetime_core::spec::{PipelineSpec, Stage, TaskSpec, WorkspaceSpec};
use stagetime_core::{Error, FieldErrors};

use crate::crd::{PipelineRunTemplate, Repo, RevisionRun, TEMPLATE_STAGE, Technology};
use crate::render::OwnerAnnotation;

/// Run annotation: the RevisionRun's `namespace/name`.
pub const ANNOTATION_REVISION_RUN: &str = "stagetime.sthings.tiab.ssc.sva.de/revisionrun";
/// Run annotation: the Repo's organization.
pub const ANNOTATION_ORGANIZATION: &str = "stagetime.sthings.tiab.ssc.sva.de/organization";

/// The separator of entries in a technology's override strings.
const OVERRIDE_SEPARATOR: char = ';';

/// Splits an override string `k=v; k2=v2` into `(key, value)` entries.
///
/// Entries are separated by `;` and parsed by core's compact-entry parser
/// ([`stagetime_core::legacy::parse_entry`]): split on their first `=` and
/// trimmed; empty entries are ignored. Entries without `=`, with an empty
/// key, or with a key given twice are reported at `path`.
///
/// ```
/// use stagetime_core::FieldErrors;
/// use stagetime_kube::operator::parse_overrides;
/// let mut errors = FieldErrors::default();
/// let kv = parse_overrides("a=1; b = x=y ;c=;", "technologies[0].params", &mut errors);
/// assert_eq!(kv, [("a".into(), "1".into()), ("b".into(), "x=y".into()), ("c".into(), "".into())]);
/// assert!(errors.is_empty());
/// parse_overrides("a=1; oops", "technologies[1].params", &mut errors);
/// assert_eq!(errors.to_string(), "technologies[1].params: entry \"oops\" has no '='");
/// ```
pub fn parse_overrides(text: &str, path: &str, errors: &mut FieldErrors) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in text.split(OVERRIDE_SEPARATOR) {
        push_entry(&mut out, entry, path, errors);
    }
    out
}

/// Parses a template's list of `k=v` entries (one per item, see
/// [`stagetime_core::legacy::parse_entry`]); problems are reported at
/// `path[i]`.
pub fn parse_entries(
    entries: &[String],
    path: &str,
    errors: &mut FieldErrors,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        push_entry(&mut out, entry, &format!("{path}[{i}]"), errors);
    }
    out
}

/// Adds `entry` (core's [`parse_entry`]) to `out`; a malformed entry or a
/// key already in `out` is reported at `path`.
fn push_entry(out: &mut Vec<(String, String)>, entry: &str, path: &str, errors: &mut FieldErrors) {
    match parse_entry(entry) {
        Ok(Some((k, _))) if out.iter().any(|(have, _)| have == k) => {
            errors.push(path, format!("{k:?} is given twice"))
        }
        Ok(Some((k, v))) => out.push((k.to_string(), v.to_string())),
        Ok(None) => {}
        Err(why) => errors.push(path, why),
    }
}

/// One technology laid over its template: the task's stage, and its
/// pipeline (resolver params, params, list params, volume claims).
///
/// `at` is the technology's path (`technologies[1]`); problems of the
/// template are reported at `PipelineRunTemplate "<name>" spec.<field>[i]`.
pub fn merge_technology(
    tech: &Technology,
    at: &str,
    template: &PipelineRunTemplate,
    errors: &mut FieldErrors,
) -> TaskSpec {
    let tname = format!(
        "PipelineRunTemplate {:?} spec",
        template.metadata.name.as_deref().unwrap_or("")
    );
    let t = &template.spec;
    let stage = if tech.stage == TEMPLATE_STAGE {
        if t.stage < 0 {
            errors.push(
                format!("{tname}.stage"),
                format!("must be ≥ 0, got {}", t.stage),
            );
        }
        t.stage
    } else {
        if tech.stage < 0 {
            errors.push(
                format!("{at}.stage"),
                format!(
                    "must be ≥ 0 (or {TEMPLATE_STAGE} for the template's stage), got {}",
                    tech.stage
                ),
            );
        }
        tech.stage
    };

    let mut resolver_params: BTreeMap<String, String> =
        parse_entries(&t.resolver, &format!("{tname}.resolver"), errors)
            .into_iter()
            .collect();
    let mut params: BTreeMap<String, String> =
        parse_entries(&t.params, &format!("{tname}.params"), errors)
            .into_iter()
            .collect();
    let mut list_params: BTreeMap<String, Vec<String>> =
        parse_entries(&t.listparams, &format!("{tname}.listparams"), errors)
            .into_iter()
            .map(|(k, v)| (k, split_items(&v, &[';', ','])))
            .collect();
    let mut claims: BTreeMap<String, WorkspaceSpec> = BTreeMap::new();
    for (i, (k, v)) in parse_entries(&t.vclaims, &format!("{tname}.vclaims"), errors)
        .into_iter()
        .enumerate()
    {
        if let Some(c) = parse_volume_claim(
            &k,
            &v,
            &[';', ','],
            &format!("{tname}.vclaims[{i}]"),
            errors,
        ) {
            claims.insert(k, c);
        }
    }

    if let Some(path) = tech
        .path
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        params.insert("path".to_string(), path.to_string());
    }
    let field = |f: &str| format!("{at}.{f}");
    if let Some(text) = &tech.resolver {
        resolver_params.extend(parse_overrides(text, &field("resolver"), errors));
    }
    if let Some(text) = &tech.params {
        params.extend(parse_overrides(text, &field("params"), errors));
    }
    if let Some(text) = &tech.listparams {
        for (k, v) in parse_overrides(text, &field("listparams"), errors) {
            list_params.insert(k, split_items(&v, &[',']));
        }
    }
    if let Some(text) = &tech.vclaims {
        for (k, v) in parse_overrides(text, &field("vclaims"), errors) {
            if v.is_empty() {
                claims.remove(&k);
            } else if let Some(c) = parse_volume_claim(&k, &v, &[','], &field("vclaims"), errors) {
                claims.insert(k, c);
            }
        }
    }
    if resolver_params.is_empty() {
        errors.push(
            field("resolver"),
            format!(
                "no git resolver params: neither the technology nor {tname}.resolver gives any (url=..., revision=..., pathInRepo=...)"
            ),
        );
    }
    TaskSpec {
        name: tech.id.clone(),
        stage: match u32::try_from(stage) {
            Ok(n) => Some(n.into()),
            // Too big for a stage: kept as written so validation refuses it
            // naming the field (negative stages are reported above).
            Err(_) if stage > 0 => Some(Stage::from(stage as f64)),
            Err(_) => None,
        },
        can_fail: tech.canfail,
        pipeline: Some(PipelineSpec {
            resolver: Some("git".to_string()),
            resolver_params,
            params,
            list_params,
            workspaces: claims.into_values().collect(),
            ..PipelineSpec::default()
        }),
        ..TaskSpec::default()
    }
}

/// The kinds (template names) a RevisionRun names that are not in `templates`,
/// each once, in order of first use.
pub fn missing_templates(
    rr: &RevisionRun,
    templates: &BTreeMap<String, PipelineRunTemplate>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in &rr.spec.technologies {
        if !t.kind.is_empty() && !templates.contains_key(&t.kind) && !out.contains(&t.kind) {
            out.push(t.kind.clone());
        }
    }
    out
}

/// The deterministic run id of one generation of a RevisionRun:
/// `<name>-<hash of namespace/name/uid>-g<generation>` (≤ 63 characters),
/// so that reconciling again submits the same run, a RevisionRun recreated
/// under the same name gets a new one, and so does a changed spec.
///
/// ```
/// let id = stagetime_kube::operator::run_id_for("ci", "Demo_Run", "uid-1", 3);
/// assert!(id.starts_with("demo-run-") && id.ends_with("-g3"), "{id}");
/// assert!(stagetime_core::RunId::new(id.clone()).is_ok());
/// assert_ne!(id, stagetime_kube::operator::run_id_for("ci", "Demo_Run", "uid-2", 3));
/// ```
pub fn run_id_for(namespace: &str, name: &str, uid: &str, generation: i64) -> String {
    let digest = Sha256::digest(format!("{namespace}/{name}/{uid}").as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let slug: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let slug: String = slug.trim_matches('-').chars().take(40).collect();
    let slug = slug.trim_matches('-');
    if slug.is_empty() {
        format!("rr-{hash}-g{generation}")
    } else {
        format!("{slug}-{hash}-g{generation}")
    }
}

/// Everything [`build_run_spec`] needs besides the objects.
#[derive(Debug, Clone, PartialEq)]
pub struct RunIdentity {
    /// The run id ([`run_id_for`]).
    pub run_id: String,
    /// The RevisionRun's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its `metadata.uid`.
    pub uid: String,
}

impl RunIdentity {
    /// The identity of `rr` (its generation's run id).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `metadata` when the object has no name,
    /// namespace or uid (it was not read from the API server).
    pub fn of(rr: &RevisionRun) -> Result<RunIdentity, Error> {
        let m = &rr.metadata;
        let mut errors = FieldErrors::default();
        for (field, v) in [
            ("name", &m.name),
            ("namespace", &m.namespace),
            ("uid", &m.uid),
        ] {
            if v.as_deref().is_none_or(str::is_empty) {
                errors.push(format!("metadata.{field}"), "required");
            }
        }
        errors.into_result(())?;
        let (ns, name, uid) = (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
            m.uid.clone().unwrap_or_default(),
        );
        Ok(RunIdentity {
            run_id: run_id_for(&ns, &name, &uid, m.generation.unwrap_or(1)),
            namespace: ns,
            name,
            uid,
        })
    }
}

/// The revision run of `rr`: one task per technology (in order), with the
/// Repo's name as `repo`, `spec.revision` (or the Repo's branch) as
/// `commit`, the branch, and annotations naming the RevisionRun (the owner
/// of its PipelineRuns, see [`OwnerAnnotation`]) and the organization.
///
/// `templates` maps template names to templates of the RevisionRun's
/// namespace; `label_prefix` is the Tekton backend's (`stagetime`).
///
/// # Errors
/// [`Error::Invalid`] with every problem, each naming its field: missing or
/// duplicate ids, unknown kinds, malformed overrides or template entries,
/// negative stages, and what the plan's validation finds (paths mapped back
/// to `technologies[i]`).
pub fn build_run_spec(
    rr: &RevisionRun,
    repo: &Repo,
    templates: &BTreeMap<String, PipelineRunTemplate>,
    id: &RunIdentity,
    label_prefix: &str,
) -> Result<stagetime_core::RevisionRunSpec, Error> {
    let mut errors = FieldErrors::default();
    if rr.spec.repository.trim().is_empty() {
        errors.push("repository", "required");
    }
    if rr.spec.technologies.is_empty() {
        errors.push(
            "technologies",
            "a RevisionRun needs at least one technology",
        );
    }
    let mut tasks = Vec::with_capacity(rr.spec.technologies.len());
    for (i, tech) in rr.spec.technologies.iter().enumerate() {
        let at = format!("technologies[{i}]");
        if tech.id.is_empty() {
            errors.push(format!("{at}.id"), "required");
        } else if !is_dns1123_label(&tech.id) {
            errors.push(
                format!("{at}.id"),
                format!("{:?} is not a DNS-1123 label (1-63 lowercase letters, digits or '-', starting and ending alphanumeric)", tech.id),
            );
        } else if rr.spec.technologies[..i].iter().any(|t| t.id == tech.id) {
            errors.push(format!("{at}.id"), format!("{:?} is used twice", tech.id));
        }
        if tech.kind.is_empty() {
            errors.push(format!("{at}.kind"), "required");
            continue;
        }
        let Some(template) = templates.get(&tech.kind) else {
            errors.push(
                format!("{at}.kind"),
                format!(
                    "PipelineRunTemplate {:?} not found in namespace {:?}",
                    tech.kind, id.namespace
                ),
            );
            continue;
        };
        tasks.push(merge_technology(tech, &at, template, &mut errors));
    }
    let revision = rr
        .spec
        .revision
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or(repo.spec.branch.trim());
    if revision.is_empty() {
        errors.push("revision", "empty, and the Repo's branch is empty too");
    }
    if repo.spec.name.trim().is_empty() {
        errors.push(
            format!("Repo {:?} spec.name", rr.spec.repository),
            "required",
        );
    }
    let owner = OwnerAnnotation {
        api_version: format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
        kind: "RevisionRun".to_string(),
        name: id.name.clone(),
        uid: id.uid.clone(),
        namespace: id.namespace.clone(),
    };
    let mut annotations = BTreeMap::from([
        (
            format!("{label_prefix}/{}", crate::render::ANNOTATION_OWNER),
            owner.to_json(),
        ),
        (
            ANNOTATION_REVISION_RUN.to_string(),
            format!("{}/{}", id.namespace, id.name),
        ),
    ]);
    if !repo.spec.organization.trim().is_empty() {
        annotations.insert(
            ANNOTATION_ORGANIZATION.to_string(),
            repo.spec.organization.trim().to_string(),
        );
    }
    let spec = stagetime_core::RevisionRunSpec {
        id: Some(id.run_id.clone()),
        repo: repo.spec.name.trim().to_string(),
        branch: (!repo.spec.branch.trim().is_empty()).then(|| repo.spec.branch.trim().to_string()),
        commit: revision.to_string(),
        annotations,
        tasks,
        ..stagetime_core::RevisionRunSpec::default()
    };
    errors.into_result(())?;
    // What the plan's validation finds, named as the RevisionRun's fields.
    if let Err(Error::Invalid(found)) = Plan::build(spec.clone()) {
        let mut mapped = FieldErrors::default();
        for e in found.0 {
            let path = e
                .path
                .strip_prefix("tasks")
                .map_or_else(|| e.path.clone(), |rest| format!("technologies{rest}"));
            let path = path.replace(".name", ".id");
            mapped.push(path, e.message);
        }
        return Err(Error::Invalid(mapped));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{PipelineRunTemplateSpec, RepoSpec, RevisionRunSpec};
    use kube::api::ObjectMeta;
    use stagetime_core::ErrorKind;

    fn template(name: &str, spec: PipelineRunTemplateSpec) -> PipelineRunTemplate {
        let mut t = PipelineRunTemplate::new(name, spec);
        t.metadata.namespace = Some("ci".into());
        t
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn docker() -> PipelineRunTemplate {
        template(
            "docker",
            PipelineRunTemplateSpec {
                stage: 1,
                resolver: strings(&[
                    "url=https://git.example.com/pipelines.git",
                    "revision=main",
                    "pathInRepo=docker.yaml",
                ]),
                params: strings(&["image=app", "tag=latest", "push=true"]),
                vclaims: strings(&["source=standard;ReadWriteOnce;1Gi", "cache=;;5Gi"]),
                listparams: strings(&["platforms=amd64;arm64"]),
            },
        )
    }

    fn merged(tech: Technology, t: &PipelineRunTemplate) -> Result<TaskSpec, FieldErrors> {
        let mut errors = FieldErrors::default();
        let task = merge_technology(&tech, "technologies[1]", t, &mut errors);
        if errors.is_empty() {
            Ok(task)
        } else {
            Err(errors)
        }
    }

    fn tech(over: impl FnOnce(&mut Technology)) -> Technology {
        let mut t = Technology {
            id: "build".into(),
            kind: "docker".into(),
            ..Technology::default()
        };
        over(&mut t);
        t
    }

    #[test]
    fn a_stage_too_big_for_a_stage_number_is_refused_not_zeroed() {
        let task = merged(tech(|t| t.stage = 5_000_000_000), &docker()).expect("merged");
        assert_eq!(task.stage.and_then(|s| s.whole()), None);
        let spec = stagetime_core::RevisionRunSpec {
            repo: "r".into(),
            commit: "c".into(),
            tasks: vec![task],
            ..stagetime_core::RevisionRunSpec::default()
        };
        let err = Plan::build(spec).unwrap_err().to_string();
        assert!(
            err.contains("tasks[0].stage: must be a whole number"),
            "{err}"
        );
    }

    #[test]
    fn template_defaults_apply_when_nothing_is_overridden() {
        let task = merged(tech(|_| {}), &docker()).expect("valid");
        assert_eq!(task.name, "build");
        assert_eq!(
            task.stage.and_then(|s| s.whole()),
            Some(1),
            "stage 99 = the template's"
        );
        assert!(!task.can_fail);
        let p = task.pipeline.expect("pipeline");
        assert_eq!(p.resolver.as_deref(), Some("git"));
        assert_eq!(p.resolver_params["pathInRepo"], "docker.yaml");
        assert_eq!(p.params.len(), 3);
        assert_eq!(p.params["tag"], "latest");
        assert_eq!(p.list_params["platforms"], ["amd64", "arm64"]);
        assert_eq!(p.workspaces.len(), 2);
        let cache = p
            .workspaces
            .iter()
            .find(|w| w.name == "cache")
            .expect("cache");
        let v = cache.volume_claim_template.as_ref().expect("claim");
        assert_eq!(
            (
                v.storage_class.as_deref(),
                v.access_mode.as_deref(),
                v.storage.as_str()
            ),
            (None, None, "5Gi")
        );
    }

    #[test]
    fn overrides_are_laid_over_the_defaults_key_by_key() {
        let task = merged(
            tech(|t| {
                t.stage = 0;
                t.canfail = true;
                t.path = Some("services/api".into());
                t.resolver = Some("revision=v2; pathInRepo=docker-multi.yaml".into());
                t.params = Some("tag=v1.2.3 ; extra = a=b ; push=".into());
                t.listparams = Some("platforms=amd64, riscv64; os=linux".into());
                t.vclaims = Some("source=fast,ReadWriteMany,2Gi; cache=".into());
            }),
            &docker(),
        )
        .expect("valid");
        assert_eq!(
            task.stage.and_then(|s| s.whole()),
            Some(0),
            "explicit stage wins"
        );
        assert!(task.can_fail);
        let p = task.pipeline.expect("pipeline");
        assert_eq!(
            p.resolver_params["url"], "https://git.example.com/pipelines.git",
            "kept"
        );
        assert_eq!(p.resolver_params["revision"], "v2");
        assert_eq!(p.resolver_params["pathInRepo"], "docker-multi.yaml");
        assert_eq!(p.params["image"], "app", "kept");
        assert_eq!(p.params["tag"], "v1.2.3");
        assert_eq!(p.params["extra"], "a=b", "split on the first '='");
        assert_eq!(p.params["push"], "", "an empty value is a value");
        assert_eq!(p.params["path"], "services/api");
        assert_eq!(p.list_params["platforms"], ["amd64", "riscv64"]);
        assert_eq!(p.list_params["os"], ["linux"]);
        assert_eq!(p.workspaces.len(), 1, "`cache=` drops the template's claim");
        let v = p.workspaces[0]
            .volume_claim_template
            .as_ref()
            .expect("claim");
        assert_eq!(v.storage_class.as_deref(), Some("fast"));
        assert_eq!(v.access_mode.as_deref(), Some("ReadWriteMany"));
        assert_eq!(v.storage, "2Gi");
    }

    #[test]
    fn trailing_separators_and_blank_entries_are_ignored() {
        let mut errors = FieldErrors::default();
        assert_eq!(parse_overrides("a=1;", "p", &mut errors).len(), 1);
        assert_eq!(
            parse_overrides(" ; a=1 ;; b=2 ; ", "p", &mut errors).len(),
            2
        );
        assert!(parse_overrides("", "p", &mut errors).is_empty());
        assert!(parse_overrides("  ", "p", &mut errors).is_empty());
        assert!(parse_entries(&strings(&["", "a=1", "  "]), "p", &mut errors).len() == 1);
        assert!(errors.is_empty(), "{errors}");
        let task = merged(tech(|t| t.params = Some("tag=v1;".into())), &docker()).expect("valid");
        assert_eq!(task.pipeline.expect("pipeline").params["tag"], "v1");
    }

    #[test]
    fn a_path_param_given_explicitly_wins_over_path() {
        let task = merged(
            tech(|t| {
                t.path = Some("a".into());
                t.params = Some("path=b".into());
            }),
            &docker(),
        )
        .expect("valid");
        assert_eq!(task.pipeline.expect("pipeline").params["path"], "b");
    }

    #[test]
    fn bad_entries_are_errors_naming_the_field() {
        let errors = merged(
            tech(|t| {
                t.params = Some("tag=v1; x".into());
                t.resolver = Some("=main".into());
                t.listparams = Some("a=1; a=2".into());
                t.vclaims = Some("source=standard,1Gi".into());
                t.stage = -1;
            }),
            &docker(),
        )
        .unwrap_err()
        .to_string();
        for want in [
            "technologies[1].params: entry \"x\" has no '='",
            "technologies[1].resolver: entry \"=main\" has an empty name",
            "technologies[1].listparams: \"a\" is given twice",
            "technologies[1].vclaims: volume claim \"source\": expected storageClass,accessMode,size",
            "technologies[1].stage: must be ≥ 0",
        ] {
            assert!(errors.contains(want), "{want:?} not in:\n{errors}");
        }
        let mut bad = docker();
        bad.spec.params.push("oops".into());
        bad.spec.vclaims = strings(&["x=a;b"]);
        let errors = merged(tech(|_| {}), &bad).unwrap_err().to_string();
        assert!(
            errors.contains(
                "PipelineRunTemplate \"docker\" spec.params[3]: entry \"oops\" has no '='"
            ),
            "{errors}"
        );
        assert!(
            errors.contains("PipelineRunTemplate \"docker\" spec.vclaims[0]"),
            "{errors}"
        );
    }

    #[test]
    fn a_pipeline_needs_resolver_params_from_somewhere() {
        let mut t = docker();
        t.spec.resolver.clear();
        let errors = merged(tech(|_| {}), &t).unwrap_err().to_string();
        assert!(
            errors.starts_with("technologies[1].resolver: no git resolver params"),
            "{errors}"
        );
        assert!(
            merged(
                tech(|x| x.resolver = Some("url=u; pathInRepo=p".into())),
                &t
            )
            .is_ok()
        );
    }

    fn revision_run(revision: Option<&str>, techs: Vec<Technology>) -> RevisionRun {
        let mut rr = RevisionRun::new(
            "demo",
            RevisionRunSpec {
                repository: "app".into(),
                revision: revision.map(Into::into),
                technologies: techs,
            },
        );
        rr.metadata = ObjectMeta {
            name: Some("demo".into()),
            namespace: Some("ci".into()),
            uid: Some("uid-1".into()),
            generation: Some(2),
            ..ObjectMeta::default()
        };
        rr
    }

    fn repo() -> Repo {
        Repo::new(
            "app",
            RepoSpec {
                name: "app".into(),
                organization: "stuttgart-things".into(),
                branch: "main".into(),
            },
        )
    }

    fn templates() -> BTreeMap<String, PipelineRunTemplate> {
        let lint = template(
            "lint",
            PipelineRunTemplateSpec {
                stage: 0,
                resolver: strings(&["url=u", "pathInRepo=lint.yaml"]),
                ..PipelineRunTemplateSpec::default()
            },
        );
        BTreeMap::from([("docker".to_string(), docker()), ("lint".to_string(), lint)])
    }

    #[test]
    fn a_revision_run_becomes_a_run_spec() {
        let rr = revision_run(
            Some(""),
            vec![
                tech(|_| {}),
                tech(|t| {
                    t.id = "lint".into();
                    t.kind = "lint".into();
                }),
            ],
        );
        let id = RunIdentity::of(&rr).expect("identity");
        assert!(id.run_id.ends_with("-g2"));
        let spec = build_run_spec(&rr, &repo(), &templates(), &id, "stagetime").expect("valid");
        assert_eq!(spec.id.as_deref(), Some(id.run_id.as_str()));
        assert_eq!(spec.repo, "app");
        assert_eq!(
            spec.commit, "main",
            "an empty revision takes the Repo's branch"
        );
        assert_eq!(spec.branch.as_deref(), Some("main"));
        assert_eq!(
            spec.tasks
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>(),
            ["build", "lint"]
        );
        let owner = OwnerAnnotation::parse(&spec.annotations["stagetime/owner"]).expect("owner");
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str(),
                owner.namespace.as_str()
            ),
            ("RevisionRun", "demo", "uid-1", "ci")
        );
        assert_eq!(
            owner.api_version,
            "stagetime.sthings.tiab.ssc.sva.de/v1beta1"
        );
        assert_eq!(
            spec.annotations[ANNOTATION_ORGANIZATION],
            "stuttgart-things"
        );
        Plan::build(spec.clone()).expect("a valid plan");

        let rr = revision_run(Some("4f1c2e9a77"), vec![tech(|_| {})]);
        let spec = build_run_spec(&rr, &repo(), &templates(), &id, "stagetime").expect("valid");
        assert_eq!(spec.commit, "4f1c2e9a77");
    }

    #[test]
    fn invalid_revision_runs_list_every_problem() {
        let rr = revision_run(
            None,
            vec![
                tech(|t| t.id = "Build_1".into()),
                tech(|t| t.kind = "nope".into()),
                tech(|t| t.id = "build".into()),
                tech(|t| t.kind = String::new()),
            ],
        );
        let id = RunIdentity::of(&rr).expect("identity");
        assert_eq!(missing_templates(&rr, &templates()), ["nope"]);
        let err = build_run_spec(&rr, &repo(), &templates(), &id, "stagetime").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid);
        let msg = err.to_string();
        for want in [
            "technologies[0].id: \"Build_1\" is not a DNS-1123 label",
            "technologies[1].kind: PipelineRunTemplate \"nope\" not found in namespace \"ci\"",
            "technologies[2].id: \"build\" is used twice",
            "technologies[3].kind: required",
        ] {
            assert!(msg.contains(want), "{want:?} not in:\n{msg}");
        }
        let empty = revision_run(None, vec![]);
        let msg = build_run_spec(&empty, &repo(), &templates(), &id, "stagetime")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("technologies: a RevisionRun needs at least one technology"),
            "{msg}"
        );
    }

    #[test]
    fn identity_needs_a_stored_object() {
        let mut rr = revision_run(None, vec![]);
        rr.metadata.uid = None;
        let msg = RunIdentity::of(&rr).unwrap_err().to_string();
        assert!(msg.contains("metadata.uid: required"), "{msg}");
    }
}
