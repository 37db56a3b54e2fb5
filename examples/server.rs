//! `server`: the gRPC API (legacy `revisionrun` services and
//! `stagetime.v1`) over the shared Redis store, with health, reflection and
//! a Prometheus `/metrics` endpoint. Wiring only: the logic is in
//! `stagetime::grpc`. See docs/operations.md.
//!
//! Prints `grpc listening on ADDR`, `metrics listening on ADDR` (and, with
//! `--http-listen`, `http listening on ADDR` first) on stdout
//! once bound (with `--listen 127.0.0.1:0` the real port is in that line).
//! Exit status: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for bad
//! settings, 3 when Redis or the ports are unavailable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use prometheus_client::registry::Registry;
use stagetime::backends::BackendKind;
use stagetime::forge::Repositories;
use stagetime::forge::app::GithubApp;
use stagetime::forge::client::{ClientConfig, ForgeClient};
use stagetime::forge::intake::{ForgeMetrics, IntakeLoop};
use stagetime::forge::report::ReportSettings;
use stagetime::forge::reporter::Reporter;
use stagetime::grpc::metrics::Metrics;
use stagetime::grpc::{Limits, ServerConfig, SharedLogSource, TlsFiles, load_token};
use stagetime::http::{HttpState, router, watch_repos};
use stagetime::kube::TektonConfig;
use stagetime::logs::StoreLogSource;
use stagetime::memory::MemoryStore;
use stagetime::redis::{RedisConfig, RedisStore};
use stagetime::runtime::{Failure, Shutdown, bind, run_main};
use stagetime::store::Store;
use stagetime::telemetry::{Endpoint, LogFormat};
use tokio::sync::RwLock;
use tracing::info;

#[derive(Parser)]
#[command(name = "server", version = env!("STAGETIME_BUILD_VERSION"), about = "stagetime gRPC server")]
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
    /// Keep runs in this process's memory instead of Redis: for API trials
    /// only — no worker can see these runs, so they stay queued (a warning
    /// says so at start).
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
    /// The workers' backend: submissions with tasks it cannot run (a
    /// `command` for tekton, a `pipeline` for local) are refused at once.
    /// Absent: anything is accepted.
    #[arg(long, env = "STAGETIME_BACKEND")]
    backend: Option<BackendKind>,
    /// Namespace of the PipelineRuns whose pods `logs` reads while they
    /// exist (with --backend tekton; afterwards the store's archive).
    #[arg(long, env = "STAGETIME_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Address of the HTTP surface: the web page and its JSON API (/runs,
    /// /api/v1/...; docs/web.md) and, with --repos, forge webhooks at
    /// /hooks/{github,gitlab,gitea} (docs/git.md); off when not given.
    #[arg(long, env = "STAGETIME_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// The web page and its API only read: cancel and rerun answer 403.
    #[arg(long, env = "STAGETIME_WEB_READ_ONLY")]
    web_read_only: bool,
    /// The repositories file (YAML) of the webhooks; reloaded when it
    /// changes or on SIGHUP.
    #[arg(long, env = "STAGETIME_REPOS")]
    repos: Option<PathBuf>,
    /// The commit status context runs are reported under (a repository's
    /// `report.context` overrides it).
    #[arg(long, env = "STAGETIME_REPORT_CONTEXT", default_value = "stagetime")]
    report_context: String,
    /// Base URL of the run pages linked from commit statuses
    /// (`{URL}/runs/{id}`; a repository's `report.target_url` overrides it).
    #[arg(long, env = "STAGETIME_REPORT_TARGET_URL")]
    report_target_url: Option<String>,
    /// The least time between two description updates of one commit status
    /// (state changes are sent at once).
    #[arg(long, env = "STAGETIME_REPORT_COALESCE", default_value = "5s", value_parser = humantime::parse_duration)]
    report_coalesce: Duration,
    /// How often the reporter looks at the runs it reports.
    #[arg(long, env = "STAGETIME_REPORT_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    report_poll: Duration,
    /// GitHub App id: GitHub repositories without a `token_*` of their own
    /// are read and reported as this App (installation tokens), with check
    /// runs. Needs --github-app-key-file.
    #[arg(
        long,
        env = "STAGETIME_GITHUB_APP_ID",
        requires = "github_app_key_file"
    )]
    github_app_id: Option<u64>,
    /// The GitHub App's private key (PEM), as GitHub hands it out.
    #[arg(
        long,
        env = "STAGETIME_GITHUB_APP_KEY_FILE",
        requires = "github_app_id"
    )]
    github_app_key_file: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "STAGETIME_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    run_main(args.log_format, run(args))
}

async fn run(args: Args) -> Result<(), Failure> {
    let token = load_token(
        args.auth_token_file.as_deref(),
        std::env::var("STAGETIME_AUTH_TOKEN").ok().as_deref(),
    )
    .map_err(Failure::invalid)?;
    if token.is_none() {
        tracing::warn!("no auth token configured: the API is open to anyone who can reach it");
    }
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    let shutdown = Shutdown::on_signal();

    let store: Arc<dyn Store> = match &args.redis_url {
        Some(url) if !args.memory => {
            let config = RedisConfig::new(url.clone()).with_prefix(args.redis_prefix.clone());
            let Some(store) = shutdown.unless(RedisStore::connect(config)).await else {
                return Ok(());
            };
            let store =
                store.map_err(|e| Failure::unavailable(format!("cannot use Redis: {e}")))?;
            if let Ok(Some(warning)) = store.persistence_warning().await {
                tracing::warn!("{warning}");
            }
            Arc::new(store)
        }
        _ => {
            // Loud: a run submitted here stays queued forever (issue 14).
            tracing::warn!(
                "--memory: runs are kept in this process only and NO WORKER CAN SEE THEM, so submitted runs stay queued forever; for a trial on one machine use `stagetime run FILE`, for workers start the server with --redis-url"
            );
            Arc::new(MemoryStore::new())
        }
    };

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let forge_metrics = ForgeMetrics::register(&mut registry);
    let endpoint = Endpoint::start(&args.metrics_listen, registry, shutdown.wait()).await?;
    let metrics_addr = endpoint.addr();
    let (grpc_listener, grpc_addr) = bind(&args.listen).await?;

    tokio::spawn(metrics.clone().refresh_store_every(
        Arc::clone(&store),
        Duration::from_secs(5),
        shutdown.wait(),
    ));
    let runnable_by = args.backend.map(|b| {
        let (caps, name) = b.capabilities();
        (caps, name.to_string())
    });
    // Without Kubernetes access (no kubeconfig, no service account token)
    // `logs` still answers from the store's archive.
    let logs = match args.backend {
        Some(kind) => match kind
            .log_reader(
                Arc::clone(&store),
                &TektonConfig::new(args.namespace.clone()),
            )
            .await
        {
            Ok(reader) => Some(SharedLogSource(reader)),
            Err(e) => {
                tracing::warn!(
                    "task logs: {e}; `logs` reads only the tails kept in the store (no live Tekton output)"
                );
                None
            }
        },
        None => None,
    };
    let config = ServerConfig {
        logs,
        limits: Limits {
            runnable_by,
            ..Limits::default()
        },
        auth: token,
        tls,
    };
    if let Some(listen) = &args.http_listen {
        let (http_listener, http_addr) = bind(listen).await?;
        let web = stagetime::web::WebState::new(Arc::clone(&store))
            .with_auth(config.auth.clone())
            .read_only(args.web_read_only)
            .with_logs(Some(match &config.logs {
                Some(logs) => Arc::clone(&logs.0),
                None => Arc::new(StoreLogSource::new(Arc::clone(&store))),
            }))
            .with_shutdown(shutdown.wait());
        let hooks = match &args.repos {
            Some(repos_file) => {
                let repos = Repositories::load(repos_file)
                    .map_err(|e| Failure::invalid(format!("{}: {e}", repos_file.display())))?;
                let repos = Arc::new(RwLock::new(Arc::new(repos)));
                let mut state = HttpState::new(
                    Arc::clone(&store),
                    Arc::clone(&repos),
                    forge_metrics.clone(),
                );
                state.auth = config.auth.clone();
                let mut client = ForgeClient::new(ClientConfig::default())
                    .map_err(|e| Failure::invalid(e.to_string()))?;
                if let (Some(id), Some(key)) = (args.github_app_id, &args.github_app_key_file) {
                    let app = GithubApp::from_file(id, key)
                        .map_err(|e| Failure::invalid(format!("--github-app-key-file: {e}")))?;
                    info!(
                        app_id = id,
                        "GitHub repositories without a token use the GitHub App"
                    );
                    client = client.with_app(Arc::new(app));
                }
                if let Some(url) = &args.report_target_url
                    && !(url.starts_with("https://") || url.starts_with("http://"))
                {
                    return Err(Failure::invalid(format!(
                        "--report-target-url: {url:?} is not an http(s) URL"
                    )));
                }
                let mut reporter = Reporter::new(
                    Arc::clone(&store),
                    Arc::clone(&repos),
                    client.clone(),
                    ReportSettings {
                        context: args.report_context.clone(),
                        target_url: args.report_target_url.clone(),
                        ..ReportSettings::default()
                    },
                );
                reporter.poll = args.report_poll;
                reporter.coalesce = args.report_coalesce;
                let intake = IntakeLoop {
                    store: Arc::clone(&store),
                    repos: Arc::clone(&repos),
                    client,
                    metrics: forge_metrics,
                    wake: Arc::clone(&state.wake),
                    poll: Duration::from_secs(5),
                    report_wake: Some(Arc::clone(&reporter.wake)),
                };
                tokio::spawn(intake.run(shutdown.wait()));
                tokio::spawn(reporter.run(shutdown.wait()));
                tokio::spawn(watch_repos(
                    repos_file.clone(),
                    repos,
                    Duration::from_secs(2),
                    shutdown.wait(),
                ));
                router(state)
            }
            // No repositories file: webhooks are off, and say so.
            None => axum::Router::new().route(
                "/hooks/{provider}",
                axum::routing::any(|| async {
                    (
                        axum::http::StatusCode::NOT_FOUND,
                        [("content-type", "application/json")],
                        "{\"status\":\"webhooks_off\",\"detail\":\"this server was started without --repos: webhooks are off\"}\n",
                    )
                }),
            ),
        };
        let app = hooks.merge(stagetime::web::router(web));
        let http = stagetime::http::serve(http_listener, app, shutdown.wait());
        tokio::spawn(async move {
            if let Err(e) = http.await {
                tracing::error!(error = %e, "the HTTP listener failed");
            }
        });
        println!("http listening on {http_addr}");
        info!(%http_addr, webhooks = args.repos.is_some(), "http listening (web page and API)");
    }
    println!("grpc listening on {grpc_addr}");
    println!("metrics listening on {metrics_addr}");
    info!(%grpc_addr, %metrics_addr, "listening");
    let serve =
        stagetime::grpc::serve(grpc_listener, config, store, Some(metrics), shutdown.wait());
    endpoint.ready_while(serve).await?;
    info!("server stopped");
    Ok(())
}
