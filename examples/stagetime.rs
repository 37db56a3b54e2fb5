//! The `stagetime` CLI: argument parsing and wiring only; the logic lives in
//! the libraries.
//!
//! Exit status: 0 the run succeeded (or the command did its job), 1 the run
//! failed or was cancelled, 2 invalid input or usage, 3 an infrastructure
//! error (cluster, Redis, processes unavailable).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use stagetime::RevisionRunSpec;
use stagetime::backend::{Backend, Housekeeping};
use stagetime::engine::{Engine, EngineConfig, SystemClock};
use stagetime::grpc::{self, client, v1};
use stagetime::kube::{TektonBackend, TektonConfig};
use stagetime::local::LocalBackend;
use stagetime::memory::MemoryStore;
use stagetime::plan::Plan;
use stagetime::report::{GraphFormat, RunView, graph, plan_table, progress_line, summary};
use stagetime::scheduler::TaskStatus;
use stagetime::spec::parse_document;
use stagetime::store::{RunId, RunState};
use stagetime::telemetry::{Failure, parse_duration};

#[derive(Parser)]
#[command(
    name = "stagetime",
    version = env!("STAGETIME_BUILD_VERSION"),
    about = "Commit-driven, staged revision runs"
)]
struct Cli {
    /// Log as JSON lines (to stderr).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum BackendKind {
    Local,
    Tekton,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum PlanOutput {
    Table,
    Yaml,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
    Yaml,
}

/// Where the server is (for submit, status, watch, list, cancel, rerun).
#[derive(clap::Args, Clone)]
struct ServerArgs {
    /// Server URL: http:// (plaintext) or https:// (TLS). The bearer token,
    /// if the server wants one, comes from STAGETIME_AUTH_TOKEN.
    #[arg(
        long,
        env = "STAGETIME_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// Extra CA certificate (PEM) to trust for https://.
    #[arg(long, env = "STAGETIME_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a revision run embedded: in-memory store, local processes (or Tekton).
    Run {
        /// Native YAML/JSON or legacy JSON file.
        file: PathBuf,
        #[arg(long, value_enum, default_value = "local")]
        backend: BackendKind,
        /// Namespace for the Tekton backend.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Print the PipelineRuns that would be created and exit.
        #[arg(long)]
        dry_run: bool,
        /// Working directories and logs of the local backend.
        #[arg(long, default_value = ".stagetime")]
        workdir: PathBuf,
    },
    /// Check a file and report every problem.
    Validate { file: PathBuf },
    /// Show the stages (table) or the PipelineRuns that would be created (yaml/json).
    Plan {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        output: PlanOutput,
        #[arg(long, default_value = "default")]
        namespace: String,
    },
    /// Print the dependency graph (dot or mermaid); with --run, coloured
    /// with the statuses of that run of the file, as the server reports them.
    Graph {
        file: PathBuf,
        #[arg(long, default_value = "dot")]
        format: GraphFormat,
        /// A run of this file on the server.
        #[arg(long)]
        run: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Submit a native or legacy file to the server; --wait follows it to the end.
    Submit {
        file: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
        /// Watch the run until it ends and exit with its status.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Show a run with every stage and task.
    Status {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Follow a run live until it ends; exit 0 if it succeeded, 1 otherwise.
    Watch {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List runs, newest first.
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        commit: Option<String>,
        /// queued, running, succeeded, failed or cancelled (repeatable).
        #[arg(long)]
        state: Vec<String>,
        /// At most this many runs (following pages as needed).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Ask the server to cancel a run.
    Cancel {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Run a finished run again, keeping its succeeded tasks.
    Rerun {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
        /// Watch the run until it ends and exit with its status.
        #[arg(long)]
        wait: bool,
    },
    /// Delete finished work older than --ttl beyond the newest --keep-last (once).
    Housekeeping {
        #[arg(long, value_enum, default_value = "tekton")]
        backend: BackendKind,
        #[arg(long, default_value = "default")]
        namespace: String,
        #[arg(long, default_value = ".stagetime")]
        workdir: PathBuf,
        /// e.g. 7d, 12h.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        ttl: Duration,
        #[arg(long, default_value_t = 5)]
        keep_last: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("STAGETIME_LOG")
        .unwrap_or_else(|_| "warn".into());
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        subscriber.json().init();
    } else {
        subscriber.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn dispatch(cmd: Cmd) -> Result<u8, Failure> {
    match cmd {
        Cmd::Validate { file } => {
            let (spec, format) = read(&file)?;
            let plan = Plan::build(spec)?;
            println!(
                "{}: valid ({:?} format): {} tasks in {} stages, {} finally",
                file.display(),
                format,
                plan.main_count,
                plan.stages.len(),
                plan.len() - plan.main_count as usize
            );
            Ok(0)
        }
        Cmd::Plan {
            file,
            output,
            namespace,
        } => {
            let (spec, _) = read(&file)?;
            let id = run_id(&spec)?;
            let plan = Plan::build(spec)?;
            let cfg = TektonConfig::new(namespace);
            match output {
                PlanOutput::Table => print!("{}", plan_table(&plan)),
                PlanOutput::Yaml => {
                    print!("{}", stagetime::kube::render_plan_yaml(&id, &plan, &cfg)?)
                }
                PlanOutput::Json => {
                    let prs = stagetime::kube::render_plan(&id, &plan, &cfg);
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&prs).map_err(|e| fail(3, e))?
                    );
                }
            }
            Ok(0)
        }
        Cmd::Graph {
            file,
            format,
            run,
            server,
        } => {
            let (spec, _) = read(&file)?;
            let plan = Plan::build(spec)?;
            let view = match run {
                None => None,
                Some(id) => {
                    let mut c = connect(&server).await?;
                    let run = c
                        .runs
                        .get(v1::GetRequest { id: id.clone() })
                        .await
                        .map_err(rpc_failure)?
                        .into_inner();
                    let view = RunView::from(&run);
                    if let Some(t) = view.tasks.iter().find(|t| plan.index_of(&t.name).is_none()) {
                        return Err(fail(
                            2,
                            format!(
                                "run {id} is not a run of {}: it has a task {:?} the file lacks",
                                file.display(),
                                t.name
                            ),
                        ));
                    }
                    Some(view)
                }
            };
            print!("{}", graph(&plan, format, view.as_ref()));
            Ok(0)
        }
        Cmd::Run {
            file,
            backend,
            namespace,
            dry_run,
            workdir,
        } => {
            let (spec, _) = read(&file)?;
            if dry_run {
                let id = run_id(&spec)?;
                let plan = Plan::build(spec)?;
                let cfg = TektonConfig::new(namespace);
                match backend {
                    BackendKind::Tekton => {
                        print!("{}", stagetime::kube::render_plan_yaml(&id, &plan, &cfg)?)
                    }
                    BackendKind::Local => print!("{}", plan_table(&plan)),
                }
                return Ok(0);
            }
            let backend: Arc<dyn Backend> = match backend {
                BackendKind::Local => Arc::new(LocalBackend::new(workdir.join("runs"))),
                BackendKind::Tekton => {
                    Arc::new(TektonBackend::try_default(TektonConfig::new(namespace)).await?)
                }
            };
            // Each embedded invocation is a new run: without an explicit id,
            // suffix the derived one so reruns of a file never adopt old attempts.
            let mut spec = spec;
            if spec.id.is_none() {
                use stagetime::engine::Clock;
                let stamp = SystemClock.now_ms() & 0xff_ffff;
                spec.id = Some(format!("{}-{stamp:06x}", RunId::derive(&spec)));
            }
            run(spec, backend).await
        }
        Cmd::Submit {
            file,
            server,
            wait,
            output,
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| fail(2, format!("cannot read {}: {e}", file.display())))?;
            // Read it here too, so a broken file is reported before any network.
            parse_document(&file.display().to_string(), &text)?;
            let mut c = connect(&server).await?;
            let r = c
                .runs
                .submit(v1::SubmitRequest { document: text })
                .await
                .map_err(rpc_failure)?
                .into_inner();
            match output {
                Output::Text => println!(
                    "run {} {}",
                    r.id,
                    if r.created {
                        "submitted"
                    } else {
                        "already existed (not submitted again)"
                    }
                ),
                _ => emit(
                    output,
                    &serde_json::json!({"id": r.id, "created": r.created}),
                )?,
            }
            if wait {
                return watch(&mut c, &r.id, 0).await;
            }
            Ok(0)
        }
        Cmd::Status { id, server, output } => {
            let mut c = connect(&server).await?;
            let run = c
                .runs
                .get(v1::GetRequest { id })
                .await
                .map_err(rpc_failure)?
                .into_inner();
            let view = RunView::from(&run);
            match output {
                Output::Text => print!("{}", summary(&view)),
                _ => emit(output, &view)?,
            }
            Ok(0)
        }
        Cmd::Watch { id, server } => {
            let mut c = connect(&server).await?;
            watch(&mut c, &id, 0).await
        }
        Cmd::List {
            server,
            repo,
            commit,
            state,
            limit,
            output,
        } => {
            let mut states = Vec::new();
            for s in &state {
                let st = RunState::parse(s).ok_or_else(|| {
                    fail(
                        2,
                        format!(
                            "--state {s:?}: use queued, running, succeeded, failed or cancelled"
                        ),
                    )
                })?;
                states.push(grpc::run_state_to_proto(st) as i32);
            }
            let mut c = connect(&server).await?;
            let mut runs = Vec::new();
            let mut token = String::new();
            while runs.len() < limit {
                let page = c
                    .runs
                    .list(v1::ListRequest {
                        repo: repo.clone().unwrap_or_default(),
                        commit: commit.clone().unwrap_or_default(),
                        states: states.clone(),
                        page_size: (limit - runs.len()).min(1000) as u32,
                        page_token: token,
                    })
                    .await
                    .map_err(rpc_failure)?
                    .into_inner();
                runs.extend(page.runs);
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            runs.truncate(limit);
            let rows: Vec<serde_json::Value> = runs
                .iter()
                .map(|r| {
                    let state = grpc::run_state_from_proto(r.state())
                        .map(|s| s.as_str())
                        .unwrap_or("unknown");
                    serde_json::json!({
                        "id": r.id, "repo": r.repo, "commit": r.commit, "state": state,
                        "created_ms": r.created_ms, "updated_ms": r.updated_ms,
                        "finished_ms": (r.finished_ms != 0).then_some(r.finished_ms),
                    })
                })
                .collect();
            match output {
                Output::Text => {
                    println!("{:<40} {:<10} {:<20} COMMIT", "ID", "STATE", "REPO");
                    for r in &rows {
                        println!(
                            "{:<40} {:<10} {:<20} {}",
                            r["id"].as_str().unwrap_or(""),
                            r["state"].as_str().unwrap_or(""),
                            r["repo"].as_str().unwrap_or(""),
                            r["commit"].as_str().unwrap_or("")
                        );
                    }
                }
                _ => emit(output, &rows)?,
            }
            Ok(0)
        }
        Cmd::Cancel { id, server } => {
            let mut c = connect(&server).await?;
            c.runs
                .cancel(v1::CancelRequest { id: id.clone() })
                .await
                .map_err(rpc_failure)?;
            println!("cancel of run {id} requested");
            Ok(0)
        }
        Cmd::Rerun { id, server, wait } => {
            let mut c = connect(&server).await?;
            let before = c
                .runs
                .get(v1::GetRequest { id: id.clone() })
                .await
                .map_err(rpc_failure)?
                .into_inner()
                .version;
            c.runs
                .rerun(v1::RerunRequest {
                    id: id.clone(),
                    expected_version: before,
                })
                .await
                .map_err(rpc_failure)?;
            println!("rerun of run {id} requested");
            if wait {
                return watch(&mut c, &id, before).await;
            }
            Ok(0)
        }
        Cmd::Housekeeping {
            backend,
            namespace,
            workdir,
            ttl,
            keep_last,
        } => {
            let backend: Arc<dyn Backend> = match backend {
                BackendKind::Local => Arc::new(LocalBackend::new(workdir.join("runs"))),
                BackendKind::Tekton => {
                    Arc::new(TektonBackend::try_default(TektonConfig::new(namespace)).await?)
                }
            };
            use stagetime::engine::Clock;
            let report = backend
                .housekeeping(&Housekeeping {
                    ttl,
                    keep_last,
                    now_ms: SystemClock.now_ms(),
                })
                .await?;
            for d in &report.deleted {
                println!("deleted {d}");
            }
            println!("{} deleted", report.deleted.len());
            Ok(0)
        }
    }
}

fn fail(code: u8, e: impl std::fmt::Display) -> Failure {
    Failure {
        code,
        message: e.to_string(),
    }
}

async fn connect(server: &ServerArgs) -> Result<client::Client, Failure> {
    let mut config = client::ClientConfig::new(server.server.clone());
    config.token = std::env::var("STAGETIME_AUTH_TOKEN").ok();
    config.ca_cert = server.ca_cert.clone();
    Ok(client::connect(&config).await?)
}

/// The exit status for a failed call: 2 for what the caller must fix, 3
/// for the server or its store being unavailable.
fn rpc_failure(s: tonic::Status) -> Failure {
    use tonic::Code;
    let code = match s.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::Aborted
        | Code::OutOfRange
        | Code::ResourceExhausted
        | Code::Unauthenticated
        | Code::PermissionDenied => 2,
        _ => 3,
    };
    let what = match s.code() {
        Code::Unauthenticated => " (set STAGETIME_AUTH_TOKEN)",
        _ => "",
    };
    fail(code, format!("{:?}: {}{what}", s.code(), s.message()))
}

/// Machine-readable output on stdout.
fn emit(output: Output, value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = match output {
        Output::Yaml => yaml_serde::to_string(value).map_err(|e| fail(3, e))?,
        _ => serde_json::to_string_pretty(value).map_err(|e| fail(3, e))? + "\n",
    };
    print!("{text}");
    Ok(())
}

/// Follows a run through the server's Watch stream, showing progress per
/// stage and task; reconnects a few times if the stream breaks. Exit status
/// 0 when the run succeeded, 1 when it failed or was cancelled. A finished
/// state of version `after_version` or older (the run before a rerun was
/// applied) is not the end: the watch looks again.
async fn watch(c: &mut client::Client, id: &str, after_version: u64) -> Result<u8, Failure> {
    let mut progress: Option<Progress> = None;
    let mut retries: u64 = 0;
    loop {
        let mut stream = match c.runs.watch(v1::WatchRequest { id: id.to_string() }).await {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable && retries < 5 => {
                // Growing pauses (1 s … 5 s) ride out a server rollout.
                retries += 1;
                tokio::time::sleep(Duration::from_secs(retries)).await;
                continue;
            }
            Err(s) => return Err(rpc_failure(s)),
        };
        loop {
            match stream.message().await {
                Ok(Some(run)) => {
                    // Only consecutive failures count: a long watch may
                    // outlive several server restarts.
                    retries = 0;
                    let view = RunView::from(&run);
                    if view.state.is_finished() && run.version <= after_version {
                        // The rerun request is not applied yet: look again shortly.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                    let p = progress.get_or_insert_with(|| Progress::new(&view));
                    p.show(&view);
                    if view.state.is_finished() {
                        p.finish();
                        print!("{}", summary(&view));
                        return Ok(if view.state == RunState::Succeeded {
                            0
                        } else {
                            1
                        });
                    }
                }
                Ok(None) => {
                    retries += 1;
                    if retries > 5 {
                        return Err(fail(
                            3,
                            "the server ended the watch before the run finished",
                        ));
                    }
                    break;
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
                    ) && retries < 5 =>
                {
                    retries += 1;
                    if let Some(p) = &progress {
                        p.note(&format!(
                            "watch interrupted ({}); reconnecting",
                            s.message()
                        ));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
                Err(s) => return Err(rpc_failure(s)),
            }
        }
    }
}

fn read(file: &PathBuf) -> Result<(RevisionRunSpec, stagetime::spec::DocumentFormat), Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| fail(2, format!("cannot read {}: {e}", file.display())))?;
    Ok(parse_document(&file.display().to_string(), &text)?)
}

fn run_id(spec: &RevisionRunSpec) -> Result<RunId, Failure> {
    Ok(match &spec.id {
        Some(id) => RunId::new(id.clone())?,
        None => RunId::derive(spec),
    })
}

/// Runs one revision run embedded and prints progress and a summary.
async fn run(spec: RevisionRunSpec, backend: Arc<dyn Backend>) -> Result<u8, Failure> {
    let store = Arc::new(MemoryStore::new());
    let engine = Arc::new(Engine::new(store, backend).with_config(EngineConfig {
        consumer: "cli".into(),
        claim_wait: Duration::from_millis(500),
        purge_every: None,
        reconcile_on_start: false,
        ..EngineConfig::default()
    }));
    let mut updates = engine.subscribe();
    let submitted = engine.submit(spec).await?;
    let id = submitted.id;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Arc::clone(&engine).run(async {
        let _ = stop_rx.await;
    }));
    let mut progress = Progress::new(&RunView::from_record(&engine.store().load_run(&id).await?)?);
    let mut interrupts = 0;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| fail(3, format!("cannot watch SIGTERM: {e}")))?;
    let record = loop {
        tokio::select! {
            update = updates.recv() => {
                let record = match update {
                    Ok(r) if r.id == id => (*r).clone(),
                    Ok(_) => continue,
                    Err(_) => engine.store().load_run(&id).await?,
                };
                progress.show(&RunView::from_record(&record)?);
                if record.state.is_finished() {
                    break record;
                }
            }
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                if interrupts > 1 {
                    progress.finish();
                    eprintln!("interrupted twice: exiting without waiting for finally tasks");
                    return Ok(1);
                }
                progress.note("interrupt: cancelling the run (finally tasks still run; interrupt again to quit)");
                engine.cancel(&id).await?;
            }
            _ = sigterm.recv() => {
                progress.note("SIGTERM: cancelling the run");
                engine.cancel(&id).await?;
            }
        }
    };
    progress.finish();
    let _ = stop_tx.send(());
    let _ = worker.await;
    print!("{}", summary(&RunView::from_record(&record)?));
    Ok(if record.state == RunState::Succeeded {
        0
    } else {
        1
    })
}

/// Live progress: an indicatif bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last: Vec<(TaskStatus, u32)>,
}

impl Progress {
    fn new(run: &RunView) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(run.tasks.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let last = vec![(TaskStatus::Waiting, 0); run.tasks.len()];
        println!("run {}: {} tasks", run.id, run.tasks.len());
        Progress { bar, last }
    }

    fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn show(&mut self, run: &RunView) {
        let mut done = 0;
        let mut running = Vec::new();
        if self.last.len() != run.tasks.len() {
            self.last = vec![(TaskStatus::Waiting, 0); run.tasks.len()];
        }
        for (i, t) in run.tasks.iter().enumerate() {
            if t.status.is_terminal() {
                done += 1;
            }
            if t.status == TaskStatus::Running {
                running.push(t.name.clone());
            }
            let now = (t.status, t.attempt);
            if now == self.last[i] {
                continue;
            }
            self.last[i] = now;
            let Some(line) = progress_line(t) else {
                continue;
            };
            match &self.bar {
                Some(bar) => bar.println(line),
                None => println!("{line}"),
            }
        }
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(if running.is_empty() {
                String::new()
            } else {
                format!("running: {}", running.join(", "))
            });
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
