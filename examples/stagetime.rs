//! The `stagetime` CLI: argument parsing and wiring only; the logic lives in
//! the libraries.
//!
//! Exit status: 0 the run succeeded (or the command did its job), 1 the run
//! failed or was cancelled, 2 invalid input or usage, 3 an infrastructure
//! error (cluster, Redis, processes unavailable).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use stagetime::backend::{Backend, Housekeeping};
use stagetime::engine::{Engine, EngineConfig, SystemClock};
use stagetime::grpc::{self, client, v1};
use stagetime::kube::{TektonBackend, TektonConfig};
use stagetime::local::LocalBackend;
use stagetime::memory::MemoryStore;
use stagetime::plan::{Plan, TaskIndex};
use stagetime::scheduler::TaskStatus;
use stagetime::spec::parse_document;
use stagetime::store::{RunId, RunRecord, RunState};
use stagetime::{Error, ErrorKind, RevisionRunSpec};

#[derive(Parser)]
#[command(
    name = "stagetime",
    version,
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

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum GraphFormat {
    Dot,
    Mermaid,
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
    /// Print the dependency graph.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
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
        #[arg(long, default_value = "7d", value_parser = humantime_duration)]
        ttl: Duration,
        #[arg(long, default_value_t = 5)]
        keep_last: usize,
    },
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// A failure with the exit status it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match e.kind() {
            ErrorKind::Invalid => 2,
            _ => 3,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
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
        Cmd::Graph { file, format } => {
            let (spec, _) = read(&file)?;
            let plan = Plan::build(spec)?;
            print!("{}", graph(&plan, format));
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
            let view = RunView::from_proto(&run);
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
                .rerun(v1::RerunRequest { id: id.clone() })
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
    let mut retries = 0;
    loop {
        let mut stream = match c.runs.watch(v1::WatchRequest { id: id.to_string() }).await {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable && retries < 5 => {
                retries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(s) => return Err(rpc_failure(s)),
        };
        loop {
            match stream.message().await {
                Ok(Some(run)) => {
                    let view = RunView::from_proto(&run);
                    if view.state.is_finished() && run.version <= after_version {
                        // The rerun request is not applied yet: look again shortly.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        retries = 0;
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

/// What progress and summaries show of a run: built from a stored record
/// (embedded `run`) or from the server's answer (`status`, `watch`).
#[derive(serde::Serialize)]
struct RunView {
    id: String,
    repo: String,
    commit: String,
    state: RunState,
    created_ms: u64,
    updated_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_ms: Option<u64>,
    tasks: Vec<TaskView>,
}

#[derive(serde::Serialize)]
struct TaskView {
    name: String,
    /// `None` for finally tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<u32>,
    can_fail: bool,
    status: TaskStatus,
    attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_launch_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_ms: Option<u64>,
    /// PipelineRun name (Tekton) or log file (local).
    #[serde(skip_serializing_if = "Option::is_none")]
    handle: Option<String>,
}

impl RunView {
    fn from_record(record: &RunRecord) -> Result<Self, Failure> {
        let plan = Plan::build(record.spec.clone())
            .map_err(|e| fail(3, format!("run {}: stored spec is invalid: {e}", record.id)))?;
        let tasks = plan
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let st = &record.scheduler.tasks()[i];
                let timing = record.timings.get(i).cloned().unwrap_or_default();
                TaskView {
                    name: t.name().to_string(),
                    stage: t.stage,
                    can_fail: t.spec.can_fail,
                    status: st.status,
                    attempt: st.attempt,
                    message: st.message.clone(),
                    first_launch_ms: timing.first_launch_ms,
                    finished_ms: timing.finished_ms,
                    handle: timing.handle,
                }
            })
            .collect();
        Ok(RunView {
            id: record.id.to_string(),
            repo: record.spec.repo.clone(),
            commit: record.spec.commit.clone(),
            state: record.state,
            created_ms: record.created_ms,
            updated_ms: record.updated_ms,
            finished_ms: record.finished_ms,
            tasks,
        })
    }

    fn from_proto(run: &v1::Run) -> Self {
        let nonzero = |ms: u64| (ms != 0).then_some(ms);
        RunView {
            id: run.id.clone(),
            repo: run.repo.clone(),
            commit: run.commit.clone(),
            state: grpc::run_state_from_proto(run.state()).unwrap_or(RunState::Queued),
            created_ms: run.created_ms,
            updated_ms: run.updated_ms,
            finished_ms: nonzero(run.finished_ms),
            tasks: run
                .tasks
                .iter()
                .map(|t| TaskView {
                    name: t.name.clone(),
                    stage: if t.r#finally { None } else { t.stage },
                    can_fail: t.can_fail,
                    status: grpc::task_status_from_proto(t.status()).unwrap_or(TaskStatus::Waiting),
                    attempt: t.attempt,
                    message: (!t.message.is_empty()).then(|| t.message.clone()),
                    first_launch_ms: nonzero(t.first_launch_ms),
                    finished_ms: nonzero(t.finished_ms),
                    handle: (!t.handle.is_empty()).then(|| t.handle.clone()),
                })
                .collect(),
        }
    }
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
            if matches!(t.status, TaskStatus::Waiting | TaskStatus::Ready) {
                continue;
            }
            let stage = t
                .stage
                .map(|s| format!("stage {s}"))
                .unwrap_or_else(|| "finally".into());
            let mut line = format!("{stage:>9}  {:<24} {}", t.name, status_name(t.status));
            if t.attempt > 1 || t.status == TaskStatus::Backoff {
                line.push_str(&format!(" (attempt {})", t.attempt));
            }
            if let Some(m) = &t.message
                && !matches!(t.status, TaskStatus::Succeeded | TaskStatus::Running)
            {
                line.push_str(&format!(": {m}"));
            }
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

fn status_name(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Waiting => "waiting",
        TaskStatus::Ready => "ready",
        TaskStatus::Running => "running",
        TaskStatus::Backoff => "retrying after backoff",
        TaskStatus::Succeeded => "succeeded",
        TaskStatus::Failed => "failed",
        TaskStatus::TimedOut => "timed out",
        TaskStatus::Cancelled => "cancelled",
        TaskStatus::Skipped => "skipped",
    }
}

fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// The final summary per stage and task, with the logs of failed tasks.
fn summary(run: &RunView) -> String {
    let mut out = String::new();
    let total = run
        .finished_ms
        .unwrap_or(run.updated_ms)
        .saturating_sub(run.created_ms);
    out.push_str(&format!(
        "\nrun {} {} in {}\n",
        run.id,
        run.state.as_str(),
        fmt_ms(total)
    ));
    let mut groups: BTreeMap<(u8, u32), Vec<&TaskView>> = BTreeMap::new();
    for t in &run.tasks {
        let key = match t.stage {
            Some(s) => (0, s),
            None => (1, 0),
        };
        groups.entry(key).or_default().push(t);
    }
    let mut failed_logs = Vec::new();
    for ((kind, stage), members) in groups {
        out.push_str(&if kind == 0 {
            format!("stage {stage}\n")
        } else {
            "finally\n".to_string()
        });
        for t in members {
            let duration = match (t.first_launch_ms, t.finished_ms) {
                (Some(a), Some(b)) => fmt_ms(b.saturating_sub(a)),
                _ => "-".into(),
            };
            let can_fail = if t.can_fail { " (can fail)" } else { "" };
            out.push_str(&format!(
                "  {:<24} {:<10} {:>8}  attempts {}{can_fail}\n",
                t.name,
                status_name(t.status),
                duration,
                t.attempt
            ));
            if matches!(t.status, TaskStatus::Failed | TaskStatus::TimedOut)
                && let Some(log) = &t.handle
            {
                failed_logs.push(format!("  {}: {log}", t.name));
            }
        }
    }
    if !failed_logs.is_empty() {
        out.push_str("logs of failed tasks:\n");
        for l in failed_logs {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

fn plan_table(plan: &Plan) -> String {
    let mut out = format!(
        "{:<8} {:<24} {:<20} {:<8} {:<7} {:<8} TARGET\n",
        "STAGE", "TASK", "NEEDS", "CANFAIL", "RETRIES", "TIMEOUT"
    );
    let mut order: Vec<&stagetime::plan::PlannedTask> = plan.tasks.iter().collect();
    order.sort_by_key(|t| (t.is_finally, t.stage));
    for t in order {
        let stage = t
            .stage
            .map(|s| s.to_string())
            .unwrap_or_else(|| "finally".into());
        let needs = match &t.spec.needs {
            Some(n) if n.is_empty() => "(none)".into(),
            Some(n) => n.join(","),
            None => "-".into(),
        };
        let timeout = t
            .timeout
            .map(|d| humantime::format_duration(d).to_string())
            .unwrap_or_else(|| "-".into());
        let target = match (&t.spec.command, &t.spec.pipeline) {
            (Some(c), _) => format!("sh -c {c:?}"),
            (None, Some(p)) => match (&p.pipeline_ref, &p.resolver) {
                (Some(r), _) => format!("pipeline {r}"),
                (None, Some(r)) => format!("pipeline via {r} resolver"),
                _ => "pipeline".into(),
            },
            (None, None) => "-".into(),
        };
        out.push_str(&format!(
            "{stage:<8} {:<24} {needs:<20} {:<8} {:<7} {timeout:<8} {target}\n",
            t.name(),
            t.spec.can_fail,
            t.spec.retries
        ));
    }
    out
}

fn graph(plan: &Plan, format: GraphFormat) -> String {
    let mut edges = Vec::new();
    for i in 0..plan.len() as TaskIndex {
        for d in plan.direct_dependencies(i) {
            edges.push((
                plan.task(d).name().to_string(),
                plan.task(i).name().to_string(),
            ));
        }
    }
    let finally: Vec<&str> = plan
        .tasks
        .iter()
        .filter(|t| t.is_finally)
        .map(|t| t.name())
        .collect();
    let mut out = String::new();
    match format {
        GraphFormat::Dot => {
            out.push_str("digraph revision_run {\n  rankdir=LR;\n");
            for (g, stage) in plan.stages.iter().enumerate() {
                out.push_str(&format!(
                    "  subgraph cluster_{g} {{\n    label=\"stage {}\";\n",
                    stage.number
                ));
                for &m in &stage.members {
                    out.push_str(&format!("    \"{}\";\n", plan.task(m).name()));
                }
                out.push_str("  }\n");
            }
            if !finally.is_empty() {
                out.push_str(
                    "  subgraph cluster_finally {\n    label=\"finally\";\n    style=dashed;\n",
                );
                for f in &finally {
                    out.push_str(&format!("    \"{f}\";\n"));
                }
                out.push_str("  }\n");
            }
            for (a, b) in &edges {
                out.push_str(&format!("  \"{a}\" -> \"{b}\";\n"));
            }
            out.push_str("}\n");
        }
        GraphFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            for stage in &plan.stages {
                out.push_str(&format!(
                    "  subgraph stage{0}[\"stage {0}\"]\n",
                    stage.number
                ));
                for &m in &stage.members {
                    out.push_str(&format!("    {}\n", mermaid_id(plan.task(m).name())));
                }
                out.push_str("  end\n");
            }
            if !finally.is_empty() {
                out.push_str("  subgraph finally\n");
                for f in &finally {
                    out.push_str(&format!("    {}\n", mermaid_id(f)));
                }
                out.push_str("  end\n");
            }
            for (a, b) in &edges {
                out.push_str(&format!("  {} --> {}\n", mermaid_id(a), mermaid_id(b)));
            }
        }
    }
    out
}

fn mermaid_id(name: &str) -> String {
    format!("{}[\"{name}\"]", name.replace('-', "_"))
}
