//! The `stagetime` CLI: argument parsing and wiring only; the logic lives in
//! the libraries.
//!
//! Exit status: 0 the run succeeded (or the command did its job), 1 the run
//! failed or was cancelled, 2 invalid input or usage, 3 an infrastructure
//! error (cluster, Redis, processes unavailable), 130 `watch`/`submit
//! --wait` detached by Ctrl-C (the run goes on), 141 stdout's reader went
//! away (`... | head`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use stagetime::RevisionRunSpec;
use stagetime::backend::{Backend, Housekeeping};
use stagetime::backends::BackendKind;
use stagetime::engine::{Clock, Engine, EngineConfig, SystemClock};
use stagetime::grpc::client::{Client, ClientConfig, RunQuery, WatchEvent};
use stagetime::kube::TektonConfig;
use stagetime::logs::{LogChunk, LogQuery, LogSource};
use stagetime::memory::MemoryStore;
use stagetime::plan::Plan;
use stagetime::report::{
    GraphFormat, RunView, Style, add_rfc3339, describe, graph, plan_table, progress_line,
    queued_too_long, run_table, summary,
};
use stagetime::runtime::{Failure, parse_duration, run_cli};
use stagetime::scheduler::TaskStatus;
use stagetime::spec::{DocumentFormat, parse_document};
use stagetime::store::{RunId, RunState, Store};
use stagetime::telemetry::LogFormat;

// `print!`/`println!` in this file write through `write_stdout`: when the
// reader of stdout went away (`stagetime plan F --output json | head`) the
// CLI ends quietly with status 141, as Unix tools do, where std's macros
// would panic.
macro_rules! print {
    ($($arg:tt)*) => { stagetime::runtime::write_stdout(&format!($($arg)*)) };
}
macro_rules! println {
    () => { stagetime::runtime::write_stdout("\n") };
    ($($arg:tt)*) => { stagetime::runtime::write_stdout(&format!("{}\n", format_args!($($arg)*))) };
}

/// Exit status of `watch` / `submit --wait` detached by Ctrl-C (128 + SIGINT).
const EXIT_DETACHED: u8 = 130;

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

/// Which run: its id, or `--last` for the newest.
#[derive(clap::Args, Clone)]
struct RunRef {
    /// The run's id.
    #[arg(required_unless_present = "last")]
    id: Option<String>,
    /// The newest run (the first of `stagetime list`) instead of an id.
    #[arg(short, long, conflicts_with = "id")]
    last: bool,
}

/// When `watch` and `submit --wait` say that no worker picked the run up.
#[derive(clap::Args, Clone, Copy)]
struct QueueHint {
    /// Say so when the run is still queued after this long (no worker has
    /// started any task of it).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    warn_queued_after: Duration,
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
        #[arg(long, default_value = "local")]
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
        /// Stream every task's output live, each line prefixed with its
        /// task (without it, the tail of each failed task's log is printed
        /// with the summary).
        #[arg(long)]
        logs: bool,
        /// How much of each attempt's log is kept for the summary and
        /// `--logs` (bytes; the last part is kept).
        #[arg(long, default_value_t = stagetime::store::DEFAULT_LOG_TAIL_BYTES)]
        log_tail_bytes: usize,
    },
    /// Check a file and report every problem.
    Validate { file: PathBuf },
    /// Show the stages (table) or the PipelineRuns that would be created (yaml/json).
    Plan {
        file: PathBuf,
        #[arg(short, long, value_enum, default_value = "table")]
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
        #[arg(short, long)]
        wait: bool,
        #[command(flatten)]
        queue_hint: QueueHint,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Show a run: its times (submitted, started, queued, ended, duration),
    /// every stage and task, and each task's attempts with their reasons
    /// and handles (PipelineRun names or log files).
    #[command(visible_alias = "describe")]
    Status {
        #[command(flatten)]
        run: RunRef,
        #[command(flatten)]
        server: ServerArgs,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Follow a run live until it ends; exit 0 if it succeeded, 1 otherwise
    /// (Ctrl-C detaches: exit 130, the run goes on).
    Watch {
        #[command(flatten)]
        run: RunRef,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        queue_hint: QueueHint,
    },
    /// List runs, newest first, with their age and duration.
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        commit: Option<String>,
        /// Only runs of webhook pushes to this branch (with --repo: the
        /// concurrency group `<repo>/branch/<branch>`).
        #[arg(long, requires = "repo")]
        branch: Option<String>,
        /// queued, running, succeeded, failed or cancelled (repeatable).
        #[arg(long)]
        state: Vec<String>,
        /// At most this many runs (following pages as needed).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print a run's task logs: every task's latest attempt in stage order,
    /// or one task's; -f follows them until they end. Works after
    /// housekeeping (from the tail the store keeps with the run).
    Logs {
        id: String,
        /// Only this task.
        task: Option<String>,
        /// Only this attempt of the task (1-based; default: the latest, and
        /// with -f the retries after it).
        #[arg(long, requires = "task")]
        attempt: Option<u32>,
        /// Follow: keep printing while the tasks run, until they end.
        #[arg(short = 'f', long)]
        follow: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Ask the server to cancel a run (a finished one: exit 2).
    Cancel {
        #[command(flatten)]
        run: RunRef,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Run a finished run again, keeping its succeeded tasks.
    Rerun {
        #[command(flatten)]
        run: RunRef,
        #[command(flatten)]
        server: ServerArgs,
        /// Watch the run until it ends and exit with its status.
        #[arg(short, long)]
        wait: bool,
        /// Also run this task again although it succeeded, with everything
        /// downstream of it (repeatable).
        #[arg(short, long = "task")]
        task: Vec<String>,
    },
    /// List the webhook deliveries the server remembers (72 h) and what
    /// became of them: pending, done (with its runs) or failed (with why).
    Intake {
        /// The server's HTTP surface (its --http-listen address).
        #[arg(long, env = "STAGETIME_HTTP", default_value = "http://127.0.0.1:8080")]
        http: String,
        /// Only deliveries in this state: pending, done or failed.
        #[arg(long)]
        state: Option<String>,
        /// Only deliveries of this repository.
        #[arg(long)]
        repo: Option<String>,
        /// At most this many (newest first).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Delete finished work older than --ttl beyond the newest --keep-last
    /// (once): PipelineRuns in --namespace (tekton, the default: needs a
    /// cluster) or attempt directories under --workdir (local).
    Housekeeping {
        #[arg(long, default_value = "tekton")]
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
    let log = if cli.log_json {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    run_cli(log, dispatch(cli.command))
}

async fn dispatch(cmd: Cmd) -> Result<u8, Failure> {
    match cmd {
        Cmd::Validate { file } => {
            let (spec, format) = read(&file)?;
            let plan = Plan::build(spec)?;
            println!(
                "{}: valid ({format:?} format): {} tasks in {} stages, {} finally",
                file.display(),
                plan.main_count,
                plan.stages.len(),
                plan.len() - plan.main_count as usize
            );
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
                PlanOutput::Json => emit(
                    Output::Json,
                    &stagetime::kube::render_plan(&id, &plan, &cfg),
                )?,
            }
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
                    let view = connect(&server).await?.get(&id).await?;
                    if let Some(t) = view.tasks.iter().find(|t| plan.index_of(&t.name).is_none()) {
                        return Err(Failure::invalid(format!(
                            "run {id} is not a run of {}: it has a task {:?} the file lacks",
                            file.display(),
                            t.name
                        )));
                    }
                    Some(view)
                }
            };
            print!("{}", graph(&plan, format, view.as_ref()));
        }
        Cmd::Run {
            file,
            backend,
            namespace,
            dry_run,
            workdir,
            logs,
            log_tail_bytes,
        } => {
            let (mut spec, _) = read(&file)?;
            if dry_run {
                let plan = Plan::build(spec.clone())?;
                match backend {
                    BackendKind::Tekton => print!(
                        "{}",
                        stagetime::kube::render_plan_yaml(
                            &run_id(&spec)?,
                            &plan,
                            &TektonConfig::new(namespace)
                        )?
                    ),
                    BackendKind::Local => print!("{}", plan_table(&plan)),
                }
                return Ok(0);
            }
            let kind = backend;
            let tekton = TektonConfig::new(namespace);
            let backend = kind.open(workdir.join("runs"), tekton.clone()).await?;
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let backend = kind
                .capture_logs(
                    backend,
                    workdir.join("runs"),
                    &tekton,
                    Arc::clone(&store),
                    log_tail_bytes,
                )
                .await?;
            let embedded = EmbeddedLogs {
                reader: kind.log_reader(Arc::clone(&store), &tekton).await?,
                live: logs,
            };
            spec.id = Some(embedded_run_id(&spec)?.to_string());
            return run(spec, backend, store, embedded).await;
        }
        Cmd::Submit {
            file,
            server,
            wait,
            queue_hint,
            output,
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Failure::invalid(format!("cannot read {}: {e}", file.display())))?;
            // Read it here too, so a broken file is reported before any network.
            parse_document(&file.display().to_string(), &text)?;
            let client = connect(&server).await?;
            let r = client.submit(text).await?;
            match output {
                Output::Text if r.created => println!("run {} submitted", r.id),
                Output::Text => println!("run {} already existed (not submitted again)", r.id),
                _ => emit(
                    output,
                    &serde_json::json!({"id": r.id, "created": r.created}),
                )?,
            }
            if wait {
                return watch(&client, r.id.as_str(), 0, queue_hint).await;
            }
        }
        Cmd::Status {
            run,
            server,
            output,
        } => {
            let client = connect(&server).await?;
            let view = client.get(&resolve(&client, &run).await?).await?;
            match output {
                Output::Text => print!("{}", describe(&view, SystemClock.now_ms(), style())),
                _ => emit(output, &view)?,
            }
        }
        Cmd::Watch {
            run,
            server,
            queue_hint,
        } => {
            let client = connect(&server).await?;
            let id = resolve(&client, &run).await?;
            return watch(&client, &id, 0, queue_hint).await;
        }
        Cmd::Logs {
            id,
            task,
            attempt,
            follow,
            server,
        } => {
            let run = RunId::new(id.clone())
                .map_err(|_| Failure::invalid(format!("{id:?} is not a run id")))?;
            let whole_run = task.is_none();
            let query = LogQuery {
                run,
                task,
                attempt,
                follow,
            };
            let chunks = connect(&server).await?.logs(query);
            print_logs(chunks.map_err(Failure::from), whole_run).await?;
        }
        Cmd::List {
            server,
            repo,
            commit,
            branch,
            state,
            limit,
            output,
        } => {
            let concurrency_group = match (&repo, &branch) {
                (Some(r), Some(b)) => Some(stagetime::forge::trigger::branch_group(r, b)),
                _ => None,
            };
            let states = state
                .iter()
                .map(|s| {
                    RunState::parse(s).ok_or_else(|| {
                        Failure::invalid(format!(
                            "--state {s:?}: use queued, running, succeeded, failed or cancelled"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let query = RunQuery {
                repo,
                commit,
                states,
                concurrency_group,
                limit,
            };
            let runs: Vec<_> = connect(&server).await?.list(query).try_collect().await?;
            match output {
                Output::Text => print!("{}", run_table(&runs, SystemClock.now_ms(), style())),
                _ => emit(output, &runs)?,
            }
        }
        Cmd::Intake {
            http,
            state,
            repo,
            limit,
            output,
        } => intake(&http, state, repo, limit, output).await?,
        Cmd::Cancel { run, server } => {
            let client = connect(&server).await?;
            let id = resolve(&client, &run).await?;
            let state = client.get(&id).await?.state;
            if state.is_finished() {
                return Err(Failure::invalid(format!(
                    "run {id} already finished ({}): nothing to cancel",
                    state.as_str()
                )));
            }
            client.cancel(&id).await?;
            println!("cancel of run {id} requested");
        }
        Cmd::Rerun {
            run,
            server,
            wait,
            task,
        } => {
            let client = connect(&server).await?;
            let id = resolve(&client, &run).await?;
            let before = client.get(&id).await?.version;
            let recorded = client.rerun_tasks(&id, Some(before), &task).await?;
            println!("rerun of run {id} requested");
            if wait {
                let hint = QueueHint {
                    warn_queued_after: Duration::MAX,
                };
                return watch(&client, &id, recorded, hint).await;
            }
        }
        Cmd::Housekeeping {
            backend,
            namespace,
            workdir,
            ttl,
            keep_last,
        } => {
            let root = workdir.join("runs");
            match backend {
                BackendKind::Tekton => eprintln!(
                    "housekeeping of the PipelineRuns in namespace {namespace} (tekton backend)"
                ),
                BackendKind::Local => eprintln!(
                    "housekeeping of the attempt directories under {} (local backend)",
                    root.display()
                ),
            }
            let backend = backend
                .open(root, TektonConfig::new(namespace))
                .await
                .map_err(|e| {
                    Failure::unavailable(format!(
                        "{e}: housekeeping --backend tekton (the default) needs a Kubernetes cluster (kubeconfig or in-cluster); for a local workdir use --backend local --workdir DIR"
                    ))
                })?;
            let policy = Housekeeping {
                ttl,
                keep_last,
                now_ms: SystemClock.now_ms(),
            };
            let report = backend.housekeeping(&policy).await?;
            for d in &report.deleted {
                println!("deleted {d}");
            }
            println!("{} deleted", report.deleted.len());
        }
    }
    Ok(0)
}

async fn connect(server: &ServerArgs) -> Result<Client, Failure> {
    let mut config = ClientConfig::new(server.server.clone());
    config.token = std::env::var("STAGETIME_AUTH_TOKEN").ok();
    config.ca_cert = server.ca_cert.clone();
    Ok(Client::connect(&config).await?)
}

/// Colours on a terminal unless NO_COLOR.
fn style() -> Style {
    Style::detect(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR"),
    )
}

/// The id `run` names: given, or the newest run's.
async fn resolve(client: &Client, run: &RunRef) -> Result<String, Failure> {
    if let Some(id) = &run.id {
        return Ok(id.clone());
    }
    let query = RunQuery {
        limit: 1,
        ..RunQuery::default()
    };
    let newest: Vec<_> = client.list(query).take(1).try_collect().await?;
    match newest.first() {
        Some(r) => Ok(r.id.to_string()),
        None => Err(Failure::invalid("--last: the server has no runs")),
    }
}

/// The id of an embedded run: the file's (given or derived) with a suffix
/// from the clock, so that each invocation is a fresh run that never adopts
/// attempts an earlier invocation left (its working directories or
/// PipelineRuns).
fn embedded_run_id(spec: &RevisionRunSpec) -> Result<RunId, Failure> {
    let base = run_id(spec)?;
    let stamp = SystemClock.now_ms() & 0xff_ffff;
    RunId::new(format!("{base}-{stamp:06x}")).map_err(|_| {
        Failure::invalid(format!(
            "id: {base:?} leaves no room for the suffix -XXXXXX that makes each `stagetime run` a fresh run: use at most 56 characters"
        ))
    })
}

/// Machine-readable output on stdout; times also in RFC 3339.
fn emit(output: Output, value: &impl serde::Serialize) -> Result<(), Failure> {
    let mut value = serde_json::to_value(value).map_err(|e| Failure::unavailable(e.to_string()))?;
    add_rfc3339(&mut value);
    let text = match output {
        Output::Yaml => {
            yaml_serde::to_string(&value).map_err(|e| Failure::unavailable(e.to_string()))?
        }
        _ => {
            serde_json::to_string_pretty(&value).map_err(|e| Failure::unavailable(e.to_string()))?
                + "\n"
        }
    };
    print!("{text}");
    Ok(())
}

/// Follows a run with progress lines, then prints its summary; exit status
/// 0 when it succeeded, 1 otherwise. Says when the run stays queued longer
/// than `hint` allows; Ctrl-C detaches (exit 130) and says the run goes on.
async fn watch(
    client: &Client,
    id: &str,
    after_version: u64,
    hint: QueueHint,
) -> Result<u8, Failure> {
    let mut progress: Option<Progress> = None;
    let mut events = client.watch(id, after_version);
    let mut latest: Option<RunView> = None;
    let mut hinted = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { break };
                match event? {
                    WatchEvent::Reconnecting { reason } => {
                        if let Some(p) = &progress {
                            p.note(&format!("watch interrupted ({reason}); reconnecting"));
                        }
                    }
                    WatchEvent::Update(view) => {
                        progress
                            .get_or_insert_with(|| Progress::new(&view))
                            .show(&view);
                        if view.state.is_finished() {
                            return Ok(finish(progress.as_ref(), &view));
                        }
                        latest = Some(*view);
                    }
                }
            }
            _ = tick.tick(), if !hinted => {
                if let (Some(view), Some(p)) = (&latest, &progress)
                    && let Some(note) = queued_too_long(view, SystemClock.now_ms(), hint.warn_queued_after)
                {
                    p.note(&note);
                    hinted = true;
                }
            }
            _ = &mut interrupted => {
                if let Some(p) = &progress {
                    p.finish();
                }
                eprintln!(
                    "detached from run {id}: it goes on without you (`stagetime watch {id}` follows it again, `stagetime cancel {id}` stops it)"
                );
                return Ok(EXIT_DETACHED);
            }
        }
    }
    Err(Failure::unavailable(
        "the watch ended before the run finished",
    ))
}

/// Ends the progress display, prints the summary, answers the exit status.
fn finish(progress: Option<&Progress>, view: &RunView) -> u8 {
    if let Some(p) = progress {
        p.finish();
    }
    print!("{}", summary(view, SystemClock.now_ms(), style()));
    u8::from(view.state != RunState::Succeeded)
}

fn read(file: &Path) -> Result<(RevisionRunSpec, DocumentFormat), Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::invalid(format!("cannot read {}: {e}", file.display())))?;
    Ok(parse_document(&file.display().to_string(), &text)?)
}

fn run_id(spec: &RevisionRunSpec) -> Result<RunId, Failure> {
    Ok(match &spec.id {
        Some(id) => RunId::new(id.clone())?,
        None => RunId::derive(spec),
    })
}

/// Runs one revision run embedded and prints progress and a summary.
async fn run(
    spec: RevisionRunSpec,
    backend: Arc<dyn Backend>,
    store: Arc<dyn Store>,
    logs: EmbeddedLogs,
) -> Result<u8, Failure> {
    let engine = Arc::new(
        Engine::new(store, Arc::clone(&backend)).with_config(EngineConfig {
            consumer: "cli".into(),
            claim_wait: Duration::from_millis(500),
            purge_every: None,
            reconcile_on_start: false,
            ..EngineConfig::default()
        }),
    );
    let mut updates = engine.subscribe();
    let id = engine.submit(spec).await?.id;
    let printer = if logs.live {
        let record = engine.store().load_run(&id).await?;
        Some(tokio::spawn(print_live(Arc::clone(&logs.reader), record)))
    } else {
        None
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Arc::clone(&engine).run(async {
        let _ = stop_rx.await;
    }));
    let view_of = |record: &stagetime::RunRecord| engine.plans().view(record);
    let mut progress = Progress::new(&view_of(&engine.store().load_run(&id).await?)?);
    let mut interrupts = 0;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::unavailable(format!("cannot watch SIGTERM: {e}")))?;
    let view = loop {
        tokio::select! {
            update = updates.recv() => {
                let record = match update {
                    Ok(r) if r.id == id => (*r).clone(),
                    Ok(_) => continue,
                    Err(_) => engine.store().load_run(&id).await?,
                };
                let view = view_of(&record)?;
                progress.show(&view);
                if view.state.is_finished() {
                    break view;
                }
            }
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                if interrupts > 1 {
                    progress.finish();
                    eprintln!("interrupted twice: stopping the running tasks (finally tasks too) and exiting");
                    let view = view_of(&engine.store().load_run(&id).await?)?;
                    stop_running(backend.as_ref(), &view).await;
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
    if let Some(printer) = printer {
        // Every followed log ends once its attempt has (the run is over).
        let _ = printer.await;
    }
    let _ = stop_tx.send(());
    let _ = worker.await;
    let status = finish(Some(&progress), &view);
    if !logs.live {
        print_failed_tails(&*logs.reader, &view).await;
    }
    Ok(status)
}
/// Cancels every running attempt of `run` through the backend (for the
/// local backend: kills its process group) and waits until the backend has
/// seen each end, at most 10 s — so that nothing is left running when the
/// CLI exits.
async fn stop_running(backend: &dyn Backend, run: &RunView) {
    let mut ends = backend.observe();
    let mut running: Vec<stagetime::LaunchKey> = run
        .tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Running)
        .map(|t| stagetime::LaunchKey {
            run: run.id.clone(),
            task: t.name.clone(),
            attempt: t.attempt,
        })
        .collect();
    for key in &running {
        if let Err(e) = backend.cancel(key).await {
            eprintln!("cannot stop {key}: {e}");
        }
    }
    let all_ended = async {
        while !running.is_empty() {
            let Some(end) = ends.next().await else { break };
            running.retain(|k| *k != end.key);
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), all_ended)
        .await
        .is_err()
    {
        eprintln!("some tasks did not confirm their end within 10 s");
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

/// `stagetime intake`: `GET /api/v1/deliveries` on the server's HTTP surface.
async fn intake(
    http: &str,
    state: Option<String>,
    repo: Option<String>,
    limit: usize,
    output: Output,
) -> Result<(), Failure> {
    if let Some(s) = &state
        && !["pending", "done", "failed"].contains(&s.as_str())
    {
        return Err(Failure::invalid(format!(
            "--state {s:?}: use pending, done or failed"
        )));
    }
    let mut query = vec![("limit", limit.to_string())];
    query.extend(state.map(|s| ("state", s)));
    query.extend(repo.map(|r| ("repo", r)));
    let url = format!("{}/api/v1/deliveries", http.trim_end_matches('/'));
    let mut req = reqwest::Client::new().get(&url).query(&query);
    if let Ok(token) = std::env::var("STAGETIME_AUTH_TOKEN") {
        req = req.bearer_auth(token.trim());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| Failure::unavailable(format!("{url}: {e}")))?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| Failure::unavailable(format!("{url}: {e}")))?;
    if !status.is_success() {
        return Err(Failure::unavailable(format!(
            "{url} answered {status}: {body}"
        )));
    }
    let list: Vec<stagetime::store::Delivery> = serde_json::from_value(body["deliveries"].clone())
        .map_err(|e| Failure::unavailable(format!("{url}: unexpected answer: {e}")))?;
    match output {
        Output::Text => {
            println!(
                "{:<48} {:<8} {:<20} RUNS / MESSAGE",
                "DELIVERY", "STATE", "REPO"
            );
            for d in &list {
                let detail = match (&d.message, d.runs.is_empty()) {
                    (Some(m), true) => m.clone(),
                    (Some(m), false) => format!("{} ({m})", d.runs.join(" ")),
                    (None, _) => d.runs.join(" "),
                };
                println!(
                    "{:<48} {:<8} {:<20} {detail}",
                    d.id,
                    d.state.as_str(),
                    d.repo
                );
            }
        }
        _ => emit(output, &list)?,
    }
    Ok(())
}

/// Where the embedded `run` reads task logs, and whether it streams them.
struct EmbeddedLogs {
    reader: Arc<dyn LogSource>,
    live: bool,
}

/// Prints log chunks as they come: a single task's output as it is; with
/// `prefix_tasks` (several tasks) or steps, each line prefixed
/// `[task] ` / `[task/step] ` like `tkn pr logs`.
async fn print_logs(
    mut chunks: impl futures::Stream<Item = Result<LogChunk, Failure>> + Unpin,
    prefix_tasks: bool,
) -> Result<(), Failure> {
    use std::io::Write;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        let prefix = match (&chunk.step, prefix_tasks) {
            (Some(step), true) => format!("[{}/{}] ", chunk.task, step),
            (Some(step), false) => format!("[{step}] "),
            (None, true) => format!("[{}] ", chunk.task),
            (None, false) => String::new(),
        };
        let mut out = std::io::stdout().lock();
        for line in chunk.text.split_inclusive('\n') {
            let _ = write!(out, "{prefix}{line}");
        }
        let _ = out.flush();
    }
    Ok(())
}

/// `run --logs`: every task's output as it is written, prefixed: the tasks
/// of a stage side by side (each followed from its first attempt to its
/// last), stage after stage, then the finally tasks — so a later stage's
/// output never comes before an earlier one's end.
async fn print_live(reader: Arc<dyn LogSource>, record: stagetime::RunRecord) {
    let mut groups: Vec<((bool, f64), Vec<String>)> = Vec::new();
    for task in record.tasks() {
        let at = (task.is_finally, task.spec.stage.map_or(0.0, |s| s.as_f64()));
        match groups.iter_mut().find(|(g, _)| *g == at) {
            Some((_, names)) => names.push(task.name().to_string()),
            None => groups.push((at, vec![task.name().to_string()])),
        }
    }
    groups.sort_by(|(a, _), (b, _)| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    for (_, names) in groups {
        let mut streams = Vec::new();
        for name in names {
            let query = LogQuery {
                follow: true,
                ..LogQuery::task(record.id.clone(), name.clone())
            };
            match reader.open(query).await {
                Ok(s) => streams.push(s),
                Err(e) => eprintln!("cannot follow the output of {name}: {e}"),
            }
        }
        let merged = futures::stream::select_all(streams).map_err(Failure::from);
        if let Err(e) = print_logs(merged, true).await {
            eprintln!("reading task output failed: {e}");
        }
    }
}

/// Lines of a failed task's log printed with the summary.
const FAILED_TAIL_LINES: usize = 20;

/// The last lines of each failed task's log, after the summary.
async fn print_failed_tails(reader: &dyn LogSource, view: &RunView) {
    for task in view
        .tasks
        .iter()
        .filter(|t| matches!(t.status, TaskStatus::Failed | TaskStatus::TimedOut) && t.attempt > 0)
    {
        let query = LogQuery::task(view.id.clone(), task.name.clone());
        let Ok(chunks) = reader.open(query).await else {
            continue;
        };
        let text: String = chunks
            .filter_map(|c| std::future::ready(c.ok()))
            .map(|c| match c.step {
                Some(step) => c
                    .text
                    .split_inclusive('\n')
                    .map(|l| format!("[{step}] {l}"))
                    .collect(),
                None => c.text,
            })
            .collect()
            .await;
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            continue;
        }
        let shown = &lines[lines.len().saturating_sub(FAILED_TAIL_LINES)..];
        println!(
            "--- {} (attempt {}): last {} of {} log lines ---",
            task.name,
            task.attempt,
            shown.len(),
            lines.len()
        );
        for line in shown {
            println!("  {line}");
        }
    }
}
