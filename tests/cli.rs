//! The `vibemq` command line: configuration errors stop start-up with exit code 2 and one line
//! naming the key; `check-config` validates without starting; precedence is
//! flag > environment > file > embedded default.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::process::free_port;

/// The HTTP endpoint on a loopback ephemeral port, not the fixed 9090. (The MQTT bind is
/// left to each case: one of them is about a bad `server.bind` in the file.)
const LOOPBACK: [(&str, &str); 1] = [("VIBEMQ_HTTP_BIND", "127.0.0.1:0")];

/// Runs vibemq to its end; configuration errors end it before it listens, so a run still
/// going after 10 s is killed and fails the test.
fn vibemq(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vibemq"));
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in LOOPBACK.iter().chain(env) {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run vibemq");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("vibemq {args:?} still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vibemq-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn stderr_line(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        text.trim_end().lines().count(),
        1,
        "exactly one line: {text:?}"
    );
    text.trim_end().to_string()
}

#[test]
fn bad_values_stop_startup_with_exit_2_and_the_key() {
    let cases = [
        ("[mqtt]\nmax_inflight = 0\n", "mqtt.max_inflight"),
        (
            "[mqtt]\nmax_packet_size = \"big\"\n",
            "mqtt.max_packet_size",
        ),
        ("[server]\nbind = \"nowhere\"\n", "server.bind"),
        (
            "[server]\nbindd = \"127.0.0.1:1\"\n",
            "server.bindd: unknown key",
        ),
        ("[log]\nlevel = \"chatty\"\n", "log.level"),
    ];
    for (text, key) in cases {
        let path = write_config("bad.toml", text);
        let out = vibemq(&["--config", path.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let line = stderr_line(&out);
        assert!(
            line.starts_with("vibemq: config error: ") && line.contains(key),
            "{line}"
        );
    }
    let out = vibemq(&["--config", "/nonexistent/vibemq.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("/nonexistent/vibemq.toml"));
}

#[test]
fn environment_and_flag_errors_name_their_source() {
    let out = vibemq(&[], &[("VIBEMQ_MQTT_MAX_INFLIGHT", "lots")]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr_line(&out),
        "vibemq: config error: mqtt.max_inflight (from VIBEMQ_MQTT_MAX_INFLIGHT): expected an integer, got `lots`"
    );
    let out = vibemq(&["--max-queued-messages=lots"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("(from --max-queued-messages)"));
}

#[test]
fn check_config_validates_without_starting() {
    let good = write_config(
        "good.toml",
        "[server]\nbind = \"127.0.0.1:1883\"\n[mqtt]\nmax_inflight = 10\n",
    );
    let out = vibemq(&["check-config", good.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(": ok\n"));
    let bad = write_config("bad2.toml", "[mqtt]\nmax_queued_messages = 0\n");
    let out = vibemq(&["check-config", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("mqtt.max_queued_messages"));
    // The shipped default file is valid as a file too.
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml");
    assert_eq!(
        vibemq(&["check-config", default], &[]).status.code(),
        Some(0)
    );
}

/// Starts vibemq with `args`/`env` and reports which of `ports` it listens on.
async fn listening_port(args: &[&str], env: &[(&str, &str)], ports: &[u16]) -> u16 {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vibemq"));
    cmd.args(args)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        // The HTTP endpoint on an ephemeral port, not the fixed 9090.
        .env("VIBEMQ_HTTP_BIND", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        for &p in ports {
            if tokio::net::TcpStream::connect(("127.0.0.1", p))
                .await
                .is_ok()
            {
                // Gone (killed and reaped) before the next case probes the same ports.
                child.kill().await.expect("stop vibemq");
                return p;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "vibemq listened on none of {ports:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn precedence_is_flag_then_env_then_file_then_default() {
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let file = write_config(
        "bind.toml",
        &format!("[server]\nbind = \"127.0.0.1:{file_port}\"\n"),
    );
    let file = file.to_str().unwrap();
    let env_bind = format!("127.0.0.1:{env_port}");
    let flag_bind = format!("127.0.0.1:{flag_port}");
    let all = [file_port, env_port, flag_port];
    assert_eq!(
        listening_port(&["--config", file], &[], &all).await,
        file_port
    );
    assert_eq!(
        listening_port(
            &["--config", file],
            &[("VIBEMQ_SERVER_BIND", &env_bind)],
            &all
        )
        .await,
        env_port
    );
    assert_eq!(
        listening_port(
            &["--config", file, "--bind", &flag_bind],
            &[("VIBEMQ_SERVER_BIND", &env_bind)],
            &all
        )
        .await,
        flag_port
    );
    // No file at all: the embedded defaults plus the environment.
    let p = free_port();
    let bind = format!("127.0.0.1:{p}");
    assert_eq!(
        listening_port(&[], &[("VIBEMQ_SERVER_BIND", &bind)], &[p]).await,
        p
    );
}

#[tokio::test]
async fn sigterm_tells_v5_clients_and_exits_cleanly() {
    use common::RawClient;
    use vibemq::codec::{Protocol, reason};
    let mut b = common::process::BrokerProcess::start(&[]).await;
    let mut client = RawClient::connect(b.addr, Protocol::V5, "stays", true).await;
    let pid = b.child.id().expect("running").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    assert_eq!(
        client.expect_closed().await,
        Some(reason::SERVER_SHUTTING_DOWN)
    );
    let exit = tokio::time::timeout(Duration::from_secs(15), b.child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

/// Started under a low soft open-file limit (a container's usual 1,024, here 256), the binary
/// raises it to the hard limit, says so, and warns when even that is below
/// `server.max_connections` plus its own files.
#[test]
fn start_up_raises_the_open_file_limit_and_warns_when_it_is_too_low() {
    use std::io::{BufRead, BufReader};
    let (_, hard) = rlimit::Resource::NOFILE.get().expect("read the limit");
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(1 << 20);
    let expected = hard.min(nr_open);
    let bin = env!("CARGO_BIN_EXE_vibemq");
    let script = format!("ulimit -Sn 256 && exec {bin} --bind 127.0.0.1:0");
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .env("VIBEMQ_HTTP_BIND", "127.0.0.1:0")
        // More connections than any limit can hold: the warning must come.
        .env("VIBEMQ_SERVER_MAX_CONNECTIONS", (expected + 1).to_string())
        .env("VIBEMQ_LOG_FORMAT", "text")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start vibemq");
    let pid = child.id();
    // The log goes to stdout or stderr depending on the format: read both, bounded.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut log = Vec::new();
    while !log.iter().any(|l: &String| l.contains("VibeMQ started")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => break,
        }
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let log = log.join("\n");
    assert!(log.contains("VibeMQ started"), "did not start: {log}");
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("limits listed");
    let soft: u64 = open_files
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(soft, expected, "{open_files}");
    assert!(
        log.contains("raised the open-file limit") && log.contains("from=256"),
        "{log}"
    );
    assert!(
        log.contains("the open-file limit is below server.max_connections"),
        "{log}"
    );
}
