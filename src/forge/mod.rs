//! Forge webhooks (feature `forge`): GitHub, GitLab and Gitea/Forgejo
//! pushes and pull requests start revision runs from the pipeline file at
//! the pushed commit.
//!
//! The pure parts, testable without a network:
//! - [`signature`]: HMAC-SHA256 signatures and GitLab's token, constant time;
//! - [`event`]: each forge's payload parsed into one [`ForgeEvent`];
//! - [`config`]: the repositories file, checked, with its secrets read;
//! - [`trigger`]: `on` filters, fork policy, per-task `when`, run ids and the
//!   run's document;
//! - [`report`]: a run's view as commit statuses and each forge's request.
//!
//! The IO: [`client`] (the pipeline file and changed files through each
//! forge's API, statuses back), [`intake`] (recorded deliveries turned into
//! runs, after the answer, surviving restarts) and [`reporter`] (commit
//! statuses sent as runs move, surviving restarts). The HTTP routes are in
//! [`crate::http`]. See docs/git.md.

pub mod app;
pub mod client;
pub mod config;
pub mod event;
pub mod intake;
pub mod report;
pub mod reporter;
pub mod signature;
pub mod trigger;

pub use config::{RepoConfig, Repositories};
pub use event::{EventKind, ForgeEvent, Parsed};

use serde::{Deserialize, Serialize};

/// A forge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// GitHub and GitHub Enterprise.
    Github,
    /// GitLab (gitlab.com or self-hosted).
    Gitlab,
    /// Gitea and Forgejo (Forgejo sends Gitea-compatible hooks).
    Gitea,
}

impl Provider {
    /// `github`, `gitlab` or `gitea` (the route `/hooks/{name}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
        }
    }

    /// Parses [`Provider::as_str`].
    pub fn parse(s: &str) -> Option<Provider> {
        [Provider::Github, Provider::Gitlab, Provider::Gitea]
            .into_iter()
            .find(|p| p.as_str() == s)
    }

    /// The API base URL for a repository at `url` when none is configured:
    /// `https://api.github.com` for github.com (GitHub Enterprise:
    /// `https://HOST/api/v3`), `https://HOST/api/v4` for GitLab; Gitea has
    /// no default (`None`) unless the host is codeberg.org.
    pub fn default_api_url(self, url: &str) -> Option<String> {
        let rest = url.split_once("://").map(|(_, r)| r)?;
        let host = rest.split('/').next().filter(|h| !h.is_empty())?;
        let scheme = if url.starts_with("http://") {
            "http"
        } else {
            "https"
        };
        match self {
            Provider::Github if host.eq_ignore_ascii_case("github.com") => {
                Some("https://api.github.com".to_string())
            }
            Provider::Github => Some(format!("{scheme}://{host}/api/v3")),
            Provider::Gitlab => Some(format!("{scheme}://{host}/api/v4")),
            Provider::Gitea if host.eq_ignore_ascii_case("codeberg.org") => {
                Some("https://codeberg.org/api/v1".to_string())
            }
            Provider::Gitea => None,
        }
    }

    /// The header carrying the delivery id.
    pub fn delivery_headers(self) -> &'static [&'static str] {
        match self {
            Provider::Github => &["x-github-delivery"],
            Provider::Gitlab => &["x-gitlab-event-uuid"],
            Provider::Gitea => &["x-gitea-delivery", "x-forgejo-delivery"],
        }
    }

    /// The header carrying the event type.
    pub fn event_headers(self) -> &'static [&'static str] {
        match self {
            Provider::Github => &["x-github-event"],
            Provider::Gitlab => &["x-gitlab-event"],
            Provider::Gitea => &["x-gitea-event", "x-forgejo-event"],
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
