//! Configuration: the embedded defaults (config/default.toml), a TOML file, `VIBEMQ_*`
//! environment variables and command-line flags, merged in that order of precedence and then
//! validated. Every error names the key it is about, in one line, so start-up can stop with a
//! message an operator acts on without reading code.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use toml::{Table, Value};

/// The default configuration, compiled into the binary.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub cluster: ClusterConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
}

/// `[tls]`: the certificate TLS listeners present, and the CA client certificates must come
/// from (mTLS) when set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: String,
    pub key_file: String,
    pub client_ca_file: String,
}

impl ServerConfig {
    /// The TLS listener's address, if one is set.
    pub fn tls_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.tls_bind.is_empty() {
            return Ok(None);
        }
        self.tls_bind.parse().map(Some).map_err(|_| {
            err(format!(
                "server.tls_bind: expected host:port such as 0.0.0.0:8883, got `{}`",
                self.tls_bind
            ))
        })
    }
}

/// `[auth]`: who may connect.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `true`, `false`, or unset ("auto": true without a password file, false with one).
    pub allow_anonymous: String,
    /// mosquitto_passwd's format; `vibemq passwd FILE USER` writes argon2id entries.
    pub password_file: String,
    /// mosquitto's acl_file syntax.
    pub acl_file: String,
}

impl AuthConfig {
    /// `allow_anonymous` as set: Some(yes or no), None for "auto"; Err for anything else.
    fn anonymous_setting(&self) -> Result<Option<bool>, ()> {
        match self.allow_anonymous.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(None),
            "true" | "1" | "yes" | "on" => Ok(Some(true)),
            "false" | "0" | "no" | "off" => Ok(Some(false)),
            _ => Err(()),
        }
    }

    /// Whether clients without credentials may connect.
    pub fn anonymous_allowed(&self) -> bool {
        match self.anonymous_setting() {
            Ok(Some(allowed)) => allowed,
            _ => self.password_file.is_empty(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    /// MQTT over TLS, e.g. "0.0.0.0:8883"; empty: off.
    pub tls_bind: String,
    pub connect_timeout: u64,
    pub max_connections: usize,
    /// Open connections from one source IP (0: no limit).
    pub max_connections_per_ip: usize,
    /// New connections per second from one source IP (0: no limit).
    pub max_connection_rate_per_ip: u32,
    pub shutdown_timeout: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// Bearer token the admin API (`/api/...`) requires; empty: none.
    pub api_token: String,
    /// The same, read from a file (Kubernetes and Docker secrets).
    pub api_token_file: String,
    /// `/metrics` requires the token too.
    pub protect_metrics: bool,
}

impl HttpConfig {
    /// The admin token in force, from `api_token` or `api_token_file` (trimmed), if any.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        match (self.api_token.is_empty(), self.api_token_file.is_empty()) {
            (true, true) => Ok(None),
            (false, false) => Err(err(
                "http.api_token: set either api_token or api_token_file, not both",
            )),
            (false, true) => Ok(Some(self.api_token.clone())),
            (true, false) => {
                let text = std::fs::read_to_string(&self.api_token_file).map_err(|e| {
                    err(format!(
                        "http.api_token_file: cannot read {}: {e}",
                        self.api_token_file
                    ))
                })?;
                let token = text.trim().to_string();
                if token.is_empty() {
                    return Err(err(format!(
                        "http.api_token_file: {} is empty",
                        self.api_token_file
                    )));
                }
                Ok(Some(token))
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub max_keepalive: u16,
    pub max_packet_size: u32,
    pub max_inflight: u16,
    pub max_queued_messages: usize,
    pub queue_qos0_offline: bool,
    pub max_topic_alias: u16,
    pub max_session_expiry: u32,
    pub sys_interval: u64,
    pub allow_zero_length_clientid: bool,
    pub max_topic_levels: usize,
    pub max_topic_length: usize,
    pub max_subscriptions_per_client: usize,
    pub max_sessions: usize,
    pub max_queued_bytes: usize,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    /// PUBLISH packets per second per client (0: no limit).
    pub max_publish_rate: u32,
    /// PUBLISH bytes per second per client (0: no limit).
    pub max_publish_bytes_rate: u64,
    pub slow_subscriber: SlowSubscriber,
}

/// What happens to a subscriber whose queue is full while others of the same messages keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowSubscriber {
    /// Its overflow is dropped and counted; it stays connected.
    Drop,
    /// It is disconnected (v5 reason 0x97 Quota exceeded); a persistent session keeps queueing.
    Disconnect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub enabled: bool,
    pub node_id: String,
    pub name: String,
    pub gossip_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub gossip_advertise_addr: String,
    pub peer_advertise_addr: String,
    pub seeds: Vec<String>,
    pub secret: String,
    pub secret_file: String,
    pub gossip_interval_ms: u64,
    pub failure_phi_threshold: f64,
    pub failure_max_interval_ms: u64,
    pub dead_node_grace_period: u64,
    pub dns_refresh_interval: u64,
    pub dns_server: String,
    /// Bytes queued for one peer (unsent and unacknowledged) past which new messages for it
    /// are dropped and counted.
    pub hold_bytes: usize,
    /// Seconds a failed node's messages are held for its return.
    pub hold_secs: u64,
    /// Bytes in flight to one peer past which publishers whose messages only it wants wait.
    pub link_window_bytes: usize,
    /// Milliseconds of silence after which a peer connection is dead.
    pub link_timeout_ms: u64,
}

impl ClusterConfig {
    /// The seeds as "host:port", with any "name@" prefix removed.
    pub fn seed_addresses(&self) -> Vec<String> {
        self.seeds
            .iter()
            .map(|s| s.split_once('@').map_or(s.as_str(), |(_, a)| a).to_string())
            .collect()
    }

    /// The 32-byte secret from `secret` or `secret_file`, if one is set.
    pub fn secret_key(&self) -> Result<Option<[u8; 32]>, ConfigError> {
        use base64::Engine;
        let (key, text) = match (self.secret.is_empty(), self.secret_file.is_empty()) {
            (true, true) => return Ok(None),
            (false, false) => {
                return Err(err(
                    "cluster.secret: set either secret or secret_file, not both",
                ));
            }
            (false, true) => ("cluster.secret", self.secret.clone()),
            (true, false) => (
                "cluster.secret_file",
                std::fs::read_to_string(&self.secret_file).map_err(|e| {
                    err(format!(
                        "cluster.secret_file: cannot read {}: {e}",
                        self.secret_file
                    ))
                })?,
            ),
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| {
                err(format!(
                    "{key}: not valid base64 (make one with `head -c32 /dev/urandom | base64`)"
                ))
            })?;
        let len = bytes.len();
        bytes
            .try_into()
            .map(Some)
            .map_err(|_| err(format!("{key}: must decode to 32 bytes, got {len} (make one with `head -c32 /dev/urandom | base64`)")))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: String,
}

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
        if !self.auth.password_file.is_empty() {
            crate::auth::passwords::load(std::path::Path::new(&self.auth.password_file))
                .map_err(|e| err(format!("auth.password_file: {e}")))?;
        }
        if !self.auth.acl_file.is_empty() {
            crate::auth::load_acl(std::path::Path::new(&self.auth.acl_file)).map_err(err)?;
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
        if self.server.max_connections == 0 {
            return Err(err("server.max_connections: must be at least 1 (got 0)"));
        }
        if self.server.tls_addr()?.is_some() {
            crate::mqtt::tls_acceptor(&self.tls).map_err(err)?;
        }
        self.http.token()?;
        if self.http.protect_metrics && self.http.token()?.is_none() {
            return Err(err(
                "http.protect_metrics: needs http.api_token or http.api_token_file",
            ));
        }
        self.validate_cluster()?;
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
        if c.name.is_empty() {
            return Err(err("cluster.name: must not be empty"));
        }
        c.secret_key()?;
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
mod tests {
    use super::*;

    #[test]
    fn allow_anonymous_is_a_boolean_or_unset() {
        let auth = |text: &str| load_str(text).map(|c| c.auth);
        assert!(auth("").unwrap().anonymous_allowed(), "no file: allowed");
        assert!(
            !auth("[auth]\nallow_anonymous = false\n")
                .unwrap()
                .anonymous_allowed()
        );
        assert!(
            auth("[auth]\nallow_anonymous = true\n")
                .unwrap()
                .anonymous_allowed()
        );
        let e = auth("[auth]\nallow_anonymous = \"maybe\"\n").unwrap_err();
        assert!(e.to_string().contains("auth.allow_anonymous"), "{e}");
        let from_env = Config::load(
            None,
            &[(
                "auth.allow_anonymous".into(),
                "no".into(),
                Source::Env("VIBEMQ_AUTH_ALLOW_ANONYMOUS"),
            )],
        )
        .unwrap();
        assert!(!from_env.auth.anonymous_allowed());
    }

    fn load_str(text: &str) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("vibemq-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "{:x}.toml",
            text.len() * 31 + text.bytes().map(usize::from).sum::<usize>()
        ));
        std::fs::write(&path, text).unwrap();
        let r = Config::load(Some(&path), &[]);
        let _ = std::fs::remove_file(&path);
        r
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let c = Config::default_config();
        assert_eq!(c.server.bind.to_string(), "0.0.0.0:1883");
        assert_eq!(c.mqtt.max_keepalive, 65535);
        assert_eq!(c.mqtt.max_packet_size, 1_048_576);
        assert_eq!(c.mqtt.max_inflight, 32);
        assert_eq!(c.mqtt.max_queued_messages, 1000);
        assert_eq!(c.log.level, "info");
    }

    #[test]
    fn file_values_override_defaults() {
        let c =
            load_str("[server]\nbind = \"127.0.0.1:2883\"\n[mqtt]\nmax_inflight = 5\n").unwrap();
        assert_eq!(c.server.bind.to_string(), "127.0.0.1:2883");
        assert_eq!(c.mqtt.max_inflight, 5);
        assert_eq!(c.mqtt.max_queued_messages, 1000);
    }

    #[test]
    fn errors_name_the_key() {
        let e = load_str("[mqtt]\nmax_inflight = 0\n").unwrap_err();
        assert!(e.0.starts_with("mqtt.max_inflight:"), "{e}");
        let e = load_str("[mqtt]\nmax_infligt = 3\n").unwrap_err();
        assert_eq!(e.0, "mqtt.max_infligt: unknown key");
        let e = load_str("[mqtt]\nmax_inflight = \"many\"\n").unwrap_err();
        assert_eq!(e.0, "mqtt.max_inflight: expected integer, got string");
        let e = load_str("[server]\nbind = \"localhost\"\n").unwrap_err();
        assert!(
            e.0.starts_with("server.bind: invalid socket address"),
            "{e}"
        );
        let e = load_str("[mqtt]\nmax_inflight = 70000\n").unwrap_err();
        assert!(e.0.starts_with("mqtt.max_inflight: invalid value"), "{e}");
        let e = load_str("[log]\nlevel = \"loud\"\n").unwrap_err();
        assert!(e.0.starts_with("log.level:"), "{e}");
        let e = load_str("[mqtt\n").unwrap_err();
        assert!(e.0.contains("line 1"), "{e}");
    }

    #[test]
    fn overrides_apply_in_order_and_are_typed() {
        let o = vec![
            (
                "mqtt.max_inflight".to_string(),
                "7".to_string(),
                Source::Env("VIBEMQ_MQTT_MAX_INFLIGHT"),
            ),
            (
                "mqtt.max_inflight".to_string(),
                "9".to_string(),
                Source::Flag("--max-inflight"),
            ),
            (
                "mqtt.queue_qos0_offline".to_string(),
                "true".to_string(),
                Source::Env("X"),
            ),
        ];
        let c = Config::load(None, &o).unwrap();
        assert_eq!(c.mqtt.max_inflight, 9);
        assert!(c.mqtt.queue_qos0_offline);
        let bad = vec![(
            "mqtt.max_inflight".to_string(),
            "x".to_string(),
            Source::Env("VIBEMQ_MQTT_MAX_INFLIGHT"),
        )];
        let e = Config::load(None, &bad).unwrap_err();
        assert_eq!(
            e.0,
            "mqtt.max_inflight (from VIBEMQ_MQTT_MAX_INFLIGHT): expected an integer, got `x`"
        );
    }

    #[test]
    fn cluster_section_in_both_forms_and_its_errors() {
        let table = "[cluster]\nenabled = true\nnode_id = \"n1\"\nseeds = [\"n2@node2:7946\", \"10.0.0.3:7946\"]\n";
        let c = load_str(table).unwrap();
        assert!(c.cluster.enabled);
        assert_eq!(c.cluster.seed_addresses(), ["node2:7946", "10.0.0.3:7946"]);
        let array = table.replace("[cluster]", "[[cluster]]");
        assert_eq!(load_str(&array).unwrap().cluster.node_id, "n1");
        let two = format!("{array}{array}");
        assert!(
            load_str(&two)
                .unwrap_err()
                .0
                .starts_with("cluster: the [[cluster]] form")
        );
        let e = load_str("[cluster]\nseeds = [\"node1\"]\n").unwrap_err();
        assert_eq!(
            e.0,
            "cluster.seeds[0]: `node1` needs a host and a port, e.g. `node1:7946`"
        );
        let e = load_str("[cluster]\nsecret = \"c2hvcnQ=\"\n").unwrap_err();
        assert!(
            e.0.starts_with("cluster.secret: must decode to 32 bytes, got 5"),
            "{e}"
        );
        let e = load_str("[cluster]\nsecret = \"***\"\n").unwrap_err();
        assert!(e.0.starts_with("cluster.secret: not valid base64"), "{e}");
        let e = load_str("[cluster]\ndns_server = \"dns.local\"\n").unwrap_err();
        assert!(e.0.starts_with("cluster.dns_server:"), "{e}");
        let key = "[cluster]\nsecret = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n";
        assert_eq!(
            load_str(key).unwrap().cluster.secret_key().unwrap(),
            Some([0u8; 32])
        );
    }

    #[test]
    fn list_and_float_overrides() {
        let o = vec![
            (
                "cluster.seeds".to_string(),
                "a:1, b:2".to_string(),
                Source::Env("VIBEMQ_CLUSTER_SEEDS"),
            ),
            (
                "cluster.failure_phi_threshold".to_string(),
                "5.5".to_string(),
                Source::Flag("--x"),
            ),
        ];
        let c = Config::load(None, &o).unwrap();
        assert_eq!(c.cluster.seeds, ["a:1", "b:2"]);
        assert_eq!(c.cluster.failure_phi_threshold, 5.5);
    }

    #[test]
    fn env_names_map_to_keys() {
        let vars = vec![
            ("VIBEMQ_SERVER_BIND".to_string(), "127.0.0.1:1".to_string()),
            ("VIBEMQ_NOPE".to_string(), "1".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let o = Config::env_overrides(vars);
        assert_eq!(
            o,
            vec![(
                "server.bind".into(),
                "127.0.0.1:1".into(),
                "VIBEMQ_SERVER_BIND".into()
            )]
        );
    }
}
