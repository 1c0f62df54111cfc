//! The MQTT listeners beyond plain TCP, with real clients: paho-mqtt's websockets transport
//! over ws and wss meeting mosquitto clients on TCP; MQTT packets that span WebSocket
//! messages and messages that hold several packets (MQTT-6.0.0-2/3), a text message closing
//! the connection (MQTT-6.0.0-1); listeners turned off with ""; and the PROXY protocol
//! behind a real HAProxy, whose v1 and v2 headers give the broker the client's own address
//! for the per-IP limit.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::certs::{make_ca, make_cert, scratch};
use common::process::{BrokerProcess, free_port, run, spawn, wait_port_open};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use vibemq::codec::{
    Connect, Packet, Properties, Protocol, Publish, QoS, Subscribe, SubscriptionOptions,
    decode_packet, encode_packet,
};
use vibemq::config::ListenerKind;

const LIMIT: Duration = Duration::from_secs(20);

const PAHO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/paho_client.py");

/// The paho-mqtt helper (tests/clients/paho_client.py) with these arguments, running.
fn paho(args: &[&str]) -> Child {
    let mut all = vec![PAHO];
    all.extend_from_slice(args);
    spawn("python3", &all)
}

/// The same run to its end within `LIMIT`; its output.
async fn paho_run(args: &[&str]) -> String {
    let mut all = vec![PAHO];
    all.extend_from_slice(args);
    run("python3", &all, LIMIT).await
}

/// One QoS 1 publish of `size` bytes ("x"...) by paho over wss (trusting `ca`); its output.
async fn paho_wss_pub(port: &str, ca: &str, topic: &str, size: &str) -> String {
    paho_run(&[
        "pub",
        "--host",
        "localhost",
        "--port",
        port,
        "--transport",
        "websockets",
        "--ca",
        ca,
        "--topic",
        topic,
        "--size",
        size,
    ])
    .await
}

/// Waits for the next line of a child's output, failing with its stderr if it ends first.
async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(LIMIT, lines.next_line())
        .await
        .expect("a line in time")
        .expect("readable")
        .expect("the client is still running")
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

async fn metrics(http: u16) -> String {
    common::http::get(format!("127.0.0.1:{http}").parse().unwrap(), "/metrics")
        .await
        .1
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("vibemq.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().to_string()
}

#[tokio::test]
async fn paho_over_websocket_and_secure_websocket_meets_tcp_clients() {
    let dir = scratch("ws");
    make_ca(&dir, "ca").await;
    make_cert(&dir, "server", "ca").await;
    let (ws, wss, http) = (free_port(), free_port(), free_port());
    let p = |f: &str| dir.join(f).to_string_lossy().to_string();
    let config = write_config(
        &dir,
        &format!(
            // A WebSocket listener is never "local" for anonymous clients (browsers and reverse
            // proxies reach in there): admitted in words.
            "[server]\nws_bind = \"127.0.0.1:{ws}\"\nwss_bind = \"127.0.0.1:{wss}\"\n\n\
             [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n[auth]\nallow_anonymous = true\n",
            p("server.pem"),
            p("server.key")
        ),
    );
    let http_bind = format!("127.0.0.1:{http}");
    let b = BrokerProcess::start(&["--config", &config, "--http-bind", &http_bind]).await;
    wait_port_open(ws).await;
    wait_port_open(wss).await;
    let (ws_s, wss_s, ca) = (ws.to_string(), wss.to_string(), p("ca.pem"));

    // An MQTT 5 subscriber over ws gets a TCP publish and a 300 KB publish over wss (one
    // packet larger than any single read, carried in several WebSocket frames by paho).
    let mut sub = paho(&[
        "sub",
        "--port",
        &ws_s,
        "--transport",
        "websockets",
        "--v5",
        "--topic",
        "web/#",
        "--count",
        "2",
    ]);
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    assert_eq!(next_line(&mut lines).await, "ready");
    run(
        "mosquitto_pub",
        &["-p", &b.port(), "-t", "web/a", "-m", "from-tcp", "-q", "1"],
        LIMIT,
    )
    .await;
    assert_eq!(next_line(&mut lines).await, "8 from-tcp");
    let published = paho_wss_pub(&wss_s, &ca, "web/big", "300000").await;
    assert_eq!(published.trim(), "published");
    let big = next_line(&mut lines).await;
    assert!(big.starts_with("300000 xxxx"), "{big}");
    let status = tokio::time::timeout(LIMIT, sub.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    // A TCP subscriber gets what an MQTT 3.1.1 client publishes over wss.
    let tcp_sub = spawn(
        "mosquitto_sub",
        &["-p", &b.port(), "-t", "web/+", "-C", "1", "-W", "10"],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    paho_wss_pub(&wss_s, &ca, "web/small", "5").await;
    let out = tokio::time::timeout(LIMIT, tcp_sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "xxxxx");

    // Another path, and plain WebSocket on the wss port, are refused and counted.
    let before = metric(
        &metrics(http).await,
        "vibemq_websocket_upgrade_failures_total",
    );
    let wrong = paho(&[
        "hold",
        "--port",
        &ws_s,
        "--transport",
        "websockets",
        "--path",
        "/other",
        "--timeout",
        "3",
    ]);
    let out = tokio::time::timeout(LIMIT, wrong.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !out.status.success(),
        "a WebSocket at /other must be refused"
    );
    let after = metric(
        &metrics(http).await,
        "vibemq_websocket_upgrade_failures_total",
    );
    assert_eq!(after, before + 1.0);
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A WebSocket client at the frame level (tokio-tungstenite), for what paho never does.
async fn ws_client(
    addr: std::net::SocketAddr,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("ws://{addr}/mqtt").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (ws, response) = tokio::time::timeout(LIMIT, tokio_tungstenite::client_async(request, tcp))
        .await
        .expect("upgrade in time")
        .expect("upgraded");
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "mqtt"
    );
    ws
}

fn bytes_of(packets: &[Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for p in packets {
        encode_packet(p, Protocol::V5, &mut out);
    }
    out.to_vec()
}

/// Reads binary messages until `count` packets have arrived, whatever their framing.
async fn read_packets(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    count: usize,
) -> Vec<Packet> {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    while packets.len() < count {
        while let Some(p) = decode_packet(&mut buf, Some(Protocol::V5), 1 << 20).unwrap() {
            packets.push(p);
        }
        if packets.len() >= count {
            break;
        }
        match tokio::time::timeout(LIMIT, ws.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
    packets
}

#[tokio::test]
async fn mqtt_packets_span_websocket_messages_and_listeners_turn_off() {
    // Only the WebSocket listener: server.bind = "" turns TCP off.
    let node = common::start(|c| {
        c.server.bind = String::new();
        c.server.ws_bind = "127.0.0.1:0".into();
        c.auth.allow_anonymous = "true".into();
    })
    .await;
    assert_eq!(node.listener_addr(ListenerKind::Tcp), None);
    let addr = node.listener_addr(ListenerKind::WebSocket).expect("ws on");

    let mut ws = ws_client(addr).await;
    let connect = bytes_of(&[Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: "ws-frames".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }))]);
    // CONNECT split across three messages, the cut inside the fixed header.
    ws.send(Message::Binary(Bytes::copy_from_slice(&connect[..1])))
        .await
        .unwrap();
    ws.send(Message::Binary(Bytes::copy_from_slice(&connect[1..5])))
        .await
        .unwrap();
    ws.send(Message::Binary(Bytes::copy_from_slice(&connect[5..])))
        .await
        .unwrap();
    let ack = read_packets(&mut ws, 1).await;
    assert!(
        matches!(&ack[0], Packet::ConnAck(a) if a.code == 0),
        "{ack:?}"
    );
    // SUBSCRIBE and a PUBLISH to it in one message, then the echo.
    let both = bytes_of(&[
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![("ws/+".into(), SubscriptionOptions::default())],
            properties: Properties::default(),
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "ws/one".into(),
            packet_id: 0,
            payload: Bytes::from_static(b"together"),
            properties: Properties::default(),
        }),
    ]);
    ws.send(Message::Binary(both.into())).await.unwrap();
    let got = read_packets(&mut ws, 2).await;
    assert!(matches!(&got[0], Packet::SubAck(_)), "{got:?}");
    match &got[1] {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"together"),
        other => panic!("expected the publish, got {other:?}"),
    }
    // A text message is a protocol error: the connection closes.
    ws.send(Message::Text("hello".into())).await.unwrap();
    let end = tokio::time::timeout(LIMIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        end.is_ok(),
        "the connection must close after a text message"
    );
    node.shutdown(Duration::from_secs(2)).await;

    // Every listener off is a configuration error naming the key.
    let mut config = vibemq::Config::default_config();
    config.server.bind = String::new();
    let e = vibemq::Node::start(config).await.err().expect("refused");
    assert!(e.to_string().starts_with("server.bind"), "{e}");
}

/// HAProxy in TCP mode on two loopback ports, sending PROXY v2 and v1 headers to `broker`.
fn haproxy(dir: &Path, v2: u16, v1: u16, broker: u16) -> Child {
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 100\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
             timeout client 30s\n  timeout server 30s\n\n\
             frontend v2\n  bind 127.0.0.1:{v2}\n  default_backend send_v2\n\
             backend send_v2\n  server broker 127.0.0.1:{broker} send-proxy-v2\n\n\
             frontend v1\n  bind 127.0.0.1:{v1}\n  default_backend send_v1\n\
             backend send_v1\n  server broker 127.0.0.1:{broker} send-proxy\n"
        ),
    )
    .unwrap();
    tokio::process::Command::new("haproxy")
        .args(["-db", "-f", &config.to_string_lossy()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy (scripts/test.sh installs it)")
}

/// paho through `port` from the source address `from`; the CONNACK's reason, the client
/// staying connected `seconds`.
async fn hold_from(port: u16, from: &str, id: &str, seconds: &str) -> (Child, String) {
    let port = port.to_string();
    let mut child = paho(&[
        "hold",
        "--port",
        &port,
        "--bind",
        from,
        "--id",
        id,
        "--v5",
        "--seconds",
        seconds,
    ]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = next_line(&mut lines).await;
    (child, line)
}

#[tokio::test]
async fn proxy_protocol_behind_haproxy_gives_the_client_address() {
    let dir = scratch("proxy");
    let http = free_port();
    let config = write_config(
        &dir,
        // Behind the PROXY protocol the clients are remote whatever the listener's address:
        // anonymous ones only when the configuration says so.
        "[server]\nproxy_protocol = true\nmax_connections_per_ip = 1\n[auth]\nallow_anonymous = true\n",
    );
    let http_bind = format!("127.0.0.1:{http}");
    let b = BrokerProcess::start(&["--config", &config, "--http-bind", &http_bind]).await;
    let (v2, v1) = (free_port(), free_port());
    let _haproxy = haproxy(&dir, v2, v1, b.addr.port());
    wait_port_open(v2).await;
    wait_port_open(v1).await;

    // Through PROXY v2 from 127.0.0.5: connected, and the broker knows the address.
    let (_first, line) = hold_from(v2, "127.0.0.5", "behind-v2", "8").await;
    assert_eq!(line, "connected Success");
    let (_, clients) = common::http::get(http_bind.parse().unwrap(), "/api/v1/clients").await;
    assert!(clients.contains("\"127.0.0.5:"), "{clients}");
    // Through PROXY v1 from 127.0.0.6: its own address, so the per-IP limit of 1 admits it
    // although every connection reaches the broker from HAProxy's 127.0.0.1.
    let (_second, line) = hold_from(v1, "127.0.0.6", "behind-v1", "8").await;
    assert_eq!(line, "connected Success");
    // A second client from 127.0.0.5 is over that limit.
    let (_third, line) = hold_from(v2, "127.0.0.5", "behind-v2-again", "1").await;
    assert_eq!(line, "connected Quota exceeded");

    // Straight to the broker without a header: closed and counted.
    let before = metric(&metrics(http).await, "vibemq_proxy_header_failures_total");
    let out = tokio::process::Command::new("mosquitto_pub")
        .args(["-p", &b.port(), "-t", "x", "-m", "y"])
        .output();
    let out = tokio::time::timeout(LIMIT, out).await.unwrap().unwrap();
    assert!(!out.status.success());
    let after = metric(&metrics(http).await, "vibemq_proxy_header_failures_total");
    assert!(after > before, "{before} -> {after}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The HTTP status of a WebSocket upgrade at `addr` sent with `origin` (None: no Origin
/// header, as clients that are not browsers send it).
async fn upgrade_status(addr: std::net::SocketAddr, origin: Option<&str>) -> u16 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("ws://{addr}/mqtt").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    if let Some(o) = origin {
        request.headers_mut().insert("Origin", o.parse().unwrap());
    }
    match tokio::time::timeout(LIMIT, tokio_tungstenite::client_async(request, tcp))
        .await
        .expect("an answer in time")
    {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("upgrade: {e}"),
    }
}

#[tokio::test]
async fn a_browser_from_an_origin_not_listed_cannot_open_a_websocket() {
    // The Origin header is what a browser sends with every WebSocket a page opens.
    let node = common::start(|c| {
        c.server.ws_bind = "127.0.0.1:0".into();
        c.server.ws_allowed_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let addr = node.listener_addr(ListenerKind::WebSocket).expect("ws on");
    assert_eq!(
        upgrade_status(addr, Some("https://evil.example")).await,
        403
    );
    assert_eq!(
        upgrade_status(addr, Some("https://app.example.com")).await,
        101
    );
    assert_eq!(upgrade_status(addr, None).await, 101, "not a browser");
    // The refusal is counted (once the upgrade's task has seen it fail).
    let counted = || {
        node.broker()
            .metrics
            .websocket_upgrade_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = tokio::time::Instant::now() + LIMIT;
    while counted() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counted(), 1);
    // The control: the default (no list) lets any page's browser in.
    let open = common::start(|c| c.server.ws_bind = "127.0.0.1:0".into()).await;
    let addr = open.listener_addr(ListenerKind::WebSocket).expect("ws on");
    assert_eq!(
        upgrade_status(addr, Some("https://evil.example")).await,
        101
    );
}
