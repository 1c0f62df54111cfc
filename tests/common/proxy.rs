//! A TCP proxy on loopback whose connections the test can cut at will (new ones are still
//! accepted), to break peer links between live nodes.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

pub struct CutProxy {
    pub addr: SocketAddr,
    cut: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = broadcast::channel(16);
        let cut_tx = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut_rx = cut_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.recv() => {} // both sockets dropped: the link breaks
                    }
                });
            }
        });
        CutProxy { addr, cut, task }
    }

    /// Breaks every connection open now.
    pub fn cut(&self) {
        let _ = self.cut.send(());
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
