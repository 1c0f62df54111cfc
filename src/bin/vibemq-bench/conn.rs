//! The load generator's MQTT connection: CONNECT, SUBSCRIBE and packet I/O over a plain
//! socket with VibeMQ's codec, buffered so callers can batch many packets into one write.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use vibemq::codec::{
    Connect, Packet, Properties, Protocol, QoS, Subscribe, SubscriptionOptions, decode_packet,
    encode_packet,
};

/// Source addresses to connect from (`--source-ips`), and the next one's index.
static SOURCES: OnceLock<Vec<IpAddr>> = OnceLock::new();
static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);

pub fn set_sources(ips: Vec<IpAddr>) {
    let _ = SOURCES.set(ips);
}

/// Connects to `addr`, from the next source address when `--source-ips` gave some.
async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(ips) = SOURCES.get().filter(|ips| !ips.is_empty()) else {
        return TcpStream::connect(addr).await;
    };
    let ip = ips[NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % ips.len()];
    let socket = if ip.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

/// An MQTT connection over a plain socket.
pub struct Conn {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    protocol: Protocol,
}

impl Conn {
    pub async fn open(
        addr: SocketAddr,
        protocol: Protocol,
        client_id: String,
        clean: bool,
    ) -> std::io::Result<Conn> {
        Conn::open_with(addr, protocol, client_id, clean, Properties::default()).await
    }

    /// As `open`, with CONNECT properties (v5).
    pub async fn open_with(
        addr: SocketAddr,
        protocol: Protocol,
        client_id: String,
        clean: bool,
        mut properties: Properties,
    ) -> std::io::Result<Conn> {
        let stream = connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut c = Conn {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::new(),
            protocol,
        };
        if protocol.is_v5() && !clean {
            properties.session_expiry_interval = Some(3600);
        }
        let connect = Connect {
            protocol,
            clean_start: clean,
            keep_alive: 300,
            client_id,
            will: None,
            username: None,
            password: None,
            properties,
        };
        c.send(&Packet::Connect(Box::new(connect))).await?;
        match c.recv().await? {
            Packet::ConnAck(a) if a.code == 0 => Ok(c),
            other => Err(std::io::Error::other(format!("connect refused: {other:?}"))),
        }
    }

    pub async fn send(&mut self, p: &Packet) -> std::io::Result<()> {
        encode_packet(p, self.protocol, &mut self.wbuf);
        self.flush().await
    }

    /// Writes the buffer out. Cancel-safe (publishers stop it at their deadline): what was
    /// written leaves the buffer as it goes, so a later flush never sends bytes twice, which
    /// would corrupt the stream mid-packet.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        while !self.wbuf.is_empty() {
            let n = self.stream.write(&self.wbuf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            bytes::Buf::advance(&mut self.wbuf, n);
        }
        Ok(())
    }

    pub fn next_buffered(&mut self) -> std::io::Result<Option<Packet>> {
        decode_packet(&mut self.rbuf, Some(self.protocol), usize::MAX)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    pub async fn recv(&mut self) -> std::io::Result<Packet> {
        loop {
            if let Some(p) = self.next_buffered()? {
                return Ok(p);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> std::io::Result<()> {
        let sub = Subscribe {
            packet_id: 1,
            filters: vec![(
                filter.to_string(),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
            properties: Properties::default(),
        };
        self.send(&Packet::Subscribe(sub)).await?;
        loop {
            match self.recv().await? {
                Packet::SubAck(a) if a.reason_codes.first().is_some_and(|c| *c < 0x80) => {
                    return Ok(());
                }
                Packet::SubAck(a) => {
                    return Err(std::io::Error::other(format!("subscribe refused: {a:?}")));
                }
                _ => {}
            }
        }
    }
}
