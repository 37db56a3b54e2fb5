//! `worker`: drives revision runs from the shared Redis store with the
//! Tekton (or local) backend, with periodic housekeeping and a Prometheus
//! `/metrics` endpoint. Wiring only: the engine is `stagetime::engine`.
//! See docs/operations.md.
//!
//! Prints `metrics listening on ADDR` and `worker CONSUMER started` on
//! stdout once running. SIGTERM/SIGINT: stop claiming, finish the batch in
//! hand, exit 0; work still unacknowledged then (only if the drain timed
//! out) is reclaimed by another worker after `--reclaim-after`.
//! Exit status: 2 for bad settings, 3 when Redis, the cluster or the ports
//! are unavailable at start.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use prometheus_client::registry::Registry;
use stagetime::backend::HousekeepingPolicy;
use stagetime::backends::BackendKind;
use stagetime::engine::{Engine, EngineConfig};
use stagetime::grpc::metrics::Metrics;
use stagetime::kube::config::{parse_pod_template, parse_repo_namespaces};
use stagetime::kube::{CancelMode, TektonConfig};
use stagetime::redis::{RedisConfig, RedisStore};
use stagetime::runtime::{Failure, Shutdown, parse_duration, run_main};
use stagetime::store::Store;
use stagetime::telemetry::{Endpoint, LogFormat};
use tracing::info;

#[derive(Parser)]
#[command(name = "worker", version = env!("STAGETIME_BUILD_VERSION"), about = "stagetime worker")]
struct Args {
    /// Redis URL (redis:// or rediss://).
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    /// Key prefix in Redis (must match the server's).
    #[arg(long, env = "STAGETIME_REDIS_PREFIX", default_value = "stagetime")]
    redis_prefix: String,
    /// Where tasks run.
    #[arg(long, env = "STAGETIME_BACKEND", default_value = "tekton")]
    backend: BackendKind,
    /// Namespace of the PipelineRuns (Tekton backend).
    #[arg(long, env = "STAGETIME_NAMESPACE", default_value = "default")]
    namespace: String,
    /// The namespace of the PipelineRuns of listed repositories (Tekton
    /// backend): `repo=namespace` entries separated by commas or spaces,
    /// e.g. `web=team-web,api=team-api`; other repositories' runs go to
    /// --namespace. The worker needs RBAC on PipelineRuns in each.
    #[arg(long, env = "STAGETIME_REPO_NAMESPACES", default_value = "")]
    repo_namespaces: String,
    /// Service account of the PipelineRuns' pods (Tekton backend; absent: Tekton's default).
    #[arg(long, env = "STAGETIME_PIPELINERUN_SERVICE_ACCOUNT")]
    pipelinerun_service_account: Option<String>,
    /// `spec.timeouts.pipeline` of tasks without a timeout (Tekton backend; 0s: Tekton's default).
    #[arg(long, env = "STAGETIME_PIPELINERUN_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pipelinerun_timeout: Duration,
    /// Pod template of the PipelineRuns (Tekton backend), YAML or JSON:
    /// securityContext, nodeSelector, tolerations, affinity,
    /// priorityClassName, runtimeClassName, imagePullSecrets. Its
    /// securityContext replaces the default `fsGroup: 65532`.
    #[arg(
        long,
        env = "STAGETIME_POD_TEMPLATE",
        conflicts_with = "pod_template_file"
    )]
    pod_template: Option<String>,
    /// --pod-template from a file.
    #[arg(long, env = "STAGETIME_POD_TEMPLATE_FILE")]
    pod_template_file: Option<PathBuf>,
    /// What cancelling writes into a PipelineRun's spec.status (Tekton
    /// backend): Cancelled, CancelledRunFinally or StoppedRunFinally.
    #[arg(long, env = "STAGETIME_CANCEL_MODE", default_value = "Cancelled")]
    cancel_mode: CancelMode,
    /// How much of each attempt's log is kept in the store with its run
    /// (bytes; the last part is kept), for `stagetime logs` after
    /// housekeeping — and, for the local backend, the live feed readers
    /// follow.
    #[arg(long, env = "STAGETIME_LOG_TAIL_BYTES", default_value_t = stagetime::store::DEFAULT_LOG_TAIL_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64 * 1024 * 1024))]
    log_tail_bytes: usize,
    /// Working directories and logs of the local backend.
    #[arg(long, env = "STAGETIME_WORKDIR", default_value = ".stagetime")]
    workdir: PathBuf,
    /// Work items claimed per batch. A batch's items are applied
    /// concurrently, grouped by run, so at most this many runs advance (and
    /// launch their ready tasks) at once in this worker; the next batch is
    /// claimed when the batch is done. Scale out with more workers.
    #[arg(long, env = "STAGETIME_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// How often to delete finished PipelineRuns / local attempt
    /// directories past --housekeeping-ttl beyond the newest
    /// --housekeeping-keep-last per repository (0s: never).
    #[arg(long, env = "STAGETIME_HOUSEKEEPING_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    housekeeping_interval: Duration,
    /// Age after which finished work may be deleted by housekeeping.
    #[arg(long, env = "STAGETIME_HOUSEKEEPING_TTL", default_value = "7d", value_parser = parse_duration)]
    housekeeping_ttl: Duration,
    /// Finished runs per repository housekeeping always keeps.
    #[arg(long, env = "STAGETIME_HOUSEKEEPING_KEEP_LAST", default_value_t = 5)]
    housekeeping_keep_last: usize,
    /// A claimed item not acknowledged within this time (a dead worker) is
    /// handed to another worker.
    #[arg(long, env = "STAGETIME_RECLAIM_AFTER", default_value = "5s", value_parser = parse_duration)]
    reclaim_after: Duration,
    /// At shutdown, how long the batch in hand may take to finish.
    #[arg(long, env = "STAGETIME_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "STAGETIME_METRICS_LISTEN", default_value = "0.0.0.0:9091")]
    metrics_listen: String,
    /// Log format: text or json.
    #[arg(long, env = "STAGETIME_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    run_main(args.log_format, run(args))
}

/// The Tekton backend's settings from the flags.
fn tekton_config(args: &Args) -> Result<TektonConfig, Failure> {
    let pod_template = match (&args.pod_template, &args.pod_template_file) {
        (Some(text), _) => Some(text.clone()),
        (None, Some(path)) => Some(std::fs::read_to_string(path).map_err(|e| {
            Failure::invalid(format!("--pod-template-file {}: {e}", path.display()))
        })?),
        (None, None) => None,
    };
    let pod_template = pod_template
        .map(|text| parse_pod_template(&text))
        .transpose()
        .map_err(|e| Failure::invalid(format!("--pod-template: {e}")))?;
    let repo_namespaces = parse_repo_namespaces(&args.repo_namespaces)
        .map_err(|e| Failure::invalid(format!("--repo-namespaces: {e}")))?;
    Ok(TektonConfig {
        repo_namespaces,
        service_account: args.pipelinerun_service_account.clone(),
        default_timeout: (!args.pipelinerun_timeout.is_zero()).then_some(args.pipelinerun_timeout),
        pod_template,
        cancel_mode: args.cancel_mode,
        ..TektonConfig::new(args.namespace.clone())
    })
}

async fn run(args: Args) -> Result<(), Failure> {
    // Bad Tekton settings are refused before anything connects.
    let tekton = match args.backend {
        BackendKind::Tekton => Some(tekton_config(&args)?),
        _ => None,
    };
    let shutdown = Shutdown::on_signal();

    let config = RedisConfig::new(args.redis_url.clone())
        .with_prefix(args.redis_prefix.clone())
        .with_reclaim_after(args.reclaim_after);
    let Some(store) = shutdown.unless(RedisStore::connect(config)).await else {
        return Ok(());
    };
    let store = store?;
    if let Ok(Some(warning)) = store.persistence_warning().await {
        tracing::warn!("{warning}");
    }
    let store: Arc<dyn Store> = Arc::new(store);
    let tekton = tekton.unwrap_or_default();
    let backend = args
        .backend
        .open(args.workdir.join("runs"), tekton.clone())
        .await?;
    let backend = args
        .backend
        .capture_logs(
            backend,
            args.workdir.join("runs"),
            &tekton,
            Arc::clone(&store),
            args.log_tail_bytes,
        )
        .await?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let endpoint = Endpoint::start(&args.metrics_listen, registry, shutdown.wait()).await?;
    let metrics_addr = endpoint.addr();
    tokio::spawn(metrics.clone().refresh_store_every(
        Arc::clone(&store),
        Duration::from_secs(5),
        shutdown.wait(),
    ));

    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    let consumer = format!("worker-{host}-{}", std::process::id());
    let housekeeping = (!args.housekeeping_interval.is_zero()).then_some(HousekeepingPolicy {
        every: args.housekeeping_interval,
        ttl: args.housekeeping_ttl,
        keep_last: args.housekeeping_keep_last,
    });
    let engine = Arc::new(
        Engine::new(store, backend)
            .with_config(EngineConfig {
                consumer: consumer.clone(),
                batch: args.concurrency as usize,
                housekeeping,
                drain_timeout: args.drain_timeout,
                ..EngineConfig::default()
            })
            .with_listener(Arc::new(metrics)),
    );
    println!("metrics listening on {metrics_addr}");
    println!("worker {consumer} started");
    info!(%consumer, %metrics_addr, concurrency = args.concurrency, "worker started");
    endpoint.ready_while(engine.run(shutdown.wait())).await?;
    info!(%consumer, "worker stopped");
    Ok(())
}
