//! Seed discovery: seeds given as IP:port are used as they are; names are resolved to every
//! A/AAAA record with hickory-resolver (the system's resolver configuration, or
//! `cluster.dns_server`), again every `dns_refresh_interval`, and chitchat is asked to gossip
//! with each address found, so nodes that a Kubernetes HPA or `docker compose --scale` adds
//! behind one name are found without a restart.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::Resolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::config::ClusterConfig;

pub struct Seeds {
    fixed: Vec<SocketAddr>,
    names: Vec<(String, u16)>,
    resolver: Option<Resolver<TokioRuntimeProvider>>,
}

impl Seeds {
    pub fn new(config: &ClusterConfig) -> anyhow::Result<Seeds> {
        let mut fixed = Vec::new();
        let mut names = Vec::new();
        for seed in config.seed_addresses() {
            match seed.parse::<SocketAddr>() {
                Ok(addr) => fixed.push(addr),
                Err(_) => {
                    let (host, port) = seed.rsplit_once(':').expect("validated: seeds have a port");
                    names.push((
                        host.to_string(),
                        port.parse().expect("validated: port is a number"),
                    ));
                }
            }
        }
        let resolver = if names.is_empty() {
            None
        } else {
            Some(build_resolver(&config.dns_server)?)
        };
        Ok(Seeds {
            fixed,
            names,
            resolver,
        })
    }

    /// Every address the seeds stand for now. Names that do not resolve are logged and skipped.
    pub async fn resolve(&self) -> BTreeSet<SocketAddr> {
        let mut out: BTreeSet<SocketAddr> = self.fixed.iter().copied().collect();
        let Some(resolver) = &self.resolver else {
            return out;
        };
        for (host, port) in &self.names {
            match resolver.lookup_ip(host.as_str()).await {
                Ok(ips) => out.extend(ips.iter().map(|ip| SocketAddr::new(ip, *port))),
                Err(e) => tracing::warn!(seed = %host, error = %e, "cannot resolve seed"),
            }
        }
        out
    }
}

fn build_resolver(dns_server: &str) -> anyhow::Result<Resolver<TokioRuntimeProvider>> {
    let mut builder = if dns_server.is_empty() {
        Resolver::builder_tokio()?
    } else {
        let server: SocketAddr = dns_server.parse()?;
        let mut ns = NameServerConfig::udp_and_tcp(server.ip());
        for c in &mut ns.connections {
            c.port = server.port();
        }
        Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        )
    };
    // Each refresh must see the records as they are now, not as cached.
    builder.options_mut().cache_size = 0;
    Ok(builder.build()?)
}

/// Resolves the seeds every `interval` and hands each address to `gossip`, until shutdown.
pub async fn refresh(
    seeds: Seeds,
    interval: Duration,
    own: SocketAddr,
    gossip: impl Fn(SocketAddr),
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut known = BTreeSet::new();
    loop {
        let now = seeds.resolve().await;
        for addr in now.difference(&known) {
            if *addr != own {
                tracing::info!(seed = %addr, "seed address discovered");
            }
        }
        for addr in &now {
            if *addr != own {
                gossip(*addr);
            }
        }
        known = now;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}
