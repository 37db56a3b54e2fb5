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
    let mut progress = Progress::new(&engine.store().load_run(&id).await?);
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
                progress.show(&record);
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
    print!("{}", summary(&record));
    Ok(if record.state == RunState::Succeeded {
        0
    } else {
        1
    })
}

/// Live progress: an indicatif bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plan: Plan,
    last: Vec<(TaskStatus, u32)>,
}

impl Progress {
    fn new(record: &RunRecord) -> Self {
        let plan = Plan::build(record.spec.clone()).expect("a stored spec is valid");
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(plan.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let last = vec![(TaskStatus::Waiting, 0); plan.len()];
        println!("run {}: {} tasks", record.id, plan.len());
        Progress { bar, plan, last }
    }

    fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn show(&mut self, record: &RunRecord) {
        let tasks = record.scheduler.tasks();
        let mut done = 0;
        let mut running = Vec::new();
        for (i, st) in tasks.iter().enumerate() {
            if st.status.is_terminal() {
                done += 1;
            }
            if st.status == TaskStatus::Running {
                running.push(self.plan.tasks[i].name().to_string());
            }
            let now = (st.status, st.attempt);
            if now == self.last[i] {
                continue;
            }
            self.last[i] = now;
            if matches!(st.status, TaskStatus::Waiting | TaskStatus::Ready) {
                continue;
            }
            let t = &self.plan.tasks[i];
            let stage = t
                .stage
                .map(|s| format!("stage {s}"))
                .unwrap_or_else(|| "finally".into());
            let mut line = format!("{stage:>9}  {:<24} {}", t.name(), status_name(st.status));
            if st.attempt > 1 || st.status == TaskStatus::Backoff {
                line.push_str(&format!(" (attempt {})", st.attempt));
            }
            if let Some(m) = &st.message
                && !matches!(st.status, TaskStatus::Succeeded | TaskStatus::Running)
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
fn summary(record: &RunRecord) -> String {
    let plan = Plan::build(record.spec.clone()).expect("a stored spec is valid");
    let mut out = String::new();
    let total = record
        .finished_ms
        .unwrap_or(record.updated_ms)
        .saturating_sub(record.created_ms);
    out.push_str(&format!(
        "\nrun {} {} in {}\n",
        record.id,
        record.state.as_str(),
        fmt_ms(total)
    ));
    let mut groups: BTreeMap<(u8, u32), Vec<TaskIndex>> = BTreeMap::new();
    for (i, t) in plan.tasks.iter().enumerate() {
        let key = match t.stage {
            Some(s) => (0, s),
            None => (1, 0),
        };
        groups.entry(key).or_default().push(i as TaskIndex);
    }
    let mut failed_logs = Vec::new();
    for ((kind, stage), members) in groups {
        out.push_str(&if kind == 0 {
            format!("stage {stage}\n")
        } else {
            "finally\n".to_string()
        });
        for i in members {
            let t = plan.task(i);
            let st = &record.scheduler.tasks()[i as usize];
            let timing = &record.timings[i as usize];
            let duration = match (timing.first_launch_ms, timing.finished_ms) {
                (Some(a), Some(b)) => fmt_ms(b.saturating_sub(a)),
                _ => "-".into(),
            };
            let can_fail = if t.spec.can_fail { " (can fail)" } else { "" };
            out.push_str(&format!(
                "  {:<24} {:<10} {:>8}  attempts {}{can_fail}\n",
                t.name(),
                status_name(st.status),
                duration,
                st.attempt
            ));
            if matches!(st.status, TaskStatus::Failed | TaskStatus::TimedOut)
                && let Some(log) = &timing.handle
            {
                failed_logs.push(format!("  {}: {log}", t.name()));
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
