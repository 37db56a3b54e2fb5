//! proptest strategies: random valid specs (layered DAGs with stage barriers,
//! `needs`, `can_fail`, retries, finally tasks, `max_parallel`) and random
//! graphs that may contain cycles.

use proptest::prelude::*;

use crate::spec::{RevisionRunSpec, RunOptions, TaskSpec};

fn task(name: String, stage: u32) -> TaskSpec {
    TaskSpec {
        name,
        stage: Some(stage.into()),
        command: Some("true".into()),
        ..TaskSpec::default()
    }
}

/// A random valid spec with up to `max_tasks` tasks: stages 0–5 (with gaps),
/// some tasks with `needs` on earlier tasks (never a cycle), `can_fail`,
/// retries, up to 3 finally tasks, sometimes `max_parallel` and `fail_fast`.
pub fn valid_spec(max_tasks: usize) -> impl Strategy<Value = RevisionRunSpec> {
    let tasks = prop::collection::vec(
        (
            0u32..6,
            any::<bool>(),
            0u32..3,
            prop::option::weighted(
                0.3,
                prop::collection::vec(any::<prop::sample::Index>(), 0..3),
            ),
        ),
        1..=max_tasks.max(1),
    );
    let finally = prop::collection::vec(
        (any::<bool>(), 0u32..2, any::<Option<prop::sample::Index>>()),
        0..3,
    );
    let options = (any::<bool>(), prop::option::weighted(0.3, 1u32..4));
    (tasks, finally, options).prop_map(|(tasks, finally, (fail_fast, max_parallel))| {
        // Sort by stage so that `needs` pointing at earlier entries never form a cycle
        // (an earlier entry is in the same or a lower stage).
        let mut tasks = tasks;
        tasks.sort_by_key(|t| t.0);
        let mut out: Vec<TaskSpec> = Vec::with_capacity(tasks.len());
        for (i, (stage, can_fail, retries, needs)) in tasks.into_iter().enumerate() {
            let mut t = task(format!("t{i}"), stage * 2);
            t.can_fail = can_fail;
            t.retries = retries;
            if let Some(needs) = needs {
                let mut names: Vec<String> = needs
                    .iter()
                    .filter(|_| i > 0)
                    .map(|ix| format!("t{}", ix.index(i)))
                    .collect();
                names.sort();
                names.dedup();
                t.needs = Some(names);
            }
            out.push(t);
        }
        let mut fin: Vec<TaskSpec> = Vec::new();
        for (j, (can_fail, retries, need)) in finally.into_iter().enumerate() {
            let mut t = TaskSpec {
                name: format!("f{j}"),
                command: Some("true".into()),
                can_fail,
                retries,
                ..TaskSpec::default()
            };
            if let Some(ix) = need.filter(|_| j > 0) {
                t.needs = Some(vec![format!("f{}", ix.index(j))]);
            }
            fin.push(t);
        }
        RevisionRunSpec {
            repo: "prop".into(),
            commit: "c0ffee".into(),
            options: RunOptions {
                fail_fast,
                max_parallel,
                ..RunOptions::default()
            },
            tasks: out,
            finally: fin,
            ..RevisionRunSpec::default()
        }
    })
}

/// A random spec whose `needs` may point anywhere (so it may be cyclic).
pub fn maybe_cyclic_spec(max_tasks: usize) -> impl Strategy<Value = RevisionRunSpec> {
    prop::collection::vec(
        (
            0u32..4,
            prop::option::weighted(
                0.5,
                prop::collection::vec(any::<prop::sample::Index>(), 0..3),
            ),
        ),
        1..=max_tasks.max(1),
    )
    .prop_map(|tasks| {
        let n = tasks.len();
        let out = tasks
            .into_iter()
            .enumerate()
            .map(|(i, (stage, needs))| {
                let mut t = task(format!("t{i}"), stage);
                if let Some(needs) = needs {
                    let mut names: Vec<String> =
                        needs.iter().map(|ix| format!("t{}", ix.index(n))).collect();
                    names.sort();
                    names.dedup();
                    t.needs = Some(names);
                }
                t
            })
            .collect();
        RevisionRunSpec {
            repo: "prop".into(),
            commit: "c0ffee".into(),
            tasks: out,
            ..RevisionRunSpec::default()
        }
    })
}

/// A layered DAG of `n` tasks for benchmarks: `width` tasks per stage, and
/// every `needs_every`-th task also needs two tasks of the previous stage.
pub fn layered_spec(n: usize, width: usize, needs_every: usize) -> RevisionRunSpec {
    let width = width.max(1);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let stage = (i / width) as u32;
        let mut t = task(format!("t{i}"), stage);
        if stage > 0 && needs_every > 0 && i % needs_every == 0 {
            let prev = (stage as usize - 1) * width;
            t.needs = Some(vec![
                format!("t{}", prev + i % width),
                format!("t{}", prev + (i + 1) % width),
            ]);
        }
        tasks.push(t);
    }
    RevisionRunSpec {
        repo: "bench".into(),
        commit: "c0ffee".into(),
        tasks,
        ..RevisionRunSpec::default()
    }
}
