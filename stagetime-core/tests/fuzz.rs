#![cfg(feature = "test-util")]
//! Fuzzing of everything a user or an attacker hands stagetime: document
//! text (native YAML/JSON, legacy protobuf JSON) and the specs `Plan::build`
//! checks. Property tests with a bounded number of cases, so the normal test
//! command runs them; every input that once broke something is kept in
//! `tests/corpus` and replayed by [`corpus_files_keep_their_verdict`].
//!
//! The properties: reading and validating never panics; whatever is
//! accepted respects the bounds of `stagetime_core::limits`; whatever is
//! refused says why in a message of bounded length.

use std::path::Path;

use proptest::prelude::*;
use stagetime_core::limits::{MAX_RETRIES, MAX_RETRY_DELAY, MAX_TASKS, MAX_TIMEOUT};
use stagetime_core::plan::Plan;
use stagetime_core::spec::{RevisionRunSpec, Stage, TaskSpec, parse_document};
use stagetime_core::testkit::strategies::valid_spec;

/// Reads and validates `text` as `validate` does; checks what comes out.
fn check(text: &str) -> Result<(), String> {
    let outcome = parse_document("fuzz.yaml", text).and_then(|(spec, _)| Plan::build(spec));
    match outcome {
        Ok(plan) => {
            check_bounds(&plan);
            Ok(())
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty());
            // Never an echo of a huge input: each problem's line stays short
            // (a path, a reason, at most a cut quote of the offending text).
            for line in message.lines() {
                assert!(line.len() <= 2_000, "a {} byte line", line.len());
            }
            Err(message)
        }
    }
}

fn check_bounds(plan: &Plan) {
    assert!(plan.len() <= MAX_TASKS);
    assert!(plan.options.timeout.is_none_or(|t| t <= MAX_TIMEOUT));
    assert!(plan.options.retry_delay_max <= MAX_RETRY_DELAY);
    for t in &plan.tasks {
        assert!(t.timeout.is_none_or(|d| !d.is_zero() && d <= MAX_TIMEOUT));
        assert!(t.retry_delay.is_none_or(|d| d <= MAX_RETRY_DELAY));
        assert!(t.spec.retries <= MAX_RETRIES);
    }
}

/// Text made of the pieces YAML and JSON are built from, aliases included.
fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "repo: r\n",
        "commit: c\n",
        "tasks:\n",
        "  - ",
        "name: a",
        "name: b",
        "{",
        "}",
        "[",
        "]",
        ", ",
        ": ",
        "\n",
        "  ",
        "&x ",
        "*x",
        "&y ",
        "*y",
        "!tag ",
        "<<: *x\n",
        "\"",
        "'",
        "command: \"true\"",
        "stage: ",
        "1",
        "-1",
        "1.5",
        ".nan",
        "NaN",
        "\"Infinity\"",
        "1e400",
        "99999999h",
        "18446744073709552s",
        "30d",
        "timeout: ",
        "retries: ",
        "4294967295",
        "needs: [a]",
        "finally:\n",
        "options: {max_parallel: 0}",
        "id: ",
        "repo_name: r\n",
        "commit_id: c\n",
        "pipelineruns: [",
        "\"params\": \"k=v, =x\"",
        "---\n",
        "...\n",
        "\u{feff}",
        "#",
        "%YAML 1.2\n",
        "? ",
        "|\n",
        ">\n",
        "~",
        "null",
        "é",
        "\u{0}",
    ]);
    prop::collection::vec(piece, 0..60).prop_map(|p| p.concat())
}

/// A document of `spec` (YAML or JSON) with a few bytes changed.
fn mutated() -> impl Strategy<Value = String> {
    (
        valid_spec(8),
        any::<bool>(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
    )
        .prop_map(|(spec, json, edits)| {
            let text = if json {
                serde_json::to_string(&spec).unwrap()
            } else {
                yaml_serde::to_string(&spec).unwrap()
            };
            let mut bytes = text.into_bytes();
            for (at, b) in edits {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
}

/// A legacy `CreateRevisionRunRequest` with hostile values in every field.
fn legacy_document() -> impl Strategy<Value = String> {
    let text = prop::sample::select(vec![
        "",
        "a",
        "k=v",
        "k=v, k2=v2",
        "=x",
        "k",
        "a=b=c",
        "w=secret;s;secretName",
        "w=tape;x;y",
        "c=std;RWO",
        "c=;;1Gi",
        "t=a;b, t=c",
        ",,,",
        ";",
        "x=1;2;3;4",
    ]);
    let stage = prop::sample::select(vec![
        "0",
        "1",
        "-1",
        "1.5",
        "1e300",
        "\"NaN\"",
        "\"Infinity\"",
        "\"-Infinity\"",
        "\"2\"",
        "\"x\"",
        "null",
        "true",
        "[]",
        "4294967296",
    ]);
    let entry = (
        prop::sample::select(vec!["a", "b", "A", "", "x-", "unit-tests"]),
        stage,
        text.clone(),
        text.clone(),
        text.clone(),
        text.clone(),
        text,
        any::<bool>(),
    )
        .prop_map(|(name, stage, p, rp, lp, ws, vc, canfail)| {
            format!(
                "{{\"name\": \"{name}\", \"stage\": {stage}, \"canfail\": {canfail}, \"params\": \"{p}\", \"resolverParams\": \"{rp}\", \"listparams\": \"{lp}\", \"workspaces\": \"{ws}\", \"volumeClaimTemplates\": \"{vc}\"}}"
            )
        });
    (
        prop::collection::vec(entry, 0..6),
        prop::sample::select(vec!["repo_name", "repoName"]),
        prop::sample::select(vec!["", "abc", "4f1c2e9a77"]),
    )
        .prop_map(|(entries, repo_key, commit)| {
            format!(
                "{{\"{repo_key}\": \"r\", \"commit_id\": \"{commit}\", \"pipelineruns\": [{}]}}",
                entries.join(", ")
            )
        })
}

/// Specs with hostile values in every checked field.
fn hostile_spec() -> impl Strategy<Value = RevisionRunSpec> {
    let name = prop::sample::select(vec![
        "a",
        "b",
        "c",
        "",
        "A",
        "-a",
        "a-",
        "x".repeat(64).leak(),
        "é",
        "finally-1",
    ]);
    let duration = prop::option::of(prop::sample::select(vec![
        "1s",
        "0s",
        "30d",
        "31d",
        "99999999h",
        "18446744073709551s",
        "18446744073709552s",
        "1h30m",
        "soon",
        "",
        "1ns",
        "1d",
    ]));
    let stage = prop::option::of(prop_oneof![
        any::<f64>().prop_map(Stage::from),
        (0u32..4).prop_map(Stage::from),
        Just(Stage::from(f64::NAN)),
        Just(Stage::from(f64::INFINITY)),
    ]);
    let task = (
        name.clone(),
        stage,
        prop::option::of(prop::collection::vec(name, 0..3)),
        prop_oneof![0u32..3, Just(100), Just(101), Just(u32::MAX)],
        duration.clone(),
        duration.clone(),
        prop::option::of(prop::sample::select(vec!["true", "", " "])),
        any::<bool>(),
    )
        .prop_map(
            |(name, stage, needs, retries, timeout, retry_delay, command, can_fail)| TaskSpec {
                name: name.to_string(),
                stage,
                needs: needs.map(|n| n.into_iter().map(String::from).collect()),
                retries,
                timeout: timeout.map(String::from),
                retry_delay: retry_delay.map(String::from),
                command: command.map(String::from),
                can_fail,
                ..TaskSpec::default()
            },
        );
    (
        prop::collection::vec(task.clone(), 0..8),
        prop::collection::vec(task, 0..3),
        prop::option::of(prop_oneof![Just(0u32), 1u32..4, Just(u32::MAX)]),
        duration.clone(),
        duration,
        prop::option::of(prop::sample::select(vec!["run-1", "Bad_Id", "", "a.b"])),
    )
        .prop_map(
            |(tasks, finally, max_parallel, timeout, retry_delay_max, id)| {
                let mut spec = RevisionRunSpec {
                    id: id.map(String::from),
                    repo: "r".into(),
                    commit: "c".into(),
                    tasks,
                    finally,
                    ..RevisionRunSpec::default()
                };
                spec.options.max_parallel = max_parallel;
                spec.options.timeout = timeout.map(String::from);
                spec.options.retry_delay_max = retry_delay_max.map(String::from);
                spec
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn reading_yamlish_text_never_panics(text in yamlish()) {
        let _ = check(&text);
    }

    #[test]
    fn reading_arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = check(&text);
    }

    #[test]
    fn reading_mutated_documents_never_panics(text in mutated()) {
        let _ = check(&text);
    }

    #[test]
    fn reading_legacy_documents_never_panics(text in legacy_document()) {
        let _ = check(&text);
    }

    #[test]
    fn building_hostile_specs_never_panics_and_keeps_the_bounds(spec in hostile_spec()) {
        match Plan::build(spec) {
            Ok(plan) => check_bounds(&plan),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn a_valid_spec_reads_back_from_its_own_text(spec in valid_spec(8), json in any::<bool>()) {
        let text = if json {
            serde_json::to_string(&spec).unwrap()
        } else {
            yaml_serde::to_string(&spec).unwrap()
        };
        let (back, _) = parse_document("round-trip", &text).unwrap();
        prop_assert_eq!(back, spec);
    }
}

/// Every file of `tests/corpus` starts with `# expect: ok` or
/// `# expect: <text the refusal contains>`; the rest is a document that once
/// broke something (or nearly did), replayed on every test run.
#[test]
fn corpus_files_keep_their_verdict() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/corpus") {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .trim_start_matches('\u{feff}')
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: no `# expect:` line", path.display()))
            .trim()
            .to_string();
        let verdict = check(&text);
        match (expect.as_str(), verdict) {
            ("ok", Ok(())) => {}
            ("ok", Err(e)) => panic!("{}: refused: {e}", path.display()),
            (_, Ok(())) => panic!("{}: accepted, expected {expect:?}", path.display()),
            (want, Err(e)) => assert!(e.contains(want), "{}: {e}", path.display()),
        }
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} corpus files");
}
