//! End-to-end tests of the `stagetime` CLI: real runs through the binary,
//! ordering observed from the processes, exit codes, bad-input messages,
//! and Ctrl-C.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::text;

/// The CLI example, built on first use.
fn cli() -> PathBuf {
    support::example("stagetime")
}

fn run_cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(cli())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run the CLI")
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    std::fs::write(dir.join(name), body).unwrap();
    name.to_string()
}

#[test]
fn stages_run_in_order_and_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    let log = events.display();
    // Each task logs its start and end; stage 0's two tasks overlap.
    let spec = format!(
        r#"repo: r
commit: abc
tasks:
  - {{name: a, stage: 0, command: "echo start a >> {log}; sleep 0.5; echo end a >> {log}"}}
  - {{name: b, stage: 0, command: "echo start b >> {log}; sleep 0.5; echo end b >> {log}"}}
  - {{name: c, stage: 5, command: "echo start c >> {log}; echo end c >> {log}"}}
finally:
  - {{name: f, command: "echo start f >> {log}"}}
"#
    );
    let file = write(dir.path(), "p.yaml", &spec);
    let out = run_cli(dir.path(), &["run", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines: Vec<String> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let pos = |l: &str| {
        lines
            .iter()
            .position(|x| x == l)
            .unwrap_or_else(|| panic!("{l} missing: {lines:?}"))
    };
    assert!(
        pos("start b") < pos("end a") && pos("start a") < pos("end b"),
        "stage 0 runs in parallel: {lines:?}"
    );
    assert!(
        pos("start c") > pos("end a") && pos("start c") > pos("end b"),
        "stage 5 waits for stage 0: {lines:?}"
    );
    assert_eq!(
        lines.last().unwrap(),
        "start f",
        "finally runs last: {lines:?}"
    );
    let t = text(&out);
    assert!(t.contains("succeeded"), "{t}");
}

#[test]
fn the_demo_succeeds_with_a_retry_and_an_allowed_failure() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pipelines/demo.yaml");
    let out = run_cli(dir.path(), &["run", demo.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("flaky-integration        succeeded") && t.contains("attempts 2"),
        "{t}"
    );
    assert!(
        t.contains("experimental             failed") && t.contains("(can fail)"),
        "{t}"
    );
    assert!(t.contains("logs of failed tasks"), "{t}");
}

#[test]
fn a_failure_skips_dependents_runs_finally_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "p.yaml",
        "repo: r\ncommit: abc\ntasks:\n  - {name: build, command: 'echo boom >&2; exit 2'}\n  - {name: deploy, stage: 1, command: 'touch deployed'}\nfinally:\n  - {name: cleanup, command: 'touch ../../../../cleaned'}\n",
    );
    let out = run_cli(dir.path(), &["run", &file, "--workdir", "w"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("deploy") && t.contains("skipped"), "{t}");
    // The log path of the failed task is printed and holds its output.
    let log_line = t
        .lines()
        .skip_while(|l| !l.contains("logs of failed tasks"))
        .nth(1)
        .expect("a log line");
    let log = log_line.split_once(": ").unwrap().1.trim();
    let content = std::fs::read_to_string(dir.path().join(log)).unwrap();
    assert!(content.contains("boom"), "{content}");
    assert!(
        dir.path().join("w/cleaned").exists() || dir.path().join("cleaned").exists(),
        "finally ran"
    );
}

#[test]
fn bad_input_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let typo = write(
        dir.path(),
        "typo.yaml",
        "repo: r\ncommit: c\ntasks:\n  - {name: a, can_fial: true, command: x}\n",
    );
    let out = run_cli(dir.path(), &["validate", &typo]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("can_fial"), "{}", text(&out));

    let many = write(
        dir.path(),
        "many.yaml",
        "repo: r\ncommit: c\ntasks:\n  - {name: a, needs: [b], command: x}\n  - {name: b, needs: [a], command: x}\n  - {name: c, stage: -1, command: x, timeout: soon}\n",
    );
    let out = run_cli(dir.path(), &["run", &many]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    for needle in [
        "dependency cycle: a -> b -> a",
        "tasks[2].stage",
        "tasks[2].timeout",
    ] {
        assert!(t.contains(needle), "missing {needle:?} in {t}");
    }
    assert!(!dir.path().join(".stagetime").exists(), "nothing ran");

    let out = run_cli(dir.path(), &["run", "does-not-exist.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run_cli(dir.path(), &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn legacy_files_validate_plan_and_are_refused_by_the_local_backend() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pipelines/legacy.json");
    let legacy = legacy.to_str().unwrap();
    let out = run_cli(dir.path(), &["validate", legacy]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run_cli(dir.path(), &["plan", legacy, "--output", "yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let yaml = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<&str> = yaml.split("\n---").filter(|d| d.contains("kind")).collect();
    assert_eq!(docs.len(), 2, "one PipelineRun per entry: {yaml}");
    assert!(
        yaml.contains("kind: PipelineRun") && yaml.contains("resolver: git"),
        "{yaml}"
    );
    let out = run_cli(dir.path(), &["run", legacy]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("has no `command`"), "{}", text(&out));
}

#[test]
fn graph_prints_dot_and_mermaid() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pipelines/demo.yaml");
    let out = run_cli(dir.path(), &["graph", demo.to_str().unwrap()]);
    let dot = String::from_utf8_lossy(&out.stdout);
    assert!(
        dot.starts_with("digraph")
            && dot.contains("  \"lint\" -> \"stage 0 done\";\n")
            && dot.contains("  \"stage 0 done\" -> \"flaky-integration\";\n")
            && dot.contains("\"experimental\" [label=\"experimental\\n(can fail)\", style=dashed]")
            && dot.contains("  \"package\" -> \"all stages done\";\n")
            && dot.contains("  \"all stages done\" -> \"notify\";\n"),
        "{dot}"
    );
    let out = run_cli(
        dir.path(),
        &["graph", demo.to_str().unwrap(), "--format", "mermaid"],
    );
    let m = String::from_utf8_lossy(&out.stdout);
    assert!(
        m.starts_with("flowchart")
            && m.contains("    flaky_integration[\"flaky-integration\"]\n")
            && m.contains("  flaky_integration --> Stage1Done\n")
            && m.contains("  Stage1Done --> package\n"),
        "{m}"
    );
}

#[test]
fn ctrl_c_cancels_kills_the_process_group_and_runs_finally() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let spec = format!(
        "repo: r\ncommit: abc\ntasks:\n  - {{name: long, command: 'sleep 300 & echo $! > {}; wait'}}\n  - {{name: after, stage: 1, command: 'true'}}\nfinally:\n  - {{name: fin, command: 'touch {}'}}\n",
        pidfile.display(),
        dir.path().join("fin-ran").display()
    );
    let file = write(dir.path(), "p.yaml", &spec);
    let child = Command::new(cli())
        .args(["run", &file])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pidfile.exists() || std::fs::read_to_string(&pidfile).unwrap().trim().is_empty() {
        assert!(Instant::now() < deadline, "the task never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sleeper: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("cancelled"), "{t}");
    assert!(t.contains("after") && t.contains("skipped"), "{t}");
    assert!(
        dir.path().join("fin-ran").exists(),
        "finally ran after the cancel: {t}"
    );
    // The task's background process (same process group) is gone.
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(sleeper), None).is_err()
    });
    assert!(gone, "the task's process group was not killed");
}

#[test]
fn version_is_the_one_the_build_was_given() {
    // build.rs: STAGETIME_VERSION from the build's environment (the image
    // build's VERSION), else the crate's version.
    let want = option_env!("STAGETIME_VERSION")
        .filter(|v| !v.trim().is_empty())
        .unwrap_or(env!("CARGO_PKG_VERSION"));
    assert_eq!(env!("STAGETIME_BUILD_VERSION"), want.trim());
    let out = run_cli(Path::new("."), &["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("stagetime {}", want.trim())
    );
}

/// Issue 11, defects 1 and 2 through the CLI: the reproducers are refused
/// by `validate` and `run` alike (exit 2, naming the field or the limit),
/// before anything runs or memory grows.
#[test]
fn hostile_documents_are_refused_by_validate_and_run_alike() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = format!(
        "repo: d\ncommit: c\nx: &x [{}]\ny: [{}]\ntasks:\n  - {{name: a, command: \"true\"}}\n",
        vec!["1"; 150_000].join(","),
        vec!["*x"; 100_000].join(",")
    );
    let cases = [
        (
            write(
                dir.path(),
                "t.yaml",
                "repo: r\ncommit: c\ntasks: [{name: a, command: \"true\", timeout: \"18446744073709551s\"}]\n",
            ),
            "tasks[0].timeout",
        ),
        (
            write(
                dir.path(),
                "r.yaml",
                "repo: r\ncommit: c\ntasks: [{name: a, command: \"true\", retries: 4294967295}]\n",
            ),
            "tasks[0].retries",
        ),
        (
            write(dir.path(), "q.yaml", &bomb),
            "values once aliases are expanded",
        ),
    ];
    for (file, needle) in &cases {
        for cmd in ["validate", "run"] {
            let out = run_cli(dir.path(), &[cmd, file]);
            let text = text(&out);
            assert_eq!(out.status.code(), Some(2), "{cmd} {file}: {text}");
            assert!(text.contains(needle), "{cmd} {file}: {text}");
        }
    }
}

/// Issue 12: `when` is part of the native format — `validate` checks it,
/// and a run not started by a forge event runs every task.
#[test]
fn when_is_validated_and_ignored_outside_forge_events() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "when.yaml",
        "repo: r\ncommit: c\ntasks:\n  - {name: a, command: \"true\", when: {events: [tag], branches: [main]}}\n",
    );
    let out = run_cli(dir.path(), &["validate", &good]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run_cli(dir.path(), &["run", &good]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("succeeded"), "{}", text(&out));
    let bad = write(
        dir.path(),
        "bad-when.yaml",
        "repo: r\ncommit: c\ntasks:\n  - {name: a, command: \"true\", when: {events: [merge], brnaches: [x]}}\n",
    );
    let out = run_cli(dir.path(), &["validate", &bad]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("brnaches"), "{}", text(&out));
    let bad = write(
        dir.path(),
        "bad-event.yaml",
        "repo: r\ncommit: c\ntasks:\n  - {name: a, command: \"true\", when: {events: [merge]}}\n",
    );
    let out = run_cli(dir.path(), &["validate", &bad]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("tasks[0].when.events[0]"),
        "{}",
        text(&out)
    );
}

/// Issue 14: `stagetime plan FILE --output json | head` panicked with
/// "Broken pipe" (exit 101). The reader going away now ends the CLI quietly
/// with 141, as a Unix tool killed by SIGPIPE. The plan is larger than a
/// pipe's buffer, so the CLI is still writing when `head` has gone.
#[test]
fn a_closed_stdout_pipe_ends_the_cli_quietly_with_141() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = String::from("repo: r\ncommit: abc\ntasks:\n");
    for i in 0..400 {
        doc.push_str(&format!(
            "  - {{name: task-{i}, pipeline: {{ref: build}}}}\n"
        ));
    }
    let file = write(dir.path(), "big.yaml", &doc);
    let script = format!(
        "'{}' plan {file} --output json 2>err | head -c 100 >/dev/null; echo \"${{PIPESTATUS[0]}}\"",
        cli().display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = std::fs::read_to_string(dir.path().join("err")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "141", "{err}");
    assert!(err.is_empty(), "quiet, no panic: {err}");
    // The whole plan, read to the end, is larger than a pipe's buffer.
    let full = run_cli(dir.path(), &["plan", &file, "-o", "json"]);
    assert!(full.stdout.len() > 128 * 1024, "{}", full.stdout.len());
}

/// Issue 14: `stagetime run` of a file with an explicit `id:` reported the
/// outcomes of an earlier run of that id (a fixed task still failed). Each
/// invocation is now a fresh run: the fixed task runs again and succeeds,
/// and a task that always runs ran twice.
#[test]
fn an_explicit_id_runs_afresh_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let file = write(
        dir.path(),
        "p.yaml",
        &format!(
            "id: fixed-id\nrepo: r\ncommit: abc\ntasks:\n  - {{name: count, command: 'echo x >> {d}/count'}}\n  - {{name: flaky, command: 'test -f {d}/fixed'}}\n"
        ),
    );
    let first = run_cli(dir.path(), &["run", &file]);
    assert_eq!(first.status.code(), Some(1), "{}", text(&first));
    std::fs::write(dir.path().join("fixed"), "").unwrap();
    let second = run_cli(dir.path(), &["run", &file]);
    let t = text(&second);
    assert_eq!(
        second.status.code(),
        Some(0),
        "the fixed task succeeds: {t}"
    );
    assert!(
        t.contains("run fixed-id-"),
        "the id is the file's, suffixed: {t}"
    );
    let count = std::fs::read_to_string(dir.path().join("count")).unwrap();
    assert_eq!(count.lines().count(), 2, "ran once per invocation: {count}");
    // An id that leaves no room for the suffix is refused, naming it.
    let long = write(
        dir.path(),
        "long.yaml",
        &format!(
            "id: {}\nrepo: r\ncommit: abc\ntasks:\n  - {{name: a, command: 'true'}}\n",
            "a".repeat(60)
        ),
    );
    let out = run_cli(dir.path(), &["run", &long]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("at most 56 characters"),
        "{}",
        text(&out)
    );
}

/// Issue 14: a second Ctrl-C during the finally tasks left them running as
/// orphans. It now kills their process groups before the CLI exits.
#[test]
fn a_second_ctrl_c_kills_the_running_finally_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("fin.pid");
    let spec = format!(
        "repo: r\ncommit: abc\ntasks:\n  - {{name: long, command: 'sleep 300'}}\nfinally:\n  - {{name: fin, command: 'sleep 300 & echo $! > {}; wait'}}\n",
        pidfile.display(),
    );
    let file = write(dir.path(), "p.yaml", &spec);
    let mut child = Command::new(cli())
        .args(["run", &file])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let interrupt = || nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    // The main task runs once its working directory exists.
    let deadline = Instant::now() + Duration::from_secs(30);
    let runs = dir.path().join(".stagetime/runs");
    while !std::fs::read_dir(&runs)
        .is_ok_and(|mut d| d.any(|r| r.is_ok_and(|r| r.path().join("long/1").exists())))
    {
        assert!(Instant::now() < deadline, "the main task never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    interrupt();
    while !pidfile.exists() || std::fs::read_to_string(&pidfile).unwrap().trim().is_empty() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the CLI exited ({status}) before the finally task started");
        }
        assert!(Instant::now() < deadline, "the finally task never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sleeper: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    interrupt();
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("interrupted twice"), "{t}");
    // Killed (an orphan would sleep for 300 s; a killed one is gone as soon
    // as init has reaped it).
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(sleeper), None).is_err()
    });
    assert!(
        gone,
        "the finally task's process group outlived the CLI: {t}"
    );
}

/// Issue 14: `housekeeping` says which backend it works on, and without a
/// cluster that the default (tekton) one needs.
#[test]
fn housekeeping_says_which_backend_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(cli())
        .args(["housekeeping"])
        .current_dir(dir.path())
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(t.contains("namespace default (tekton backend)"), "{t}");
    assert!(
        t.contains("needs a Kubernetes cluster") && t.contains("--backend local"),
        "{t}"
    );
    let out = run_cli(dir.path(), &["housekeeping", "--backend", "local"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("(local backend)") && t.contains("0 deleted"),
        "{t}"
    );
}
