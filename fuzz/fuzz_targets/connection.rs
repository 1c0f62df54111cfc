//! A whole client connection against a node: a CONNECT, then a sequence of packets, some
//! valid, some mutated, some raw bytes, written into the same connection task the TCP
//! listener runs (over an in-memory pipe). After each input the node must not have panicked
//! (a panic aborts the fuzzer, also inside tasks) and must still serve a probe client.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use vibemq::broker::Broker;
use vibemq::codec::{
    Ack, Connect, Disconnect, Packet, Properties, Protocol, Publish, QoS, Subscribe,
    SubscriptionOptions, Unsubscribe, Will, decode_packet, encode_packet,
};

#[derive(Debug, Arbitrary)]
struct Input {
    v5: bool,
    clean_start: bool,
    client: u8,
    will: Option<(u8, bool)>,
    receive_maximum: Option<u16>,
    session_expiry: Option<u8>,
    ops: Vec<Op>,
}

#[derive(Debug, Arbitrary)]
enum Op {
    Publish {
        topic: u8,
        qos: u8,
        retain: bool,
        id: u16,
        payload: Vec<u8>,
        alias: Option<u16>,
    },
    Subscribe {
        filters: Vec<(u8, u8)>,
        id: u16,
    },
    Unsubscribe {
        filters: Vec<u8>,
        id: u16,
    },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Ping,
    Disconnect(u8),
    /// A valid packet with one byte changed.
    Mutated {
        op: Box<Op>,
        at: u16,
        byte: u8,
    },
    Raw(Vec<u8>),
}

/// A small vocabulary, so that publishes meet subscriptions and retained messages.
const TOPICS: [&str; 8] = ["a", "a/b", "a/b/c", "$SYS/x", "t/1", "/", "a//b", "x"];
const FILTERS: [&str; 10] = [
    "#",
    "a/#",
    "+/b",
    "a/+/c",
    "t/+",
    "$share/g/a/#",
    "$SYS/#",
    "a+",
    "",
    "+",
];

fn protocol(v5: bool) -> Protocol {
    if v5 { Protocol::V5 } else { Protocol::V311 }
}

fn packet(op: &Op) -> Option<Packet> {
    let id = |i: u16| i.max(1);
    Some(match op {
        Op::Publish {
            topic,
            qos,
            retain,
            id: pid,
            payload,
            alias,
        } => {
            let qos = QoS::from_u8(qos % 3).unwrap();
            Packet::Publish(Publish {
                dup: false,
                qos,
                retain: *retain,
                topic: TOPICS[*topic as usize % TOPICS.len()].into(),
                packet_id: if qos == QoS::AtMostOnce { 0 } else { id(*pid) },
                payload: Bytes::copy_from_slice(&payload[..payload.len().min(2048)]),
                properties: Properties {
                    topic_alias: *alias,
                    ..Properties::default()
                },
            })
        }
        Op::Subscribe { filters, id: pid } if !filters.is_empty() => Packet::Subscribe(Subscribe {
            packet_id: id(*pid),
            filters: filters
                .iter()
                .take(16)
                .map(|(f, o)| {
                    let options = SubscriptionOptions {
                        qos: QoS::from_u8(o % 3).unwrap(),
                        no_local: o & 4 != 0,
                        retain_as_published: o & 8 != 0,
                        retain_handling: (o >> 4) % 3,
                    };
                    (FILTERS[*f as usize % FILTERS.len()].to_string(), options)
                })
                .collect(),
            properties: Properties::default(),
        }),
        Op::Unsubscribe { filters, id: pid } if !filters.is_empty() => {
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id(*pid),
                filters: filters
                    .iter()
                    .take(16)
                    .map(|f| FILTERS[*f as usize % FILTERS.len()].to_string())
                    .collect(),
                properties: Properties::default(),
            })
        }
        Op::PubAck(i) => Packet::PubAck(Ack::new(id(*i), 0)),
        Op::PubRec(i) => Packet::PubRec(Ack::new(id(*i), 0)),
        Op::PubRel(i) => Packet::PubRel(Ack::new(id(*i), 0)),
        Op::PubComp(i) => Packet::PubComp(Ack::new(id(*i), 0)),
        Op::Ping => Packet::PingReq,
        Op::Disconnect(r) => Packet::Disconnect(Disconnect {
            reason: *r,
            ..Default::default()
        }),
        _ => return None,
    })
}

fn encode(op: &Op, protocol: Protocol, out: &mut BytesMut) {
    match op {
        Op::Raw(bytes) => out.extend_from_slice(&bytes[..bytes.len().min(4096)]),
        Op::Mutated { op, at, byte } => {
            let start = out.len();
            encode(op, protocol, out);
            let len = out.len() - start;
            if len > 0 {
                out[start + *at as usize % len] = *byte;
            }
        }
        op => {
            if let Some(p) = packet(op) {
                encode_packet(&p, protocol, out);
            }
        }
    }
}

struct World {
    rt: tokio::runtime::Runtime,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    _stop: watch::Sender<bool>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut config = vibemq::Config::default_config();
        config.mqtt.max_queued_messages = 64;
        config.mqtt.max_retained_messages = 256;
        config.server.connect_timeout = 1;
        let broker = Broker::new(config, Arc::from(""));
        let (stop, shutdown) = watch::channel(false);
        World {
            rt,
            broker,
            shutdown,
            _stop: stop,
        }
    })
}

fn peer() -> SocketAddr {
    "127.0.0.1:1".parse().unwrap()
}

/// Runs one connection: writes `bytes`, closes the writing side, reads until the node closes.
async fn session(w: &World, bytes: &[u8]) -> Vec<u8> {
    let (mut client, server): (DuplexStream, DuplexStream) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(vibemq::mqtt::serve_connection(
        server,
        peer(),
        w.broker.clone(),
        w.shutdown.clone(),
    ));
    let mut answer = Vec::new();
    let exchange = async {
        let (mut r, mut wr) = tokio::io::split(&mut client);
        let write = async {
            let _ = wr.write_all(bytes).await;
            let _ = wr.shutdown().await;
        };
        let read = async {
            let _ = r.read_to_end(&mut answer).await;
        };
        tokio::join!(write, read);
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the node ends a connection whose client has finished sending");
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the connection task ends")
        .expect("the connection task did not panic");
    answer
}

/// A fresh client connects, subscribes, publishes at QoS 1 and gets it back.
async fn probe(w: &World) {
    let mut out = BytesMut::new();
    let connect = Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 60,
        client_id: "fuzz-probe".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    encode_packet(
        &Packet::Connect(Box::new(connect)),
        Protocol::V311,
        &mut out,
    );
    let sub = Subscribe {
        packet_id: 1,
        filters: vec![(
            "probe/t".into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
        properties: Properties::default(),
    };
    encode_packet(&Packet::Subscribe(sub), Protocol::V311, &mut out);
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "probe/t".into(),
        packet_id: 2,
        payload: Bytes::from_static(b"alive"),
        properties: Properties::default(),
    };
    encode_packet(&Packet::Publish(publish), Protocol::V311, &mut out);
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(vibemq::mqtt::serve_connection(
        server,
        peer(),
        w.broker.clone(),
        w.shutdown.clone(),
    ));
    client.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let mut seen = (false, false);
    let read = async {
        loop {
            while let Some(p) =
                decode_packet(&mut buf, Some(Protocol::V311), usize::MAX).expect("valid output")
            {
                match p {
                    Packet::PubAck(_) => seen.0 = true,
                    Packet::Publish(p) if &p.payload[..] == b"alive" => seen.1 = true,
                    _ => {}
                }
            }
            if seen == (true, true) {
                return;
            }
            if client.read_buf(&mut buf).await.unwrap() == 0 {
                panic!("probe connection closed: {seen:?}");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("probe served");
    let mut end = BytesMut::new();
    encode_packet(
        &Packet::Disconnect(Disconnect::default()),
        Protocol::V311,
        &mut end,
    );
    client.write_all(&end).await.unwrap();
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

fuzz_target!(|input: Input| {
    let w = world();
    let protocol = protocol(input.v5);
    let mut bytes = BytesMut::new();
    let mut properties = Properties::default();
    if input.v5 {
        properties.receive_maximum = input.receive_maximum.filter(|r| *r > 0);
        properties.session_expiry_interval = input.session_expiry.map(u32::from);
    }
    let connect = Connect {
        protocol,
        clean_start: input.clean_start,
        keep_alive: 30,
        client_id: format!("fuzz-{}", input.client % 4),
        will: input.will.map(|(t, retain)| Will {
            topic: TOPICS[t as usize % TOPICS.len()].into(),
            payload: Bytes::from_static(b"will"),
            qos: QoS::AtLeastOnce,
            retain,
            properties: Properties::default(),
        }),
        username: None,
        password: None,
        properties,
    };
    encode_packet(&Packet::Connect(Box::new(connect)), protocol, &mut bytes);
    for op in input.ops.iter().take(64) {
        encode(op, protocol, &mut bytes);
    }
    w.rt.block_on(async {
        let answer = session(w, &bytes).await;
        // What the node sent must be valid MQTT.
        let mut answer = BytesMut::from(&answer[..]);
        while let Some(_p) = decode_packet(&mut answer, Some(protocol), usize::MAX)
            .expect("the node sends only valid packets")
        {}
        probe(w).await;
    });
});
