//! A TCP proxy on loopback whose connections the test can cut at will (new ones are still
//! accepted), to break peer links between live nodes; and tamper with, flipping one bit of the
//! next bytes the connecting side sends, as an attacker on the path would.

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
    task: tokio::task::JoinHandle<()>,
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
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut cut_rx = cut_tx.subscribe();
                let tamper = tamper_flag.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::select! {
                        _ = forward(in_read, out_write, Some(tamper)) => {}
                        _ = forward(out_read, in_write, None) => {}
                        _ = cut_rx.recv() => {} // both sockets dropped: the link breaks
                    }
                });
            }
        });
        CutProxy {
            addr,
            cut,
            tamper,
            task,
        }
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
