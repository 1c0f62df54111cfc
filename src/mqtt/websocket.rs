//! MQTT over WebSocket (RFC 6455, MQTT 5.0 section 6): the HTTP upgrade at path `/mqtt` with
//! subprotocol `mqtt` (or the older `mqttv3.1`), then binary messages read and written as
//! one byte stream, so MQTT packets may span messages and a message may hold several
//! (MQTT-6.0.0-2, -3). A text message closes the connection (MQTT-6.0.0-1). The stream is a
//! `ClientStream` like TCP, so the same limits and flow control apply unchanged. With
//! `server.ws_allowed_origins` set, a browser's upgrade from a page of another origin is
//! refused (403): a web page a user visits cannot use their network position to reach the
//! broker. Clients that send no Origin (not browsers) are not affected.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::stream::{CertificateIdentity, ClientStream};

/// The one path MQTT is served at.
pub const PATH: &str = "/mqtt";
/// Subprotocols accepted, in the order preferred.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];
/// Bytes a WebSocket message may carry beyond one MQTT packet of the largest allowed size.
const MESSAGE_SLACK: usize = 64 * 1024;

/// Why an upgrade was refused, for the log and the metric.
#[derive(Debug)]
pub struct Refused(pub String);

/// Performs the upgrade on `stream` (already through TLS for wss). Messages larger than
/// `max_packet_size` plus a little slack close the connection, as an oversized packet does.
/// `allowed_origins`: the browser origins admitted (empty: any).
pub async fn accept<S>(
    stream: S,
    max_packet_size: usize,
    allowed_origins: &[String],
) -> Result<WsByteStream<S>, Refused>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limit = max_packet_size.saturating_add(MESSAGE_SLACK);
    let config = WebSocketConfig::default()
        // Small: an idle connection should cost little; it grows for large messages.
        .read_buffer_size(4096)
        // Every write goes out at once: the connection batches its output itself.
        .write_buffer_size(0)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    // The signature is tungstenite's callback's (as `choose`'s).
    #[allow(clippy::result_large_err)]
    let check =
        |request: &Request, response: Response| match origin_refused(request, allowed_origins) {
            Some(refused) => Err(refused),
            None => choose(request, response),
        };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config))
        .await
        .map_err(|e| Refused(e.to_string()))?;
    Ok(WsByteStream {
        ws,
        unread: Bytes::new(),
        sending: None,
    })
}

/// The upgrade's checks: the path, and a subprotocol MQTT clients offer. A client offering no
/// subprotocol at all is served anyway (some embedded clients omit the header); one offering
/// only others is refused.
// The signature is tungstenite's callback's; the response is built once per upgrade.
#[allow(clippy::result_large_err)]
fn choose(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() != PATH {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            "MQTT over WebSocket is served at /mqtt",
        ));
    }
    let offered: Vec<String> = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_ascii_lowercase())
        .collect();
    if offered.is_empty() {
        return Ok(response);
    }
    match SUBPROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
    {
        Some(chosen) => {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(chosen));
            Ok(response)
        }
        None => Err(refusal(
            StatusCode::BAD_REQUEST,
            "the WebSocket subprotocol must be mqtt (or mqttv3.1)",
        )),
    }
}

/// A browser's upgrade from an origin `allowed` does not list (an empty list, or `*` in it,
/// admits any; a request without an Origin header is not a browser's and passes).
fn origin_refused(request: &Request, allowed: &[String]) -> Option<ErrorResponse> {
    if allowed.is_empty() || allowed.iter().any(|a| a == "*") {
        return None;
    }
    let origin = request.headers().get("origin")?;
    let admitted = origin.to_str().is_ok_and(|origin| {
        allowed
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    });
    (!admitted).then(|| {
        refusal(
            StatusCode::FORBIDDEN,
            "this page's origin is not in server.ws_allowed_origins",
        )
    })
}

fn refusal(status: StatusCode, why: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(why.to_string()));
    *response.status_mut() = status;
    response
}

/// A WebSocket connection seen as the byte stream of the binary messages it carries.
pub struct WsByteStream<S> {
    ws: WebSocketStream<S>,
    /// What is left of the last binary message received.
    unread: Bytes,
    /// Bytes of the message being written, until it has reached the socket.
    sending: Option<usize>,
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::from(io::ErrorKind::BrokenPipe)
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsByteStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.unread.is_empty() {
                let n = self.unread.len().min(buf.remaining());
                buf.put_slice(&self.unread[..n]);
                self.unread.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.unread = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text WebSocket message (MQTT is carried in binary messages)",
                    )));
                }
                // Pings are answered by the WebSocket layer; pongs need nothing.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

/// Each write becomes one binary message, and is reported written once it has reached the
/// socket: the connection keeps no output it believes sent in a buffer nobody flushes.
/// Should the caller give up on a pending write and write again, the message already begun
/// stands for the first bytes of the new buffer; the connection only ever appends to the
/// buffer it writes from, so those are the same bytes.
impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsByteStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.sending.is_none() {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
            Pin::new(&mut self.ws)
                .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
                .map_err(io_error)?;
            self.sending = Some(buf.len());
        }
        ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(io_error)?;
        Poll::Ready(Ok(self.sending.take().unwrap_or(0)))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

impl<S: ClientStream> ClientStream for WsByteStream<S> {
    type Reader = ReadHalf<WsByteStream<S>>;
    type Writer = WriteHalf<WsByteStream<S>>;
    fn into_halves(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
    fn certificate_identity(&self) -> CertificateIdentity {
        self.ws.get_ref().certificate_identity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, protocols: Option<&str>) -> Request {
        let mut r = Request::builder().uri(path);
        if let Some(p) = protocols {
            r = r.header("Sec-WebSocket-Protocol", p);
        }
        r.body(()).unwrap()
    }

    fn chosen(r: &Response) -> Option<&str> {
        r.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
    }

    #[test]
    fn the_upgrade_checks_path_and_subprotocol() {
        let ok = choose(&request("/mqtt", Some("mqtt")), Response::default()).unwrap();
        assert_eq!(chosen(&ok), Some("mqtt"));
        let old = choose(&request("/mqtt", Some("mqttv3.1")), Response::default()).unwrap();
        assert_eq!(chosen(&old), Some("mqttv3.1"));
        let listed = choose(&request("/mqtt", Some("wamp, MQTT")), Response::default()).unwrap();
        assert_eq!(chosen(&listed), Some("mqtt"));
        let none = choose(&request("/mqtt", None), Response::default()).unwrap();
        assert_eq!(chosen(&none), None);
        let other = choose(&request("/mqtt", Some("wamp")), Response::default()).unwrap_err();
        assert_eq!(other.status(), StatusCode::BAD_REQUEST);
        let path = choose(&request("/", Some("mqtt")), Response::default()).unwrap_err();
        assert_eq!(path.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn browsers_from_other_origins_are_refused_when_origins_are_listed() {
        let from = |origin: Option<&str>| {
            let mut r = Request::builder().uri("/mqtt");
            if let Some(o) = origin {
                r = r.header("Origin", o);
            }
            r.body(()).unwrap()
        };
        let listed = vec!["https://app.example.com/".to_string()];
        let refused = origin_refused(&from(Some("https://evil.example")), &listed).unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(origin_refused(&from(Some("https://APP.example.com")), &listed).is_none());
        assert!(
            origin_refused(&from(None), &listed).is_none(),
            "not a browser"
        );
        // The control: no list (the default), or `*`, admits any origin.
        assert!(origin_refused(&from(Some("https://evil.example")), &[]).is_none());
        let any = vec!["*".to_string()];
        assert!(origin_refused(&from(Some("https://evil.example")), &any).is_none());
    }
}
