//! A TCP proxy on loopback whose connections the test can cut at will (new ones are still
//! accepted), to break peer links between live nodes; and tamper with, flipping one bit of the
//! next bytes the connecting side sends, or of the accepting side's answer to a new
//! connection's handshake, as an attacker on the path would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

pub struct CutProxy {
    pub addr: SocketAddr,
    cut: broadcast::Sender<()>,
    tamper: Arc<AtomicBool>,
    tamper_answer: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Copies the accepting side's bytes of one connection, flipping the last bit of the second
/// length-prefixed element it sends: after its Welcome, its answer to the dialer's proof
/// (the Ready that says where the dialer resumes, sealed or not).
async fn forward_tampering_answer(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) {
    let mut pending = Vec::new();
    let mut element = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while element < 2 && pending.len() >= 4 {
            let len = u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
            if pending.len() < 4 + len {
                break;
            }
            let mut whole: Vec<u8> = pending.drain(..4 + len).collect();
            element += 1;
            if element == 2 {
                *whole.last_mut().unwrap() ^= 1;
            }
            if to.write_all(&whole).await.is_err() {
                return;
            }
        }
        if element >= 2 && !pending.is_empty() {
            if to.write_all(&pending).await.is_err() {
                return;
            }
            pending.clear();
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
    }
}

/// Copies `from` to `to`, flipping the last bit of one read when `tamper` is set.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    tamper: Option<Arc<AtomicBool>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(t) = &tamper
            && t.swap(false, Ordering::Relaxed)
        {
            buf[n - 1] ^= 1;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl CutProxy {
    pub async fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = broadcast::channel(16);
        let cut_tx = cut.clone();
        let tamper = Arc::new(AtomicBool::new(false));
        let tamper_flag = tamper.clone();
        let tamper_answer = Arc::new(AtomicBool::new(false));
        let tamper_answer_flag = tamper_answer.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut cut_rx = cut_tx.subscribe();
                let tamper = tamper_flag.clone();
                let tamper_this_answer = tamper_answer_flag.swap(false, Ordering::Relaxed);
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    let answers = async move {
                        match tamper_this_answer {
                            true => forward_tampering_answer(out_read, in_write).await,
                            false => forward(out_read, in_write, None).await,
                        }
                    };
                    tokio::select! {
                        _ = forward(in_read, out_write, Some(tamper)) => {}
                        _ = answers => {}
                        _ = cut_rx.recv() => {} // both sockets dropped: the link breaks
                    }
                });
            }
        });
        CutProxy {
            addr,
            cut,
            tamper,
            tamper_answer,
            task,
        }
    }

    /// Alters the accepting side's answer to the proof of the next connection made through
    /// the proxy (the handshake's Ready).
    pub fn tamper_next_handshake_answer(&self) {
        self.tamper_answer.store(true, Ordering::Relaxed);
    }

    /// Breaks every connection open now.
    pub fn cut(&self) {
        let _ = self.cut.send(());
    }

    /// Flips one bit in the next bytes a connecting side sends through the proxy.
    pub fn tamper_next(&self) {
        self.tamper.store(true, Ordering::Relaxed);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
