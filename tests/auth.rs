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
    // A client id of each user's own: with auth.clientid_ownership a live session under one
    // user's name is not another's to take.
    let id = format!("auth-probe-{}", user.unwrap_or("anonymous"));
    let mut c = connect_packet(protocol, &id, true);
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

/// A client logged in as `user` (password "pw-USER").
async fn login(b: &BrokerProcess, protocol: Protocol, user: &str, id: &str) -> RawClient {
    let mut c = connect_packet(protocol, id, true);
    c.username = Some(user.into());
    c.password = Some(Bytes::from(format!("pw-{user}")));
    let (client, ack) = RawClient::connect_with(b.addr, c).await;
    assert_eq!(ack.code, 0, "{user} logs in");
    client
}

#[tokio::test]
async fn an_acl_file_in_mosquittos_syntax_decides_publish_subscribe_and_delivery() {
    use vibemq::codec::{Packet, QoS};
    let dir = scratch("acl");
    let passwords = dir.join("passwords");
    let pw_arg = passwords.to_string_lossy().to_string();
    for (i, user) in ["alice", "bob", "carol"].into_iter().enumerate() {
        let create: &[&str] = if i == 0 { &["-c"] } else { &[] };
        let mut args: Vec<&str> = create.to_vec();
        let pw = format!("pw-{user}");
        args.extend(["-b", &pw_arg, user, &pw]);
        run("mosquitto_passwd", &args, LIMIT).await;
    }
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite sensors/#\ntopic deny sensors/secret/#\n\n\
         user bob\ntopic #\ntopic deny test/nosubscribe\n\n\
         user carol\ntopic write test/#\n\n\
         pattern readwrite clients/%c/#\n",
    )
    .unwrap();
    let (b, http) = broker(
        &dir,
        &format!(
            "password_file = \"{pw_arg}\"\nacl_file = \"{}\"",
            acl.to_string_lossy()
        ),
    )
    .await;

    let mut bob = login(&b, Protocol::V5, "bob", "bob").await;
    assert_eq!(bob.subscribe("#", QoS::AtLeastOnce).await, [1]);
    // The paho suites' case: subscribing to test/nosubscribe is refused (v5 0x87, v3 0x80).
    assert_eq!(
        bob.subscribe("test/nosubscribe", QoS::AtLeastOnce).await,
        [reason::NOT_AUTHORIZED]
    );
    let mut bob3 = login(&b, Protocol::V311, "bob", "bob3").await;
    assert_eq!(
        bob3.subscribe("test/nosubscribe", QoS::AtLeastOnce).await,
        [0x80]
    );

    let mut alice = login(&b, Protocol::V5, "alice", "alice").await;
    assert_eq!(
        alice.subscribe("#", QoS::AtMostOnce).await,
        [reason::NOT_AUTHORIZED]
    );
    assert_eq!(alice.subscribe("sensors/+", QoS::AtMostOnce).await, [0]);
    // Her own tree, through the pattern.
    assert_eq!(
        alice.subscribe("clients/alice/#", QoS::AtMostOnce).await,
        [0]
    );
    // A denied publish: 0x87 and not delivered; an allowed one reaches bob.
    alice
        .publish("sensors/secret/key", b"k", QoS::AtLeastOnce, false, 7)
        .await;
    match alice.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason, reason::NOT_AUTHORIZED),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    alice
        .publish("sensors/t", b"21", QoS::AtLeastOnce, false, 8)
        .await;
    // Carol may write under test/: bob's `#` does not let test/nosubscribe through to him.
    let mut carol = login(&b, Protocol::V311, "carol", "carol").await;
    carol
        .publish("test/nosubscribe", b"hidden", QoS::AtMostOnce, false, 0)
        .await;
    carol
        .publish("test/open", b"seen", QoS::AtMostOnce, false, 0)
        .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let p = bob.recv_publish().await;
        if p.qos == QoS::AtLeastOnce {
            bob.send(&Packet::PubAck(vibemq::codec::Ack::new(p.packet_id, 0)))
                .await;
        }
        got.push(format!(
            "{} {}",
            p.topic,
            String::from_utf8_lossy(&p.payload)
        ));
    }
    got.sort();
    assert_eq!(got, ["sensors/t 21", "test/open seen"]);
    bob.expect_silence(Duration::from_millis(300)).await;
    // A will on a topic the client may not write refuses the CONNECT.
    let mut c = connect_packet(Protocol::V5, "alice-will", true);
    c.username = Some("alice".into());
    c.password = Some(Bytes::from_static(b"pw-alice"));
    c.will = Some(vibemq::codec::Will {
        topic: "elsewhere/x".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    assert_eq!(
        RawClient::connect_with(b.addr, c).await.1.code,
        reason::NOT_AUTHORIZED
    );

    let (_, metrics) =
        common::http::get(format!("127.0.0.1:{http}").parse().unwrap(), "/metrics").await;
    for (action, n) in [("publish", 2), ("subscribe", 3), ("receive", 1)] {
        let line = format!("vibemq_acl_denied_total{{action=\"{action}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }

    // A reload reaches connections already up (each resolves its rules once, and again after
    // a reload): bob, still subscribed to `#`, loses sensors/ and stops receiving it.
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite sensors/#\n\nuser bob\ntopic #\ntopic deny sensors/#\n",
    )
    .unwrap();
    let pid = b.child.id().unwrap().to_string();
    run("kill", &["-HUP", &pid], LIMIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice
        .publish("sensors/after", b"x", QoS::AtMostOnce, false, 0)
        .await;
    bob.expect_silence(Duration::from_millis(300)).await;
    let (_, metrics) =
        common::http::get(format!("127.0.0.1:{http}").parse().unwrap(), "/metrics").await;
    assert!(
        metrics.contains("vibemq_acl_denied_total{action=\"receive\"} 2"),
        "{metrics}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
