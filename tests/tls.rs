//! MQTT over TLS with real clients: a CA, server and client certificates made with openssl in
//! the test; mosquitto_pub / mosquitto_sub with `--cafile` (and `--cert/--key` for mTLS) against
//! the real binary; a client that does not trust the CA, one without a client certificate and
//! one with a certificate from another CA all refused (and counted); certificates replaced and
//! reloaded on SIGHUP while a subscriber connected before stays connected; a bad certificate
//! stopping start-up with one line naming the key; an expired client certificate refused;
//! `tls.use_identity_as_username` making the certificate's Common Name the user the ACL
//! knows.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::certs::{make_ca, make_cert, make_cert_for_days, scratch};
use common::process::{BrokerProcess, free_port, run, spawn};
use tokio::io::{AsyncBufReadExt, BufReader};

const LIMIT: Duration = Duration::from_secs(20);

/// A broker with a TLS listener on `tls_port` and `[tls]` from the files in `dir`.
async fn broker(dir: &Path, tls_port: u16, client_ca: bool, http: u16) -> BrokerProcess {
    broker_with(dir, tls_port, client_ca, http, "", "").await
}

/// The same with more keys in `[tls]` and more sections after it.
async fn broker_with(
    dir: &Path,
    tls_port: u16,
    client_ca: bool,
    http: u16,
    tls_extra: &str,
    sections: &str,
) -> BrokerProcess {
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
             key_file = \"{}\"\nclient_ca_file = \"{client_ca_file}\"\n{tls_extra}\n{sections}\n",
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

#[tokio::test]
async fn the_certificate_names_the_user_and_expired_ones_are_refused() {
    let dir = scratch("identity");
    make_ca(&dir, "ca").await;
    make_cert(&dir, "server", "ca").await;
    // Common Names "sensor" and "intruder"; "stale" expired yesterday.
    make_cert(&dir, "sensor", "ca").await;
    make_cert(&dir, "intruder", "ca").await;
    make_cert_for_days(&dir, "stale", "ca", -1).await;
    // No password file entry for either: the certificate is the credential. The ACL lets
    // "sensor" write sensors/# and nothing else; nobody else anything.
    std::fs::write(dir.join("acl"), "user sensor\ntopic readwrite sensors/#\n").unwrap();
    let sections = format!(
        "[auth]\nallow_anonymous = false\nacl_file = \"{}\"\n",
        dir.join("acl").display()
    );
    let (port, http) = (free_port(), free_port());
    let _b = broker_with(
        &dir,
        port,
        true,
        http,
        "use_identity_as_username = true",
        &sections,
    )
    .await;
    let as_user = |name: &str| {
        [
            "--cafile".to_string(),
            "ca.pem".to_string(),
            "--cert".to_string(),
            format!("{name}.pem"),
            "--key".to_string(),
            format!("{name}.key"),
        ]
    };
    let port_s = port.to_string();
    let sensor = as_user("sensor");
    let mut sub_args: Vec<&str> = vec![
        "-h",
        "localhost",
        "-p",
        &port_s,
        "-t",
        "sensors/#",
        "-C",
        "1",
        "-W",
        "10",
        "-V",
        "5",
    ];
    sub_args.extend(sensor.iter().map(String::as_str));
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(&sub_args)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // "intruder" has a valid certificate, so it connects, but the ACL gives its name nothing:
    // its publish is refused (v5 PUBACK 0x87) and counted.
    let intruder = as_user("intruder");
    let mut args: Vec<&str> = vec!["-t", "sensors/t", "-V", "5"];
    args.extend(intruder.iter().map(String::as_str));
    let _ = tls_pub(&dir, port, &args).await;
    let http_addr = format!("127.0.0.1:{http}").parse().unwrap();
    let (_, metrics) = common::http::get(http_addr, "/metrics").await;
    assert!(
        metrics.contains("vibemq_acl_denied_total{action=\"publish\"} 1"),
        "{metrics}"
    );
    // "sensor" writes what its subscription (also under its certificate's name) receives.
    let mut args: Vec<&str> = vec!["-t", "sensors/t", "-V", "5"];
    args.extend(sensor.iter().map(String::as_str));
    tls_pub(&dir, port, &args).await.unwrap();
    let out = tokio::time::timeout(LIMIT, sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hi",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An expired certificate from the right CA fails the handshake, counted.
    let failures = |metrics: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with("vibemq_tls_handshake_failures_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .expect("the counter")
    };
    let before = failures(&common::http::get(http_addr, "/metrics").await.1);
    let stale = as_user("stale");
    let args: Vec<&str> = stale.iter().map(String::as_str).collect();
    assert!(tls_pub(&dir, port, &args).await.is_err());
    let after = failures(&common::http::get(http_addr, "/metrics").await.1);
    assert_eq!(after, before + 1.0);
    std::fs::remove_dir_all(&dir).unwrap();
}
