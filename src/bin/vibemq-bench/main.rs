//! vibemq-bench: an MQTT load generator (in the manner of emqtt-bench) for VibeMQ, mosquitto or
//! any broker. Modes: `conn` (open and hold connections), `pub`, `sub`, `pubsub` (end-to-end
//! latency from a timestamp in the payload, loss and duplicates from per-publisher sequence
//! numbers) and `route` (time from SUBACK on one node until a publish on another arrives).
//! It speaks MQTT through VibeMQ's own codec over plain sockets, so it stays cheap next to
//! the broker it measures. The last line of `--json` output is one JSON object for scripts.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use tokio::io::AsyncReadExt;
use vibemq::codec::{Packet, Properties, Protocol, QoS};

mod conn;
mod pubsub;
use conn::Conn;
use pubsub::pubsub_mode;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Mode {
    Conn,
    Pub,
    Sub,
    Pubsub,
    Route,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "vibemq-bench",
    version,
    about = "MQTT load generator: throughput, latency, loss, connections"
)]
struct Opts {
    mode: Mode,
    /// Broker address(es), comma-separated; clients are spread over them.
    #[arg(long, default_value = "127.0.0.1:1883")]
    host: String,
    /// Addresses for publishers (default: --host).
    #[arg(long)]
    pub_host: Option<String>,
    /// Addresses for subscribers (default: --host).
    #[arg(long)]
    sub_host: Option<String>,
    /// Connections for `conn` mode.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// Topic pattern; %i is the client index, %m the message's sequence number modulo
    /// --subscribers (messages spread round robin over subscribers of `x/%i`: with `x/%m` and
    /// --rate N, each of N subscribers gets 1 msg/s), %n the message's sequence number (a topic per
    /// message, e.g. to fill the retained store).
    #[arg(long, default_value = "bench/%i")]
    topic: String,
    /// Publish with the RETAIN flag.
    #[arg(long)]
    retain: bool,
    /// Subscription filter pattern (default: --topic); %i is the subscriber index.
    #[arg(long)]
    sub_topic: Option<String>,
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Payload bytes (at least 20: timestamp, publisher, sequence).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages per second per publisher; 0 is unlimited.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds to publish (or hold connections).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Messages per publisher; stops before --duration when reached.
    #[arg(long)]
    count: Option<u64>,
    /// QoS 1/2 messages a publisher keeps unacknowledged.
    #[arg(long, default_value_t = 100)]
    inflight: usize,
    /// MQTT version: 3.1.1 or 5.
    #[arg(long, default_value = "3.1.1")]
    protocol: String,
    /// Connections opened per second (conn mode and all clients); 0 is unlimited.
    #[arg(long, default_value_t = 0.0)]
    connect_rate: f64,
    /// Start persistent sessions (clean start off).
    #[arg(long)]
    persistent: bool,
    /// Rounds for `route` mode.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Seconds to wait for late deliveries after publishing stops.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Extra MQTT 5 subscribers to the first subscriber's filter with Receive Maximum 1,
    /// each acknowledging one message every --slow-ack-ms: slow consumers, kept out of the
    /// received and lost figures (reported as slow_received).
    #[arg(long, default_value_t = 0)]
    slow_subscribers: usize,
    #[arg(long, default_value_t = 1500)]
    slow_ack_ms: u64,
    /// Local addresses to connect from, round robin: a range (127.0.0.2-127.0.0.20) or a
    /// comma-separated list. Each source address has its own ephemeral ports, so many
    /// addresses get past the ~28,000 connections one address allows to one broker port.
    #[arg(long)]
    source_ips: Option<String>,
    /// Print a JSON summary as the last line.
    #[arg(long)]
    json: bool,
}

const HEADER: usize = 20;

struct Shared {
    start: Instant,
    sent: AtomicU64,
    received: AtomicU64,
    connected: AtomicU64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

fn hosts(list: &str) -> Vec<SocketAddr> {
    list.split(',')
        .map(|h| {
            use std::net::ToSocketAddrs;
            h.trim()
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .unwrap_or_else(|| {
                    eprintln!("vibemq-bench: cannot resolve {h}");
                    std::process::exit(2)
                })
        })
        .collect()
}

/// `127.0.0.2-127.0.0.20` (IPv4, last octet ranging) or `a,b,c`.
fn source_ips(list: &str) -> Result<Vec<std::net::IpAddr>, String> {
    use std::net::{IpAddr, Ipv4Addr};
    let parse = |s: &str| s.trim().parse::<IpAddr>().map_err(|e| format!("{s}: {e}"));
    if let Some((from, to)) = list.split_once('-') {
        let (IpAddr::V4(from), IpAddr::V4(to)) = (parse(from)?, parse(to)?) else {
            return Err("a range is IPv4 only".into());
        };
        let (a, b) = (u32::from(from), u32::from(to));
        if b < a || b - a > 65_536 {
            return Err(format!(
                "{from}-{to} is not a range of at most 65,537 addresses"
            ));
        }
        return Ok((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))).collect());
    }
    list.split(',').map(parse).collect()
}

fn pattern(p: &str, i: usize) -> String {
    p.replace("%i", &i.to_string())
}

async fn pace_connect(opts: &Opts, index: usize, start: Instant) {
    if opts.connect_rate > 0.0 {
        let at = start + Duration::from_secs_f64(index as f64 / opts.connect_rate);
        tokio::time::sleep_until(at.into()).await;
    }
}

fn protocol(p: &str) -> Protocol {
    match p {
        "5" | "5.0" | "v5" => Protocol::V5,
        _ => Protocol::V311,
    }
}

fn cpu_seconds() -> f64 {
    // utime + stime from /proc/self/stat, in clock ticks (100 per second on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

fn progress(shared: &Arc<Shared>, stop: Arc<AtomicBool>) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut last = 0;
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let r = shared.received.load(Ordering::Relaxed);
            eprint!(
                "\r  received {r:>10}  {:>9} msg/s  connections {:>6}   ",
                r - last,
                shared.connected.load(Ordering::Relaxed)
            );
            last = r;
        }
        eprintln!();
    });
}

#[tokio::main]
async fn main() {
    let opts = Arc::new(Opts::parse());
    if let Some(list) = &opts.source_ips {
        match source_ips(list) {
            Ok(ips) => conn::set_sources(ips),
            Err(e) => {
                eprintln!("vibemq-bench: --source-ips: {e}");
                std::process::exit(2)
            }
        }
    }
    let shared = Arc::new(Shared {
        start: Instant::now(),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        connected: AtomicU64::new(0),
    });
    let cpu_before = cpu_seconds();
    let summary = match opts.mode {
        Mode::Conn => conn_mode(&opts, &shared).await,
        Mode::Route => route_mode(&opts).await,
        Mode::Pub | Mode::Sub | Mode::Pubsub => pubsub_mode(&opts, &shared).await,
    };
    let mut summary = summary;
    summary["bench_cpu_seconds"] =
        serde_json::json!(((cpu_seconds() - cpu_before) * 100.0).round() / 100.0);
    print_summary(&summary);
    if opts.json {
        println!("{summary}");
    }
}

fn print_summary(s: &serde_json::Value) {
    let mut lines = Vec::new();
    if let Some(obj) = s.as_object() {
        for (k, v) in obj {
            lines.push(format!("  {k:<20} {v}"));
        }
    }
    eprintln!("{}", lines.join("\n"));
}

async fn conn_mode(opts: &Arc<Opts>, shared: &Arc<Shared>) -> serde_json::Value {
    let addrs = hosts(&opts.host);
    let stop = Arc::new(AtomicBool::new(false));
    progress(shared, stop.clone());
    let start = Instant::now();
    let mut tasks = Vec::new();
    let failures = Arc::new(AtomicU64::new(0));
    let hold = Duration::from_secs_f64(opts.duration);
    for i in 0..opts.clients {
        let (opts, shared, failures) = (opts.clone(), shared.clone(), failures.clone());
        let addr = addrs[i % addrs.len()];
        tasks.push(tokio::spawn(async move {
            pace_connect(&opts, i, start).await;
            match Conn::open(
                addr,
                protocol(&opts.protocol),
                format!("bench-conn-{i}"),
                !opts.persistent,
            )
            .await
            {
                Ok(mut c) => {
                    shared.connected.fetch_add(1, Ordering::Relaxed);
                    let until = start
                        + hold
                        + Duration::from_secs_f64(opts.clients as f64 / opts.connect_rate.max(1e9));
                    let mut buf = [0u8; 64];
                    let _ = tokio::time::timeout_at(until.into(), c.stream.read(&mut buf)).await;
                }
                Err(_) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Report the peak: once every connection is open (or failed), hold for the duration.
    let all_open = async {
        while shared.connected.load(Ordering::Relaxed) + failures.load(Ordering::Relaxed)
            < opts.clients as u64
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(600), all_open).await;
    let connect_secs = start.elapsed().as_secs_f64();
    if opts.json {
        // Scripts measure the broker while the connections are held: say they are open.
        eprintln!("all connections open");
    }
    tokio::time::sleep(hold).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    serde_json::json!({
        "mode": "conn",
        "connected": shared.connected.load(Ordering::Relaxed),
        "failed": failures.load(Ordering::Relaxed),
        "connect_seconds": (connect_secs * 1000.0).round() / 1000.0,
    })
}

/// Rounds of: subscribe on --sub-host, and from the SUBACK on, publish on --pub-host every
/// millisecond until the subscriber gets one. Measures how fast a new route takes effect.
async fn route_mode(opts: &Arc<Opts>) -> serde_json::Value {
    let pub_addr = hosts(opts.pub_host.as_deref().unwrap_or(&opts.host))[0];
    let sub_addr = hosts(opts.sub_host.as_deref().unwrap_or(&opts.host))[0];
    let proto = protocol(&opts.protocol);
    let mut publisher = Conn::open(pub_addr, proto, "bench-route-pub".into(), true)
        .await
        .expect("publisher connects");
    let mut histogram: Histogram<u64> =
        Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut failed = 0;
    let run = format!("{:x}", std::process::id());
    for round in 0..opts.rounds {
        let topic = format!("route/{run}/{round}");
        let mut sub = Conn::open(sub_addr, proto, format!("bench-route-sub-{round}"), true)
            .await
            .expect("subscriber connects");
        sub.subscribe(&topic, QoS::AtMostOnce)
            .await
            .expect("subscribed");
        let suback = Instant::now();
        let got = async {
            loop {
                let p = Packet::Publish(vibemq::codec::Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic: topic.clone(),
                    packet_id: 0,
                    payload: Bytes::from_static(b"r"),
                    properties: Properties::default(),
                });
                publisher.send(&p).await.expect("publish");
                if let Ok(Ok(Packet::Publish(_))) =
                    tokio::time::timeout(Duration::from_millis(1), sub.recv()).await
                {
                    return suback.elapsed();
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), got).await {
            Ok(d) => {
                let _ = histogram.record((d.as_micros() as u64).max(1));
            }
            Err(_) => failed += 1,
        }
    }
    serde_json::json!({
        "mode": "route",
        "rounds": opts.rounds,
        "failed": failed,
        "route_us": {
            "p50": histogram.value_at_quantile(0.5), "p99": histogram.value_at_quantile(0.99),
            "max": histogram.max(),
        },
    })
}
