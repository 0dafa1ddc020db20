//! A loopback TCP proxy that a test can cut, stall and restore, to take a broker (or
//! any server) away from one service without stopping it for every other test.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Open,
    /// Connections dropped, new ones closed at once: a server that is down.
    Cut,
    /// Connections kept open with nothing passing, new ones accepted and never
    /// answered: a server behind a network partition, or one that hangs.
    Stalled,
}

pub struct TcpProxy {
    addr: SocketAddr,
    link: Arc<watch::Sender<Link>>,
}

impl TcpProxy {
    /// Starts forwarding a fresh loopback port to `target`.
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let link = Arc::new(watch::Sender::new(Link::Open));
        let target = target.to_string();
        let state = link.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    break;
                };
                let mut changes = state.subscribe();
                let link = *state.borrow();
                match link {
                    // The client sees its connection closed at once.
                    Link::Cut => continue,
                    Link::Stalled => {
                        tokio::spawn(async move {
                            let _held = inbound;
                            let _ = changes
                                .wait_for(|link| *link != Link::Stalled)
                                .await
                                .map(drop);
                        });
                        continue;
                    }
                    Link::Open => {}
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = async { changes.wait_for(|link| *link != Link::Open).await.map(drop) } => {
                            // Stalled: hold both ends, pass nothing, until cut or restored.
                            let _ = changes.wait_for(|link| *link != Link::Stalled).await.map(drop);
                        }
                    }
                });
            }
        });
        Self { addr, link }
    }

    /// `host:port` to connect to instead of the target.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Drops every live connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        self.link.send_replace(Link::Cut);
    }

    /// Passes nothing more, in either direction, on live or new connections, and
    /// closes none of them, until `restore` (or `cut`).
    pub fn stall(&self) {
        self.link.send_replace(Link::Stalled);
    }

    pub fn restore(&self) {
        self.link.send_replace(Link::Open);
    }
}
