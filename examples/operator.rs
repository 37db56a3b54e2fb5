//! `operator`: reconciles RevisionRuns (with their Repo and
//! PipelineRunTemplates) into runs in the shared Redis store, and writes
//! their status; workers sharing the store run them. Wiring only: the
//! reconciler is `stagetime::kube::operator`. See docs/install.md.
//!
//! Prints `metrics listening on ADDR` and `operator started` on stdout once
//! running. SIGTERM/SIGINT: finish the reconciles in flight, exit 0.
//! Exit status: 2 for bad settings, 3 when Redis, the cluster or the port are
//! unavailable at start.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use prometheus_client::registry::Registry;
use stagetime::kube::operator::{Operator, OperatorConfig, OperatorMetrics};
use stagetime::redis::{RedisConfig, RedisStore};
use stagetime::runtime::{Failure, Shutdown, parse_duration, run_main};
use stagetime::store::Store;
use stagetime::telemetry::{Endpoint, LogFormat};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "operator",
    version = env!("STAGETIME_BUILD_VERSION"),
    about = "stagetime operator (RevisionRun CRDs)"
)]
struct Args {
    /// Namespace to watch (absent: all namespaces, which needs a ClusterRole).
    #[arg(long, env = "STAGETIME_NAMESPACE")]
    namespace: Option<String>,
    /// Redis URL (redis:// or rediss://) of the store the workers use.
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    /// Key prefix in Redis (the same as the workers' and the server's).
    #[arg(long, env = "STAGETIME_REDIS_PREFIX", default_value = "stagetime")]
    redis_prefix: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "STAGETIME_METRICS_LISTEN", default_value = "0.0.0.0:9092")]
    metrics_listen: String,
    /// How often the status of an active run is refreshed.
    #[arg(long, env = "STAGETIME_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Log format: text or json.
    #[arg(long, env = "STAGETIME_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    run_main(args.log_format, run(args))
}

async fn run(args: Args) -> Result<(), Failure> {
    let shutdown = Shutdown::on_signal();

    let config = RedisConfig::new(args.redis_url.clone()).with_prefix(args.redis_prefix.clone());
    let Some(store) = shutdown.unless(RedisStore::connect(config)).await else {
        return Ok(());
    };
    let store: Arc<dyn Store> = Arc::new(store?);
    let mut registry = Registry::default();
    let metrics = OperatorMetrics::default();
    metrics.register(&mut registry);
    let operator = Operator::try_default(
        store,
        OperatorConfig {
            namespace: args.namespace.clone(),
            poll_interval: args.poll_interval,
            ..OperatorConfig::default()
        },
    )
    .await?
    .with_metrics(metrics);

    let endpoint = Endpoint::start(&args.metrics_listen, registry, shutdown.wait()).await?;
    let metrics_addr = endpoint.addr();
    println!("metrics listening on {metrics_addr}");
    println!("operator started");
    info!(namespace = ?args.namespace, %metrics_addr, "operator started");
    endpoint
        .ready_while(Arc::new(operator).run(shutdown.wait()))
        .await?;
    info!("operator stopped");
    Ok(())
}
