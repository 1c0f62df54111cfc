//! MQTT over TLS with real clients: a CA, server and client certificates made with openssl in
//! the test; mosquitto_pub / mosquitto_sub with `--cafile` (and `--cert/--key` for mTLS) against
//! the real binary; a client that does not trust the CA, one without a client certificate and
//! one with a certificate from another CA all refused (and counted); certificates replaced and
//! reloaded on SIGHUP while a subscriber connected before stays connected; a bad certificate
//! stopping start-up with one line naming the key.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::process::{BrokerProcess, free_port, run, spawn};
use tokio::io::{AsyncBufReadExt, BufReader};

const LIMIT: Duration = Duration::from_secs(20);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vibemq-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn openssl(dir: &Path, args: &[&str]) {
    let out = tokio::time::timeout(
        LIMIT,
        tokio::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("openssl in time")
    .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `NAME.key` and `NAME.pem`: a self-signed CA.
async fn make_ca(dir: &Path, name: &str) {
    let (key, pem, subj) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={name}"),
    );
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem,
            "-days", "2", "-subj", &subj,
        ],
    )
    .await;
}

/// `NAME.key` and `NAME.pem` signed by `ca`, for localhost and 127.0.0.1.
async fn make_cert(dir: &Path, name: &str, ca: &str) {
    let (key, csr, pem, subj) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("/CN={name}"),
    );
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj,
        ],
    )
    .await;
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    let (ca_pem, ca_key, ext) = (
        format!("{ca}.pem"),
        format!("{ca}.key"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    )
    .await;
}

/// A broker with a TLS listener on `tls_port` and `[tls]` from the files in `dir`.
async fn broker(dir: &Path, tls_port: u16, client_ca: bool, http: u16) -> BrokerProcess {
    let p = |f: &str| dir.join(f).to_string_lossy().to_string();
    let config = dir.join("vibemq.toml");
    let client_ca_file = if client_ca {
        p("ca.pem")
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!(
            "[server]\ntls_bind = \"127.0.0.1:{tls_port}\"\n\n[tls]\ncert_file = \"{}\"\n\
             key_file = \"{}\"\nclient_ca_file = \"{client_ca_file}\"\n",
            p("server.pem"),
            p("server.key")
        ),
    )
    .unwrap();
    let config = config.to_string_lossy().to_string();
    let http = format!("127.0.0.1:{http}");
    let b = BrokerProcess::start(&["--config", &config, "--http-bind", &http]).await;
    // The TLS port opens with the plain one.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "TLS port not open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b
}

/// mosquitto_pub over TLS; Ok when it published.
async fn tls_pub(dir: &Path, port: u16, extra: &[&str]) -> Result<(), String> {
    let port = port.to_string();
    let mut args = vec![
        "-h",
        "localhost",
        "-p",
        &port,
        "-t",
        "secure/x",
        "-m",
        "hi",
        "-q",
        "1",
    ];
    args.extend_from_slice(extra);
    let out = tokio::time::timeout(
        LIMIT,
        tokio::process::Command::new("mosquitto_pub")
            .args(&args)
            .current_dir(dir)
            .output(),
    )
    .await
    .expect("mosquitto_pub in time")
    .expect("runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[tokio::test]
async fn mosquitto_clients_over_tls_and_mtls() {
    let dir = scratch("mtls");
    make_ca(&dir, "ca").await;
    make_cert(&dir, "server", "ca").await;
    make_cert(&dir, "client", "ca").await;
    make_ca(&dir, "rogue").await;
    make_cert(&dir, "intruder", "rogue").await;

    // TLS: a client trusting the CA publishes, and a subscriber over TLS gets it.
    let port = free_port();
    let b = broker(&dir, port, false, free_port()).await;
    let port_s = port.to_string();
    let sub_args = [
        "-h",
        "localhost",
        "-p",
        &port_s,
        "--cafile",
        "ca.pem",
        "-t",
        "secure/#",
        "-C",
        "1",
        "-W",
        "10",
    ];
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(sub_args)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    tls_pub(&dir, port, &["--cafile", "ca.pem"]).await.unwrap();
    let out = tokio::time::timeout(LIMIT, sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hi");
    // A client that does not trust the CA refuses the server.
    assert!(
        tls_pub(&dir, port, &["--cafile", "rogue.pem"])
            .await
            .is_err()
    );
    // Plain MQTT on the TLS port goes nowhere.
    let plain = tls_pub(&dir, port, &[]).await;
    assert!(plain.is_err());
    drop(b);

    // mTLS: only clients with a certificate from the client CA get in.
    let (port, http) = (free_port(), free_port());
    let _b = broker(&dir, port, true, http).await;
    let client = [
        "--cafile",
        "ca.pem",
        "--cert",
        "client.pem",
        "--key",
        "client.key",
    ];
    tls_pub(&dir, port, &client).await.unwrap();
    assert!(
        tls_pub(&dir, port, &["--cafile", "ca.pem"]).await.is_err(),
        "no client cert"
    );
    let intruder = [
        "--cafile",
        "ca.pem",
        "--cert",
        "intruder.pem",
        "--key",
        "intruder.key",
    ];
    assert!(
        tls_pub(&dir, port, &intruder).await.is_err(),
        "another CA's cert"
    );
    let (_, metrics) =
        common::http::get(format!("127.0.0.1:{http}").parse().unwrap(), "/metrics").await;
    let failures: f64 = metrics
        .lines()
        .find(|l| l.starts_with("vibemq_tls_handshake_failures_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("the counter");
    assert!(failures >= 2.0, "{failures}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn certificates_reload_on_sighup_and_connections_stay_up() {
    let dir = scratch("reload");
    make_ca(&dir, "ca").await;
    make_ca(&dir, "ca2").await;
    make_cert(&dir, "server", "ca").await;
    let port = free_port();
    let b = broker(&dir, port, false, free_port()).await;
    let port_s = port.to_string();
    // A subscriber connected with the first certificate.
    let mut sub = spawn(
        "mosquitto_sub",
        &[
            "-h",
            "localhost",
            "-p",
            &port_s,
            "--cafile",
            &dir.join("ca.pem").to_string_lossy(),
            "-t",
            "secure/#",
        ],
    );
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A new certificate from another CA replaces the files; SIGHUP.
    std::fs::rename(dir.join("server.pem"), dir.join("old-server.pem")).unwrap();
    make_cert(&dir, "server", "ca2").await;
    let pid = b.child.id().unwrap().to_string();
    run("kill", &["-HUP", &pid], LIMIT).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while tls_pub(&dir, port, &["--cafile", "ca2.pem"]).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        tls_pub(&dir, port, &["--cafile", "ca.pem"]).await.is_err(),
        "new connections get the new certificate"
    );
    // The subscriber from before the reload is still connected and gets what was published.
    let line = tokio::time::timeout(LIMIT, lines.next_line())
        .await
        .expect("a message in time")
        .unwrap()
        .expect("still connected");
    assert_eq!(line, "hi");
    // A broken file on the next reload keeps the certificate in force.
    std::fs::write(dir.join("server.pem"), "not a certificate").unwrap();
    run("kill", &["-HUP", &pid], LIMIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tls_pub(&dir, port, &["--cafile", "ca2.pem"]).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_bad_certificate_stops_start_up_naming_the_key() {
    let dir = scratch("bad");
    std::fs::write(dir.join("server.pem"), "not a certificate").unwrap();
    std::fs::write(dir.join("server.key"), "not a key").unwrap();
    let config = dir.join("vibemq.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ntls_bind = \"127.0.0.1:0\"\n\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ),
    )
    .unwrap();
    let out = tokio::time::timeout(
        LIMIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_vibemq"))
            .args(["--config", config.to_str().unwrap()])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls.cert_file"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
