//! Configuration: the embedded defaults (config/default.toml), a TOML file, `VIBEMQ_*`
//! environment variables and command-line flags, merged in that order of precedence and then
//! validated. Every error names the key it is about, in one line, so start-up can stop with a
//! message an operator acts on without reading code.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use toml::{Table, Value};

/// The default configuration, compiled into the binary.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub cluster: ClusterConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub persistence: PersistenceConfig,
    pub log: LogConfig,
}

mod sections;
pub use sections::*;

/// A configuration problem, phrased as one line naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    Env(&'a str),
    Flag(&'a str),
}

impl Config {
    /// The embedded defaults alone.
    pub fn default_config() -> Config {
        Config::load(None, &[]).expect("embedded default configuration is valid")
    }

    /// Defaults, then `file`, then `overrides` in order (later wins), then validation.
    pub fn load(
        file: Option<&Path>,
        overrides: &[(String, String, Source<'_>)],
    ) -> Result<Config, ConfigError> {
        let mut table: Table = DEFAULT_TOML
            .parse()
            .map_err(|e| err(format!("embedded defaults: {e}")))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| err(format!("cannot read config file {}: {e}", path.display())))?;
            let user: Table = text.parse().map_err(|e: toml::de::Error| {
                err(format!("{}: {}", path.display(), e.message().trim()))
                    .with_span(&text, e.span())
            })?;
            merge(&mut table, user, "")?;
        }
        for (key, raw, source) in overrides {
            set_key(&mut table, key, raw, *source)?;
        }
        let config: Config = serde_path_to_error::deserialize(Value::Table(table))
            .map_err(|e| err(format!("{}: {}", e.path(), e.inner().message().trim())))?;
        config.validate()?;
        Ok(config)
    }

    /// Overrides from the environment: `VIBEMQ_<SECTION>_<KEY>` for every key of the defaults.
    pub fn env_overrides(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Vec<(String, String, String)> {
        let defaults: Table = DEFAULT_TOML.parse().expect("embedded defaults parse");
        let mut known = Vec::new();
        for (section, value) in &defaults {
            if let Value::Table(t) = value {
                for key in t.keys() {
                    let var = format!("VIBEMQ_{}_{}", section.to_uppercase(), key.to_uppercase());
                    known.push((var, format!("{section}.{key}")));
                }
            }
        }
        let mut out = Vec::new();
        for (name, value) in vars {
            if let Some((_, key)) = known.iter().find(|(var, _)| *var == name) {
                out.push((key.clone(), value, name));
            }
        }
        out
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.auth.anonymous_setting().is_err() {
            return Err(err(format!(
                "auth.allow_anonymous: expected true or false (got `{}`)",
                self.auth.allow_anonymous
            )));
        }
        if self.auth.max_hashes_per_ip == 0 {
            return Err(err("auth.max_hashes_per_ip: must be at least 1 (got 0)"));
        }
        if !self.auth.password_file.is_empty() {
            crate::auth::passwords::load(std::path::Path::new(&self.auth.password_file))
                .map_err(|e| err(format!("auth.password_file: {e}")))?;
        }
        if !self.auth.acl_file.is_empty() {
            let verifiable = !self.auth.password_file.is_empty() || self.certificates_name_users();
            crate::auth::load_acl_checked(std::path::Path::new(&self.auth.acl_file), verifiable)
                .map_err(err)?;
        }
        let m = &self.mqtt;
        if m.max_packet_size < 64 || m.max_packet_size > 268_435_460 {
            return Err(err(format!(
                "mqtt.max_packet_size: must be between 64 and 268435460 bytes (got {})",
                m.max_packet_size
            )));
        }
        if m.max_inflight == 0 {
            return Err(err("mqtt.max_inflight: must be at least 1 (got 0)"));
        }
        if m.max_queued_messages == 0 {
            return Err(err("mqtt.max_queued_messages: must be at least 1 (got 0)"));
        }
        for (key, value) in [
            ("mqtt.max_topic_levels", m.max_topic_levels),
            ("mqtt.max_topic_length", m.max_topic_length),
            (
                "mqtt.max_subscriptions_per_client",
                m.max_subscriptions_per_client,
            ),
            ("mqtt.max_sessions", m.max_sessions),
            ("mqtt.max_queued_bytes", m.max_queued_bytes),
            ("mqtt.max_retained_messages", m.max_retained_messages),
            ("mqtt.max_retained_bytes", m.max_retained_bytes),
        ] {
            if value == 0 {
                return Err(err(format!("{key}: must be at least 1 (got 0)")));
            }
        }
        if m.max_topic_length > 65_535 {
            return Err(err(format!(
                "mqtt.max_topic_length: at most 65535, the protocol's limit (got {})",
                m.max_topic_length
            )));
        }
        if m.max_keepalive == 0 {
            return Err(err("mqtt.max_keepalive: must be at least 1 second (got 0)"));
        }
        if self.server.connect_timeout == 0 {
            return Err(err(
                "server.connect_timeout: must be at least 1 second (got 0)",
            ));
        }
        let srv = &self.server;
        let phases =
            srv.shutdown_delay + srv.shutdown_clients_timeout + srv.shutdown_cluster_timeout;
        if srv.shutdown_timeout < phases {
            return Err(err(format!(
                "server.shutdown_timeout: must cover shutdown_delay + shutdown_clients_timeout + shutdown_cluster_timeout ({} + {} + {} = {phases} s; got {})",
                srv.shutdown_delay,
                srv.shutdown_clients_timeout,
                srv.shutdown_cluster_timeout,
                srv.shutdown_timeout
            )));
        }
        if srv.server_reference.len() > 1024 {
            return Err(err("server.server_reference: at most 1024 bytes"));
        }
        if self.server.max_connections == 0 {
            return Err(err("server.max_connections: must be at least 1 (got 0)"));
        }
        let listeners = self.server.listeners()?;
        if listeners.is_empty() {
            return Err(err(
                "server.bind: every MQTT listener is off (set bind, tls_bind, ws_bind or wss_bind)",
            ));
        }
        if listeners.iter().any(|(kind, _)| kind.uses_tls()) {
            crate::mqtt::tls_acceptor(&self.tls).map_err(err)?;
        }
        if self.tls.use_identity_as_username && self.tls.client_ca_file.is_empty() {
            return Err(err(
                "tls.use_identity_as_username: needs tls.client_ca_file (clients must present a certificate)",
            ));
        }
        self.http.token()?;
        if self.http.protect_metrics && self.http.token()?.is_none() {
            return Err(err(
                "http.protect_metrics: needs http.api_token or http.api_token_file",
            ));
        }
        self.validate_cluster()?;
        let p = &self.persistence;
        if p.enabled && p.dir.trim().is_empty() {
            return Err(err(
                "persistence.dir: must name a directory when persistence is enabled",
            ));
        }
        if p.sync_interval_ms == 0 || p.sync_interval_ms > 60_000 {
            return Err(err(format!(
                "persistence.sync_interval_ms: must be between 1 and 60000 (got {})",
                p.sync_interval_ms
            )));
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            return Err(err(format!(
                "log.format: must be \"text\" or \"json\" (got {:?})",
                self.log.format
            )));
        }
        let plain_level =
            ["error", "warn", "info", "debug", "trace", "off"].contains(&self.log.level.as_str());
        let directive = self.log.level.contains(['=', ',']);
        if !(plain_level || directive)
            || tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err()
        {
            return Err(err(format!(
                "log.level: `{}` is not a level (error, warn, info, debug, trace) or a tracing filter",
                self.log.level
            )));
        }
        Ok(())
    }
}

impl Config {
    /// Whether a client certificate names its user (`tls.use_identity_as_username` with a
    /// TLS listener on: `server.tls_bind` or `server.wss_bind`).
    pub fn certificates_name_users(&self) -> bool {
        self.tls.use_identity_as_username
            && self
                .server
                .listeners()
                .is_ok_and(|l| l.iter().any(|(kind, _)| kind.uses_tls()))
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        for (i, seed) in c.seeds.iter().enumerate() {
            let addr = seed.split_once('@').map_or(seed.as_str(), |(_, a)| a);
            let port_ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok {
                return Err(err(format!(
                    "cluster.seeds[{i}]: `{seed}` needs a host and a port, e.g. `{}:7946`",
                    addr.trim_end_matches(':')
                )));
            }
        }
        for (key, value) in [
            ("cluster.gossip_advertise_addr", &c.gossip_advertise_addr),
            ("cluster.peer_advertise_addr", &c.peer_advertise_addr),
        ] {
            if !value.is_empty()
                && value
                    .rsplit_once(':')
                    .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(err(format!("{key}: `{value}` must be host:port")));
            }
        }
        if !c.dns_server.is_empty() && c.dns_server.parse::<SocketAddr>().is_err() {
            return Err(err(format!(
                "cluster.dns_server: `{}` must be ip:port, e.g. 10.0.0.10:53",
                c.dns_server
            )));
        }
        if c.gossip_interval_ms < 10 {
            return Err(err(format!(
                "cluster.gossip_interval_ms: must be at least 10 (got {})",
                c.gossip_interval_ms
            )));
        }
        if c.failure_phi_threshold <= 0.0 {
            return Err(err("cluster.failure_phi_threshold: must be above 0"));
        }
        if c.dns_refresh_interval == 0 {
            return Err(err(
                "cluster.dns_refresh_interval: must be at least 1 second (got 0)",
            ));
        }
        if c.link_window_bytes < 65_536 {
            return Err(err(format!(
                "cluster.link_window_bytes: must be at least 65536 (got {})",
                c.link_window_bytes
            )));
        }
        if c.hold_bytes < c.link_window_bytes {
            return Err(err(format!(
                "cluster.hold_bytes: must be at least cluster.link_window_bytes ({}; got {})",
                c.link_window_bytes, c.hold_bytes
            )));
        }
        if c.link_timeout_ms < 200 {
            return Err(err(format!(
                "cluster.link_timeout_ms: must be at least 200 (got {})",
                c.link_timeout_ms
            )));
        }
        if !(1..=60_000).contains(&c.subscribe_ack_timeout_ms) {
            return Err(err(format!(
                "cluster.subscribe_ack_timeout_ms: must be from 1 to 60000 (got {})",
                c.subscribe_ack_timeout_ms
            )));
        }
        if !(1..=60_000).contains(&c.takeover_timeout_ms) {
            return Err(err(format!(
                "cluster.takeover_timeout_ms: must be from 1 to 60000 (got {})",
                c.takeover_timeout_ms
            )));
        }
        if c.join_timeout_ms > 3_600_000 {
            return Err(err(format!(
                "cluster.join_timeout_ms: must be from 0 to 3600000 (got {})",
                c.join_timeout_ms
            )));
        }
        if c.max_pending_handshakes == 0 {
            return Err(err(
                "cluster.max_pending_handshakes: must be at least 1 (got 0)",
            ));
        }
        if c.session_replicas > 8 {
            return Err(err(format!(
                "cluster.session_replicas: must be from 0 to 8 (got {})",
                c.session_replicas
            )));
        }
        if c.name.is_empty() {
            return Err(err("cluster.name: must not be empty"));
        }
        if !c.node_id.is_empty() && !crate::cluster::address::valid_node_id(&c.node_id) {
            return Err(err(
                "cluster.node_id: 1 to 255 bytes without control characters",
            ));
        }
        let secrets = c.secret_keys()?;
        let beyond_loopback = !c.gossip_addr.ip().is_loopback() || !c.peer_addr.ip().is_loopback();
        if c.enabled && beyond_loopback && secrets.is_empty() && !c.allow_insecure {
            return Err(err(format!(
                "cluster.secret: required when the cluster listens beyond loopback (gossip_addr {}, peer_addr {}): anyone reaching those ports could read every routed message and claim sessions; set cluster.secret or cluster.secret_file (`head -c32 /dev/urandom | base64`), or cluster.allow_insecure = true on a network nobody else reaches",
                c.gossip_addr, c.peer_addr
            )));
        }
        if c.enabled && c.tls {
            crate::cluster::peer_tls::PeerTls::load(&self.tls, c).map_err(err)?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn with_span(self, text: &str, span: Option<std::ops::Range<usize>>) -> ConfigError {
        match span {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                ConfigError(format!("{} (line {line})", self.0))
            }
            None => self,
        }
    }
}

/// Deep-merges `user` into `base`, refusing keys the defaults do not have.
fn merge(base: &mut Table, user: Table, prefix: &str) -> Result<(), ConfigError> {
    for (key, mut value) in user {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        // Earlier docs show `[[cluster]]`: a one-element array of tables means the table.
        if let Value::Array(items) = &mut value
            && prefix.is_empty()
            && base.get(&key).is_some_and(Value::is_table)
        {
            if items.len() != 1 || !items[0].is_table() {
                return Err(err(format!(
                    "{path}: the [[{path}]] form takes exactly one [[{path}]] table"
                )));
            }
            value = items.remove(0);
        }
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(u)) => merge(b, u, &path)?,
            (Some(Value::Table(_)), _) => {
                return Err(err(format!("{path}: must be a table ([{path}])")));
            }
            // `allow_anonymous = true` in a file: kept as text, beside its "auto" default.
            (Some(slot @ Value::String(_)), Value::Boolean(b))
                if path == "auth.allow_anonymous" =>
            {
                *slot = Value::String(b.to_string());
            }
            // `secret = "..."`: a list of one.
            (Some(slot @ Value::Array(_)), Value::String(text)) if path == "cluster.secret" => {
                *slot = Value::Array(vec![Value::String(text)]);
            }
            (Some(slot), value) => {
                if std::mem::discriminant(slot) != std::mem::discriminant(&value) {
                    return Err(err(format!(
                        "{path}: expected {}, got {}",
                        slot.type_str(),
                        value.type_str()
                    )));
                }
                *slot = value;
            }
            (None, _) if path == "cluster.relay_queue_size" => {
                return Err(err(
                    "cluster.relay_queue_size: replaced by cluster.hold_bytes (a bound in bytes, default 268435456)",
                ));
            }
            (None, _) => return Err(err(format!("{path}: unknown key"))),
        }
    }
    Ok(())
}

/// Sets `section.key` from a string, converted to the type the default has.
fn set_key(table: &mut Table, key: &str, raw: &str, source: Source<'_>) -> Result<(), ConfigError> {
    let origin = match source {
        Source::Env(name) => format!("{key} (from {name})"),
        Source::Flag(name) => format!("{key} (from {name})"),
    };
    let (section, name) = key
        .split_once('.')
        .ok_or_else(|| err(format!("{origin}: not a section.key")))?;
    let slot = table
        .get_mut(section)
        .and_then(Value::as_table_mut)
        .and_then(|t| t.get_mut(name))
        .ok_or_else(|| err(format!("{origin}: unknown key")))?;
    *slot = match slot {
        Value::Integer(_) => Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| err(format!("{origin}: expected an integer, got `{raw}`")))?,
        ),
        Value::Float(_) => Value::Float(
            raw.trim()
                .parse()
                .map_err(|_| err(format!("{origin}: expected a number, got `{raw}`")))?,
        ),
        // Lists from the environment or flags: comma-separated.
        Value::Array(_) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        Value::Boolean(_) => Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                return Err(err(format!(
                    "{origin}: expected true or false, got `{raw}`"
                )));
            }
        }),
        _ => Value::String(raw.to_string()),
    };
    Ok(())
}

#[cfg(test)]
mod tests;
