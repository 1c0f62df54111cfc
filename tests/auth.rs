//! Passwords as mosquitto users keep them: the real `vibemq` binary with a password file made by
//! mosquitto_passwd and extended by `vibemq passwd`, mosquitto_pub and raw clients for the exact
//! CONNACK codes (v5 0x86 for wrong credentials and 0x87 for none where required, v3 0x05 for
//! both), the refusals counted in /metrics, SIGHUP picking up a new user and keeping the old
//! ones when the file breaks, and start-up refusing a password file it cannot read.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::process::{BrokerProcess, free_port, run};
use common::*;
use vibemq::codec::{Protocol, reason, v3_return};

const LIMIT: Duration = Duration::from_secs(20);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vibemq-auth-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `vibemq passwd FILE USER` with the password on standard input.
async fn vibemq_passwd(file: &Path, user: &str, password: &str) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vibemq"))
        .args(["passwd", &file.to_string_lossy(), user])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{password}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "vibemq passwd failed");
}

/// A broker with `[auth]` from `auth_toml`, its MQTT and HTTP ports.
async fn broker(dir: &Path, auth_toml: &str) -> (BrokerProcess, u16) {
    let http = free_port();
    let config = dir.join("vibemq.toml");
    std::fs::write(&config, format!("[auth]\n{auth_toml}\n")).unwrap();
    let http_bind = format!("127.0.0.1:{http}");
    let config = config.to_string_lossy().to_string();
    let b = BrokerProcess::start(&["--config", &config, "--http-bind", &http_bind]).await;
    (b, http)
}

/// The CONNACK code for these credentials.
async fn connack(
    b: &BrokerProcess,
    protocol: Protocol,
    user: Option<&str>,
    pw: Option<&str>,
) -> u8 {
    let mut c = connect_packet(protocol, "auth-probe", true);
    c.username = user.map(str::to_string);
    c.password = pw.map(|p| Bytes::copy_from_slice(p.as_bytes()));
    RawClient::connect_with(b.addr, c).await.1.code
}

#[tokio::test]
async fn mosquitto_passwd_and_vibemq_passwd_files_decide_who_connects() {
    let dir = scratch("files");
    let file = dir.join("passwords");
    let file_arg = file.to_string_lossy().to_string();
    run(
        "mosquitto_passwd",
        &["-c", "-b", &file_arg, "alice", "secret1"],
        LIMIT,
    )
    .await;
    vibemq_passwd(&file, "bob", "hunter2:with colon").await;
    let (b, http) = broker(&dir, &format!("password_file = \"{file_arg}\"")).await;

    // Real clients: the right passwords get in, for both users and both versions.
    for (user, pw) in [("alice", "secret1"), ("bob", "hunter2:with colon")] {
        for version in ["mqttv311", "mqttv5"] {
            run(
                "mosquitto_pub",
                &[
                    "-p",
                    &b.port(),
                    "-V",
                    version,
                    "-u",
                    user,
                    "-P",
                    pw,
                    "-t",
                    "a/b",
                    "-m",
                    "x",
                    "-q",
                    "1",
                ],
                LIMIT,
            )
            .await;
        }
    }
    // The codes, exactly: wrong password, unknown user, and none at all (a password file
    // makes anonymous clients unwelcome unless auth.allow_anonymous says otherwise).
    use Protocol::{V5, V311};
    assert_eq!(
        connack(&b, V5, Some("alice"), Some("nope")).await,
        reason::BAD_USER_NAME_OR_PASSWORD
    );
    assert_eq!(
        connack(&b, V5, Some("eve"), Some("secret1")).await,
        reason::BAD_USER_NAME_OR_PASSWORD
    );
    assert_eq!(
        connack(&b, V5, Some("alice"), None).await,
        reason::BAD_USER_NAME_OR_PASSWORD
    );
    assert_eq!(connack(&b, V5, None, None).await, reason::NOT_AUTHORIZED);
    assert_eq!(
        connack(&b, V311, Some("alice"), Some("nope")).await,
        v3_return::NOT_AUTHORIZED
    );
    assert_eq!(
        connack(&b, V311, None, None).await,
        v3_return::NOT_AUTHORIZED
    );
    assert_eq!(connack(&b, V311, Some("alice"), Some("secret1")).await, 0);
    // Each refusal is counted by why.
    let (_, metrics) =
        common::http::get(format!("127.0.0.1:{http}").parse().unwrap(), "/metrics").await;
    assert!(
        metrics.contains("vibemq_auth_failures_total{reason=\"bad_credentials\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vibemq_auth_failures_total{reason=\"required\"} 2"),
        "{metrics}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn sighup_reloads_the_password_file_and_a_broken_one_changes_nothing() {
    let dir = scratch("reload");
    let file = dir.join("passwords");
    vibemq_passwd(&file, "alice", "one").await;
    let (b, _) = broker(
        &dir,
        &format!("password_file = \"{}\"", file.to_string_lossy()),
    )
    .await;
    let pid = b.child.id().unwrap().to_string();
    let hup = || async {
        let status = tokio::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    };
    assert_ne!(
        connack(&b, Protocol::V5, Some("carol"), Some("two")).await,
        0
    );
    vibemq_passwd(&file, "carol", "two").await;
    hup().await;
    eventually_async(|| async { connack(&b, Protocol::V5, Some("carol"), Some("two")).await == 0 })
        .await;
    // A file that does not parse: the users in force stay.
    std::fs::write(&file, "this is not a password file\n").unwrap();
    hup().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        connack(&b, Protocol::V5, Some("alice"), Some("one")).await,
        0
    );
    assert_eq!(
        connack(&b, Protocol::V5, Some("carol"), Some("two")).await,
        0
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Retries `check` for up to LIMIT.
async fn eventually_async<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_password_file_that_cannot_be_read_stops_start_up_naming_the_key() {
    let dir = scratch("missing");
    let config = dir.join("vibemq.toml");
    std::fs::write(
        &config,
        "[auth]\npassword_file = \"/nonexistent/passwords\"\n",
    )
    .unwrap();
    for args in [
        vec!["--config", config.to_str().unwrap()],
        vec!["check-config", config.to_str().unwrap()],
    ] {
        let out = tokio::time::timeout(
            LIMIT,
            tokio::process::Command::new(env!("CARGO_BIN_EXE_vibemq"))
                .args(&args)
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("auth.password_file"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
