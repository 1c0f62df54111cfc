//! The PROXY protocol (HAProxy's, v1 text and v2 binary) in front of an MQTT listener with
//! `server.proxy_protocol = true`: the header a load balancer sends before the client's bytes
//! names the client's real address, which then stands for the socket's in logs and per-IP
//! limits. The header is read exactly (never a byte of what follows) and bounded: 107 bytes
//! for v1, 16 plus 536 for v2, as the specification allows. Parsing is the `ppp` crate's.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// v2 headers begin with these 12 bytes.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line the specification allows, CRLF included.
const V1_MAX: usize = 107;
/// The most address and TLV bytes a v2 header may carry here (the specification advises
/// receivers to accept at least 536 bytes of header in all).
const V2_MAX_BODY: usize = 536;

/// Reads the PROXY header at the start of `stream`. Returns the client's address, or
/// `socket` when the header is LOCAL / UNKNOWN (a health check from the balancer itself).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    socket: SocketAddr,
) -> Result<SocketAddr, String> {
    let mut head = [0u8; 16];
    stream
        .read_exact(&mut head[..5])
        .await
        .map_err(|e| format!("no PROXY header: {e}"))?;
    if &head[..5] == b"PROXY" {
        let mut line = head[..5].to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err("PROXY v1 header longer than 107 bytes".into());
            }
            line.push(
                stream
                    .read_u8()
                    .await
                    .map_err(|e| format!("truncated PROXY v1 header: {e}"))?,
            );
        }
        return v1_source(&line, socket);
    }
    if head[..5] != V2_SIGNATURE[..5] {
        return Err("the connection does not start with a PROXY protocol header".into());
    }
    stream
        .read_exact(&mut head[5..])
        .await
        .map_err(|e| format!("truncated PROXY v2 header: {e}"))?;
    if head[..12] != V2_SIGNATURE {
        return Err("bad PROXY v2 signature".into());
    }
    let body = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if body > V2_MAX_BODY {
        return Err(format!(
            "PROXY v2 header of {body} bytes (at most {V2_MAX_BODY})"
        ));
    }
    let mut whole = head.to_vec();
    whole.resize(16 + body, 0);
    stream
        .read_exact(&mut whole[16..])
        .await
        .map_err(|e| format!("truncated PROXY v2 header: {e}"))?;
    v2_source(&whole, socket)
}

fn v1_source(line: &[u8], socket: SocketAddr) -> Result<SocketAddr, String> {
    use ppp::v1::{Addresses, Header};
    let header = Header::try_from(line).map_err(|e| format!("bad PROXY v1 header: {e}"))?;
    Ok(match header.addresses {
        Addresses::Tcp4(a) => SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
        Addresses::Tcp6(a) => SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
        Addresses::Unknown => socket,
    })
}

fn v2_source(bytes: &[u8], socket: SocketAddr) -> Result<SocketAddr, String> {
    use ppp::v2::{Addresses, Command, Header};
    let header = Header::try_from(bytes).map_err(|e| format!("bad PROXY v2 header: {e}"))?;
    if header.command == Command::Local {
        return Ok(socket);
    }
    Ok(match header.addresses {
        Addresses::IPv4(a) => SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
        Addresses::IPv6(a) => SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
        Addresses::Unspecified | Addresses::Unix(_) => socket,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<SocketAddr, String>, Vec<u8>) {
        let socket: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mut input = bytes;
        let got = read_header(&mut input, socket).await;
        (got, input.to_vec())
    }

    #[tokio::test]
    async fn both_versions_name_the_client_and_leave_what_follows() {
        let (got, rest) = parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 1883\r\n\x10\x0c").await;
        assert_eq!(got.unwrap(), "192.0.2.7:40000".parse().unwrap());
        assert_eq!(
            rest, b"\x10\x0c",
            "the MQTT bytes after the header stay unread"
        );

        let (got, _) = parse(b"PROXY TCP6 2001:db8::5 2001:db8::1 40001 1883\r\n").await;
        assert_eq!(got.unwrap(), "[2001:db8::5]:40001".parse().unwrap());
        let (got, _) = parse(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(got.unwrap(), "10.0.0.1:5000".parse().unwrap());

        let from: SocketAddr = "198.51.100.9:41000".parse().unwrap();
        let to: SocketAddr = "10.0.0.1:1883".parse().unwrap();
        let mut v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (from, to),
        )
        .write_tlv(ppp::v2::Type::NoOp, b"pad")
        .unwrap()
        .build()
        .unwrap();
        v2.extend_from_slice(b"\x10");
        let (got, rest) = parse(&v2).await;
        assert_eq!(got.unwrap(), from);
        assert_eq!(rest, b"\x10");
    }

    #[tokio::test]
    async fn anything_else_is_refused_within_bounds() {
        let (got, _) = parse(b"\x10\x0c\x00\x04MQTT").await;
        assert!(got.unwrap_err().contains("does not start with"));
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        let (got, _) = parse(long.as_bytes()).await;
        assert!(got.unwrap_err().contains("longer than 107"));
        let (got, _) = parse(b"PROXY TCP4 nonsense\r\n").await;
        assert!(got.unwrap_err().contains("bad PROXY v1"));
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let (got, _) = parse(&big).await;
        assert!(got.unwrap_err().contains("at most 536"));
        let (got, _) = parse(b"PROXY TCP4 1.2.3.4").await;
        assert!(got.unwrap_err().contains("truncated"));
    }
}
