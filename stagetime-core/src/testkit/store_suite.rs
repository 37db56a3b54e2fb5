//! The conformance suite every [`Store`] implementation must pass. Use it
//! through [`crate::store_conformance_tests!`].

use std::sync::Arc;
use std::time::Duration;

use crate::engine::{Clock, SystemClock};
use crate::error::ErrorKind;
use crate::plan::Plan;
use crate::scheduler::{Event, StageScheduler};
use crate::store::{
    Commit, Delivery, DeliveryState, RECORD_FORMAT, RunFilter, RunId, RunRecord, RunState, Store,
    TaskTiming, Work, WorkItem,
};

/// A store to test and its reclaim time (keep it short, e.g. 300 ms: the
/// reclaim case waits for it in real time).
#[derive(Clone)]
pub struct StoreUnderTest {
    /// The store, empty or holding only data of other tests.
    pub store: Arc<dyn Store>,
    /// How long the store lets a claimed item sit before handing it out again.
    pub reclaim_after: Duration,
}

impl StoreUnderTest {
    /// A store configured with a 300 ms reclaim time.
    pub fn new(store: Arc<dyn Store>) -> Self {
        StoreUnderTest {
            store,
            reclaim_after: Duration::from_millis(300),
        }
    }
}

/// A fresh record of a two-task run with a unique id.
pub fn new_record(prefix: &str, repo: &str, commit: &str, created_ms: u64) -> RunRecord {
    let spec = super::spec_with(
        commit,
        vec![
            super::command_task("a", 0, "true"),
            super::command_task("b", 1, "true"),
        ],
    );
    let spec = crate::spec::RevisionRunSpec {
        repo: repo.into(),
        ..spec
    };
    let plan = Arc::new(Plan::build(spec).expect("valid spec"));
    let scheduler = StageScheduler::new(Arc::clone(&plan), 1).into_state();
    RunRecord {
        format: RECORD_FORMAT,
        id: RunId::new(super::unique(prefix)).expect("valid id"),
        version: 1,
        spec: plan.to_spec(),
        state: RunState::of(&scheduler),
        scheduler,
        created_ms,
        updated_ms: created_ms,
        finished_ms: None,
        timings: vec![TaskTiming::default(); plan.len()],
        outbox: Vec::new(),
    }
}

fn now() -> u64 {
    SystemClock.now_ms()
}

/// Claims everything of `run` available now (other tests' items are acknowledged away).
async fn claim_for(
    s: &dyn Store,
    run: &RunId,
    at: u64,
    wait: Duration,
) -> Vec<crate::store::Claimed> {
    let mut mine = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let got = s
            .claim("suite", 64, at, Duration::from_millis(50))
            .await
            .expect("claim");
        let (m, _others): (Vec<_>, Vec<_>) = got.into_iter().partition(|c| c.item.run == *run);
        // Items of other tests are left unacknowledged: they come back to them after reclaim.
        mine.extend(m);
        if !mine.is_empty() || tokio::time::Instant::now() >= deadline {
            return mine;
        }
    }
}

/// Creating twice stores one run and enqueues its start once.
pub async fn create_is_idempotent(t: StoreUnderTest) {
    let s = &*t.store;
    let rec = new_record("create", "repo", "c1", now());
    let start = vec![WorkItem::event(rec.id.clone(), Event::Start)];
    let first = s
        .create_run(rec.clone(), start.clone())
        .await
        .expect("create");
    assert!(first.created);
    let mut changed = rec.clone();
    changed.spec.author = Some("someone else".into());
    let second = s.create_run(changed, start).await.expect("create again");
    assert!(
        !second.created,
        "the second create must report the existing run"
    );
    assert_eq!(
        second.record, rec,
        "the existing record is returned unchanged"
    );
    let claimed = claim_for(s, &rec.id, now(), Duration::from_secs(2)).await;
    assert_eq!(claimed.len(), 1, "one start item, not two: {claimed:?}");
    assert_eq!(claimed[0].deliveries, 1);
    s.ack(&[claimed[0].token.clone()]).await.expect("ack");
}

/// Loading an unknown run is NotFound.
pub async fn load_unknown_is_not_found(t: StoreUnderTest) {
    let err = t
        .store
        .load_run(&RunId::new(super::unique("missing")).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

/// A commit applies only on the expected version; a stale writer gets a conflict.
pub async fn commit_is_compare_and_set(t: StoreUnderTest) {
    let s = &*t.store;
    let rec = new_record("cas", "repo", "c1", now());
    s.create_run(rec.clone(), vec![]).await.unwrap();
    let mut next = rec.clone();
    next.version = 2;
    next.updated_ms += 5;
    let commit = |record: RunRecord, expected| Commit {
        record,
        expected_version: expected,
        enqueue: vec![],
        ack: vec![],
    };
    s.commit(commit(next.clone(), 1))
        .await
        .expect("first writer wins");
    assert_eq!(s.load_run(&rec.id).await.unwrap(), next);
    let stale = s.commit(commit(next.clone(), 1)).await.unwrap_err();
    assert_eq!(stale.kind(), ErrorKind::Conflict, "{stale}");
    assert_eq!(
        s.load_run(&rec.id).await.unwrap().version,
        2,
        "a failed commit changes nothing"
    );
    let mut gone = new_record("cas-missing", "repo", "c1", now());
    gone.version = 2;
    let err = s.commit(commit(gone, 1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

/// Of two writers racing from one version, exactly one wins.
pub async fn concurrent_commits_one_wins(t: StoreUnderTest) {
    let s = Arc::clone(&t.store);
    let rec = new_record("race", "repo", "c1", now());
    s.create_run(rec.clone(), vec![]).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..8u64 {
        let s = Arc::clone(&s);
        let mut next = rec.clone();
        next.version = 2;
        next.updated_ms = 1000 + i;
        handles.push(tokio::spawn(async move {
            s.commit(Commit {
                record: next,
                expected_version: 1,
                enqueue: vec![],
                ack: vec![],
            })
            .await
        }));
    }
    let mut wins = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(()) => wins += 1,
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
        }
    }
    assert_eq!(wins, 1);
}

/// A commit enqueues its work and acknowledges consumed items atomically.
pub async fn commit_enqueues_and_acks(t: StoreUnderTest) {
    let s = &*t.store;
    let rec = new_record("outbox", "repo", "c1", now());
    s.create_run(
        rec.clone(),
        vec![WorkItem::event(rec.id.clone(), Event::Start)],
    )
    .await
    .unwrap();
    let claimed = claim_for(s, &rec.id, now(), Duration::from_secs(2)).await;
    assert_eq!(claimed.len(), 1);
    let mut next = rec.clone();
    next.version = 2;
    s.commit(Commit {
        record: next,
        expected_version: 1,
        enqueue: vec![WorkItem::now(rec.id.clone(), Work::Flush)],
        ack: vec![claimed[0].token.clone()],
    })
    .await
    .unwrap();
    // Well after the reclaim time, only the new item is there: the acknowledged one never returns.
    tokio::time::sleep(t.reclaim_after + Duration::from_millis(100)).await;
    let later = now() + crate::limits::millis(t.reclaim_after) * 4;
    let again = claim_for(s, &rec.id, later, Duration::from_secs(2)).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].item.work, Work::Flush);
    s.ack(&[again[0].token.clone()]).await.unwrap();
}

/// A new run `id` whose start item this suite's consumer claimed: the
/// record, the clock of the claim, and the claim.
async fn started_and_claimed(
    s: &dyn Store,
    id: &str,
) -> (RunRecord, u64, Vec<crate::store::Claimed>) {
    let rec = new_record(id, "repo", "c1", now());
    s.create_run(
        rec.clone(),
        vec![WorkItem::event(rec.id.clone(), Event::Start)],
    )
    .await
    .unwrap();
    let at = now();
    let first = claim_for(s, &rec.id, at, Duration::from_secs(2)).await;
    assert_eq!(first.len(), 1);
    (rec, at, first)
}

/// An item claimed and not acknowledged is handed out again after the reclaim time, and not before.
pub async fn unacknowledged_work_is_reclaimed(t: StoreUnderTest) {
    let s = &*t.store;
    let (rec, at, first) = started_and_claimed(s, "reclaim").await;
    let early = s.claim("other", 64, at, Duration::ZERO).await.unwrap();
    assert!(
        early.iter().all(|c| c.item.run != rec.id),
        "handed out again before the reclaim time"
    );
    tokio::time::sleep(t.reclaim_after + Duration::from_millis(150)).await;
    let later = now() + crate::limits::millis(t.reclaim_after) * 2;
    let mut reclaimed = Vec::new();
    for _ in 0..20 {
        let got = s
            .claim("other", 64, later, Duration::from_millis(50))
            .await
            .unwrap();
        reclaimed.extend(got.into_iter().filter(|c| c.item.run == rec.id));
        if !reclaimed.is_empty() {
            break;
        }
    }
    assert_eq!(
        reclaimed.len(),
        1,
        "a dead consumer's item must be reclaimed"
    );
    assert_eq!(reclaimed[0].item, first[0].item);
    assert!(reclaimed[0].deliveries >= 2, "deliveries count the reclaim");
    s.ack(&[reclaimed[0].token.clone()]).await.unwrap();
    s.ack(&[reclaimed[0].token.clone()])
        .await
        .expect("ack is idempotent");
}

/// A claim renewed by its consumer is not handed out again while renewed;
/// once renewals stop, it is, one reclaim time later.
pub async fn renewed_claims_stay_with_their_consumer(t: StoreUnderTest) {
    let s = &*t.store;
    let (rec, at, first) = started_and_claimed(s, "renewed").await;
    let step = crate::limits::millis(t.reclaim_after) * 2 / 3;
    let mut clock = at;
    for _ in 0..3 {
        clock += step;
        s.renew_claims(&[first[0].token.clone()], clock)
            .await
            .unwrap();
        let other = s.claim("other", 64, clock, Duration::ZERO).await.unwrap();
        assert!(
            other.iter().all(|c| c.item.run != rec.id),
            "a renewed claim was handed out again"
        );
    }
    let later = clock + crate::limits::millis(t.reclaim_after) + 1;
    let mut reclaimed = Vec::new();
    for _ in 0..20 {
        let got = s
            .claim("other", 64, later, Duration::from_millis(50))
            .await
            .unwrap();
        reclaimed.extend(got.into_iter().filter(|c| c.item.run == rec.id));
        if !reclaimed.is_empty() {
            break;
        }
    }
    assert_eq!(reclaimed.len(), 1, "unrenewed, the claim moves on");
    s.ack(&[reclaimed[0].token.clone()]).await.unwrap();
}

/// Delayed work is not handed out before it is due.
pub async fn delayed_work_waits_until_due(t: StoreUnderTest) {
    let s = &*t.store;
    let rec = new_record("delayed", "repo", "c1", now());
    s.create_run(rec.clone(), vec![]).await.unwrap();
    let at = now();
    s.enqueue(vec![WorkItem {
        run: rec.id.clone(),
        work: Work::Flush,
        due_ms: Some(at + 60_000),
    }])
    .await
    .unwrap();
    let early = s.claim("suite", 64, at, Duration::ZERO).await.unwrap();
    assert!(
        early.iter().all(|c| c.item.run != rec.id),
        "delayed item handed out early"
    );
    let due = claim_for(s, &rec.id, at + 60_001, Duration::from_secs(2)).await;
    assert_eq!(due.len(), 1, "due item must be handed out");
    assert_eq!(due[0].item.work, Work::Flush);
    s.ack(&[due[0].token.clone()]).await.unwrap();
}

/// A claim waiting for work returns when work arrives.
pub async fn waiting_claim_wakes_on_enqueue(t: StoreUnderTest) {
    let s = Arc::clone(&t.store);
    let rec = new_record("wake", "repo", "c1", now());
    s.create_run(rec.clone(), vec![]).await.unwrap();
    let waiter = {
        let s = Arc::clone(&s);
        let id = rec.id.clone();
        tokio::spawn(async move { claim_for(&*s, &id, now(), Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.enqueue(vec![WorkItem::now(rec.id.clone(), Work::Flush)])
        .await
        .unwrap();
    let got = waiter.await.unwrap();
    assert_eq!(got.len(), 1);
    s.ack(&[got[0].token.clone()]).await.unwrap();
}

/// Listing filters by repo, commit and state, newest first, page by page.
pub async fn list_filters_and_pages(t: StoreUnderTest) {
    let s = &*t.store;
    let repo = super::unique("listrepo");
    let base = now();
    let mut ids = Vec::new();
    for i in 0..5u64 {
        let commit = if i % 2 == 0 { "even" } else { "odd" };
        let rec = new_record("list", &repo, commit, base + i);
        ids.push(rec.id.clone());
        s.create_run(rec, vec![]).await.unwrap();
    }
    let filter = RunFilter {
        repo: Some(repo.clone()),
        limit: 2,
        ..RunFilter::default()
    };
    let mut seen = Vec::new();
    let mut page = s.list_runs(&filter).await.unwrap();
    loop {
        assert!(page.runs.len() <= 2);
        seen.extend(page.runs.iter().map(|r| r.id.clone()));
        match page.next.clone() {
            Some(next) => {
                page = s
                    .list_runs(&RunFilter {
                        after: Some(next),
                        ..filter.clone()
                    })
                    .await
                    .unwrap()
            }
            None => break,
        }
    }
    let newest_first: Vec<RunId> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first, "all runs, newest first, each once");
    let odd = s
        .list_runs(&RunFilter {
            repo: Some(repo.clone()),
            commit: Some("odd".into()),
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(odd.runs.len(), 2);
    assert!(odd.runs.iter().all(|r| r.commit == "odd"));
    let finished = s
        .list_runs(&RunFilter {
            repo: Some(repo.clone()),
            states: vec![RunState::Succeeded],
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert!(finished.runs.is_empty(), "no run of this repo has finished");
    let bad = s
        .list_runs(&RunFilter {
            after: Some("not a cursor".into()),
            ..RunFilter::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::Invalid, "{bad}");
}

/// Commits version 2 of `rec` (stored at version 1) in `state`, finished at
/// `finished_ms`, enqueueing and acknowledging nothing.
async fn commit_state(s: &dyn Store, rec: &RunRecord, state: RunState, finished_ms: Option<u64>) {
    let mut next = rec.clone();
    next.version = 2;
    next.state = state;
    next.finished_ms = finished_ms;
    s.commit(Commit {
        record: next,
        expected_version: 1,
        enqueue: vec![],
        ack: vec![],
    })
    .await
    .unwrap();
}

/// A state change is visible to the state filter.
pub async fn list_follows_state_changes(t: StoreUnderTest) {
    let s = &*t.store;
    let repo = super::unique("staterepo");
    let rec = new_record("state", &repo, "c", now());
    s.create_run(rec.clone(), vec![]).await.unwrap();
    commit_state(s, &rec, RunState::Failed, Some(now())).await;
    let failed = s
        .list_runs(&RunFilter {
            repo: Some(repo.clone()),
            states: vec![RunState::Failed],
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.runs.len(), 1);
    assert_eq!(failed.runs[0].state, RunState::Failed);
    let queued = s
        .list_runs(&RunFilter {
            repo: Some(repo),
            states: vec![RunState::Queued],
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert!(queued.runs.is_empty(), "the old state must leave the index");
}

/// Finished runs past retention are purged with their work; others stay.
pub async fn purge_removes_only_expired_finished_runs(t: StoreUnderTest) {
    let s = &*t.store;
    let at = now();
    let finished = new_record("purge-old", "repo", "c", at);
    let running = new_record("purge-running", "repo", "c", at);
    for r in [&finished, &running] {
        s.create_run(r.clone(), vec![]).await.unwrap();
    }
    let mut done = finished.clone();
    done.version = 2;
    done.state = RunState::Succeeded;
    done.finished_ms = Some(at);
    s.commit(Commit {
        record: done,
        expected_version: 1,
        enqueue: vec![WorkItem::now(finished.id.clone(), Work::Flush)],
        ack: vec![],
    })
    .await
    .unwrap();
    // Far in the future, beyond any retention.
    let purged = s
        .purge_expired(at + 10 * 365 * 24 * 3600 * 1000)
        .await
        .unwrap();
    assert!(purged >= 1);
    let err = s.load_run(&finished.id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        s.load_run(&running.id).await.is_ok(),
        "unfinished runs are never purged"
    );
    let listed = s
        .list_runs(&RunFilter {
            repo: Some("repo".into()),
            limit: 1000,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert!(
        listed.runs.iter().all(|r| r.id != finished.id),
        "purged runs leave the index"
    );
    assert_eq!(
        s.purge_expired(at).await.unwrap(),
        0,
        "nothing is expired now"
    );
}

/// Stats, when a store provides them, count queued work and runs by state.
pub async fn stats_count_work_and_states(t: StoreUnderTest) {
    let s = &*t.store;
    let at = now();
    let rec = new_record("stats", "stats-repo", "c", at);
    s.create_run(
        rec.clone(),
        vec![WorkItem::event(rec.id.clone(), Event::Start)],
    )
    .await
    .unwrap();
    let Some(stats) = s.stats(at).await.unwrap() else {
        return;
    };
    assert_eq!(stats.runs_by_state.len(), 5, "every state is listed");
    let count = |st: &crate::store::StoreStats, state: RunState| {
        st.runs_by_state
            .iter()
            .find(|(s, _)| *s == state)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    assert!(count(&stats, RunState::Queued) >= 1, "{stats:?}");
    assert!(
        stats.queue.ready + stats.queue.in_flight >= 1,
        "the start item is queued: {stats:?}"
    );
    commit_state(s, &rec, RunState::Running, None).await;
    let stats = s
        .stats(now())
        .await
        .unwrap()
        .expect("stats once, stats always");
    assert!(count(&stats, RunState::Running) >= 1, "{stats:?}");
    let mine = claim_for(s, &rec.id, now(), Duration::from_secs(5)).await;
    assert!(!mine.is_empty(), "the start item is claimable");
    let stats = s.stats(now()).await.unwrap().expect("stats");
    assert!(
        stats.queue.in_flight >= 1,
        "a claimed item is in flight: {stats:?}"
    );
    assert!(stats.queue.oldest_age_ms.is_some(), "{stats:?}");
    let tokens: Vec<_> = mine.iter().map(|c| c.token.clone()).collect();
    s.ack(&tokens).await.unwrap();
}

/// `run_version` follows commits and knows no unknown run.
pub async fn run_version_follows_commits(t: StoreUnderTest) {
    let s = &*t.store;
    let rec = new_record("version", "repo", "c", now());
    s.create_run(rec.clone(), vec![]).await.unwrap();
    assert_eq!(s.run_version(&rec.id).await.unwrap(), 1);
    commit_state(s, &rec, RunState::Running, None).await;
    assert_eq!(s.run_version(&rec.id).await.unwrap(), 2);
    let unknown = RunId::new(super::unique("version-unknown")).unwrap();
    let err = s.run_version(&unknown).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

fn new_delivery(prefix: &str) -> Delivery {
    Delivery {
        id: format!("test:{}", super::unique(prefix)),
        repo: "repo".to_string(),
        received_ms: now(),
        event: r#"{"kind":"push"}"#.to_string(),
        state: DeliveryState::Pending,
        message: None,
        runs: Vec::new(),
    }
}

/// A delivery id is recorded once: the repeat writes nothing, and the
/// delivery is pending and listed until settled.
pub async fn deliveries_are_recorded_once(t: StoreUnderTest) {
    let s = &*t.store;
    let d = new_delivery("delivery-once");
    let ttl = Duration::from_secs(60);
    assert!(s.record_delivery(d.clone(), ttl).await.unwrap(), "new id");
    let repeat = Delivery {
        event: "other".to_string(),
        ..d.clone()
    };
    assert!(
        !s.record_delivery(repeat, ttl).await.unwrap(),
        "repeated id"
    );
    let pending = s.pending_deliveries(10_000).await.unwrap();
    let mine: Vec<&Delivery> = pending.iter().filter(|p| p.id == d.id).collect();
    assert_eq!(mine, vec![&d], "pending once, as first recorded");
    let listed = s.list_deliveries(10_000).await.unwrap();
    assert_eq!(listed.iter().filter(|l| l.id == d.id).count(), 1);
}

/// Settling takes a delivery off the pending list, keeps its final form
/// listed, keeps its id remembered, and may be repeated.
pub async fn settled_deliveries_leave_pending(t: StoreUnderTest) {
    let s = &*t.store;
    let d = new_delivery("delivery-settle");
    let ttl = Duration::from_secs(60);
    assert!(s.record_delivery(d.clone(), ttl).await.unwrap());
    let failed = Delivery {
        state: DeliveryState::Failed,
        message: Some("pipeline file missing".to_string()),
        ..d.clone()
    };
    s.settle_delivery(failed.clone()).await.unwrap();
    s.settle_delivery(failed.clone()).await.unwrap();
    let pending = s.pending_deliveries(10_000).await.unwrap();
    assert!(pending.iter().all(|p| p.id != d.id), "settled: not pending");
    let listed = s.list_deliveries(10_000).await.unwrap();
    let mine: Vec<&Delivery> = listed.iter().filter(|l| l.id == d.id).collect();
    assert_eq!(mine, vec![&failed], "listed in its final form");
    assert!(
        !s.record_delivery(d.clone(), ttl).await.unwrap(),
        "a settled id is still remembered"
    );
    let unknown = new_delivery("delivery-unknown");
    s.settle_delivery(unknown.clone()).await.unwrap();
    let listed = s.list_deliveries(10_000).await.unwrap();
    assert!(
        listed.iter().all(|l| l.id != unknown.id),
        "settling an unknown id stores nothing"
    );
}

/// A settled delivery's id is forgotten after its ttl.
pub async fn delivery_ids_expire(t: StoreUnderTest) {
    let s = &*t.store;
    let d = new_delivery("delivery-ttl");
    let ttl = Duration::from_millis(200);
    assert!(s.record_delivery(d.clone(), ttl).await.unwrap());
    s.settle_delivery(Delivery {
        state: DeliveryState::Done,
        ..d.clone()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listed = s.list_deliveries(10_000).await.unwrap();
    assert!(listed.iter().all(|l| l.id != d.id), "expired: not listed");
    assert!(
        s.record_delivery(d.clone(), ttl).await.unwrap(),
        "expired: the id is new again"
    );
}

fn log_key(run: &RunId, attempt: u32) -> crate::backend::LaunchKey {
    crate::backend::LaunchKey {
        run: run.clone(),
        task: "a".into(),
        attempt,
    }
}

/// An attempt's log keeps its last `keep` bytes, placed by offsets; a
/// repeated append changes nothing; a gap drops what was kept; reads start
/// where asked (or where the kept tail starts); attempts are kept apart;
/// no log is kept for a run that does not exist.
pub async fn logs_keep_a_bounded_tail(t: StoreUnderTest) {
    let s = &*t.store;
    let rec = new_record("logs-tail", "repo", "c", now());
    s.create_run(rec.clone(), vec![]).await.unwrap();
    let key = log_key(&rec.id, 1);
    assert_eq!(s.read_log(&key, 0).await.unwrap(), None, "nothing written");
    s.append_log(&key, 0, b"hello\n", false, 16).await.unwrap();
    s.append_log(&key, 0, b"hello\n", false, 16).await.unwrap();
    let log = s.read_log(&key, 0).await.unwrap().expect("written");
    assert_eq!(
        (log.bytes.as_slice(), log.start, log.end, log.ended),
        (&b"hello\n"[..], 0, 6, false),
        "a repeated append is written once"
    );
    // Overlapping: only the new part is added; then the tail is cut to 16.
    s.append_log(&key, 3, b"lo\n0123456789abcdefXYZ", false, 16)
        .await
        .unwrap();
    let log = s.read_log(&key, 0).await.unwrap().expect("written");
    assert_eq!(
        (log.bytes.as_slice(), log.start, log.end),
        (&b"3456789abcdefXYZ"[..], 9, 25),
        "only the last 16 bytes are kept"
    );
    let from = s.read_log(&key, 20).await.unwrap().expect("written");
    assert_eq!((from.bytes.as_slice(), from.start), (&b"efXYZ"[..], 20));
    let past = s.read_log(&key, 25).await.unwrap().expect("written");
    assert!(past.bytes.is_empty() && past.start == 25 && !past.ended);
    s.append_log(&key, 25, b"", true, 16).await.unwrap();
    assert!(s.read_log(&key, 25).await.unwrap().expect("written").ended);
    // A gap: the kept tail starts over at the new offset.
    let other = log_key(&rec.id, 2);
    s.append_log(&other, 0, b"one\n", false, 16).await.unwrap();
    s.append_log(&other, 100, b"two\n", true, 16).await.unwrap();
    let gap = s.read_log(&other, 0).await.unwrap().expect("written");
    assert_eq!(
        (gap.bytes.as_slice(), gap.start, gap.end, gap.ended),
        (&b"two\n"[..], 100, 104, true)
    );
    assert_eq!(
        s.read_log(&key, 0).await.unwrap().expect("kept").end,
        25,
        "attempts are kept apart"
    );
    let unknown = log_key(&RunId::new(super::unique("logs-unknown")).unwrap(), 1);
    let err = s.append_log(&unknown, 0, b"x", true, 16).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(s.read_log(&unknown, 0).await.unwrap(), None);
}

/// Logs go with their run: purged with it.
pub async fn logs_expire_with_their_run(t: StoreUnderTest) {
    let s = &*t.store;
    let at = now();
    let rec = new_record("logs-purge", "repo", "c", at);
    s.create_run(rec.clone(), vec![]).await.unwrap();
    let key = log_key(&rec.id, 1);
    s.append_log(&key, 0, b"bye\n", true, 1024).await.unwrap();
    commit_state(s, &rec, RunState::Failed, Some(at)).await;
    assert!(
        s.read_log(&key, 0).await.unwrap().is_some(),
        "a finished run keeps its logs until it expires"
    );
    s.purge_expired(at + 10 * 365 * 24 * 3600 * 1000)
        .await
        .unwrap();
    assert_eq!(
        s.read_log(&key, 0).await.unwrap(),
        None,
        "the log went with its run"
    );
}

/// A report record is created once, listed while open, replaced in place,
/// closed and reopened; an unknown subject stores nothing.
pub async fn reports_are_tracked_saved_and_closed(t: StoreUnderTest) {
    let s = &*t.store;
    let subject = super::unique("report");
    let ttl = Duration::from_secs(60);
    assert!(s.track_report(&subject, "first".into(), ttl).await.unwrap());
    assert!(
        !s.track_report(&subject, "again".into(), ttl).await.unwrap(),
        "a repeat writes nothing"
    );
    let open = s.open_reports(10_000).await.unwrap();
    let mine: Vec<_> = open.iter().filter(|(k, _)| *k == subject).collect();
    assert_eq!(mine, vec![&(subject.clone(), "first".to_string())]);
    assert!(
        s.save_report(&subject, "second".into(), true)
            .await
            .unwrap()
    );
    assert_eq!(
        s.load_report(&subject).await.unwrap().as_deref(),
        Some("second")
    );
    assert!(
        s.save_report(&subject, "closed".into(), false)
            .await
            .unwrap()
    );
    let open = s.open_reports(10_000).await.unwrap();
    assert!(open.iter().all(|(k, _)| *k != subject), "closed: not open");
    assert_eq!(
        s.load_report(&subject).await.unwrap().as_deref(),
        Some("closed"),
        "a closed record is still there"
    );
    assert!(
        s.save_report(&subject, "reopened".into(), true)
            .await
            .unwrap()
    );
    let open = s.open_reports(10_000).await.unwrap();
    assert!(open.contains(&(subject.clone(), "reopened".to_string())));
    let unknown = super::unique("report-unknown");
    assert!(!s.save_report(&unknown, "x".into(), true).await.unwrap());
    assert_eq!(s.load_report(&unknown).await.unwrap(), None);
    assert!(
        s.open_reports(10_000)
            .await
            .unwrap()
            .iter()
            .all(|(k, _)| *k != unknown)
    );
}

/// A report record is forgotten after its ttl, and leaves the open list.
pub async fn reports_expire(t: StoreUnderTest) {
    let s = &*t.store;
    let subject = super::unique("report-ttl");
    assert!(
        s.track_report(&subject, "r".into(), Duration::from_millis(200))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.load_report(&subject).await.unwrap(), None);
    assert!(
        s.open_reports(10_000)
            .await
            .unwrap()
            .iter()
            .all(|(k, _)| *k != subject)
    );
    assert!(
        s.track_report(&subject, "r".into(), Duration::from_secs(60))
            .await
            .unwrap(),
        "expired: new again"
    );
}

/// Expands to one `#[tokio::test]` per store conformance case. The argument
/// is an expression (usually an `async` block) yielding
/// `Option<StoreUnderTest>`; `None` skips.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@cases $make;
            create_is_idempotent, load_unknown_is_not_found, commit_is_compare_and_set,
            concurrent_commits_one_wins, commit_enqueues_and_acks, unacknowledged_work_is_reclaimed,
            renewed_claims_stay_with_their_consumer,
            delayed_work_waits_until_due, waiting_claim_wakes_on_enqueue, list_filters_and_pages,
            list_follows_state_changes, purge_removes_only_expired_finished_runs,
            stats_count_work_and_states, run_version_follows_commits,
            deliveries_are_recorded_once, settled_deliveries_leave_pending, delivery_ids_expire,
            logs_keep_a_bounded_tail, logs_expire_with_their_run,
            reports_are_tracked_saved_and_closed, reports_expire);
    };
    (@cases $make:expr; $($case:ident),*) => {
        mod store_conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(t) = $make.await {
                        $crate::testkit::store_suite::$case(t).await;
                    }
                }
            )*
        }
    };
}
