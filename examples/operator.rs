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
use stagetime::store::Store;
use stagetime::telemetry::{Health, LogFormat, init_logging, serve_http, shutdown_signal};
use tokio::sync::watch;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "operator",
    version,
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
    #[arg(long, env = "STAGETIME_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: String,
    /// How often the status of an active run is refreshed.
    #[arg(long, env = "STAGETIME_POLL_INTERVAL", default_value = "5s", value_parser = duration)]
    poll_interval: Duration,
    /// Log format: text or json.
    #[arg(long, env = "STAGETIME_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            error!("{message}");
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

async fn run(args: Args) -> Result<(), (u8, String)> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let failed = |e: stagetime::Error| {
        let code = if e.kind() == stagetime::ErrorKind::Invalid {
            2
        } else {
            3
        };
        (code, e.to_string())
    };

    let config = RedisConfig::new(args.redis_url.clone()).with_prefix(args.redis_prefix.clone());
    let store: Arc<dyn Store> = tokio::select! {
        s = RedisStore::connect(config) => Arc::new(s.map_err(failed)?),
        _ = stopped() => return Ok(()),
    };
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
    .await
    .map_err(failed)?
    .with_metrics(metrics);

    let health = Health::default();
    let listener = tokio::net::TcpListener::bind(&args.metrics_listen)
        .await
        .map_err(|e| (3, format!("cannot listen on {}: {e}", args.metrics_listen)))?;
    let metrics_addr = listener.local_addr().map_err(|e| (3, e.to_string()))?;
    let http = tokio::spawn(serve_http(
        listener,
        Arc::new(registry),
        health.clone(),
        stopped(),
    ));
    println!("metrics listening on {metrics_addr}");
    println!("operator started");
    info!(namespace = ?args.namespace, %metrics_addr, "operator started");
    health.set_ready(true);
    let result = Arc::new(operator).run(stopped()).await;
    health.set_ready(false);
    let _ = http.await;
    result.map_err(failed)?;
    info!("operator stopped");
    Ok(())
}
