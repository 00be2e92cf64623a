//! A Redis reached over TLS with a password (`rediss://:password@host:port`):
//! the daemon, the handlers and the operator commands all work through it.
//! The server's certificate is signed by a CA made for the test, trusted
//! through `SSL_CERT_FILE` (the system's roots are used otherwise).

mod common;

use common::processes::Child;
use std::path::Path;
use std::process::{Command, Stdio};

/// A CA and a server certificate for 127.0.0.1, made with openssl.
fn certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl must be installed (apt-get install -y openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=sagaflow-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
}

struct TlsRedis(std::process::Child);

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_runs_over_tls_with_a_password() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _redis = TlsRedis(
        Command::new("redis-server")
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
                "server.crt",
                "--tls-key-file",
                "server.key",
            ])
            .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
            .args([
                "--requirepass",
                "s3cret",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    let url = format!("rediss://:s3cret@127.0.0.1:{port}/");
    let ca = dir.path().join("ca.crt");
    let ca = ca.to_str().unwrap();
    let env = [("SSL_CERT_FILE", ca)];
    let _daemon = Child::daemon_with(&url, "tls", &["--lease-ttl", "1s"], &env);
    let _handlers = Child::spawn("handlers", &["handlers", "--redis-url", &url], &env);

    let mut start = Command::new(common::processes::BIN);
    start
        .args([
            "start",
            "--redis-url",
            &url,
            "--payload",
            r#"{"area": "a", "robots": 1}"#,
        ])
        .args(["--wait", "--timeout", "20s"])
        .env("SSL_CERT_FILE", ca)
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || start.output())
        .await
        .unwrap()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("completed; results:"), "{text}");

    // A wrong password is a clear error, not a hang.
    let bad = format!("rediss://:wrong@127.0.0.1:{port}/");
    let mut list = Command::new(common::processes::BIN);
    list.args(["list", "--redis-url", &bad])
        .env("SSL_CERT_FILE", ca);
    let out = tokio::task::spawn_blocking(move || list.output())
        .await
        .unwrap()
        .unwrap();
    // Redis cannot be used: exit 3, as for every operator command.
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach Redis at rediss://:***@127.0.0.1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong"),
        "no password in messages: {stderr}"
    );
}
