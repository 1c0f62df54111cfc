//! The limits that protect a node from its clients, in one place: which limits exist (each is a
//! config key), how often each was hit (`vibemq_limit_hits_total{limit="<key>"}`), and when a
//! hit is worth a log line (the first of an episode, not every one). The checks themselves
//! stay where the state they guard lives (sessions, router, retained store, listener); they
//! report here. Also the rule for text a client sent that ends up in a reason string or a log
//! line: capped, and printable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A configured bound a client can run into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    TopicLevels,
    TopicLength,
    SubscriptionsPerClient,
    Sessions,
    QueuedMessages,
    QueuedBytes,
    RetainedMessages,
    RetainedBytes,
    PublishRate,
    PublishBytesRate,
    ConnectionRatePerIp,
    ConnectionsPerIp,
    Connections,
    InboundQos2,
    ConcurrentHashes,
    HashesPerIp,
}

impl Limit {
    pub const ALL: [Limit; 16] = [
        Limit::TopicLevels,
        Limit::TopicLength,
        Limit::SubscriptionsPerClient,
        Limit::Sessions,
        Limit::QueuedMessages,
        Limit::QueuedBytes,
        Limit::RetainedMessages,
        Limit::RetainedBytes,
        Limit::PublishRate,
        Limit::PublishBytesRate,
        Limit::ConnectionRatePerIp,
        Limit::ConnectionsPerIp,
        Limit::Connections,
        Limit::InboundQos2,
        Limit::ConcurrentHashes,
        Limit::HashesPerIp,
    ];

    /// The limit a topic name or filter ran into.
    pub fn of_topic(bound: crate::topic::TopicBound) -> Limit {
        match bound {
            crate::topic::TopicBound::Length => Limit::TopicLength,
            crate::topic::TopicBound::Levels => Limit::TopicLevels,
        }
    }

    /// The configuration key that sets this limit (also the metric's label).
    pub fn key(self) -> &'static str {
        match self {
            Limit::TopicLevels => "mqtt.max_topic_levels",
            Limit::TopicLength => "mqtt.max_topic_length",
            Limit::SubscriptionsPerClient => "mqtt.max_subscriptions_per_client",
            Limit::Sessions => "mqtt.max_sessions",
            Limit::QueuedMessages => "mqtt.max_queued_messages",
            Limit::QueuedBytes => "mqtt.max_queued_bytes",
            Limit::RetainedMessages => "mqtt.max_retained_messages",
            Limit::RetainedBytes => "mqtt.max_retained_bytes",
            Limit::PublishRate => "mqtt.max_publish_rate",
            Limit::PublishBytesRate => "mqtt.max_publish_bytes_rate",
            Limit::ConnectionRatePerIp => "server.max_connection_rate_per_ip",
            Limit::ConnectionsPerIp => "server.max_connections_per_ip",
            Limit::Connections => "server.max_connections",
            Limit::InboundQos2 => "mqtt.max_inflight",
            Limit::ConcurrentHashes => "auth.max_concurrent_hashes",
            Limit::HashesPerIp => "auth.max_hashes_per_ip",
        }
    }
}

/// The key a share per source address is counted under: the address itself for IPv4 (and
/// IPv4-mapped IPv6), its /64 for IPv6, which one host can rotate through at will.
pub fn source_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                std::net::IpAddr::V6(octets.into())
            }
        },
        v4 => v4,
    }
}

/// A hit that comes this long after the previous one starts a new episode (and is logged).
const EPISODE_GAP: Duration = Duration::from_secs(60);

/// Hit counters per limit, and the time of each limit's last hit for episode logging.
#[derive(Debug)]
pub struct LimitCounters {
    hits: [AtomicU64; Limit::ALL.len()],
    /// Milliseconds since `epoch` of the last hit (0: never).
    last_hit_ms: [AtomicU64; Limit::ALL.len()],
    epoch: Instant,
}

impl Default for LimitCounters {
    fn default() -> Self {
        LimitCounters {
            hits: Default::default(),
            last_hit_ms: Default::default(),
            epoch: Instant::now(),
        }
    }
}

impl LimitCounters {
    /// Counts a hit; logs it when it starts an episode (`who` says whose request hit it, and
    /// `what` what happened, e.g. "message not retained").
    pub fn hit(&self, limit: Limit, who: &str, what: &str) {
        let i = limit as usize;
        self.hits[i].fetch_add(1, Ordering::Relaxed);
        // +1 so a hit in the first millisecond is not mistaken for "never".
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_hit_ms[i].swap(now, Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= EPISODE_GAP.as_millis() as u64 {
            tracing::warn!(
                limit = limit.key(),
                client = %printable(who),
                "limit reached: {what} (logged once per episode; vibemq_limit_hits_total counts every hit)"
            );
        }
    }

    pub fn hits(&self, limit: Limit) -> u64 {
        self.hits[limit as usize].load(Ordering::Relaxed)
    }
}

/// A token bucket: `rate` tokens a second, holding at most one second's worth. `take` may run
/// it into debt (the work is already in hand) and says how long to pause until it is repaid,
/// so the average never passes the rate and no message is dropped for it.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// Takes `n` tokens; Some(pause) when the bucket is now in debt.
    pub fn take(&mut self, n: f64) -> Option<Duration> {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.last = now;
        self.tokens -= n;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

/// Longest piece of client-supplied text put into a reason string or a log field.
pub const MAX_ECHOED: usize = 64;
/// Longest reason string the broker sends.
pub const MAX_REASON_STRING: usize = 256;

/// Client text made safe to echo: at most `MAX_ECHOED` bytes (cut on a character boundary,
/// with the original length said), control characters escaped.
pub fn printable(text: &str) -> String {
    let mut cut = text.len().min(MAX_ECHOED);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out: String = text[..cut].escape_debug().collect();
    if cut < text.len() {
        out.push_str(&format!("… ({} bytes)", text.len()));
    }
    out
}

/// A reason string cut to `MAX_REASON_STRING` bytes on a character boundary.
pub fn reason_string(mut text: String) -> String {
    if text.len() > MAX_REASON_STRING {
        let mut cut = MAX_REASON_STRING;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_counted_by_address_or_ipv6_64() {
        let key = |s: &str| source_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff::9"),
            "one /64, one share"
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    #[test]
    fn echoed_text_is_short_and_printable() {
        assert_eq!(printable("a/b"), "a/b");
        let long = "é".repeat(40_000);
        let p = printable(&long);
        assert!(p.len() < MAX_ECHOED + 32, "{}", p.len());
        assert!(p.ends_with("(80000 bytes)"));
        assert_eq!(printable("a\nb\u{1b}"), "a\\nb\\u{1b}");
        let r = reason_string("x".repeat(70_000));
        assert_eq!(r.len(), MAX_REASON_STRING);
        assert_eq!(reason_string("é".repeat(200)).len(), 256);
    }

    #[test]
    fn a_bucket_allows_a_burst_then_paces() {
        let mut b = TokenBucket::new(10.0);
        for _ in 0..10 {
            assert_eq!(b.take(1.0), None);
        }
        let pause = b.take(1.0).expect("in debt past the burst");
        assert!(pause > Duration::from_millis(90) && pause <= Duration::from_millis(100));
        let pause = b.take(5.0).expect("deeper in debt");
        assert!(pause > Duration::from_millis(590), "{pause:?}");
    }

    #[test]
    fn every_hit_counts_and_keys_are_distinct() {
        let c = LimitCounters::default();
        for _ in 0..3 {
            c.hit(Limit::RetainedMessages, "c1", "test");
        }
        assert_eq!(c.hits(Limit::RetainedMessages), 3);
        assert_eq!(c.hits(Limit::Sessions), 0);
        let mut keys: Vec<&str> = Limit::ALL.iter().map(|l| l.key()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), Limit::ALL.len());
        for (i, l) in Limit::ALL.iter().enumerate() {
            assert_eq!(*l as usize, i, "ALL is in declaration order");
        }
    }
}
