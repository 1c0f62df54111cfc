//! The `vibemq` command: parse flags, load and validate configuration (exit 2 with one line
//! naming the key on error), start a node, and stop it cleanly on SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vibemq::config::{Config, Source};

#[derive(Parser, Debug)]
#[command(
    name = "vibemq",
    version,
    about = "VibeMQ: a clustered MQTT 3.1.1 / 5.0 broker"
)]
struct Cli {
    /// TOML configuration file (defaults are built in; see config/default.toml).
    #[arg(long, short = 'c', env = "VIBEMQ_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// MQTT listen address (server.bind).
    #[arg(long)]
    bind: Option<String>,
    /// Log level or tracing filter (log.level).
    #[arg(long)]
    log_level: Option<String>,
    /// Largest packet in bytes (mqtt.max_packet_size).
    #[arg(long)]
    max_packet_size: Option<String>,
    /// QoS 1/2 messages in flight per client (mqtt.max_inflight).
    #[arg(long)]
    max_inflight: Option<String>,
    /// Messages queued per session (mqtt.max_queued_messages).
    #[arg(long)]
    max_queued_messages: Option<String>,
    /// Cap on client keep alive in seconds (mqtt.max_keepalive).
    #[arg(long)]
    max_keepalive: Option<String>,
    /// Most client connections (server.max_connections).
    #[arg(long)]
    max_connections: Option<String>,
    /// HTTP endpoint address (http.bind).
    #[arg(long)]
    http_bind: Option<String>,
    /// Log format: text or json (log.format).
    #[arg(long)]
    log_format: Option<String>,
    /// Cluster node id (cluster.node_id).
    #[arg(long)]
    node_id: Option<String>,
    /// Cluster seeds, comma-separated host:port (cluster.seeds).
    #[arg(long)]
    seeds: Option<String>,
    /// Clients without credentials: true or false (auth.allow_anonymous; unset: on loopback
    /// listeners only).
    #[arg(long)]
    allow_anonymous: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// GET a path of the HTTP endpoint and print the body: exit 0 on 2xx, 1 otherwise. For
    /// container healthchecks (`vibemq probe /ready`) where no curl is installed.
    Probe {
        /// Path to request, e.g. /ready, /health, /api/v1/cluster.
        path: String,
        /// Address of the HTTP endpoint.
        #[arg(long, default_value = "127.0.0.1:9090")]
        addr: String,
    },
    /// Validate a configuration file (with environment and flags applied) and exit.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Add a user to a password file, or change their password (argon2id; the file is created
    /// if missing, other lines are kept; mosquitto_passwd's files work unchanged). The password
    /// is asked for twice on a terminal, read from the first line of standard input otherwise.
    Passwd {
        /// The password file (`auth.password_file`).
        file: PathBuf,
        /// The user name.
        user: String,
    },
    /// Write a new cluster secret (32 random bytes, base64; `cluster.secret_file`) to FILE,
    /// readable by its owner only, unless FILE already holds one (then nothing changes): a
    /// one-shot container making the secret its cluster's nodes share.
    Secret {
        /// The secret file to create.
        file: PathBuf,
    },
}

impl Cli {
    fn flag_overrides(&self) -> Vec<(String, String, &'static str)> {
        let flags = [
            ("server.bind", &self.bind, "--bind"),
            ("log.level", &self.log_level, "--log-level"),
            ("log.format", &self.log_format, "--log-format"),
            (
                "mqtt.max_packet_size",
                &self.max_packet_size,
                "--max-packet-size",
            ),
            ("mqtt.max_inflight", &self.max_inflight, "--max-inflight"),
            (
                "mqtt.max_queued_messages",
                &self.max_queued_messages,
                "--max-queued-messages",
            ),
            ("mqtt.max_keepalive", &self.max_keepalive, "--max-keepalive"),
            (
                "server.max_connections",
                &self.max_connections,
                "--max-connections",
            ),
            ("http.bind", &self.http_bind, "--http-bind"),
            ("cluster.node_id", &self.node_id, "--node-id"),
            ("cluster.seeds", &self.seeds, "--seeds"),
            (
                "auth.allow_anonymous",
                &self.allow_anonymous,
                "--allow-anonymous",
            ),
        ];
        flags
            .into_iter()
            .filter_map(|(key, value, flag)| {
                value.as_ref().map(|v| (key.to_string(), v.clone(), flag))
            })
            .collect()
    }
}

fn load(cli: &Cli, file: Option<&PathBuf>) -> Result<Config, vibemq::config::ConfigError> {
    let env = Config::env_overrides(std::env::vars());
    let flags = cli.flag_overrides();
    let mut overrides: Vec<(String, String, Source<'_>)> = Vec::new();
    for (key, value, var) in &env {
        overrides.push((key.clone(), value.clone(), Source::Env(var)));
    }
    for (key, value, flag) in &flags {
        overrides.push((key.clone(), value.clone(), Source::Flag(flag)));
    }
    Config::load(file.map(PathBuf::as_path), &overrides)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Probe { path, addr }) = &cli.command {
        return probe(addr, path);
    }
    if let Some(Command::Passwd { file, user }) = &cli.command {
        return passwd(file, user);
    }
    if let Some(Command::Secret { file }) = &cli.command {
        return secret(file);
    }
    if let Some(Command::CheckConfig { file }) = &cli.command {
        return match load(&cli, Some(file)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vibemq: config error: {e}");
                ExitCode::from(2)
            }
        };
    }
    let config = match load(&cli, cli.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vibemq: config error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);
    vibemq::fd_limit::raise_and_log(config.server.max_connections as u64);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vibemq: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown_timeout = config.server.shutdown_timeout;
    runtime.block_on(async {
        let node = match vibemq::Node::start(config).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("vibemq: cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        reload_on_sighup(
            node.broker().clone(),
            node.tls().cloned(),
            node.cluster().cloned(),
        );
        wait_for_signal().await;
        tracing::info!(deadline_secs = shutdown_timeout, "shutting down");
        node.shutdown(Duration::from_secs(shutdown_timeout)).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// A blocking HTTP/1.1 GET with a 5 s limit.
fn probe(addr: &str, path: &str) -> ExitCode {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let limit = Duration::from_secs(5);
    let result = (|| -> std::io::Result<String> {
        let target = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut s = std::net::TcpStream::connect_timeout(&target, limit)?;
        s.set_read_timeout(Some(limit))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        Ok(response)
    })();
    match result {
        Ok(response) => {
            let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
            let ok = head
                .split_whitespace()
                .nth(1)
                .is_some_and(|code| code.starts_with('2'));
            println!("{body}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("vibemq probe: http://{addr}{path}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(log: &vibemq::config::LogConfig) {
    // The store's library narrates every keyspace it opens at info; its warnings and errors
    // still show. A filter naming its own targets (`fjall=debug`) wins.
    let filter = match log.level.contains(['=', ',']) {
        true => log.level.clone(),
        false => format!("{},fjall=warn,lsm_tree=warn", log.level),
    };
    let filter = tracing_subscriber::EnvFilter::new(filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if log.format == "json" {
        builder.json().with_current_span(false).init();
    } else {
        builder
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// SIGHUP reloads the password and ACL files and the TLS certificates; a file that does not
/// load keeps what was in force.
fn reload_on_sighup(
    broker: std::sync::Arc<vibemq::broker::Broker>,
    tls: Option<std::sync::Arc<vibemq::mqtt::tls::Tls>>,
    cluster: Option<std::sync::Arc<vibemq::cluster::Cluster>>,
) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("no SIGHUP handler: files reload only with a restart");
            return;
        };
        while hup.recv().await.is_some() {
            match broker.auth.reload() {
                Ok(users) => tracing::info!(users, "SIGHUP: password and ACL files reloaded"),
                Err(e) => {
                    tracing::warn!(error = %e, "SIGHUP: not reloaded; what was in force stays")
                }
            }
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                    Err(e) => {
                        tracing::warn!(error = %e, "SIGHUP: TLS certificates not reloaded; the previous ones stay")
                    }
                }
            }
            if let Some(cluster) = &cluster {
                match cluster.reload_secrets() {
                    Ok(secrets) => tracing::info!(secrets, "SIGHUP: cluster secrets in force"),
                    Err(e) => {
                        tracing::warn!(error = %e, "SIGHUP: cluster secrets not reloaded; the previous ones stay")
                    }
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (broker, tls, cluster);
}

/// `vibemq passwd FILE USER`.
fn passwd(file: &std::path::Path, user: &str) -> ExitCode {
    use std::io::{BufRead, IsTerminal};
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ");
        let again = rpassword::prompt_password("Password again: ");
        match (first, again) {
            (Ok(a), Ok(b)) if a == b => a,
            (Ok(_), Ok(_)) => {
                eprintln!("vibemq passwd: the passwords differ; nothing changed");
                return ExitCode::from(1);
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("vibemq passwd: cannot read the password: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
            eprintln!("vibemq passwd: cannot read the password: {e}");
            return ExitCode::from(1);
        }
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        eprintln!("vibemq passwd: an empty password; nothing changed");
        return ExitCode::from(1);
    }
    match vibemq::auth::passwords::set_password(file, user, password.as_bytes()) {
        Ok(()) => {
            println!("{}: password set for {user}", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vibemq passwd: {e}");
            ExitCode::from(1)
        }
    }
}

/// `vibemq secret FILE`.
fn secret(file: &std::path::Path) -> ExitCode {
    use base64::Engine;
    use std::io::Write;
    if let Ok(text) = std::fs::read_to_string(file)
        && !text.trim().is_empty()
    {
        println!("{}: holds a secret already; kept", file.display());
        return ExitCode::SUCCESS;
    }
    let mut key = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut key) {
        eprintln!("vibemq secret: no randomness: {e}");
        return ExitCode::from(1);
    }
    let line = format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(file).and_then(|mut f| {
        // Readable by its owner only, also when the file was there (empty) before.
        #[cfg(unix)]
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        f.write_all(line.as_bytes())?;
        f.sync_all()
    });
    match written {
        Ok(()) => {
            println!("{}: new cluster secret written", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vibemq secret: cannot write {}: {e}", file.display());
            ExitCode::from(1)
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
