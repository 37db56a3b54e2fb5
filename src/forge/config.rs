//! The repositories file (`--repos FILE`): which repositories may start
//! runs, how their deliveries are verified and what triggers a run.
//!
//! ```yaml
//! repositories:
//!   - name: hello-world
//!     provider: github
//!     url: https://github.com/Codertocat/Hello-World
//!     webhook_secret_file: /secrets/hook
//!     token_file: /secrets/token
//!     on:
//!       push: { branches: [main, "release/*"], tags: ["v*"], paths: ["src/**"] }
//!       pull_request: { branches: [main] }
//! ```
//!
//! Secrets are never in the file: only a file path or an environment
//! variable's name. Every problem is reported at once with its path.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use stagetime_core::FieldErrors;

use super::Provider;
use super::event::normalise_url;
use super::report::ReportSettings;

/// The pipeline file's default path in a repository.
pub const DEFAULT_PIPELINE: &str = ".stagetime.yaml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    repositories: Vec<RepoDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoDoc {
    #[serde(default)]
    name: String,
    #[serde(default)]
    provider: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    api_url: Option<String>,
    #[serde(default)]
    webhook_secret_file: Option<PathBuf>,
    #[serde(default)]
    webhook_secret_env: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default)]
    pipeline: Option<String>,
    #[serde(default)]
    on: Option<OnDoc>,
    #[serde(default)]
    cancel_superseded: Option<bool>,
    #[serde(default)]
    allow_forks: Option<bool>,
    #[serde(default)]
    report: Option<ReportDoc>,
    #[serde(default)]
    trusted: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportDoc {
    #[serde(default)]
    statuses: Option<bool>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    per_stage: Option<bool>,
    #[serde(default)]
    target_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDoc {
    #[serde(default)]
    push: Option<FilterDoc>,
    #[serde(default)]
    pull_request: Option<FilterDoc>,
}

/// Globs as written (`branches`, `tags`, `paths`), shared by the
/// repositories file's `on` and a task's `when`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilterDoc {
    #[serde(default)]
    pub branches: Option<Vec<String>>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub paths: Option<Vec<String>>,
}

/// A list of globs, compiled. `*` stops at `/`, `**` crosses it (as in
/// GitHub Actions filters).
#[derive(Debug, Clone)]
pub struct Globs {
    patterns: Vec<String>,
    set: GlobSet,
}

impl Globs {
    /// Compiles `patterns`, naming each bad one under `path`.
    pub(crate) fn compile(patterns: &[String], path: &str, errors: &mut FieldErrors) -> Globs {
        let mut builder = GlobSetBuilder::new();
        let mut kept = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            match glob(p) {
                Ok(g) => {
                    builder.add(g);
                    kept.push(p.clone());
                }
                Err(e) => errors.push(
                    format!("{path}[{i}]"),
                    format!("{p:?} is not a valid glob: {e}"),
                ),
            }
        }
        let set = builder.build().unwrap_or_else(|_| GlobSet::empty());
        Globs {
            patterns: kept,
            set,
        }
    }

    /// True when any pattern matches `s`.
    pub fn matches(&self, s: &str) -> bool {
        self.set.is_match(s)
    }

    /// The patterns as written.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

fn glob(p: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(p).literal_separator(true).build()
}

/// Compiled filters of one event type (or a task's `when`); `None`: any.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Branches (push) or target branches (pull requests).
    pub branches: Option<Globs>,
    /// Tags.
    pub tags: Option<Globs>,
    /// Changed files.
    pub paths: Option<Globs>,
}

impl Filter {
    pub(crate) fn compile(doc: &FilterDoc, path: &str, errors: &mut FieldErrors) -> Filter {
        let one = |list: &Option<Vec<String>>, key: &str, errors: &mut FieldErrors| {
            list.as_ref()
                .map(|l| Globs::compile(l, &format!("{path}.{key}"), errors))
        };
        Filter {
            branches: one(&doc.branches, "branches", errors),
            tags: one(&doc.tags, "tags", errors),
            paths: one(&doc.paths, "paths", errors),
        }
    }
}

/// Which events start runs for a repository.
#[derive(Debug, Clone)]
pub struct Triggers {
    /// Pushes to branches and tags (`None`: pushes start nothing).
    pub push: Option<Filter>,
    /// Pull requests, filtered by target branch (`None`: they start nothing).
    pub pull_request: Option<Filter>,
}

impl Default for Triggers {
    /// Without `on`: pushes to any branch or tag and pull requests to any branch.
    fn default() -> Self {
        Triggers {
            push: Some(Filter::default()),
            pull_request: Some(Filter::default()),
        }
    }
}

/// A secret, read from its file or environment variable when the
/// repositories file is loaded. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// One repository, checked and with its secrets read.
#[derive(Debug, Clone)]
pub struct RepoConfig {
    /// The name runs carry as `repo`.
    pub name: String,
    /// The forge.
    pub provider: Provider,
    /// The repository's URL as configured.
    pub url: String,
    /// The forge API's base URL (no trailing `/`).
    pub api_url: String,
    /// The webhook secret (GitLab: the token).
    pub webhook_secret: Secret,
    /// The API token, when configured (public repositories may do without).
    pub token: Option<Secret>,
    /// The pipeline file's path in the repository.
    pub pipeline: String,
    /// What starts runs.
    pub on: Triggers,
    /// A newer push to a branch (or commit on a pull request) cancels the older run.
    pub cancel_superseded: bool,
    /// Pull requests from forks start runs.
    pub allow_forks: bool,
    /// How runs are reported back (the file's `report`); the server's
    /// defaults fill what the file leaves out.
    pub report: ReportOverrides,
    /// Forge users who may command runs from comments whatever their
    /// permission on the forge (the file's `trusted`).
    pub trusted: Vec<String>,
}

/// The repositories file's `report` for one repository: each field given
/// overrides the server's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportOverrides {
    /// `statuses: false` turns commit statuses off.
    pub statuses: Option<bool>,
    /// The aggregate context.
    pub context: Option<String>,
    /// One context per stage too.
    pub per_stage: Option<bool>,
    /// Base URL of the run pages.
    pub target_url: Option<String>,
}

impl ReportOverrides {
    /// These overrides over the server's `defaults`.
    pub fn over(&self, defaults: &ReportSettings) -> ReportSettings {
        ReportSettings {
            statuses: self.statuses.unwrap_or(defaults.statuses),
            context: self
                .context
                .clone()
                .unwrap_or_else(|| defaults.context.clone()),
            per_stage: self.per_stage.unwrap_or(defaults.per_stage),
            target_url: self
                .target_url
                .clone()
                .or_else(|| defaults.target_url.clone()),
        }
    }
}

/// The checked repositories file.
#[derive(Debug, Clone, Default)]
pub struct Repositories {
    repos: Vec<RepoConfig>,
}

impl Repositories {
    /// Parses and checks a repositories file, reading the secrets it names
    /// (`env` looks up environment variables; pass `std::env::var`).
    ///
    /// # Errors
    /// Every problem, each named by its path (`repositories[1].url`, ...).
    pub fn parse(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Repositories, FieldErrors> {
        let mut errors = FieldErrors::default();
        let doc: FileDoc = match yaml_serde::from_str(text) {
            Ok(d) => d,
            Err(e) => {
                errors.push("repositories file", e.to_string());
                return Err(errors);
            }
        };
        let mut names = HashSet::new();
        let mut urls = HashSet::new();
        let mut repos = Vec::new();
        for (i, r) in doc.repositories.into_iter().enumerate() {
            let path = format!("repositories[{i}]");
            if let Some(repo) = check_repo(r, &path, env, &mut errors) {
                if !names.insert(repo.name.clone()) {
                    errors.push(
                        format!("{path}.name"),
                        format!("{:?} is listed twice", repo.name),
                    );
                }
                if !urls.insert((repo.provider, normalise_url(&repo.url))) {
                    errors.push(
                        format!("{path}.url"),
                        format!("{:?} is listed twice", repo.url),
                    );
                }
                repos.push(repo);
            }
        }
        if errors.is_empty() {
            Ok(Repositories { repos })
        } else {
            Err(errors)
        }
    }

    /// Reads and parses a repositories file.
    ///
    /// # Errors
    /// The file, when it cannot be read, or as [`Repositories::parse`].
    pub fn load(path: &Path) -> Result<Repositories, FieldErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let mut errors = FieldErrors::default();
            errors.push(path.display().to_string(), format!("cannot be read: {e}"));
            errors
        })?;
        Repositories::parse(&text, &|k| std::env::var(k).ok())
    }

    /// The repository of `provider` with one of `urls` (compared without
    /// case, trailing `/` or `.git`).
    pub fn find(&self, provider: Provider, urls: &[String]) -> Option<&RepoConfig> {
        let wanted: Vec<String> = urls.iter().map(|u| normalise_url(u)).collect();
        self.repos
            .iter()
            .find(|r| r.provider == provider && wanted.contains(&normalise_url(&r.url)))
    }

    /// The repository named `name`.
    pub fn by_name(&self, name: &str) -> Option<&RepoConfig> {
        self.repos.iter().find(|r| r.name == name)
    }

    /// Every repository.
    pub fn all(&self) -> &[RepoConfig] {
        &self.repos
    }
}

fn check_repo(
    r: RepoDoc,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut FieldErrors,
) -> Option<RepoConfig> {
    let before = errors.0.len();
    if r.name.is_empty() {
        errors.push(format!("{path}.name"), "is required");
    } else if r.name.len() > 63 || r.name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        errors.push(
            format!("{path}.name"),
            format!("{:?}: use at most 63 characters without spaces", r.name),
        );
    }
    let provider = match Provider::parse(&r.provider) {
        Some(p) => Some(p),
        None => {
            errors.push(
                format!("{path}.provider"),
                format!("{:?} is not one of github, gitlab, gitea", r.provider),
            );
            None
        }
    };
    if !(r.url.starts_with("https://") || r.url.starts_with("http://")) {
        errors.push(
            format!("{path}.url"),
            format!("{:?} is not an http(s) URL", r.url),
        );
    }
    let api_url = match (&r.api_url, provider) {
        (Some(u), _) if u.starts_with("https://") || u.starts_with("http://") => {
            Some(u.trim_end_matches('/').to_string())
        }
        (Some(u), _) => {
            errors.push(
                format!("{path}.api_url"),
                format!("{u:?} is not an http(s) URL"),
            );
            None
        }
        (None, Some(p)) => match p.default_api_url(&r.url) {
            Some(u) => Some(u),
            None => {
                errors.push(
                    format!("{path}.api_url"),
                    "is required for a self-hosted gitea (e.g. https://gitea.example.com/api/v1)",
                );
                None
            }
        },
        (None, None) => None,
    };
    let webhook_secret = read_secret(
        r.webhook_secret_file.as_deref(),
        r.webhook_secret_env.as_deref(),
        &format!("{path}.webhook_secret"),
        true,
        env,
        errors,
    );
    let token = read_secret(
        r.token_file.as_deref(),
        r.token_env.as_deref(),
        &format!("{path}.token"),
        false,
        env,
        errors,
    );
    let pipeline = r.pipeline.unwrap_or_else(|| DEFAULT_PIPELINE.to_string());
    if pipeline.is_empty() || pipeline.starts_with('/') || pipeline.split('/').any(|s| s == "..") {
        errors.push(
            format!("{path}.pipeline"),
            format!("{pipeline:?} is not a relative path inside the repository"),
        );
    }
    let on = match r.on {
        None => Triggers::default(),
        Some(on) => Triggers {
            push: on
                .push
                .map(|f| Filter::compile(&f, &format!("{path}.on.push"), errors)),
            pull_request: on.pull_request.map(|f| {
                if f.tags.is_some() {
                    errors.push(
                        format!("{path}.on.pull_request.tags"),
                        "pull requests have no tags; filter them by target `branches`",
                    );
                }
                Filter::compile(&f, &format!("{path}.on.pull_request"), errors)
            }),
        },
    };
    let report = match r.report {
        None => ReportOverrides::default(),
        Some(doc) => {
            if let Some(c) = &doc.context
                && (c.is_empty() || c.len() > 100 || c.chars().any(char::is_control))
            {
                errors.push(
                    format!("{path}.report.context"),
                    format!("{c:?}: use 1 to 100 printable characters"),
                );
            }
            if let Some(u) = &doc.target_url
                && !(u.starts_with("https://") || u.starts_with("http://"))
            {
                errors.push(
                    format!("{path}.report.target_url"),
                    format!("{u:?} is not an http(s) URL"),
                );
            }
            ReportOverrides {
                statuses: doc.statuses,
                context: doc.context,
                per_stage: doc.per_stage,
                target_url: doc.target_url,
            }
        }
    };
    let trusted = r.trusted.unwrap_or_default();
    if errors.0.len() > before {
        return None;
    }
    Some(RepoConfig {
        name: r.name,
        provider: provider?,
        url: r.url,
        api_url: api_url?,
        webhook_secret: webhook_secret??,
        token: token?,
        pipeline,
        on,
        cancel_superseded: r.cancel_superseded.unwrap_or(true),
        allow_forks: r.allow_forks.unwrap_or(false),
        report,
        trusted,
    })
}

/// Reads a secret from its file or variable. `Some(None)`: none configured
/// (allowed when not `required`); `None`: a problem was recorded.
fn read_secret(
    file: Option<&Path>,
    var: Option<&str>,
    path: &str,
    required: bool,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut FieldErrors,
) -> Option<Option<Secret>> {
    let value = match (file, var) {
        (Some(_), Some(_)) => {
            errors.push(path, "give either the `_file` or the `_env` form, not both");
            return None;
        }
        (Some(f), None) => match std::fs::read(f) {
            // A trailing newline (echo > file, kubectl create secret --from-file) is not part of it.
            Ok(bytes) => trim_newline(bytes),
            Err(e) => {
                errors.push(
                    format!("{path}_file"),
                    format!("{} cannot be read: {e}", f.display()),
                );
                return None;
            }
        },
        (None, Some(v)) => match env(v) {
            Some(s) => trim_newline(s.into_bytes()),
            None => {
                errors.push(
                    format!("{path}_env"),
                    format!("the environment variable {v} is not set"),
                );
                return None;
            }
        },
        (None, None) if required => {
            errors.push(
                path,
                "is required: give `_file: PATH` or `_env: NAME` (never the secret itself)",
            );
            return None;
        }
        (None, None) => return Some(None),
    };
    if value.is_empty() {
        errors.push(path, "is empty");
        return None;
    }
    Some(Some(Secret(value)))
}

fn trim_newline(mut b: Vec<u8>) -> Vec<u8> {
    while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
        b.pop();
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        (k == "HOOK").then(|| "s3cret\n".to_string())
    }

    #[test]
    fn a_good_file_is_read_with_defaults() {
        let repos = Repositories::parse(
            r#"
repositories:
  - name: hello-world
    provider: github
    url: https://github.com/Codertocat/Hello-World
    webhook_secret_env: HOOK
  - name: lab
    provider: gitlab
    url: https://gitlab.example.com/group/lab.git
    webhook_secret_env: HOOK
    on:
      push: { branches: [main, "release/*"] }
"#,
            &env,
        )
        .unwrap();
        let gh = repos
            .find(
                Provider::Github,
                &["https://github.com/codertocat/hello-world.git/".to_string()],
            )
            .unwrap();
        assert_eq!(gh.api_url, "https://api.github.com");
        assert_eq!(gh.webhook_secret.expose(), b"s3cret");
        assert_eq!(gh.pipeline, DEFAULT_PIPELINE);
        assert!(gh.cancel_superseded && !gh.allow_forks);
        assert!(gh.on.push.is_some() && gh.on.pull_request.is_some());
        let lab = repos.by_name("lab").unwrap();
        assert_eq!(lab.api_url, "https://gitlab.example.com/api/v4");
        assert!(
            lab.on.pull_request.is_none(),
            "on without pull_request: PRs start nothing"
        );
        let branches = lab.on.push.as_ref().unwrap().branches.as_ref().unwrap();
        assert!(branches.matches("release/1.2") && !branches.matches("release/1/2"));
        assert!(
            repos
                .find(Provider::Gitea, std::slice::from_ref(&lab.url))
                .is_none(),
            "provider matters"
        );
        assert!(
            !format!("{gh:?}").contains("s3cret"),
            "secrets are not printed"
        );
    }

    #[test]
    fn every_problem_is_named_with_its_path() {
        let err = Repositories::parse(
            r#"
repositories:
  - name: a
    provider: bitbucket
    url: github.com/x/y
    webhook_secret_env: MISSING
    pipeline: ../etc/passwd
    on:
      push: { branches: ["[main"] }
      pull_request: { tags: [v1] }
  - name: a
    provider: gitea
    url: https://gitea.example.com/x/y
    webhook_secret_file: /nonexistent/hook
    token_env: HOOK
    token_file: /x
"#,
            &env,
        )
        .unwrap_err();
        let text = err.to_string();
        for path in [
            "repositories[0].provider",
            "repositories[0].url",
            "repositories[0].webhook_secret_env",
            "repositories[0].pipeline",
            "repositories[0].on.push.branches[0]",
            "repositories[0].on.pull_request.tags",
            "repositories[1].api_url",
            "repositories[1].webhook_secret_file",
            "repositories[1].token",
        ] {
            assert!(text.contains(path), "{path} missing from: {text}");
        }
    }

    #[test]
    fn inline_secrets_and_unknown_keys_are_refused() {
        let err = Repositories::parse(
            "repositories:\n  - name: a\n    provider: github\n    url: https://github.com/a/b\n    webhook_secret: hunter2\n",
            &env,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("webhook_secret"), "{text}");
        assert!(
            !text.contains("hunter2"),
            "the secret is not echoed: {text}"
        );
    }
}
