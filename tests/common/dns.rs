//! A real DNS server for discovery tests: dnsmasq on a loopback port, answering from a hosts
//! file the test edits (SIGHUP makes it re-read), with no upstream and no system files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct Dnsmasq {
    pub addr: SocketAddr,
    hosts: PathBuf,
    child: Child,
}

impl Dnsmasq {
    pub async fn start(records: &[(&str, &str)]) -> Dnsmasq {
        let port = super::process::free_port();
        let dir = std::env::temp_dir().join(format!("vibemq-dns-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts = dir.join("hosts");
        write_hosts(&hosts, records);
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--conf-file=/dev/null",
                "--pid-file=",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--user=root",
                "--local-ttl=0",
                &format!("--port={port}"),
                &format!("--addn-hosts={}", hosts.display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("dnsmasq is installed (scripts/test.sh installs dnsmasq-base)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Ready when it answers over TCP.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "dnsmasq did not start on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Dnsmasq { addr, hosts, child }
    }

    /// Replaces the records and makes dnsmasq re-read them.
    pub fn set_records(&self, records: &[(&str, &str)]) {
        write_hosts(&self.hosts, records);
        let pid = self.child.id().expect("dnsmasq running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn write_hosts(path: &PathBuf, records: &[(&str, &str)]) {
    let text: String = records
        .iter()
        .map(|(ip, name)| format!("{ip} {name}\n"))
        .collect();
    std::fs::write(path, text).unwrap();
}
