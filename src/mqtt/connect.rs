//! The CONNECT handshake: read the first packet within the connect timeout, check it, answer
//! refusals with the right CONNACK code for the client's protocol version, attach the session
//! and send CONNACK, then resend whatever the resumed session had in flight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::stream::ClientStream;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connection::Connection;
use super::connection::PublishLimits;
use super::listener::Admission;
use crate::broker::{Broker, ConnectionControl};
use crate::codec::{
    ConnAck, Connect, DecodeError, Packet, Properties, Protocol, decode_packet, encode_packet,
    reason, v3_return,
};
use crate::limits::{Limit, printable};
use crate::topic::{check_topic_bounds, is_sys_topic, valid_topic_name};

/// How a handshake ended.
// Returned once per connection and moved straight into its task: boxing the large variant
// would cost every connection an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Handshake {
    Connected(Connection),
    /// Refused with a CONNACK: the caller half-closes and drains, so the client reads it.
    Refused,
    /// Nothing to tell the client (no CONNECT in time, lost, or not MQTT).
    Gone,
}

/// Reads CONNECT and sets the connection up. `loopback`: the listener is bound to a loopback
/// address (and not behind the PROXY protocol), where anonymous clients are welcome by
/// default.
pub(super) async fn handshake<S: ClientStream>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    peer: SocketAddr,
    broker: &Arc<Broker>,
    (admission, loopback): (Admission, bool),
) -> Handshake {
    let timeout = Duration::from_secs(broker.config.server.connect_timeout);
    let max_in = broker.config.mqtt.max_packet_size as usize;
    let connect = match tokio::time::timeout(timeout, read_connect(stream, rbuf, max_in)).await {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within the connect timeout");
            return Handshake::Gone;
        }
        Ok(Err(ReadError::Io)) => return Handshake::Gone,
        Ok(Err(ReadError::Decode(DecodeError::UnsupportedProtocolLevel(level)))) => {
            tracing::info!(%peer, level, "refusing unsupported protocol level");
            // A 3.1.1-format CONNACK is what every version can read.
            let _ = stream
                .write_all(&[0x20, 0x02, 0x00, v3_return::UNACCEPTABLE_PROTOCOL_VERSION])
                .await;
            return Handshake::Refused;
        }
        Ok(Err(ReadError::Decode(e))) => {
            crate::broker::Metrics::add(&broker.metrics.protocol_errors, 1);
            tracing::info!(%peer, error = %e, "refusing connection: bad CONNECT");
            return Handshake::Gone;
        }
        Ok(Ok(c)) => c,
    };
    let mut connect = connect;
    let mut checked = match &admission {
        Admission::Refused(limit) => Err(Refusal::limit(*limit)),
        Admission::Admitted(_) => check_connect(&connect, broker),
    };
    let mut identity = None;
    if checked.is_ok() {
        checked = match certificate_user(&mut connect, stream.certificate_identity(), broker) {
            Ok(certified) => {
                let from = crate::auth::Source {
                    ip: peer.ip(),
                    loopback_listener: loopback,
                };
                authenticate(&connect, broker, certified, from).await
            }
            Err(refusal) => Err(refusal),
        }
        .map(|verified| identity = verified);
    }
    if checked.is_ok() && !broker.admits_connect() {
        checked = Err(Refusal::new(
            reason::SERVER_UNAVAILABLE,
            v3_return::SERVER_UNAVAILABLE,
            "a cluster node is unreachable (cluster.allow_connect_during_partition = false)",
        ));
    }
    let asker = Asker {
        protocol: connect.protocol,
        client_id: connect.client_id.clone(),
        max_packet: connect.properties.maximum_packet_size.unwrap_or(u32::MAX) as usize,
        peer,
    };
    if let Err(refusal) = checked {
        refuse(stream, &asker, broker, &refusal).await;
        return Handshake::Refused;
    }
    let Admission::Admitted(ip_guard) = admission else {
        unreachable!("refused admissions return above")
    };
    match establish(*connect, peer, broker, ip_guard, identity).await {
        Ok(connection) => Handshake::Connected(connection),
        Err(refusal) => {
            refuse(stream, &asker, broker, &refusal).await;
            Handshake::Refused
        }
    }
}

/// Who sent a CONNECT, as far as a refusal needs it.
struct Asker {
    protocol: Protocol,
    client_id: String,
    /// The client's Maximum Packet Size.
    max_packet: usize,
    peer: SocketAddr,
}

/// Tells the client why its CONNECT is refused (the CONNACK code of its protocol version,
/// with a v5 reason string where it fits), counting a limit that refused it.
async fn refuse<S: ClientStream>(
    stream: &mut S,
    asker: &Asker,
    broker: &Broker,
    refusal: &Refusal,
) {
    let protocol = asker.protocol;
    if let Some(limit) = refusal.limit {
        broker
            .limits
            .hit(limit, &asker.client_id, "connection refused");
    }
    tracing::info!(peer = %asker.peer, client_id = %printable(&asker.client_id), code = refusal.code(protocol), "refusing connection: {}", refusal.detail);
    let mut ack = ConnAck {
        session_present: false,
        code: refusal.code(protocol),
        properties: Properties::default(),
    };
    // The reason string only when the packet stays within the client's Maximum Packet
    // Size (MQTT-3.2.2-19).
    if protocol.is_v5() && refusal.detail.len() + 16 <= asker.max_packet {
        ack.properties.reason_string = Some(refusal.detail.to_string());
    }
    let mut out = BytesMut::new();
    encode_packet(&Packet::ConnAck(ack), protocol, &mut out);
    let _ = stream.write_all(&out).await;
}

enum ReadError {
    Io,
    Decode(DecodeError),
}

async fn read_connect<S: ClientStream>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    max_in: usize,
) -> Result<Box<Connect>, ReadError> {
    loop {
        match decode_packet(rbuf, None, max_in) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(_)) => {
                return Err(ReadError::Decode(DecodeError::Protocol(
                    "first packet must be CONNECT",
                )));
            }
            Ok(None) => {}
            Err(e) => return Err(ReadError::Decode(e)),
        }
        match stream.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Err(ReadError::Io),
            Ok(_) => {}
        }
    }
}

/// A refused CONNECT: the v5 reason code, the v3 return code, why, and the limit if one
/// refused it.
struct Refusal {
    v5: u8,
    v3: u8,
    detail: &'static str,
    limit: Option<Limit>,
}

impl Refusal {
    fn code(&self, protocol: Protocol) -> u8 {
        if protocol.is_v5() { self.v5 } else { self.v3 }
    }

    fn new(v5: u8, v3: u8, detail: &'static str) -> Refusal {
        Refusal {
            v5,
            v3,
            detail,
            limit: None,
        }
    }

    /// A refusal by a configured limit (the detail names its key).
    fn limit(limit: Limit) -> Refusal {
        let (v5, detail) = match limit {
            Limit::ConnectionRatePerIp => (
                reason::CONNECTION_RATE_EXCEEDED,
                "server.max_connection_rate_per_ip reached",
            ),
            Limit::ConnectionsPerIp => (
                reason::QUOTA_EXCEEDED,
                "server.max_connections_per_ip reached",
            ),
            Limit::Sessions => (reason::QUOTA_EXCEEDED, "mqtt.max_sessions reached"),
            Limit::Connections => (reason::SERVER_BUSY, "server.max_connections reached"),
            Limit::TopicLength => (
                reason::TOPIC_NAME_INVALID,
                "will topic exceeds mqtt.max_topic_length",
            ),
            Limit::TopicLevels => (
                reason::TOPIC_NAME_INVALID,
                "will topic exceeds mqtt.max_topic_levels",
            ),
            Limit::ConcurrentHashes => (
                reason::SERVER_BUSY,
                "no password check slot came free in time (auth.max_concurrent_hashes)",
            ),
            Limit::HashesPerIp => (
                reason::SERVER_BUSY,
                "too many password checks from this address at once (auth.max_hashes_per_ip)",
            ),
            _ => (reason::QUOTA_EXCEEDED, "a limit was reached"),
        };
        Refusal {
            v5,
            v3: v3_return::SERVER_UNAVAILABLE,
            detail,
            limit: Some(limit),
        }
    }
}

fn check_connect(c: &Connect, broker: &Broker) -> Result<(), Refusal> {
    let config = &broker.config;
    let v5 = c.protocol.is_v5();
    // A v5 client with no id is assigned one, but only where empty ids are allowed at all.
    let zero_length_ok = config.mqtt.allow_zero_length_clientid && (v5 || c.clean_start);
    if c.client_id.is_empty() && !zero_length_ok {
        return Err(Refusal::new(
            reason::CLIENT_IDENTIFIER_NOT_VALID,
            v3_return::IDENTIFIER_REJECTED,
            "empty client id not allowed (mqtt.allow_zero_length_clientid; v3 also needs clean session)",
        ));
    }
    let max_keepalive = config.mqtt.max_keepalive;
    if !v5 && max_keepalive < u16::MAX && (c.keep_alive == 0 || c.keep_alive > max_keepalive) {
        return Err(Refusal::new(
            reason::UNSPECIFIED_ERROR,
            v3_return::IDENTIFIER_REJECTED,
            "keep alive above mqtt.max_keepalive",
        ));
    }
    if c.properties.authentication_method.is_some() {
        return Err(Refusal::new(
            reason::BAD_AUTHENTICATION_METHOD,
            v3_return::NOT_AUTHORIZED,
            "enhanced authentication is not supported",
        ));
    }
    if let Some(w) = &c.will {
        check_will(w, config)?;
    }
    let current = broker
        .metrics
        .connections_current
        .load(std::sync::atomic::Ordering::Relaxed);
    if current > config.server.max_connections as u64 {
        return Err(Refusal::limit(Limit::Connections));
    }
    if broker.sessions.len() >= config.mqtt.max_sessions
        && !broker.sessions.contains_key(c.client_id.as_str())
    {
        return Err(Refusal::limit(Limit::Sessions));
    }
    Ok(())
}

/// With `tls.use_identity_as_username`, a TLS client's certificate names it: its Common Name
/// replaces the CONNECT's user name and no password is asked (the certificate, verified
/// against `tls.client_ca_file`, is the credential). Some(name) when that happened. On a
/// listener without certificates the CONNECT's user name is only a claim: it must pass the
/// password check or the client is anonymous.
fn certificate_user(
    c: &mut Connect,
    identity: super::stream::CertificateIdentity,
    broker: &Broker,
) -> Result<Option<Arc<str>>, Refusal> {
    use super::stream::CertificateIdentity;
    if !broker.config.tls.use_identity_as_username {
        return Ok(None);
    }
    match identity {
        CertificateIdentity::NotTls => Ok(None),
        CertificateIdentity::Named(name) => {
            let name: Arc<str> = name.into();
            c.username = Some(name.to_string());
            c.password = None;
            Ok(Some(name))
        }
        CertificateIdentity::Unnamed => {
            crate::broker::Metrics::add(&broker.metrics.auth_required, 1);
            Err(Refusal::new(
                reason::NOT_AUTHORIZED,
                v3_return::NOT_AUTHORIZED,
                "the client certificate has no Common Name to use as the user name (tls.use_identity_as_username)",
            ))
        }
    }
}

/// The CONNECT's credentials against `[auth]` (unless a certificate vouched for the user
/// name: `certified`), and its will against the ACL, each refusal counted. The verified user
/// name (None: anonymous), which alone selects ACL rules and owns client ids.
async fn authenticate(
    c: &Connect,
    broker: &Broker,
    certified: Option<Arc<str>>,
    from: crate::auth::Source,
) -> Result<Option<Arc<str>>, Refusal> {
    let wait = Duration::from_secs(broker.config.server.connect_timeout);
    let verdict = match certified {
        Some(name) => Ok(Some(name)),
        None => {
            broker
                .auth
                .authenticate(c.username.as_deref(), c.password.as_deref(), from, wait)
                .await
        }
    };
    match verdict {
        Ok(identity) => {
            if let Some(will) = &c.will {
                let action = crate::auth::acl::Action::Publish(&will.topic);
                if !broker
                    .auth
                    .allows(identity.as_deref(), &c.client_id, action)
                {
                    crate::broker::Metrics::add(&broker.metrics.acl_denied_publish, 1);
                    return Err(Refusal::new(
                        reason::NOT_AUTHORIZED,
                        v3_return::NOT_AUTHORIZED,
                        "the will topic is not writable for this client (auth.acl_file)",
                    ));
                }
            }
            Ok(identity)
        }
        Err(crate::auth::Denied::Busy(limit)) => Err(Refusal::limit(limit)),
        Err(crate::auth::Denied::BadCredentials) => {
            crate::broker::Metrics::add(&broker.metrics.auth_bad_credentials, 1);
            Err(Refusal::new(
                reason::BAD_USER_NAME_OR_PASSWORD,
                v3_return::NOT_AUTHORIZED,
                "bad user name or password",
            ))
        }
        Err(crate::auth::Denied::Required) => {
            crate::broker::Metrics::add(&broker.metrics.auth_required, 1);
            Err(Refusal::new(
                reason::NOT_AUTHORIZED,
                v3_return::NOT_AUTHORIZED,
                "a verified user name is required here (auth.allow_anonymous)",
            ))
        }
    }
}

fn check_will(w: &crate::codec::Will, config: &crate::config::Config) -> Result<(), Refusal> {
    if !valid_topic_name(&w.topic) {
        return Err(Refusal::new(
            reason::TOPIC_NAME_INVALID,
            v3_return::NOT_AUTHORIZED,
            "invalid will topic",
        ));
    }
    let mqtt = &config.mqtt;
    if let Err(bound) = check_topic_bounds(&w.topic, mqtt.max_topic_length, mqtt.max_topic_levels) {
        return Err(Refusal::limit(Limit::of_topic(bound)));
    }
    if is_sys_topic(&w.topic) {
        return Err(Refusal::new(
            reason::NOT_AUTHORIZED,
            v3_return::NOT_AUTHORIZED,
            "will topic in $SYS",
        ));
    }
    if w.properties
        .response_topic
        .as_deref()
        .is_some_and(|t| !valid_topic_name(t))
    {
        return Err(Refusal::new(
            reason::PROTOCOL_ERROR,
            v3_return::NOT_AUTHORIZED,
            "will response topic is not a valid topic name",
        ));
    }
    if w.properties.payload_format_indicator == Some(1) && std::str::from_utf8(&w.payload).is_err()
    {
        return Err(Refusal::new(
            reason::PAYLOAD_FORMAT_INVALID,
            v3_return::NOT_AUTHORIZED,
            "will payload is not UTF-8 as its format indicator says",
        ));
    }
    Ok(())
}

/// Attaches the session, sends CONNACK and resends what was in flight; refused when the
/// client id's session belongs to another identity.
async fn establish(
    c: Connect,
    peer: SocketAddr,
    broker: &Arc<Broker>,
    ip_guard: Option<super::listener::IpGuard>,
    identity: Option<Arc<str>>,
) -> Result<Connection, Refusal> {
    let config = &broker.config.mqtt;
    let v5 = c.protocol.is_v5();
    let mut ack_props = Properties::default();

    let client_id: Arc<str> = if c.client_id.is_empty() {
        let id = format!(
            "vibemq-{:016x}",
            broker.next_connection_id() ^ random_salt()
        );
        if v5 {
            ack_props.assigned_client_identifier = Some(id.clone());
        }
        id.into()
    } else {
        c.client_id.into()
    };

    let requested_expiry = if v5 {
        c.properties.session_expiry_interval.unwrap_or(0)
    } else if c.clean_start {
        0
    } else {
        u32::MAX
    };
    let expiry_interval = requested_expiry.min(config.max_session_expiry);
    if v5 && expiry_interval != requested_expiry {
        ack_props.session_expiry_interval = Some(expiry_interval);
    }

    let mut keep_alive = c.keep_alive;
    if v5
        && config.max_keepalive < u16::MAX
        && (keep_alive == 0 || keep_alive > config.max_keepalive)
    {
        keep_alive = config.max_keepalive;
        ack_props.server_keep_alive = Some(keep_alive);
    }

    if v5 {
        ack_props.receive_maximum = Some(config.max_inflight);
        ack_props.maximum_packet_size = Some(config.max_packet_size);
        ack_props.topic_alias_maximum = Some(config.max_topic_alias);
        // All supported; said explicitly so clients and tools show it.
        ack_props.retain_available = Some(1);
        ack_props.wildcard_subscription_available = Some(1);
        ack_props.subscription_identifier_available = Some(1);
        ack_props.shared_subscription_available = Some(1);
    }

    let control =
        ConnectionControl::for_client(broker.next_connection_id(), c.protocol, Some(peer));
    // Kept with a stored session, so a restart still owes it.
    let will = c
        .will
        .as_ref()
        .filter(|_| broker.store().is_some())
        .map(|will| crate::broker::session::PendingWill {
            will: Box::new(will.clone()),
            delay: will.properties.will_delay_interval.unwrap_or(0),
        });
    let attached = broker
        .attach(
            &client_id,
            c.clean_start,
            &control,
            (expiry_interval, will.as_ref()),
            identity.as_ref(),
        )
        .await;
    let attached = match attached {
        Ok(attached) => attached,
        Err(crate::broker::AttachRefused::OwnedByAnother) => {
            crate::broker::Metrics::add(&broker.metrics.auth_clientid_owned, 1);
            return Err(Refusal::new(
                reason::NOT_AUTHORIZED,
                v3_return::NOT_AUTHORIZED,
                "this client id belongs to another user's session (auth.clientid_ownership)",
            ));
        }
    };
    tracing::debug!(%peer, client_id = %printable(&client_id), protocol = c.protocol.name(), session_present = attached.session_present, "client connected");

    let client_receive_max = c.properties.receive_maximum.unwrap_or(u16::MAX);
    let mut conn = Connection {
        broker: broker.clone(),
        peer,
        protocol: c.protocol,
        client_id,
        identity,
        acl_rules: std::cell::RefCell::new(None),
        session: attached.session,
        control,
        keep_alive: Duration::from_secs(u64::from(keep_alive)),
        window: usize::from(client_receive_max.min(config.max_inflight)),
        client_max_packet: c
            .properties
            .maximum_packet_size
            .map_or(usize::MAX, |m| m as usize),
        client_alias_max: c.properties.topic_alias_maximum.unwrap_or(0),
        out_aliases: HashMap::new(),
        in_aliases: HashMap::new(),
        will: c.will.map(Box::new),
        expiry_interval,
        connect_expiry_zero: requested_expiry == 0,
        wbuf: BytesMut::new(),
        held_by: Default::default(),
        publish_limits: PublishLimits::from_config(config),
        throttled_until: None,
        warned_sys: false,
        pending_acks: Default::default(),
        _ip_guard: ip_guard,
    };
    let ack = ConnAck {
        session_present: attached.session_present,
        code: 0,
        properties: ack_props,
    };
    conn.send(&Packet::ConnAck(ack));
    conn.resend_inflight();
    Ok(conn)
}

/// Per-process salt so assigned client ids differ between restarts.
fn random_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}
