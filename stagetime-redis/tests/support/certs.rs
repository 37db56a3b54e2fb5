//! Test certificates made with `openssl`: a private CA and a server
//! certificate for 127.0.0.1 / localhost signed by it (for the TLS tests
//! here and of the root package, which includes this harness).

use std::path::Path;
use std::process::{Command, Stdio};

/// Writes `ca.pem`, `ca.key`, `server.pem` and `server.key` (a certificate for
/// `IP:127.0.0.1` and `DNS:localhost` signed by the CA) into `dir`. False when
/// `openssl` is missing or fails: the caller skips (or fails under
/// `STAGETIME_REQUIRE_SERVERS=1`).
///
/// # Panics
/// When `dir` is not writable.
pub fn make_test_certs(dir: &Path) -> bool {
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext.cnf");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=stagetime-test-ca",
    ]) && openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]) && openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ])
}
