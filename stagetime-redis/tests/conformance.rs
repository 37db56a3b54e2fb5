//! The Store conformance suite of stagetime-core, run against RedisStore on a
//! real redis-server (one per test binary; a fresh key prefix per case).

mod support;

use std::sync::Arc;
use std::time::Duration;

use stagetime_core::testkit::StoreUnderTest;
use stagetime_redis::RedisStore;

async fn store_under_test() -> Option<StoreUnderTest> {
    let server = support::shared()?;
    let reclaim_after = Duration::from_millis(300);
    let config = server
        .config("conformance")
        .with_reclaim_after(reclaim_after);
    let store = RedisStore::connect(config).await.expect("connect");
    Some(StoreUnderTest {
        store: Arc::new(store),
        reclaim_after,
    })
}

stagetime_core::store_conformance_tests!(store_under_test());
