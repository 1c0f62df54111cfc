//! Test helpers: an in-process node on an ephemeral loopback port, a raw MQTT client that
//! speaks through the crate's codec (for byte-exact and malformed-input cases), and rumqttc
//! clients whose incoming publishes arrive on a channel. Every wait is bounded.
#![allow(dead_code)]

pub mod certs;
pub mod cluster;
pub mod dns;
pub mod http;
pub mod keeper;
pub mod nodes;
pub mod process;
pub mod proxy;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vibemq::Config;
use vibemq::codec::{
    ConnAck, Connect, Packet, Properties, Protocol, Publish, QoS, Subscribe, SubscriptionOptions,
    decode_packet, encode_packet,
};

pub const WAIT: Duration = Duration::from_secs(5);

/// Starts a node on 127.0.0.1 with an ephemeral port; `edit` adjusts the default config.
pub async fn start(edit: impl FnOnce(&mut Config)) -> vibemq::Node {
    let mut config = Config::default_config();
    config.server.bind = "127.0.0.1:0".parse().unwrap();
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    // $SYS figures are retained messages: off unless a test is about them.
    config.mqtt.sys_interval = 0;
    edit(&mut config);
    vibemq::Node::start(config).await.expect("node starts")
}

pub struct RawClient {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub protocol: Protocol,
}

pub fn connect_packet(protocol: Protocol, client_id: &str, clean_start: bool) -> Connect {
    Connect {
        protocol,
        clean_start,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

impl RawClient {
    pub async fn open(addr: SocketAddr, protocol: Protocol) -> RawClient {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .unwrap();
        RawClient {
            stream,
            buf: BytesMut::new(),
            protocol,
        }
    }

    /// Opens a connection, sends `connect` and returns the CONNACK.
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
        let mut c = RawClient::open(addr, connect.protocol).await;
        c.send(&Packet::Connect(Box::new(connect))).await;
        match c.recv().await {
            Packet::ConnAck(ack) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and asserts success.
    pub async fn connect(
        addr: SocketAddr,
        protocol: Protocol,
        client_id: &str,
        clean_start: bool,
    ) -> RawClient {
        let (c, ack) =
            RawClient::connect_with(addr, connect_packet(protocol, client_id, clean_start)).await;
        assert_eq!(ack.code, 0, "CONNACK code for {client_id}");
        c
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        encode_packet(packet, self.protocol, &mut out);
        self.send_raw(&out).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Next packet, or None if the broker closed the connection; panics after `WAIT`.
    pub async fn try_recv(&mut self) -> Option<Packet> {
        self.try_recv_within(WAIT)
            .await
            .expect("a packet or a close within the wait")
    }

    /// Next packet within `wait`: Err on timeout, Ok(None) when closed.
    pub async fn try_recv_within(&mut self, wait: Duration) -> Result<Option<Packet>, ()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(p) = decode_packet(&mut self.buf, Some(self.protocol), usize::MAX)
                .expect("broker sends valid packets")
            {
                return Ok(Some(p));
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    pub async fn recv(&mut self) -> Packet {
        self.try_recv().await.expect("connection open")
    }

    /// Asserts the broker sends nothing for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(p) = self.try_recv_within(wait).await {
            panic!("expected nothing, got {p:?}");
        }
    }

    /// Asserts the connection is closed (after an optional server DISCONNECT, returned).
    pub async fn expect_closed(&mut self) -> Option<u8> {
        match self.try_recv().await {
            None => None,
            Some(Packet::Disconnect(d)) => {
                assert!(
                    self.try_recv().await.is_none(),
                    "connection closed after DISCONNECT"
                );
                Some(d.reason)
            }
            Some(other) => panic!("expected close, got {other:?}"),
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<u8> {
        self.subscribe_with(
            filter,
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
            Properties::default(),
        )
        .await
    }

    pub async fn subscribe_with(
        &mut self,
        filter: &str,
        options: SubscriptionOptions,
        properties: Properties,
    ) -> Vec<u8> {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(filter.into(), options)],
            properties,
        }))
        .await;
        match self.recv().await {
            Packet::SubAck(s) => s.reason_codes,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        packet_id: u16,
    ) {
        self.publish_with(
            topic,
            payload,
            qos,
            retain,
            packet_id,
            Properties::default(),
        )
        .await
    }

    pub async fn publish_with(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        packet_id: u16,
        properties: Properties,
    ) {
        let p = Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id,
            payload: Bytes::copy_from_slice(payload),
            properties,
        };
        self.send(&Packet::Publish(p)).await;
    }

    /// Next PUBLISH (skipping nothing: any other packet fails the test).
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    pub async fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Default::default())).await;
        let _ = self.stream.shutdown().await;
    }
}

/// The next item within `WAIT`.
async fn next_from<T>(rx: &mut tokio::sync::mpsc::Receiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("publish in time")
        .expect("event loop alive")
}

/// Asserts nothing arrives within `wait`.
async fn none_from<T: std::fmt::Debug>(rx: &mut tokio::sync::mpsc::Receiver<T>, wait: Duration) {
    if let Ok(Some(p)) = tokio::time::timeout(wait, rx.recv()).await {
        panic!("expected no publish, got {p:?}");
    }
}

/// A rumqttc 3.1.1 client whose incoming publishes arrive on `rx`.
pub struct V4Client {
    pub client: rumqttc::AsyncClient,
    pub rx: tokio::sync::mpsc::Receiver<rumqttc::Publish>,
    pub ack: rumqttc::ConnAck,
    task: tokio::task::JoinHandle<()>,
}

impl V4Client {
    pub async fn connect(
        addr: SocketAddr,
        id: &str,
        clean: bool,
        edit: impl FnOnce(&mut rumqttc::MqttOptions),
    ) -> V4Client {
        let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_clean_session(clean);
        opts.set_keep_alive(Duration::from_secs(30));
        edit(&mut opts);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 100);
        let (tx, rx) = tokio::sync::mpsc::channel(10_000);
        let (ctx, mut connack) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        if tx.send(p).await.is_err() {
                            return;
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))) => {
                        let _ = ctx.send(a).await;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let ack = tokio::time::timeout(WAIT, connack.recv())
            .await
            .expect("CONNACK in time")
            .expect("CONNACK");
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
        V4Client {
            client,
            rx,
            ack,
            task,
        }
    }

    pub async fn next(&mut self) -> rumqttc::Publish {
        next_from(&mut self.rx).await
    }

    pub async fn expect_none(&mut self, wait: Duration) {
        none_from(&mut self.rx, wait).await
    }

    /// Ends the event loop without DISCONNECT (as if the network dropped).
    pub fn kill(self) {
        self.task.abort();
    }
}

/// A rumqttc 5.0 client whose incoming publishes arrive on `rx`.
pub struct V5Client {
    pub client: rumqttc::v5::AsyncClient,
    pub rx: tokio::sync::mpsc::Receiver<rumqttc::v5::mqttbytes::v5::Publish>,
    pub connack: rumqttc::v5::mqttbytes::v5::ConnAck,
    task: tokio::task::JoinHandle<()>,
}

impl V5Client {
    pub async fn connect(
        addr: SocketAddr,
        id: &str,
        clean: bool,
        edit: impl FnOnce(&mut rumqttc::v5::MqttOptions),
    ) -> V5Client {
        use rumqttc::v5::mqttbytes::v5::Packet as P5;
        let mut opts = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_clean_start(clean);
        opts.set_keep_alive(Duration::from_secs(30));
        edit(&mut opts);
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 100);
        let (tx, rx) = tokio::sync::mpsc::channel(10_000);
        let (ctx, mut crx) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(P5::Publish(p))) => {
                        if tx.send(p).await.is_err() {
                            return;
                        }
                    }
                    Ok(rumqttc::v5::Event::Incoming(P5::ConnAck(a))) => {
                        let _ = ctx.send(a).await;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let connack = tokio::time::timeout(WAIT, crx.recv())
            .await
            .expect("CONNACK in time")
            .expect("CONNACK");
        V5Client {
            client,
            rx,
            connack,
            task,
        }
    }

    pub async fn next(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        next_from(&mut self.rx).await
    }

    pub async fn expect_none(&mut self, wait: Duration) {
        none_from(&mut self.rx, wait).await
    }

    pub fn kill(self) {
        self.task.abort();
    }
}

/// Polls `check` every 10 ms until it holds, failing after `WAIT`.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts the broker still serves a fresh client within a second: it connects, subscribes
/// to a topic of its own, publishes to it at QoS 1 and gets both the PUBACK and the message.
pub async fn probe(addr: SocketAddr) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let id = format!(
        "probe-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let served = async {
        let mut c = RawClient::connect(addr, Protocol::V311, &id, true).await;
        let topic = format!("probe/{id}");
        assert_eq!(c.subscribe(&topic, QoS::AtLeastOnce).await, [1]);
        c.publish(&topic, b"alive", QoS::AtLeastOnce, false, 7)
            .await;
        let mut got = (false, false);
        while got != (true, true) {
            match c.recv().await {
                Packet::PubAck(_) => got.0 = true,
                Packet::Publish(p) => {
                    assert_eq!(&p.payload[..], b"alive");
                    got.1 = true;
                }
                other => panic!("probe got {other:?}"),
            }
        }
        c.disconnect().await;
    };
    tokio::time::timeout(Duration::from_secs(1), served)
        .await
        .expect("the broker serves a probe client within a second");
}

/// A SUBSCRIBE (packet id 1) for `filters`, all at `qos`.
pub fn subscribe_packet(filters: Vec<String>, qos: QoS) -> Packet {
    let options = SubscriptionOptions {
        qos,
        ..Default::default()
    };
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: filters.into_iter().map(|f| (f, options)).collect(),
        properties: Properties::default(),
    })
}

/// A PUBLISH with no properties.
pub fn publish_packet(topic: &str, payload: &[u8], qos: QoS, retain: bool, id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: id,
        payload: Bytes::copy_from_slice(payload),
        properties: Properties::default(),
    })
}

/// Stores `n` retained messages of `size` bytes on `r/0` … `r/{n-1}` (QoS 1, each acknowledged).
pub async fn retain_messages(c: &mut RawClient, n: u16, size: usize) {
    let payload = vec![b'x'; size];
    for i in 0..n {
        c.publish(&format!("r/{i}"), &payload, QoS::AtLeastOnce, true, i + 1)
            .await;
        assert!(matches!(c.recv().await, Packet::PubAck(_)));
    }
}
