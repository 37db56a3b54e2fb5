//! Direct tests of RedisStore semantics against a real redis-server.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use stagetime_core::plan::Plan;
use stagetime_core::scheduler::{Event, StageScheduler};
use stagetime_core::store::{
    ClaimToken, Commit, RECORD_FORMAT, RunFilter, RunId, RunRecord, RunState, Store, TaskTiming,
    Work, WorkItem,
};
use stagetime_core::{ErrorKind, RevisionRunSpec};
use stagetime_redis::{RedisConfig, RedisStore};

fn spec(repo: &str, commit: &str, group: Option<&str>) -> RevisionRunSpec {
    let mut v = serde_json::json!({
        "repo": repo,
        "commit": commit,
        "tasks": [
            {"name": "a", "command": "true"},
            {"name": "b", "stage": 1, "command": "true"}
        ]
    });
    if let Some(g) = group {
        v["options"] = serde_json::json!({ "concurrency_group": g });
    }
    serde_json::from_value(v).expect("spec")
}

fn record(id: &str, repo: &str, commit: &str, created_ms: u64) -> RunRecord {
    record_in(id, spec(repo, commit, None), created_ms)
}

fn record_in(id: &str, spec: RevisionRunSpec, created_ms: u64) -> RunRecord {
    let plan = Arc::new(Plan::build(spec.clone()).expect("plan"));
    let n = plan.tasks.len();
    RunRecord {
        format: RECORD_FORMAT,
        id: RunId::new(id).expect("id"),
        version: 0,
        spec,
        scheduler: StageScheduler::new(plan, 1).into_state(),
        state: RunState::Queued,
        created_ms,
        updated_ms: created_ms,
        finished_ms: None,
        timings: vec![TaskTiming::default(); n],
        outbox: Vec::new(),
    }
}

fn id(s: &str) -> RunId {
    RunId::new(s).expect("id")
}

fn start(run: &str) -> WorkItem {
    WorkItem::event(id(run), Event::Start)
}

fn next(mut r: RunRecord) -> RunRecord {
    r.version += 1;
    r.updated_ms += 1;
    r
}

#[tokio::test]
async fn create_is_idempotent_and_enqueues_start_atomically() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = server.store("create").await;
    let r = record("run-1", "demo", "c1", 1_000);
    let created = store
        .create_run(r.clone(), vec![start("run-1")])
        .await
        .unwrap();
    assert!(created.created);
    assert_eq!(created.record, r);

    let mut other = record("run-1", "demo", "c2", 2_000);
    other.updated_ms = 5;
    let again = store.create_run(other, vec![start("run-1")]).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.record, r, "the existing record is returned");

    let claimed = store.claim("w1", 10, 1_000, Duration::ZERO).await.unwrap();
    assert_eq!(claimed.len(), 1, "start enqueued once: {claimed:?}");
    assert_eq!(claimed[0].item, start("run-1"));
    assert_eq!(claimed[0].deliveries, 1);
    assert_eq!(store.load_run(&id("run-1")).await.unwrap(), r);
    let e = store.load_run(&id("nope")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn commit_is_a_compare_and_set_that_enqueues_and_acks() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = server.store("commit").await;
    let r = record("run-c", "demo", "c1", 1_000);
    store
        .create_run(r.clone(), vec![start("run-c")])
        .await
        .unwrap();
    let claimed = store.claim("w1", 10, 1_000, Duration::ZERO).await.unwrap();
    assert_eq!(claimed.len(), 1);

    let mut r1 = next(r.clone());
    r1.state = RunState::Running;
    let follow = WorkItem::now(id("run-c"), Work::Flush);
    let timer = WorkItem {
        run: id("run-c"),
        work: Work::Flush,
        due_ms: Some(50_000),
    };
    store
        .commit(Commit {
            record: r1.clone(),
            expected_version: 0,
            enqueue: vec![follow.clone(), timer.clone()],
            ack: vec![claimed[0].token.clone()],
        })
        .await
        .unwrap();
    assert_eq!(store.load_run(&id("run-c")).await.unwrap(), r1);
    let stats = store.stream_stats().await.unwrap();
    assert_eq!(stats.pending, 0, "the consumed item was acknowledged");

    // A repeat of the same commit conflicts and changes nothing.
    let e = store
        .commit(Commit {
            record: r1.clone(),
            expected_version: 0,
            enqueue: vec![follow.clone()],
            ack: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(
        e.to_string().ends_with("expected version 0, found 1"),
        "{e}"
    );
    // A commit whose record version is not expected + 1 conflicts too.
    let mut bad = r1.clone();
    bad.version = 7;
    let e = store
        .commit(Commit {
            record: bad,
            expected_version: 1,
            enqueue: vec![],
            ack: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);

    let now = store.claim("w1", 10, 1_000, Duration::ZERO).await.unwrap();
    assert_eq!(
        now.iter().map(|c| c.item.clone()).collect::<Vec<_>>(),
        vec![follow],
        "one follow-up, not two"
    );
    store.ack(&[now[0].token.clone()]).await.unwrap();
    let later = store.claim("w1", 10, 50_000, Duration::ZERO).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].item, timer, "delayed item keeps its due time");

    let mut ghost = record("ghost", "demo", "c1", 1);
    ghost.version = 1;
    let e = store
        .commit(Commit {
            record: ghost,
            expected_version: 0,
            enqueue: vec![],
            ack: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn claimed_work_is_reclaimed_after_the_reclaim_time_by_now_ms() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = RedisStore::connect(
        server
            .config("reclaim")
            .with_reclaim_after(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    let items: Vec<WorkItem> = (0..3)
        .map(|i| WorkItem::now(id(&format!("r{i}")), Work::Flush))
        .collect();
    store.enqueue(items.clone()).await.unwrap();

    let a = store.claim("a", 2, 10_000, Duration::ZERO).await.unwrap();
    assert_eq!(a.len(), 2);
    let b = store.claim("b", 10, 10_000, Duration::ZERO).await.unwrap();
    assert_eq!(b.len(), 1, "only the unclaimed item");
    store.ack(&[b[0].token.clone()]).await.unwrap();
    assert!(
        store
            .claim("b", 10, 39_999, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "not before the reclaim time"
    );

    let again = store.claim("b", 10, 40_000, Duration::ZERO).await.unwrap();
    assert_eq!(again.len(), 2, "a's items go to b after 30 s");
    assert!(again.iter().all(|c| c.deliveries == 2), "{again:?}");
    let mut got: Vec<_> = again.iter().map(|c| c.item.clone()).collect();
    let mut want: Vec<_> = a.iter().map(|c| c.item.clone()).collect();
    got.sort_by_key(|i| i.run.clone());
    want.sort_by_key(|i| i.run.clone());
    assert_eq!(got, want);

    // Acks are idempotent; unknown tokens are ignored.
    let tokens: Vec<ClaimToken> = again.iter().map(|c| c.token.clone()).collect();
    store.ack(&tokens).await.unwrap();
    store.ack(&tokens).await.unwrap();
    store
        .ack(&[ClaimToken("1-1".into()), ClaimToken("garbage".into())])
        .await
        .unwrap_or(());
    assert!(
        store
            .claim("c", 10, 1_000_000, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "acked work stays done"
    );
    let stats = store.stream_stats().await.unwrap();
    assert_eq!((stats.pending, stats.timers), (0, 0), "{stats:?}");
}

#[tokio::test]
async fn idle_entries_are_reclaimed_with_xautoclaim_by_the_server_clock() {
    let Some(server) = support::shared() else {
        return;
    };
    let config = server
        .config("autoclaim")
        .with_reclaim_after(Duration::from_millis(300));
    let a = RedisStore::connect(config.clone()).await.unwrap();
    let b = RedisStore::connect(config).await.unwrap();
    a.enqueue(vec![WorkItem::now(id("x"), Work::Flush)])
        .await
        .unwrap();
    // `a` claims with a clock far in the future: its deadline never passes by now_ms.
    let got = a
        .claim("a", 10, u64::MAX / 4, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        b.claim("b", 10, 0, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    // The backstop waits six reclaim times of idleness (renewals move the
    // deadlines, not Redis's idle time).
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let taken = b.claim("b", 10, 0, Duration::ZERO).await.unwrap();
    assert_eq!(taken.len(), 1, "idle entry reclaimed by XAUTOCLAIM");
    assert_eq!(taken[0].deliveries, 2);
}

#[tokio::test]
async fn delayed_items_are_due_by_now_ms_and_a_claim_waits_for_work() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = Arc::new(server.store("delayed").await);
    let item = WorkItem {
        run: id("d"),
        work: Work::Flush,
        due_ms: Some(5_000),
    };
    store.enqueue(vec![item.clone()]).await.unwrap();
    assert!(
        store
            .claim("w", 10, 4_999, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    let got = store.claim("w", 10, 5_000, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].item, item);
    store.ack(&[got[0].token.clone()]).await.unwrap();

    // Empty: waits the full time (beyond the client's default 500 ms response timeout).
    let t = Instant::now();
    assert!(
        store
            .claim("w", 10, 6_000, Duration::from_millis(900))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        t.elapsed() >= Duration::from_millis(850),
        "{:?}",
        t.elapsed()
    );

    // Work arriving during the wait is handed out at once.
    let s2 = Arc::clone(&store);
    let waiter =
        tokio::spawn(async move { s2.claim("w", 10, 7_000, Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    store
        .enqueue(vec![WorkItem::now(id("late"), Work::Flush)])
        .await
        .unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "woken by the new entry: {:?}",
        t.elapsed()
    );
    store.ack(&[got[0].token.clone()]).await.unwrap();

    // A delayed item that falls due during the wait is handed out (by the clock passed + elapsed).
    store
        .enqueue(vec![WorkItem {
            run: id("soon"),
            work: Work::Flush,
            due_ms: Some(20_300),
        }])
        .await
        .unwrap();
    let t = Instant::now();
    let got = store
        .claim("w", 10, 20_000, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        t.elapsed() >= Duration::from_millis(250) && t.elapsed() < Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn listing_is_newest_first_paginated_and_filtered() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = server.store("list").await;
    let specs = [
        ("l1", "alpha", "c1", None, 1_000),
        ("l2", "alpha", "c2", Some("alpha/main"), 2_000),
        ("l3", "beta", "c1", None, 3_000),
        ("l4", "alpha", "c3", Some("alpha/main"), 4_000),
        ("l5", "beta", "c9", None, 4_000),
    ];
    for (rid, repo, commit, group, created) in specs {
        store
            .create_run(record_in(rid, spec(repo, commit, group), created), vec![])
            .await
            .unwrap();
    }
    // l3 runs, l1 fails.
    let mut r3 = next(store.load_run(&id("l3")).await.unwrap());
    r3.state = RunState::Running;
    store
        .commit(Commit {
            record: r3,
            expected_version: 0,
            enqueue: vec![],
            ack: vec![],
        })
        .await
        .unwrap();
    let mut r1 = next(store.load_run(&id("l1")).await.unwrap());
    r1.state = RunState::Failed;
    r1.finished_ms = Some(5_000);
    store
        .commit(Commit {
            record: r1,
            expected_version: 0,
            enqueue: vec![],
            ack: vec![],
        })
        .await
        .unwrap();

    let ids = |p: &stagetime_core::store::RunPage| {
        p.runs.iter().map(|s| s.id.to_string()).collect::<Vec<_>>()
    };
    let all = store.list_runs(&RunFilter::default()).await.unwrap();
    assert_eq!(ids(&all), ["l5", "l4", "l3", "l2", "l1"]);
    assert_eq!(all.next, None);

    let mut f = RunFilter {
        limit: 2,
        ..RunFilter::default()
    };
    let p1 = store.list_runs(&f).await.unwrap();
    assert_eq!(ids(&p1), ["l5", "l4"]);
    f.after = p1.next.clone();
    let p2 = store.list_runs(&f).await.unwrap();
    assert_eq!(ids(&p2), ["l3", "l2"]);
    f.after = p2.next.clone();
    let p3 = store.list_runs(&f).await.unwrap();
    assert_eq!(ids(&p3), ["l1"]);
    assert_eq!(p3.next, None);

    let by = |f: RunFilter| {
        let store = &store;
        async move { ids(&store.list_runs(&f).await.unwrap()) }
    };
    assert_eq!(
        by(RunFilter {
            repo: Some("alpha".into()),
            ..Default::default()
        })
        .await,
        ["l4", "l2", "l1"]
    );
    assert_eq!(
        by(RunFilter {
            commit: Some("c1".into()),
            ..Default::default()
        })
        .await,
        ["l3", "l1"]
    );
    assert_eq!(
        by(RunFilter {
            repo: Some("beta".into()),
            commit: Some("c1".into()),
            ..Default::default()
        })
        .await,
        ["l3"]
    );
    assert_eq!(
        by(RunFilter {
            concurrency_group: Some("alpha/main".into()),
            ..Default::default()
        })
        .await,
        ["l4", "l2"]
    );
    assert_eq!(
        by(RunFilter {
            states: vec![RunState::Running],
            ..Default::default()
        })
        .await,
        ["l3"]
    );
    assert_eq!(
        by(RunFilter {
            states: vec![RunState::Queued],
            ..Default::default()
        })
        .await,
        ["l5", "l4", "l2"]
    );
    assert_eq!(
        by(RunFilter {
            states: vec![RunState::Failed, RunState::Running],
            ..Default::default()
        })
        .await,
        ["l3", "l1"]
    );
    assert_eq!(
        by(RunFilter {
            repo: Some("alpha".into()),
            states: vec![RunState::Queued],
            limit: 1,
            ..Default::default()
        })
        .await,
        ["l4"]
    );
    let e = store
        .list_runs(&RunFilter {
            after: Some("not a cursor".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
}

#[tokio::test]
async fn finished_runs_are_purged_after_retention_with_their_work() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = RedisStore::connect(
        server
            .config("purge")
            .with_retention(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    for (rid, created) in [("p1", 1_000), ("p2", 2_000)] {
        store
            .create_run(record(rid, "demo", "c1", created), vec![])
            .await
            .unwrap();
    }
    let mut r = next(store.load_run(&id("p1")).await.unwrap());
    r.state = RunState::Succeeded;
    r.finished_ms = Some(100_000);
    let timer = WorkItem {
        run: id("p1"),
        work: Work::Flush,
        due_ms: Some(900_000),
    };
    store
        .commit(Commit {
            record: r,
            expected_version: 0,
            enqueue: vec![timer],
            ack: vec![],
        })
        .await
        .unwrap();
    assert_eq!(store.stream_stats().await.unwrap().timers, 1);
    let mut con = server.raw().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(store.keys().run(&id("p1")))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        ttl > 9_000 && ttl <= 10_000,
        "finished run expires after retention: {ttl}"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(store.keys().run(&id("p2")))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "running runs do not expire");

    assert_eq!(store.purge_expired(109_999).await.unwrap(), 0);
    assert_eq!(store.purge_expired(110_000).await.unwrap(), 1);
    assert_eq!(store.purge_expired(110_000).await.unwrap(), 0, "idempotent");
    assert_eq!(
        store.load_run(&id("p1")).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let page = store.list_runs(&RunFilter::default()).await.unwrap();
    assert_eq!(
        page.runs.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["p2"]
    );
    assert_eq!(
        store.stream_stats().await.unwrap().timers,
        0,
        "its delayed work went too"
    );
    for key in [
        store.keys().idx_all(),
        store.keys().idx_state(RunState::Succeeded),
        store.keys().idx_repo("demo"),
    ] {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(
            members.iter().all(|m| !m.ends_with(":p1")),
            "{key}: {members:?}"
        );
    }
    let finished: u64 = redis::cmd("ZCARD")
        .arg(store.keys().finished())
        .query_async(&mut con)
        .await
        .unwrap();
    let gc: u64 = redis::cmd("HLEN")
        .arg(store.keys().gc())
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!((finished, gc), (0, 0));
}

#[tokio::test]
async fn corrupt_or_foreign_records_fail_for_that_run_only() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = server.store("corrupt").await;
    for rid in ["good", "garbled", "foreign", "wrongtype"] {
        store
            .create_run(record(rid, "demo", "c1", 1_000), vec![])
            .await
            .unwrap();
    }
    let mut con = server.raw().await;
    let _: () = redis::cmd("HSET")
        .arg(store.keys().run(&id("garbled")))
        .arg("rec")
        .arg("{not json")
        .query_async(&mut con)
        .await
        .unwrap();
    let mut foreign = serde_json::to_value(record("foreign", "demo", "c1", 1_000)).unwrap();
    foreign["format"] = serde_json::json!(RECORD_FORMAT + 1);
    foreign["scheduler"] = serde_json::json!("something else");
    let _: () = redis::cmd("HSET")
        .arg(store.keys().run(&id("foreign")))
        .arg("rec")
        .arg(foreign.to_string())
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(store.keys().run(&id("wrongtype")))
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(store.keys().run(&id("wrongtype")))
        .arg("x")
        .query_async(&mut con)
        .await
        .unwrap();

    let e = store.load_run(&id("garbled")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("garbled"), "{e}");
    let e = store.load_run(&id("foreign")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("format"), "{e}");
    let e = store.load_run(&id("wrongtype")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let mut r = next(record("wrongtype", "demo", "c1", 1_000));
    r.state = RunState::Running;
    let e = store
        .commit(Commit {
            record: r,
            expected_version: 0,
            enqueue: vec![],
            ack: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let e = store
        .create_run(record("wrongtype", "demo", "c1", 1_000), vec![])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");

    // The others are served.
    assert_eq!(store.load_run(&id("good")).await.unwrap().id, id("good"));
    let page = store.list_runs(&RunFilter::default()).await.unwrap();
    assert!(page.runs.iter().any(|s| s.id == id("good")));

    // A garbled queue entry is dropped, the next one is handed out.
    let _: String = redis::cmd("XADD")
        .arg(store.keys().stream())
        .arg("*")
        .arg("w")
        .arg("garbage")
        .query_async(&mut con)
        .await
        .unwrap();
    store.enqueue(vec![start("good")]).await.unwrap();
    let got = store.claim("w", 10, 1, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].item, start("good"));
}

#[tokio::test]
async fn acknowledged_entries_are_trimmed_from_the_stream() {
    let Some(server) = support::shared() else {
        return;
    };
    let config = server.config("trim");
    let store = RedisStore::connect(config.clone()).await.unwrap();
    let items: Vec<WorkItem> = (0..300)
        .map(|i| WorkItem::now(id(&format!("t{i}")), Work::Flush))
        .collect();
    store.enqueue(items).await.unwrap();
    let mut tokens = Vec::new();
    loop {
        let got = store.claim("w", 100, 1, Duration::ZERO).await.unwrap();
        if got.is_empty() {
            break;
        }
        tokens.extend(got.into_iter().map(|c| c.token));
    }
    assert_eq!(tokens.len(), 300);
    // Keep the last 10 unacknowledged: they must survive the trim.
    store.ack(&tokens[..290]).await.unwrap();
    assert_eq!(store.stream_stats().await.unwrap().length, 300);
    let fresh = RedisStore::connect(config).await.unwrap(); // its first claim trims
    assert!(
        fresh
            .claim("w2", 10, 1, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    let stats = fresh.stream_stats().await.unwrap();
    assert_eq!(stats.length, 10, "{stats:?}");
    assert_eq!(stats.pending, 10);
    let back = fresh
        .claim("w2", 100, 1 + 31_000, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        back.len(),
        10,
        "pending entries survive trimming and are reclaimed"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_and_a_restart_is_survived() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = RedisConfig::new(format!("redis://127.0.0.1:{closed}/0"))
        .with_connect_timeout(Duration::from_millis(300));
    let e = RedisStore::connect(config.clone()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    let lazy = RedisStore::new(config).unwrap();
    let e = lazy.load_run(&id("x")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    let e = RedisStore::new(RedisConfig::new("http://nope")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");

    let Some(server) = support::dedicated() else {
        return;
    };
    let store = server.store("restart").await;
    let epoch = store.epoch().await.unwrap().expect("redis keeps an epoch");
    assert_eq!(store.epoch().await.unwrap().as_ref(), Some(&epoch), "kept");
    assert_eq!(
        store.persistence_warning().await.unwrap(),
        None,
        "AOF is on"
    );
    store
        .create_run(record("rs", "demo", "c1", 1_000), vec![start("rs")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await; // appendfsync everysec
    server.kill();
    let e = store.load_run(&id("rs")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    let e = store
        .claim("w", 10, 1_000, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    server.restart();
    // The connection manager reconnects; scripts are reloaded on NOSCRIPT.
    let mut loaded = None;
    for _ in 0..50 {
        match store.load_run(&id("rs")).await {
            Ok(r) => {
                loaded = Some(r);
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(loaded.expect("reconnected").id, id("rs"));
    assert_eq!(
        store.epoch().await.unwrap(),
        Some(epoch.clone()),
        "a restart with AOF keeps the data set"
    );
    let got = store.claim("w", 10, 1_000, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 1, "the start item survived the restart (AOF)");
    let r = next(store.load_run(&id("rs")).await.unwrap());
    store
        .commit(Commit {
            record: r,
            expected_version: 0,
            enqueue: vec![],
            ack: vec![got[0].token.clone()],
        })
        .await
        .unwrap();
    // Data lost entirely (a server without persistence): the consumer group
    // is created again by the next claim, scripts reloaded on NOSCRIPT.
    let mut con = server.raw().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut con)
        .await
        .unwrap();
    store.enqueue(vec![start("rs")]).await.unwrap();
    let got = store.claim("w", 10, 1_000, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 1);
    store.ack(&[got[0].token.clone()]).await.unwrap();
    assert_eq!(
        store.load_run(&id("rs")).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // The loss shows: the data set has a new epoch.
    let after = store.epoch().await.unwrap().expect("epoch");
    assert_ne!(after, epoch, "a wiped data set has another epoch");
    let watch = stagetime_core::store::EpochWatch::default();
    assert!(!watch.changed(Some(&epoch), 1));
    assert!(watch.changed(Some(&after), 2));
}

#[tokio::test]
async fn a_server_without_persistence_is_warned_about() {
    let Some(server) = support::dedicated_with(&["--appendonly", "no", "--save", ""]) else {
        return;
    };
    let store = server.store("nopersist").await;
    let warning = store.persistence_warning().await.unwrap();
    assert!(
        warning
            .as_deref()
            .is_some_and(|w| w.contains("appendonly yes")),
        "{warning:?}"
    );
}

#[tokio::test]
async fn blocking_waits_outlast_the_response_timeout() {
    let Some(server) = support::shared() else {
        return;
    };
    // Normal commands time out after 200 ms; a claim may still wait 1.2 s for work.
    let store = RedisStore::connect(
        server
            .config("block")
            .with_response_timeout(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let t = Instant::now();
    let got = store
        .claim("w", 10, 1, Duration::from_millis(1_200))
        .await
        .unwrap();
    assert!(got.is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(1_150),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn password_and_database_come_from_the_url() {
    let Some(server) = support::dedicated_with(&["--requirepass", "s3cret"]) else {
        return;
    };
    let url = format!("redis://:s3cret@127.0.0.1:{}/3", server.port());
    let store = RedisStore::connect(RedisConfig::new(&url).with_prefix("auth"))
        .await
        .unwrap();
    store
        .create_run(record("in-db-3", "demo", "c1", 1), vec![])
        .await
        .unwrap();
    let key = store.keys().run(&id("in-db-3"));
    for (db, expected) in [(3, 1), (0, 0)] {
        let client =
            redis::Client::open(format!("redis://:s3cret@127.0.0.1:{}/{db}", server.port()))
                .unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let n: u64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, expected, "db {db}");
    }
    for bad in [
        format!("redis://:wrong@127.0.0.1:{}/3", server.port()),
        format!("redis://127.0.0.1:{}/3", server.port()),
    ] {
        let e = RedisStore::connect(RedisConfig::new(&bad))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{bad}: {e}");
    }
}

#[tokio::test]
async fn large_transitions_are_applied_in_chunks() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = RedisStore::connect(server.config("large").with_stream_max_len(0))
        .await
        .unwrap();
    let r = record("big", "demo", "c1", 1_000);
    // 3,000 now items and 5,000 delayed ones in one create: past Lua's unpack limit, in chunks.
    let mut start: Vec<WorkItem> = (0..3_000)
        .map(|_| WorkItem::now(id("big"), Work::Flush))
        .collect();
    start.extend((0..5_000u64).map(|i| WorkItem {
        run: id("big"),
        work: Work::Flush,
        due_ms: Some(1_000_000 + i),
    }));
    store.create_run(r.clone(), start).await.unwrap();
    let stats = store.stream_stats().await.unwrap();
    assert_eq!((stats.length, stats.timers), (3_000, 5_000));

    // Claim 1,000 (the most one claim hands out) and ack them all in one commit.
    let claimed = store.claim("w", 5_000, 1, Duration::ZERO).await.unwrap();
    assert_eq!(claimed.len(), 1_000);
    let acks: Vec<ClaimToken> = claimed.iter().map(|c| c.token.clone()).collect();
    store
        .commit(Commit {
            record: next(r),
            expected_version: 0,
            enqueue: vec![],
            ack: acks,
        })
        .await
        .unwrap();
    let stats = store.stream_stats().await.unwrap();
    assert_eq!((stats.pending, stats.timers), (0, 5_000), "{stats:?}");
}

#[tokio::test]
async fn the_stream_cap_bounds_an_unconsumed_stream() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = RedisStore::connect(server.config("cap").with_stream_max_len(100))
        .await
        .unwrap();
    for _ in 0..10 {
        let items: Vec<WorkItem> = (0..300)
            .map(|_| WorkItem::now(id("cap"), Work::Flush))
            .collect();
        store.enqueue(items).await.unwrap();
    }
    let stats = store.stream_stats().await.unwrap();
    assert!(
        stats.length < 300,
        "XADD MAXLEN ~ 100 keeps 3,000 entries down: {stats:?}"
    );
}

#[tokio::test]
async fn multi_state_listing_merges_state_indexes_across_chunks() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = server.store("merge").await;
    let states = [RunState::Queued, RunState::Running, RunState::Failed];
    let mut expected = Vec::new();
    for i in 0..450u64 {
        let rid = format!("m{i:03}");
        // Some runs share a creation time: ties are ordered by id.
        let r = record(&rid, "demo", "c1", 1_000 + i / 3);
        store.create_run(r.clone(), vec![]).await.unwrap();
        let state = states[(i % 3) as usize];
        if state != RunState::Queued {
            let mut n = next(r);
            n.state = state;
            store
                .commit(Commit {
                    record: n,
                    expected_version: 0,
                    enqueue: vec![],
                    ack: vec![],
                })
                .await
                .unwrap();
            expected.push((1_000 + i / 3, rid));
        }
    }
    expected.sort();
    expected.reverse();
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
    let mut filter = RunFilter {
        states: vec![RunState::Failed, RunState::Running, RunState::Failed],
        limit: 70,
        ..RunFilter::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = store.list_runs(&filter).await.unwrap();
        assert!(page.runs.len() <= 70);
        assert!(page.runs.iter().all(|s| s.state != RunState::Queued));
        seen.extend(page.runs.iter().map(|s| s.id.to_string()));
        match page.next {
            Some(n) => filter.after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 300);
    assert_eq!(
        seen, expected,
        "newest first, (created, id) order, each once"
    );
}

#[tokio::test]
async fn attempt_logs_expire_with_their_run_and_stay_while_it_runs_again() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = RedisStore::connect(
        server
            .config("logttl")
            .with_retention(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    store
        .create_run(record("l1", "demo", "c1", 1_000), vec![])
        .await
        .unwrap();
    let key = stagetime_core::backend::LaunchKey {
        run: id("l1"),
        task: "a".into(),
        attempt: 1,
    };
    store
        .append_log(&key, 0, b"one\n", false, 1024)
        .await
        .unwrap();
    let con = server.raw().await;
    let logs = store.keys().run_logs(&id("l1"));
    let pttl = |mut con: redis::aio::MultiplexedConnection, key: String| async move {
        redis::cmd("PTTL")
            .arg(key)
            .query_async::<i64>(&mut con)
            .await
            .unwrap()
    };
    assert_eq!(
        pttl(con.clone(), logs.clone()).await,
        -1,
        "a running run's logs stay"
    );
    let mut r = next(store.load_run(&id("l1")).await.unwrap());
    r.state = RunState::Failed;
    r.finished_ms = Some(100_000);
    store
        .commit(Commit {
            record: r,
            expected_version: 0,
            enqueue: vec![],
            ack: vec![],
        })
        .await
        .unwrap();
    let ttl = pttl(con.clone(), logs.clone()).await;
    assert!(
        ttl > 9_000 && ttl <= 10_000,
        "the logs expire with the run: {ttl}"
    );
    // Written after the run finished: the log still takes the run's expiry.
    store
        .append_log(&key, 4, b"two\n", true, 1024)
        .await
        .unwrap();
    let ttl = pttl(con.clone(), logs.clone()).await;
    assert!(ttl > 9_000 && ttl <= 10_000, "{ttl}");
    // Run again (a rerun): nothing expires while it runs.
    let mut r = next(store.load_run(&id("l1")).await.unwrap());
    r.state = RunState::Running;
    r.finished_ms = None;
    store
        .commit(Commit {
            record: r,
            expected_version: 1,
            enqueue: vec![],
            ack: vec![],
        })
        .await
        .unwrap();
    assert_eq!(pttl(con.clone(), logs.clone()).await, -1);
    let kept = store.read_log(&key, 0).await.unwrap().unwrap();
    assert_eq!(
        (kept.bytes.as_slice(), kept.ended),
        (&b"one\ntwo\n"[..], true)
    );
}
