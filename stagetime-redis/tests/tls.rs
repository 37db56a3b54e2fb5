//! `rediss://`: RedisStore over TLS to a redis-server with a certificate of a
//! private CA made for the test (needs `openssl` and a redis-server built
//! with TLS, as Debian's is).

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stagetime_core::ErrorKind;
use stagetime_core::store::{RunId, Store};
use stagetime_redis::{RedisConfig, RedisStore};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_store_works_over_tls_and_checks_the_certificate() {
    if support::shared().is_none() {
        return; // no redis-server: skipped (or failed) by the harness
    }
    let dir = tempfile::tempdir().unwrap();
    if !support::certs::make_test_certs(dir.path()) {
        support::skip("openssl not available to make test certificates");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let d = |f: &str| dir.path().join(f).display().to_string();
    let _server = KillOnDrop(
        Command::new(binary)
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--tls-cert-file",
                &d("server.pem"),
                "--tls-key-file",
                &d("server.key"),
            ])
            .args([
                "--tls-ca-cert-file",
                &d("ca.pem"),
                "--tls-auth-clients",
                "no",
            ])
            .args(["--save", "", "--appendonly", "no", "--dir", &d("")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let url = format!("rediss://127.0.0.1:{port}/0");
    let config = RedisConfig::new(&url)
        .with_prefix("tls")
        .with_tls_root_cert(ca);
    let deadline = Instant::now() + Duration::from_secs(10);
    let store = loop {
        match RedisStore::connect(config.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                assert!(Instant::now() < deadline, "TLS server not reachable: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let e = store
        .load_run(&RunId::new("nothing").unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let claimed = store
        .claim("w", 10, 1, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(claimed.is_empty());

    // Without the CA the server's certificate is not trusted.
    let e = RedisStore::connect(RedisConfig::new(&url).with_prefix("tls"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    // Plain text to a TLS port fails too.
    let plain = RedisConfig::new(format!("redis://127.0.0.1:{port}/0"))
        .with_connect_timeout(Duration::from_millis(500));
    assert!(RedisStore::connect(plain).await.is_err());
}
