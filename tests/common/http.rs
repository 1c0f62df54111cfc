//! A minimal HTTP/1.1 GET over a real socket, enough for the ops endpoints (which always send
//! a Content-Length or close the connection).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// (status code, body) of `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    get_with(addr, path, &[]).await
}

/// `GET path` with extra request headers ("Name: value").
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[&str]) -> (u16, String) {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    // A node process sharing 2 cores with the rest of the suite (simulation blocks, other
    // nodes fsyncing) once took longer than WAIT to answer a single GET in CI. A second
    // request on a new connection, with a longer bound, tells a slow moment from a node that
    // stopped answering: that one still fails the test.
    let text = match fetch_once(addr, path, &extra, super::WAIT).await {
        Some(text) => text,
        None => {
            eprintln!(
                "GET {path} at {addr}: no answer within {:?}; asking once more",
                super::WAIT
            );
            fetch_once(addr, path, &extra, 3 * super::WAIT)
                .await
                .unwrap_or_else(|| panic!("GET {path} at {addr}: no answer on two connections"))
        }
    };
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, body.to_string())
}

/// The whole response to one `GET path` on a new connection, or None past `limit`.
async fn fetch_once(
    addr: SocketAddr,
    path: &str,
    extra: &str,
    limit: std::time::Duration,
) -> Option<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the HTTP endpoint");
        // The Host a caller names (as a browser would send it) replaces the address's.
        let names_host = extra
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("host:"));
        let host = match names_host {
            true => String::new(),
            false => format!("Host: {addr}\r\n"),
        };
        let request = format!("GET {path} HTTP/1.1\r\n{host}{extra}Connection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        String::from_utf8(raw).expect("utf-8 response")
    };
    tokio::time::timeout(limit, fetch).await.ok()
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The value of a metric (summed over its labels; a counter's `_total` sample) in /metrics.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name).is_some_and(|rest| {
                let rest = rest.strip_prefix("_total").unwrap_or(rest);
                rest.starts_with(' ') || rest.starts_with('{')
            })
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
