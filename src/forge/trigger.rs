//! Deciding what an event starts: the repository's triggers, fork policy,
//! per-task `when`, the run id and the run's document.

use std::collections::{BTreeSet, HashSet};

use stagetime_core::limits::{ParseLimits, check_document};
use stagetime_core::spec::{RevisionRunSpec, TaskWhen};
use stagetime_core::store::RunId;
use stagetime_core::{Error, FieldErrors};

use super::config::{Filter, FilterDoc, Globs, RepoConfig};
use super::event::{EventKind, ForgeEvent};

/// The outcome of matching an event with a repository's triggers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The event starts a run (if the pipeline file selects any task).
    Start,
    /// The changed files decide; ask the forge for them, then call
    /// [`paths_match`].
    NeedsChangedFiles,
    /// Nothing starts, for this reason.
    Skip(String),
}

/// Matches `event` with the repository's `on` and fork policy. Pure: the
/// changed files are used when the payload has them.
pub fn decide(repo: &RepoConfig, event: &ForgeEvent) -> Decision {
    if event.kind == EventKind::PullRequest && event.fork && !repo.allow_forks {
        return Decision::Skip("pull request from a fork (allow_forks is off)".to_string());
    }
    let filter = match event.kind {
        EventKind::Push | EventKind::Tag => repo.on.push.as_ref(),
        EventKind::PullRequest => repo.on.pull_request.as_ref(),
    };
    let Some(filter) = filter else {
        return Decision::Skip(format!("{} events are not in `on`", event.kind.as_str()));
    };
    if !ref_matches(filter, event) {
        return Decision::Skip(format!(
            "{} does not match the filters",
            describe_ref(event)
        ));
    }
    match (&filter.paths, &event.changed_files) {
        (None, _) => Decision::Start,
        (Some(paths), Some(files)) => {
            if paths_match(paths, files) {
                Decision::Start
            } else {
                Decision::Skip("no changed file matches `paths`".to_string())
            }
        }
        (Some(_), None) => Decision::NeedsChangedFiles,
    }
}

/// The `paths` filter of the trigger that applies to `event`, if any.
pub fn paths_filter<'a>(repo: &'a RepoConfig, event: &ForgeEvent) -> Option<&'a Globs> {
    match event.kind {
        EventKind::Push | EventKind::Tag => repo.on.push.as_ref()?.paths.as_ref(),
        EventKind::PullRequest => repo.on.pull_request.as_ref()?.paths.as_ref(),
    }
}

/// True when any of `files` matches.
pub fn paths_match(paths: &Globs, files: &[String]) -> bool {
    files.iter().any(|f| paths.matches(f))
}

fn describe_ref(event: &ForgeEvent) -> String {
    match event.kind {
        EventKind::Push => format!("branch {:?}", event.branch.as_deref().unwrap_or("")),
        EventKind::Tag => format!("tag {:?}", event.tag.as_deref().unwrap_or("")),
        EventKind::PullRequest => format!(
            "target branch {:?}",
            event.target_branch.as_deref().unwrap_or("")
        ),
    }
}

/// Branch events need `branches` to match (or neither `branches` nor `tags`
/// given); tag events likewise with `tags` — as GitHub Actions' `on.push`.
fn ref_matches(filter: &Filter, event: &ForgeEvent) -> bool {
    if filter.branches.is_none() && filter.tags.is_none() {
        return true;
    }
    let (globs, name) = match event.kind {
        EventKind::Push => (&filter.branches, event.branch.as_deref()),
        EventKind::PullRequest => (&filter.branches, event.target_branch.as_deref()),
        EventKind::Tag => (&filter.tags, event.tag.as_deref()),
    };
    match (globs, name) {
        (Some(g), Some(n)) => g.matches(n),
        _ => false,
    }
}

/// The run id of an event: the same for every delivery of the same
/// (repository, commit, event kind, pull request), so a redelivery under a
/// new delivery id finds the run it already started.
pub fn run_id(repo: &str, event: &ForgeEvent) -> RunId {
    let pr = event.pr.map(|n| n.to_string()).unwrap_or_default();
    let key = format!("{repo}\n{}\n{}\n{pr}", event.commit, event.kind.as_str());
    let kind = match (event.kind, event.pr) {
        (EventKind::PullRequest, Some(n)) => format!("pr{n}"),
        (EventKind::PullRequest, None) => "pr".to_string(),
        (k, _) => k.as_str().to_string(),
    };
    // At most 24+12+12+8+3 characters of [a-z0-9-]: a valid id.
    RunId::readable(
        &[(repo, 24), (&kind, 12), (&event.commit, 12)],
        key.as_bytes(),
        4,
    )
}

/// The concurrency group of an event's runs: pushes to one branch, or
/// commits on one pull request. Tags have none.
pub fn concurrency_group(repo: &str, event: &ForgeEvent) -> Option<String> {
    match event.kind {
        EventKind::Push => Some(branch_group(repo, event.branch.as_deref().unwrap_or(""))),
        EventKind::PullRequest => Some(pr_group(repo, event.pr.unwrap_or(0))),
        EventKind::Tag => None,
    }
}

/// The concurrency group of the runs of pull request `pr`.
pub fn pr_group(repo: &str, pr: u64) -> String {
    format!("{repo}/pr/{pr}")
}

/// The concurrency group of pushes to `branch` (what `stagetime list
/// --branch` filters by).
pub fn branch_group(repo: &str, branch: &str) -> String {
    format!("{repo}/branch/{branch}")
}

/// Annotation keys the intake sets on a run (all under `stagetime/`).
pub mod annotations {
    /// `github`, `gitlab` or `gitea`.
    pub const PROVIDER: &str = "stagetime/provider";
    /// `push`, `tag` or `pull_request`.
    pub const EVENT: &str = "stagetime/event";
    /// The full ref.
    pub const REF: &str = "stagetime/ref";
    /// The pull request's number.
    pub const PR: &str = "stagetime/pr";
    /// The pull request's target branch.
    pub const TARGET_BRANCH: &str = "stagetime/target-branch";
    /// Who caused the event.
    pub const SENDER: &str = "stagetime/sender";
    /// The delivery that started the run.
    pub const DELIVERY: &str = "stagetime/delivery";
    /// The repository as the forge names it (`owner/name`).
    pub const REPOSITORY: &str = "stagetime/repository";
}

/// The largest pipeline file taken from a forge: the server's document limit.
pub const MAX_PIPELINE_FILE_BYTES: usize = 1 << 20;

/// What a task's `when` asks for.
#[derive(Debug, Clone, Default)]
struct When {
    events: Option<HashSet<EventKind>>,
    filter: Filter,
}

impl When {
    fn selects(&self, event: &ForgeEvent, changed: Option<&[String]>) -> bool {
        if let Some(events) = &self.events
            && !events.contains(&event.kind)
        {
            return false;
        }
        if !ref_matches(&self.filter, event) {
            return false;
        }
        match (&self.filter.paths, changed) {
            (Some(p), Some(files)) => paths_match(p, files),
            // Unknown changes (e.g. a truncated push): a path filter does not hold the task back.
            _ => true,
        }
    }
}

/// The run's document from the pipeline file's text and the event.
///
/// The file is the native format; each task (and finally task) may carry
/// `when: { events, branches, tags, paths }`. Tasks whose `when` does not
/// select the event are dropped, and so is every task that `needs` a
/// dropped task (transitively): a task never runs without what it asked
/// for. A stage barrier does not drop anything (a later stage waits only
/// for the tasks that remain). `repo`, `repo_url`, `branch`, `commit`,
/// `author` and `pushed_at` come from the event; the id, the concurrency
/// group and the `stagetime/` annotations are set here.
///
/// Returns `Ok(None)` when no task is selected.
///
/// # Errors
/// [`Error::Invalid`] naming the field when the file is not a YAML/JSON
/// mapping or a `when` is malformed; the spec's own validation happens at
/// submission.
pub fn build_spec(
    repo: &RepoConfig,
    event: &ForgeEvent,
    file: &str,
    changed: Option<&[String]>,
) -> Result<Option<RevisionRunSpec>, Error> {
    let mut errors = FieldErrors::default();
    // The file comes from anyone who can push: bound it before building
    // anything from it (aliases, depth, size), as every other entry does.
    let limits = ParseLimits {
        max_bytes: MAX_PIPELINE_FILE_BYTES,
        ..ParseLimits::default()
    };
    if let Err(e) = check_document(file, &limits) {
        errors.push(repo.pipeline.clone(), e);
        return Err(Error::Invalid(errors));
    }
    let mut doc: yaml_serde::Value = yaml_serde::from_str(file).map_err(|e| {
        let mut errors = FieldErrors::default();
        errors.push(repo.pipeline.clone(), e.to_string());
        Error::Invalid(errors)
    })?;
    let Some(map) = doc.as_mapping_mut() else {
        errors.push(repo.pipeline.clone(), "is not a mapping of a revision run");
        return Err(Error::Invalid(errors));
    };
    let mut dropped: BTreeSet<String> = BTreeSet::new();
    for list in ["tasks", "finally"] {
        let Some(tasks) = map.get_mut(list).and_then(|v| v.as_sequence_mut()) else {
            continue;
        };
        for (i, task) in tasks.iter_mut().enumerate() {
            let Some(t) = task.as_mapping_mut() else {
                continue;
            };
            let Some(when) = t.remove("when") else {
                continue;
            };
            let when = parse_when(when, &format!("{list}[{i}].when"), &mut errors);
            if !when.selects(event, changed) {
                let name = t.get("name").and_then(|n| n.as_str()).unwrap_or_default();
                dropped.insert(name.to_string());
            }
        }
    }
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    let mut spec: RevisionRunSpec = yaml_serde::from_value(doc).map_err(|e| {
        let mut errors = FieldErrors::default();
        errors.push(repo.pipeline.clone(), e.to_string());
        Error::Invalid(errors)
    })?;
    // Drop the dependents of dropped tasks until nothing changes.
    loop {
        let before = dropped.len();
        for t in spec.tasks.iter().chain(&spec.finally) {
            if t.needs
                .as_ref()
                .is_some_and(|n| n.iter().any(|d| dropped.contains(d)))
            {
                dropped.insert(t.name.clone());
            }
        }
        if dropped.len() == before {
            break;
        }
    }
    spec.tasks.retain(|t| !dropped.contains(&t.name));
    spec.finally.retain(|t| !dropped.contains(&t.name));
    if spec.tasks.is_empty() && spec.finally.is_empty() {
        return Ok(None);
    }
    let id = run_id(&repo.name, event);
    spec.id = Some(id.to_string());
    spec.repo = repo.name.clone();
    spec.repo_url = Some(repo.url.clone());
    spec.branch = event.branch.clone().or(event.tag.clone());
    spec.commit = event.commit.clone();
    spec.author = event.author.clone().or(Some(event.sender.clone()));
    spec.pushed_at = event.pushed_at.clone();
    spec.options.concurrency_group = concurrency_group(&repo.name, event);
    spec.options.cancel_in_progress =
        spec.options.concurrency_group.is_some() && repo.cancel_superseded;
    let a = &mut spec.annotations;
    a.insert(annotations::PROVIDER.into(), event.provider.as_str().into());
    a.insert(annotations::EVENT.into(), event.kind.as_str().into());
    a.insert(annotations::REF.into(), event.git_ref.clone());
    a.insert(annotations::SENDER.into(), event.sender.clone());
    a.insert(annotations::DELIVERY.into(), event.delivery.clone());
    a.insert(annotations::REPOSITORY.into(), event.repository.clone());
    if let Some(pr) = event.pr {
        a.insert(annotations::PR.into(), pr.to_string());
    }
    if let Some(t) = &event.target_branch {
        a.insert(annotations::TARGET_BRANCH.into(), t.clone());
    }
    Ok(Some(spec))
}

fn parse_when(value: yaml_serde::Value, path: &str, errors: &mut FieldErrors) -> When {
    // The document's own type (core's `TaskWhen`), so `validate` and the
    // intake read the same `when`.
    let doc: TaskWhen = match yaml_serde::from_value(value) {
        Ok(d) => d,
        Err(e) => {
            errors.push(path, e.to_string());
            return When::default();
        }
    };
    let events = doc.events.map(|list| {
        list.iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let kind = EventKind::parse(e);
                if kind.is_none() {
                    errors.push(
                        format!("{path}.events[{i}]"),
                        format!("{e:?} is not one of push, tag, pull_request"),
                    );
                }
                kind
            })
            .collect()
    });
    let filter = Filter::compile(
        &FilterDoc {
            branches: doc.branches,
            tags: doc.tags,
            paths: doc.paths,
        },
        path,
        errors,
    );
    When { events, filter }
}

#[cfg(test)]
mod tests {
    use super::super::Provider;
    use super::super::config::Repositories;
    use super::*;

    fn repo(on: &str) -> RepoConfig {
        let text = format!(
            "repositories:\n  - name: demo\n    provider: github\n    url: https://github.com/o/demo\n    webhook_secret_env: S\n{on}"
        );
        let repos = Repositories::parse(&text, &|_| Some("x".to_string())).unwrap();
        repos.by_name("demo").unwrap().clone()
    }

    fn push(branch: &str, files: Option<&[&str]>) -> ForgeEvent {
        ForgeEvent {
            provider: Provider::Github,
            delivery: "d".into(),
            kind: EventKind::Push,
            repository: "o/demo".into(),
            project_id: None,
            git_ref: format!("refs/heads/{branch}"),
            branch: Some(branch.into()),
            tag: None,
            commit: "4f1c2e9a77aabbccddeeff00112233445566778899".into(),
            before: None,
            pr: None,
            target_branch: None,
            sender: "me".into(),
            author: None,
            pushed_at: None,
            changed_files: files.map(|f| f.iter().map(|s| s.to_string()).collect()),
            fork: false,
            action: None,
        }
    }

    #[test]
    fn on_filters_branches_tags_paths_and_forks() {
        let r = repo(
            "    on:\n      push: { branches: [main, \"release/*\"], paths: [\"src/**\"] }\n      pull_request: {}\n",
        );
        assert_eq!(
            decide(&r, &push("main", Some(&["src/a/b.rs"]))),
            Decision::Start
        );
        assert!(matches!(
            decide(&r, &push("main", Some(&["README.md"]))),
            Decision::Skip(_)
        ));
        assert_eq!(
            decide(&r, &push("release/2", None)),
            Decision::NeedsChangedFiles
        );
        assert!(matches!(
            decide(&r, &push("feature", Some(&["src/x"]))),
            Decision::Skip(_)
        ));
        let mut tag = push("main", Some(&["src/x"]));
        tag.kind = EventKind::Tag;
        tag.branch = None;
        tag.tag = Some("v1".into());
        assert!(
            matches!(decide(&r, &tag), Decision::Skip(_)),
            "branches only: tags start nothing"
        );
        let mut pr = push("feature", Some(&[]));
        pr.kind = EventKind::PullRequest;
        pr.pr = Some(7);
        pr.target_branch = Some("main".into());
        pr.fork = true;
        assert!(matches!(decide(&r, &pr), Decision::Skip(why) if why.contains("fork")));
        pr.fork = false;
        assert_eq!(decide(&r, &pr), Decision::Start);
    }

    #[test]
    fn run_ids_are_deterministic_per_repo_commit_kind_and_pr() {
        let a = push("main", None);
        let mut other_delivery = a.clone();
        other_delivery.delivery = "another".into();
        assert_eq!(run_id("demo", &a), run_id("demo", &other_delivery));
        let mut pr = a.clone();
        pr.kind = EventKind::PullRequest;
        pr.pr = Some(3);
        let mut pr4 = pr.clone();
        pr4.pr = Some(4);
        let ids = [
            run_id("demo", &a),
            run_id("demo", &pr),
            run_id("demo", &pr4),
            run_id("other", &a),
        ];
        for (i, x) in ids.iter().enumerate() {
            for y in &ids[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert!(
            ids[1].as_str().starts_with("demo-pr3-4f1c2e9a77aa-"),
            "{}",
            ids[1]
        );
        let long = "A/very/Long_Repository.name-that-goes-on-and-on-and-on";
        assert!(run_id(long, &a).as_str().len() <= 63);
    }

    #[test]
    fn when_drops_unselected_tasks_and_their_dependents() {
        let r = repo("");
        let file = r#"
tasks:
  - { name: build, command: "true" }
  - { name: image, stage: 1, command: "true", when: { branches: [main] } }
  - { name: deploy, stage: 2, needs: [image], command: "true" }
  - { name: docs, stage: 2, command: "true", when: { events: [push], paths: ["docs/**"] } }
  - { name: report, stage: 3, command: "true" }
finally:
  - { name: notify, command: "true", when: { events: [tag] } }
"#;
        let spec = build_spec(
            &r,
            &push("feature", Some(&["docs/a.md"])),
            file,
            Some(&["docs/a.md".to_string()]),
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = spec.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["build", "docs", "report"]);
        assert!(spec.finally.is_empty());
        assert_eq!(spec.repo, "demo");
        assert_eq!(
            spec.options.concurrency_group.as_deref(),
            Some("demo/branch/feature")
        );
        assert!(spec.options.cancel_in_progress);
        assert_eq!(spec.annotations["stagetime/event"], "push");
        let main = build_spec(
            &r,
            &push("main", Some(&["src/x"])),
            file,
            Some(&["src/x".to_string()]),
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = main.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["build", "image", "deploy", "report"]);
        let none = "tasks:\n  - { name: a, command: 'true', when: { events: [tag] } }\n";
        assert_eq!(
            build_spec(&r, &push("main", None), none, None).unwrap(),
            None
        );
    }

    #[test]
    fn a_bad_when_names_its_path() {
        let r = repo("");
        let file = "tasks:\n  - { name: a, command: 'true', when: { events: [merge] } }\n  - { name: b, command: 'true', when: { brnaches: [x] } }\n";
        let err = build_spec(&r, &push("main", None), file, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tasks[0].when.events[0]") && err.contains("tasks[1].when"),
            "{err}"
        );
    }

    #[test]
    fn a_hostile_pipeline_file_is_refused_before_it_is_built() {
        let r = repo("");
        // Issue 11's alias bomb, pushed as the pipeline file.
        let bomb = format!(
            "x: &x [{}]\ny: [{}]\ntasks:\n  - {{name: a, command: \"true\"}}\n",
            vec!["1"; 150_000].join(","),
            vec!["*x"; 100_000].join(",")
        );
        let err = build_spec(&r, &push("main", None), &bomb, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("aliases"), "{err}");
        let big = format!("# {}\ntasks: []\n", "x".repeat(MAX_PIPELINE_FILE_BYTES));
        let err = build_spec(&r, &push("main", None), &big, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exceed the maximum"), "{err}");
    }
}
