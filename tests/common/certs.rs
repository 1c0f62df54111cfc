//! Certificates for the TLS tests, made with the real openssl command: a throw-away CA and
//! certificates it signs for localhost and 127.0.0.1, in a scratch directory per test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

/// A fresh directory under the temporary directory, unique to this process and `name`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vibemq-certs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub async fn openssl(dir: &Path, args: &[&str]) {
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
pub async fn make_ca(dir: &Path, name: &str) {
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

/// `NAME.key` and `NAME.pem` signed by `ca`, for localhost and 127.0.0.1, valid two days.
pub async fn make_cert(dir: &Path, name: &str, ca: &str) {
    make_cert_for_days(dir, name, ca, 2).await
}

/// The same, valid `days` from now (-1: it expired yesterday).
pub async fn make_cert_for_days(dir: &Path, name: &str, ca: &str, days: i32) {
    make_cert_with(
        dir,
        name,
        ca,
        days,
        Some("subjectAltName=DNS:localhost,IP:127.0.0.1\n"),
    )
    .await
}

/// `NAME.key` and `NAME.pem` signed by `ca`, valid `days`, with the X.509 v3 extensions in
/// `extensions` (an openssl extensions file's text), or, for None, none at all: an X.509 v1
/// certificate, as `openssl x509 -req` makes it without `-extfile` (mosquitto's TLS guide).
pub async fn make_cert_with(dir: &Path, name: &str, ca: &str, days: i32, extensions: Option<&str>) {
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
    let (ca_pem, ca_key, ext) = (
        format!("{ca}.pem"),
        format!("{ca}.key"),
        format!("{name}.ext"),
    );
    let days = days.to_string();
    let mut args = vec![
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
        &days,
    ];
    if let Some(text) = extensions {
        std::fs::write(dir.join(&ext), text).unwrap();
        args.extend(["-extfile", &ext]);
    }
    openssl(dir, &args).await;
}
