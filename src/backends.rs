//! Which backend a binary runs tasks with, chosen by name (`local` or
//! `tekton`) — one place for the CLI, the worker and the server (which
//! refuses tasks its workers' backend cannot run).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use stagetime_core::Result;
use stagetime_core::backend::{Backend, Capabilities};
use stagetime_core::local::{LocalBackend, LocalLogSource};
use stagetime_core::logs::{
    CaptureMode, LiveFirstLogSource, LogCapture, LogSource, StoreLogSource,
};
use stagetime_core::store::Store;
use stagetime_kube::{TektonBackend, TektonConfig, TektonLogSource};

/// A backend by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Child processes on this machine ([`LocalBackend`]).
    Local,
    /// Tekton PipelineRuns ([`TektonBackend`]).
    Tekton,
}

impl BackendKind {
    /// The name (`local`, `tekton`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Tekton => "tekton",
        }
    }

    /// What tasks the backend can run, and its name (for
    /// [`RunControl::submit`](stagetime_core::control::RunControl::submit)'s
    /// refusal of tasks it cannot).
    pub fn capabilities(self) -> (Capabilities, &'static str) {
        match self {
            BackendKind::Local => (LocalBackend::CAPABILITIES, self.as_str()),
            BackendKind::Tekton => (TektonBackend::CAPABILITIES, self.as_str()),
        }
    }

    /// Opens the backend: the local one keeps its attempts under
    /// `local_dir`; the Tekton one uses `tekton` with the current
    /// kubeconfig or the in-cluster configuration.
    ///
    /// # Errors
    /// [`Error::Unavailable`](stagetime_core::Error::Unavailable) when no
    /// Kubernetes configuration is usable.
    pub async fn open(self, local_dir: PathBuf, tekton: TektonConfig) -> Result<Arc<dyn Backend>> {
        Ok(match self {
            BackendKind::Local => Arc::new(LocalBackend::new(local_dir)),
            BackendKind::Tekton => Arc::new(TektonBackend::try_default(tekton).await?),
        })
    }
}

impl BackendKind {
    /// Wraps `backend` (opened by [`BackendKind::open`] for this kind) so
    /// that each attempt's log tail, its last `keep` bytes, is kept in
    /// `store` with its run ([`LogCapture`]): the local backend's output
    /// while it runs (only this machine can read its files, so the store is
    /// also the live feed), a Tekton attempt's pod logs once it has ended
    /// (readers follow running ones through the Kubernetes API).
    ///
    /// # Errors
    /// [`Error::Unavailable`](stagetime_core::Error::Unavailable) when no
    /// Kubernetes configuration is usable (Tekton).
    pub async fn capture_logs(
        self,
        backend: Arc<dyn Backend>,
        local_dir: PathBuf,
        tekton: &TektonConfig,
        store: Arc<dyn Store>,
        keep: usize,
    ) -> Result<Arc<dyn Backend>> {
        let (source, mode): (Arc<dyn LogSource>, CaptureMode) = match self {
            BackendKind::Local => (Arc::new(LocalLogSource::new(local_dir)), CaptureMode::Live),
            BackendKind::Tekton => (Arc::new(tekton_logs(tekton).await?), CaptureMode::AtEnd),
        };
        Ok(Arc::new(LogCapture::new(
            backend, store, source, mode, keep,
        )))
    }

    /// Where a reader (the server, the embedded CLI) reads the logs of this
    /// backend's attempts: the store for the local backend; for Tekton the
    /// pods of the namespaces of `tekton` while they exist, then the store's archive.
    ///
    /// # Errors
    /// [`Error::Unavailable`](stagetime_core::Error::Unavailable) when no
    /// Kubernetes configuration is usable (Tekton).
    pub async fn log_reader(
        self,
        store: Arc<dyn Store>,
        tekton: &TektonConfig,
    ) -> Result<Arc<dyn LogSource>> {
        Ok(match self {
            BackendKind::Local => Arc::new(StoreLogSource::new(store)),
            BackendKind::Tekton => Arc::new(LiveFirstLogSource::new(
                store,
                Arc::new(tekton_logs(tekton).await?),
            )),
        })
    }
}

/// Pod logs of the PipelineRuns in every namespace `tekton` puts them in.
async fn tekton_logs(tekton: &TektonConfig) -> Result<TektonLogSource> {
    let namespaces = tekton.namespaces();
    Ok(TektonLogSource::try_default(Some(tekton.namespace.clone()))
        .await?
        .also_in(namespaces.into_iter().skip(1).map(str::to_string)))
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "local" => Ok(BackendKind::Local),
            "tekton" => Ok(BackendKind::Tekton),
            _ => Err(format!("{s:?} is not a backend: use local or tekton")),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for kind in [BackendKind::Local, BackendKind::Tekton] {
            assert_eq!(kind.as_str().parse::<BackendKind>(), Ok(kind));
            assert_eq!(kind.capabilities().1, kind.as_str());
        }
        let e = "docker".parse::<BackendKind>().unwrap_err();
        assert!(e.contains("local or tekton"), "{e}");
    }
}
