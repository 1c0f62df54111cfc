//! The HTTP endpoint (axum): `/health` (alive), `/ready` (serving, and joined when seeds are
//! configured), `/metrics` (Prometheus), `/api/v1/cluster` and `/api/v1/clients` (paged). With
//! `http.api_token` set, the API (and with `http.protect_metrics` the metrics) answer only
//! requests bearing the token; health and readiness stay open for probes.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{OpsState, metrics};

struct AppState {
    ops: Arc<OpsState>,
    registry: Registry,
    token: ApiToken,
    protect_metrics: bool,
}

/// What the admin endpoints require.
enum ApiToken {
    /// No token configured, on a loopback bind: only this host reaches it.
    Open,
    /// `http.api_token` (or the file's), kept as its SHA-256: requests are compared digest to
    /// digest, so neither the token's bytes nor its length show in the time a refusal takes.
    Required([u8; 32]),
    /// The token file became unreadable after start-up: closed, never open.
    Closed,
    /// No token and a bind beyond loopback: the API is off (health, readiness and metrics
    /// stay).
    Off,
}

impl ApiToken {
    /// The API's guard for a bind on `bind_ip`, from `http.api_token` (or its file).
    fn new(token: Result<Option<String>, crate::config::ConfigError>, bind_ip: IpAddr) -> ApiToken {
        use sha2::Digest;
        match token {
            Ok(Some(token)) => ApiToken::Required(sha2::Sha256::digest(token.as_bytes()).into()),
            Ok(None) if bind_ip.is_loopback() => ApiToken::Open,
            Ok(None) => {
                tracing::warn!(
                    bind = %bind_ip,
                    "admin API off: http.bind is not loopback and no http.api_token (or api_token_file) is set; /health, /ready and /metrics are served"
                );
                ApiToken::Off
            }
            Err(e) => {
                tracing::error!(error = %e, "admin token unreadable: the API refuses every request");
                ApiToken::Closed
            }
        }
    }
}

/// Whether a request names this host by a loopback name (or names none): what a page in a
/// browser cannot do for a name it rebound to 127.0.0.1 (DNS rebinding), so a token-less API
/// on loopback answers this host's own tools only.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    // The name without its port; an IPv6 literal in brackets.
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether the request bears the admin token (always, when none is set on loopback and the
/// request names this host as loopback).
fn authorized(app: &AppState, headers: &HeaderMap) -> bool {
    match &app.token {
        ApiToken::Open => loopback_host(headers),
        ApiToken::Closed | ApiToken::Off => false,
        ApiToken::Required(token) => bearer_matches(headers, token),
    }
}

/// Whether the request's bearer token has the SHA-256 `token`: the digests are compared in
/// constant time, so the time taken says nothing of the token's bytes or length.
fn bearer_matches(headers: &HeaderMap, token: &[u8; 32]) -> bool {
    use sha2::Digest;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let given: [u8; 32] = sha2::Sha256::digest(given.as_bytes()).into();
    given
        .iter()
        .zip(token)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// The refusal of a request without the token (or of any, while the API is off).
fn unauthorized(app: &AppState) -> Response {
    if matches!(app.token, ApiToken::Open) {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({ "error": "without http.api_token the admin API answers requests for localhost only" })),
        )
            .into_response();
    }
    if matches!(app.token, ApiToken::Off) {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({ "error": "the admin API is off: http.bind is not loopback and no http.api_token is set" })),
        )
            .into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({ "error": "this endpoint requires the admin token (http.api_token)" })),
    )
        .into_response()
}

/// Serves until `shutdown` turns true.
pub async fn serve(listener: TcpListener, ops: Arc<OpsState>, mut shutdown: watch::Receiver<bool>) {
    let registry = metrics::registry(ops.clone());
    // Validated at start-up; a file that vanished since leaves the API closed, never open.
    let bind_ip = listener
        .local_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let token = ApiToken::new(ops.broker.config.http.token(), bind_ip);
    let protect_metrics = ops.broker.config.http.protect_metrics;
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(prometheus))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/clients", get(clients))
        .with_state(Arc::new(AppState {
            ops,
            registry,
            token,
            protect_metrics,
        }));
    let stop = async move { crate::stopped(&mut shutdown).await };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::warn!(error = %e, "HTTP endpoint stopped");
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(app): State<Arc<AppState>>) -> Response {
    let ops = &app.ops;
    let all = ops.cluster.as_ref().map(|c| c.peers());
    let peers = all
        .as_ref()
        .map(|p| p.iter().filter(|p| p.connected).count());
    // Every link that does not deliver, by name and state: what to look at first.
    let degraded: Option<serde_json::Map<String, serde_json::Value>> = all.as_ref().map(|p| {
        p.iter()
            .filter(|p| !p.connected)
            .map(|p| (p.node_id.to_string(), json!(p.status)))
            .collect()
    });
    let mut body = json!({
        "node_id": &*ops.broker.node_id,
        "peers_connected": peers,
        "links_not_delivering": degraded,
        "clients": crate::broker::Metrics::get(&ops.broker.metrics.connections_current),
    });
    match ops.not_ready_reason() {
        None => {
            body["status"] = json!("ready");
            (StatusCode::OK, Json(body)).into_response()
        }
        Some(reason) => {
            body["status"] = json!("not ready");
            body["reason"] = json!(reason);
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn prometheus(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if app.protect_metrics && !authorized(&app, &headers) {
        return unauthorized(&app);
    }
    let text = metrics::render(&app.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn cluster(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !authorized(&app, &headers) {
        return unauthorized(&app);
    }
    cluster_view(&app).into_response()
}

fn cluster_view(app: &AppState) -> Json<serde_json::Value> {
    let ops = &app.ops;
    let now = crate::broker::now_ms();
    let Some(c) = &ops.cluster else {
        return Json(json!({ "enabled": false, "members": [] }));
    };
    let mut members = vec![json!({
        "node_id": &*c.node_id,
        "self": true,
        "gossip_addr": c.gossip_addr,
        "peer_addr": c.peer_addr,
        "status": "self",
        "generation": c.generation,
        "uptime_secs": now.saturating_sub(c.generation) / 1000,
    })];
    for p in c.peers() {
        members.push(json!({
            "node_id": &*p.node_id,
            "self": false,
            "gossip_addr": p.gossip_addr,
            "peer_addr": p.peer_addr,
            "status": p.status,
            "generation": p.generation,
            "uptime_secs": now.saturating_sub(p.generation) / 1000,
            "link": if p.connected { "up" } else { "down" },
            "queued": p.queued,
            "queued_bytes": p.queued_bytes,
            "stalled_ms": p.stalled_ms,
        }));
    }
    let mut warnings = Vec::new();
    if !c.secured() {
        warnings.push("no cluster.secret: links and gossip are unauthenticated and in the clear");
    }
    Json(json!({
        "enabled": true,
        "cluster": c.name,
        "node_id": &*c.node_id,
        "secret": c.secured(),
        "warnings": warnings,
        "members": members,
    }))
}

#[derive(Deserialize)]
struct Page {
    page: Option<usize>,
    per_page: Option<usize>,
}

async fn clients(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<Page>,
) -> Response {
    if !authorized(&app, &headers) {
        return unauthorized(&app);
    }
    clients_page(&app, &q).into_response()
}

fn clients_page(app: &AppState, q: &Page) -> Json<serde_json::Value> {
    let per_page = q.per_page.unwrap_or(100).clamp(1, 1000);
    let page = q.page.unwrap_or(1).max(1);
    let broker = &app.ops.broker;
    let mut ids: Vec<Arc<str>> = broker.sessions.iter().map(|e| e.key().clone()).collect();
    ids.sort();
    let total = ids.len();
    let rows: Vec<serde_json::Value> = ids
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .filter_map(|id| broker.sessions.get(id).map(|s| s.clone()))
        .map(|s| {
            let st = s.state.lock();
            let conn = st.connection.as_ref();
            // The nodes keeping a copy of the session (`cluster.session_replicas`).
            let replicas: Vec<&str> = st
                .journal
                .as_ref()
                .and_then(|j| j.replicas.as_ref())
                .map(|line| line.nodes.iter().map(|(node, _)| &**node).collect())
                .unwrap_or_default();
            json!({
                "client_id": &*s.client_id,
                "node": &*broker.node_id,
                "replicas": replicas,
                "connected": conn.is_some(),
                "protocol": conn.map(|c| c.protocol.name()),
                "peer": conn.and_then(|c| c.peer),
                "connected_at_ms": conn.map(|c| c.connected_at_ms),
                "subscriptions": st.subscriptions.len(),
                "queued": st.queue.len(),
                "queued_bytes": st.queue.bytes(),
                "inflight": st.inflight.len(),
                "dropped": s.dropped.load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .collect();
    Json(json!({ "total": total, "page": page, "per_page": per_page, "clients": rows }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(v) = value {
            headers.insert(header::HOST, v.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_bearer_token_is_compared_digest_to_digest() {
        use sha2::Digest;
        let token: [u8; 32] = sha2::Sha256::digest(b"s3cret-token").into();
        let bearer = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, v.parse().unwrap());
            headers
        };
        assert!(bearer_matches(&bearer("Bearer s3cret-token"), &token));
        // Shorter, longer, a prefix, another scheme, none: all refused the same way.
        for wrong in [
            "Bearer s3cret",
            "Bearer s3cret-token-and-more",
            "Bearer ",
            "Basic s3cret-token",
        ] {
            assert!(!bearer_matches(&bearer(wrong), &token), "{wrong}");
        }
        assert!(!bearer_matches(&HeaderMap::new(), &token));
    }

    #[test]
    fn a_tokenless_api_answers_requests_for_loopback_names_only() {
        for ok in [
            None,
            Some("127.0.0.1:9090"),
            Some("localhost:9090"),
            Some("LOCALHOST"),
            Some("[::1]:9090"),
            Some("127.0.0.2"),
        ] {
            assert!(loopback_host(&host(ok)), "{ok:?}");
        }
        // A name a page rebound to 127.0.0.1, or any other.
        for bad in [
            Some("evil.example:9090"),
            Some("evil.example"),
            Some("192.0.2.1:9090"),
            Some("[2001:db8::1]:9090"),
        ] {
            assert!(!loopback_host(&host(bad)), "{bad:?}");
        }
    }
}
