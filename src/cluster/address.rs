//! Who this node is on the network: its node id (configured, else the host name) and the
//! addresses it advertises to other nodes for gossip and the peer relay (configured, else the
//! bound address, else this host's address by its name, never a silent loopback address).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::ClusterConfig;

/// This node's id: the configured one, else the host name.
/// Whether `id` can be a node id: 1 to 255 bytes, no control characters (so a node id read
/// from gossip never forges or breaks a log line).
pub fn valid_node_id(id: &str) -> bool {
    (1..=255).contains(&id.len()) && !id.chars().any(char::is_control)
}

pub fn node_id(config: &ClusterConfig) -> Arc<str> {
    if config.node_id.is_empty() {
        gethostname::gethostname()
            .to_string_lossy()
            .into_owned()
            .into()
    } else {
        config.node_id.as_str().into()
    }
}

/// The address others reach a socket bound at `bound` by: the configured advertise address,
/// else the bound one, with an unspecified IP replaced by this host's address.
pub(super) async fn advertised(
    configured: &str,
    bound: SocketAddr,
    key: &str,
) -> anyhow::Result<SocketAddr> {
    if !configured.is_empty() {
        let mut addrs = tokio::net::lookup_host(configured)
            .await
            .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        let addr = addrs
            .next()
            .ok_or_else(|| anyhow::anyhow!("{key}: {configured} has no address"))?;
        // Port 0 in the advertised address means "the port actually bound".
        return Ok(if addr.port() == 0 {
            SocketAddr::new(addr.ip(), bound.port())
        } else {
            addr
        });
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound);
    }
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let found = tokio::net::lookup_host((host.as_str(), 0))
        .await
        .map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<_>>())
        .map_err(|e| e.to_string());
    let ip = reachable_ip(found).map_err(|why| {
        anyhow::anyhow!(
            "{key}: {bound} listens on every interface and this host's name `{host}` {why}, so \
             other nodes would be told an address they cannot reach; set {key} (Kubernetes: \
             from the pod IP, status.podIP)"
        )
    })?;
    Ok(SocketAddr::new(ip, bound.port()))
}

/// The address to advertise among those the host name resolved to: the first one that is
/// not loopback. A loopback address reaches no other host, so none is an error (never a
/// silent 127.0.0.1).
fn reachable_ip(resolved: Result<Vec<IpAddr>, String>) -> Result<IpAddr, String> {
    let addrs = resolved.map_err(|e| format!("does not resolve ({e})"))?;
    addrs
        .iter()
        .copied()
        .find(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .ok_or_else(|| match addrs.is_empty() {
            true => "resolves to no address".to_string(),
            false => format!("resolves only to loopback addresses ({addrs:?})"),
        })
}

#[cfg(test)]
mod tests {
    use super::reachable_ip;
    use std::net::IpAddr;

    fn ips(list: &[&str]) -> Result<Vec<IpAddr>, String> {
        Ok(list.iter().map(|a| a.parse().unwrap()).collect())
    }

    #[test]
    fn the_first_address_other_hosts_can_reach_is_advertised() {
        let picked = reachable_ip(ips(&["127.0.1.1", "::1", "10.1.2.3", "10.9.9.9"]));
        assert_eq!(picked, Ok("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn a_host_name_with_only_loopback_or_no_address_is_an_error_not_127_0_0_1() {
        let only_loopback = reachable_ip(ips(&["127.0.1.1", "::1"])).unwrap_err();
        assert!(
            only_loopback.contains("only to loopback"),
            "{only_loopback}"
        );
        let none = reachable_ip(ips(&[])).unwrap_err();
        assert!(none.contains("no address"), "{none}");
        let failed = reachable_ip(Err("no such host".into())).unwrap_err();
        assert!(
            failed.contains("does not resolve (no such host)"),
            "{failed}"
        );
    }
}
