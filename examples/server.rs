//! `server`: the gRPC API (legacy `revisionrun` services and
//! `stagetime.v1`) over the shared Redis store, with health, reflection and
//! a Prometheus `/metrics` endpoint. Wiring only: the logic is in
//! `stagetime::grpc`. See docs/operations.md.
//!
//! Prints `grpc listening on ADDR` and `metrics listening on ADDR` on stdout
//! once bound (with `--listen 127.0.0.1:0` the real port is in that line).
//! Exit status: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for bad
//! settings, 3 when Redis or the ports are unavailable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use prometheus_client::registry::Registry;
use stagetime::grpc::metrics::Metrics;
use stagetime::grpc::{Limits, ServerConfig, TlsFiles, load_token};
use stagetime::memory::MemoryStore;
use stagetime::redis::{RedisConfig, RedisStore};
use stagetime::store::Store;
use stagetime::telemetry::{Health, LogFormat, init_logging, serve_http, shutdown_signal};
use tokio::sync::watch;
use tracing::{error, info};

#[derive(Parser)]
#[command(name = "server", version, about = "stagetime gRPC server")]
struct Args {
    /// gRPC address.
    #[arg(long, env = "STAGETIME_LISTEN", default_value = "0.0.0.0:50051")]
    listen: String,
    /// Redis URL (redis:// or rediss://).
    #[arg(long, env = "REDIS_URL", required_unless_present = "memory")]
    redis_url: Option<String>,
    /// Key prefix in Redis (must match the workers').
    #[arg(long, env = "STAGETIME_REDIS_PREFIX", default_value = "stagetime")]
    redis_prefix: String,
    /// Keep runs in this process's memory instead of Redis (local trials
    /// only: no worker can see them).
    #[arg(long, conflicts_with = "redis_url")]
    memory: bool,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "STAGETIME_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: String,
    /// File holding the bearer token API calls must carry (else STAGETIME_AUTH_TOKEN; neither: no auth).
    #[arg(long, env = "STAGETIME_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM); with --tls-key.
    #[arg(long, env = "STAGETIME_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); with --tls-cert.
    #[arg(long, env = "STAGETIME_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "STAGETIME_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
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
    let token = load_token(
        args.auth_token_file.as_deref(),
        std::env::var("STAGETIME_AUTH_TOKEN").ok().as_deref(),
    )
    .map_err(|e| (2, e))?;
    if token.is_none() {
        tracing::warn!("no auth token configured: the API is open to anyone who can reach it");
    }
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
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

    let store: Arc<dyn Store> = match &args.redis_url {
        Some(url) if !args.memory => {
            let config = RedisConfig::new(url.clone()).with_prefix(args.redis_prefix.clone());
            let store = tokio::select! {
                s = RedisStore::connect(config) => s.map_err(|e| (3, format!("cannot use Redis: {e}")))?,
                _ = stopped() => return Ok(()),
            };
            Arc::new(store)
        }
        _ => {
            info!("keeping runs in memory (--memory): no worker can see them");
            Arc::new(MemoryStore::new())
        }
    };

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let health = Health::default();
    let metrics_listener = tokio::net::TcpListener::bind(&args.metrics_listen)
        .await
        .map_err(|e| (3, format!("cannot listen on {}: {e}", args.metrics_listen)))?;
    let grpc_listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| (3, format!("cannot listen on {}: {e}", args.listen)))?;
    let grpc_addr = grpc_listener.local_addr().map_err(|e| (3, e.to_string()))?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(|e| (3, e.to_string()))?;

    let http = tokio::spawn(serve_http(
        metrics_listener,
        Arc::new(registry),
        health.clone(),
        stopped(),
    ));
    tokio::spawn(metrics.clone().refresh_store_every(
        Arc::clone(&store),
        Duration::from_secs(5),
        stopped(),
    ));
    let config = ServerConfig {
        limits: Limits::default(),
        auth: token,
        tls,
    };
    println!("grpc listening on {grpc_addr}");
    println!("metrics listening on {metrics_addr}");
    info!(%grpc_addr, %metrics_addr, "listening");
    health.set_ready(true);
    let served =
        stagetime::grpc::serve(grpc_listener, config, store, Some(metrics), stopped()).await;
    health.set_ready(false);
    let _ = http.await;
    served.map_err(|e| {
        let code = if e.kind() == stagetime::ErrorKind::Invalid {
            2
        } else {
            3
        };
        (code, e.to_string())
    })?;
    info!("server stopped");
    Ok(())
}
