//! The broker conformance suite paho-mqtt ships in its source distribution (tests/test_mqttv5.py,
//! class `Test`: the Eclipse interoperability tests for MQTT 5 as paho's client runs them),
//! fetched from PyPI for the installed paho-mqtt and run against the built binary, with an ACL
//! that denies `test/nosubscribe` as the suite expects. Every test must pass but one:
//! `test_subscribe_failure` wants the refusal as 0x80 (Unspecified error), and VibeMQ answers an
//! MQTT 5 SUBSCRIBE the ACL denies with 0x87 (Not authorized), as the specification's table of
//! SUBACK reasons and mosquitto do; the test pins that the refusal happens and how it is told.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::{BrokerProcess, run};

const LIMIT: Duration = Duration::from_secs(200);

/// The suite's directory, downloaded (once per target directory) for the installed paho-mqtt.
async fn suite_dir() -> PathBuf {
    let version = run(
        "python3",
        &["-c", "import paho.mqtt; print(paho.mqtt.__version__)"],
        Duration::from_secs(20),
    )
    .await
    .trim()
    .to_string();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("paho-mqtt-suite");
    let tests = root.join(format!("paho_mqtt-{version}/tests"));
    if tests.join("test_mqttv5.py").exists() {
        return tests;
    }
    std::fs::create_dir_all(&root).unwrap();
    let root_s = root.display().to_string();
    let wanted = format!("paho-mqtt=={version}");
    run(
        "python3",
        &[
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-d",
            &root_s,
            &wanted,
        ],
        Duration::from_secs(120),
    )
    .await;
    let archive = format!("{root_s}/paho_mqtt-{version}.tar.gz");
    run(
        "tar",
        &["xzf", &archive, "-C", &root_s],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        tests.join("test_mqttv5.py").exists(),
        "paho-mqtt {version}'s source distribution has no tests/test_mqttv5.py"
    );
    tests
}

#[tokio::test]
async fn paho_mqtts_mqtt5_suite_passes_save_the_subscribe_refusal_code() {
    let tests = suite_dir().await;
    let dir = std::env::temp_dir().join(format!("vibemq-paho-suite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("acl"),
        "topic readwrite #\ntopic deny test/nosubscribe\n",
    )
    .unwrap();
    let config = dir.join("vibemq.toml");
    std::fs::write(
        &config,
        format!("[auth]\nacl_file = \"{}\"\n", dir.join("acl").display()),
    )
    .unwrap();
    let b = BrokerProcess::start(&["--config", &config.display().to_string()]).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/run_paho_suite.py"
    );
    let out = tokio::time::timeout(
        LIMIT,
        tokio::process::Command::new("python3")
            .args([script, &tests.display().to_string()])
            .env("BROKER_PORT", b.port())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the suite within its time")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PAHO-SUITE "))
        .unwrap_or_else(|| {
            panic!(
                "no summary from the suite:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let summary: serde_json::Value = serde_json::from_str(line).unwrap();
    let passed = summary["passed"].as_array().unwrap();
    let failed = summary["failed"].as_object().unwrap();
    println!(
        "paho-mqtt MQTT 5 suite: {} passed, failed: {failed:?}",
        passed.len()
    );
    assert!(passed.len() >= 20, "{summary}");
    assert_eq!(
        failed.keys().collect::<Vec<_>>(),
        ["test_subscribe_failure"],
        "{summary}"
    );
    let why = failed["test_subscribe_failure"].as_str().unwrap();
    assert!(why.contains("Not authorized"), "{why}");
    std::fs::remove_dir_all(&dir).unwrap();
}
