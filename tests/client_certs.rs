//! Client certificates as users make them, with openssl and mosquitto clients against the real
//! binary: an X.509 v1 certificate (`openssl x509 -req` without an extensions file, as
//! mosquitto's TLS guide makes them) signed by the client CA is accepted, while a v1 one from
//! another CA, an expired one, and one issued by a v1 "intermediate" are refused, and the log
//! says, once per kind, what to re-issue; and with `tls.use_identity_as_username` a user name
//! claimed on the plain listener is no certificate: it selects none of that user's rules.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::certs::{make_ca, make_cert, make_cert_with, scratch};
use common::process::{BrokerProcess, free_port, run, spawn, wait_port_open};

const LIMIT: Duration = Duration::from_secs(20);

/// mosquitto_pub over TLS (1.3, or 1.2 with `tls12`) to `port` with `cert` (`NAME.pem`,
/// which may hold a chain) and its key; Ok when it published.
async fn publish_with(
    dir: &Path,
    port: u16,
    (cert, key): (&str, &str),
    tls12: bool,
) -> Result<(), String> {
    let port = port.to_string();
    let version = if tls12 { "tlsv1.2" } else { "tlsv1.3" };
    let out = tokio::time::timeout(
        LIMIT,
        tokio::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "localhost",
                "-p",
                &port,
                "--cafile",
                "ca.pem",
                "--cert",
                cert,
                "--key",
                key,
                "--tls-version",
                version,
                "-t",
                "v1/x",
                "-m",
                "hi",
                "-q",
                "1",
            ])
            .current_dir(dir)
            .output(),
    )
    .await
    .expect("mosquitto_pub in time")
    .expect("runs");
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).to_string()),
    }
}

/// The version line openssl prints for a certificate file.
async fn version_of(dir: &Path, pem: &str) -> String {
    let out = tokio::process::Command::new("openssl")
        .args(["x509", "-in", pem, "-noout", "-text"])
        .current_dir(dir)
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.trim_start().starts_with("Version:"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test]
async fn v1_client_certificates_signed_by_the_ca_are_accepted_and_others_refused() {
    let dir = scratch("v1");
    make_ca(&dir, "ca").await;
    make_ca(&dir, "other").await;
    make_cert(&dir, "server", "ca").await;
    // As mosquitto's guide makes them: no extensions file, so X.509 v1.
    make_cert_with(&dir, "device", "ca", 2, None).await;
    make_cert_with(&dir, "foreign", "other", 2, None).await;
    make_cert_with(&dir, "stale", "ca", -1, None).await;
    // A v1 certificate used as an intermediate CA, and a leaf it signed.
    make_cert_with(&dir, "mid", "ca", 2, None).await;
    make_cert_with(&dir, "leaf", "mid", 2, None).await;
    let chain = [
        std::fs::read_to_string(dir.join("leaf.pem")).unwrap(),
        std::fs::read_to_string(dir.join("mid.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(dir.join("leaf-chain.pem"), chain).unwrap();
    assert!(
        version_of(&dir, "device.pem")
            .await
            .starts_with("Version: 1"),
        "the test's certificate is X.509 v1"
    );
    assert!(
        version_of(&dir, "server.pem")
            .await
            .starts_with("Version: 3")
    );

    let tls_port = free_port();
    let p = |f: &str| dir.join(f).display().to_string();
    std::fs::write(
        dir.join("vibemq.toml"),
        format!(
            "[server]\ntls_bind = \"127.0.0.1:{tls_port}\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
            p("server.pem"),
            p("server.key"),
            p("ca.pem")
        ),
    )
    .unwrap();
    let log_path = dir.join("vibemq.log");
    let mut node = tokio::process::Command::new(env!("CARGO_BIN_EXE_vibemq"))
        .args([
            "--config",
            &p("vibemq.toml"),
            "--bind",
            &format!("127.0.0.1:{}", free_port()),
            "--http-bind",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_port_open(tls_port).await;
    // Both TLS versions: the handshake's signature by a v1 certificate's key is checked in
    // each its own way.
    for tls12 in [false, true] {
        publish_with(&dir, tls_port, ("device.pem", "device.key"), tls12)
            .await
            .expect("a v1 certificate the client CA signed is accepted");
    }
    for (cert, key, what) in [
        ("foreign.pem", "foreign.key", "another CA's"),
        ("stale.pem", "stale.key", "expired"),
        ("leaf-chain.pem", "leaf.key", "issued by a v1 certificate"),
    ] {
        assert!(
            publish_with(&dir, tls_port, (cert, key), false)
                .await
                .is_err(),
            "{what} certificate accepted"
        );
    }
    node.kill().await.unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let advice: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("client certificate refused:"))
        .collect();
    assert!(
        advice
            .iter()
            .any(|l| l.contains("expired") && l.contains("issue a new one")),
        "{log}"
    );
    assert!(
        advice
            .iter()
            .any(|l| l.contains("not signed by a CA of tls.client_ca_file")),
        "{log}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_user_name_claimed_on_the_plain_listener_is_not_a_certificate() {
    let dir = scratch("claimed");
    make_ca(&dir, "ca").await;
    make_cert(&dir, "server", "ca").await;
    make_cert(&dir, "sensor", "ca").await;
    let p = |f: &str| dir.join(f).display().to_string();
    std::fs::write(dir.join("acl"), "user sensor\ntopic readwrite sensors/#\n").unwrap();
    let tls_port = free_port();
    std::fs::write(
        dir.join("vibemq.toml"),
        format!(
            "[server]\ntls_bind = \"127.0.0.1:{tls_port}\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nuse_identity_as_username = true\n[auth]\nacl_file = \"{}\"\n",
            p("server.pem"),
            p("server.key"),
            p("ca.pem"),
            p("acl")
        ),
    )
    .unwrap();
    // The plain listener (on loopback: anonymous clients admitted) beside the mTLS one.
    let b = BrokerProcess::start(&["--config", &p("vibemq.toml")]).await;
    wait_port_open(tls_port).await;
    // The sensor, by its certificate, leaves a retained reading.
    let tls = tls_port.to_string();
    run(
        "mosquitto_pub",
        &[
            "-h",
            "localhost",
            "-p",
            &tls,
            "--cafile",
            &p("ca.pem"),
            "--cert",
            &p("sensor.pem"),
            "--key",
            &p("sensor.key"),
            "-t",
            "sensors/t",
            "-m",
            "21",
            "-r",
            "-q",
            "1",
        ],
        LIMIT,
    )
    .await;
    // On the plain port, `-u sensor` is a claim nothing verified: the client is anonymous,
    // and the sensor's rules are not its.
    let sub = spawn(
        "mosquitto_sub",
        &[
            "-p",
            &b.port(),
            "-u",
            "sensor",
            "-t",
            "sensors/#",
            "-C",
            "1",
            "-W",
            "2",
        ],
    );
    let out = tokio::time::timeout(LIMIT, sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The control: the certificate gets the sensor's rules.
    let out = run(
        "mosquitto_sub",
        &[
            "-h",
            "localhost",
            "-p",
            &tls,
            "--cafile",
            &p("ca.pem"),
            "--cert",
            &p("sensor.pem"),
            "--key",
            &p("sensor.key"),
            "-t",
            "sensors/#",
            "-C",
            "1",
            "-W",
            "5",
        ],
        LIMIT,
    )
    .await;
    assert_eq!(out.trim(), "21");
    std::fs::remove_dir_all(&dir).unwrap();
}
