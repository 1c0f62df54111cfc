//! The real `vibemq` binary as a child process, and the mosquitto command-line clients.
//! Missing mosquitto-clients fail the test with the fix; every command has a time limit.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A `vibemq` process on a free loopback port, killed when dropped.
pub struct BrokerProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

/// A loopback port free for TCP and UDP, for a process the test starts (which binds it
/// itself, maybe more than once across restarts). Taken below the kernel's ephemeral range
/// (32768 and up by default), where the outgoing connections of tests running alongside
/// cannot take it between this check and the bind (that race made a node fail to start with
/// "Address already in use"); each test process starts at its own place in the range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let start = (std::process::id() % 700) * 31;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {}", FIRST + SPAN);
}

impl BrokerProcess {
    pub async fn start(extra_args: &[&str]) -> BrokerProcess {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // An ephemeral HTTP port unless the caller names one.
        let http: &[&str] = if extra_args.contains(&"--http-bind") {
            &[]
        } else {
            &["--http-bind", "127.0.0.1:0"]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_vibemq"))
            .args(["--bind", &addr.to_string(), "--log-level", "warn"])
            .args(http)
            .args(extra_args)
            .kill_on_drop(true)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vibemq");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "vibemq did not start listening on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        BrokerProcess { child, addr }
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }
}

/// Waits (at most 10 s) until a TCP port on loopback accepts connections.
pub async fn wait_port_open(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "port {port} not open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a mosquitto client (or any command) to completion within `limit`; returns stdout.
pub async fn run(program: &str, args: &[&str], limit: Duration) -> String {
    let child = spawn(program, args);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {limit:?}"))
        .expect("wait");
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Starts a long-running client; the caller reads or kills it.
pub fn spawn(program: &str, args: &[&str]) -> Child {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e}. Install mosquitto-clients (scripts/test.sh does).")
        })
}
