//! Spreading connections evenly over the workers that share a port.
//!
//! The kernel spreads new connections over the workers' `SO_REUSEPORT` sockets by a hash of
//! their addresses: even on average, but a few long-lived connections (keep-alive clients,
//! a load balancer's pool) can land mostly on one worker and leave the other cores idle.
//! Each worker therefore counts the connections it serves, and one that accepts a
//! connection while it has clearly more than another hands it over (the socket, through
//! the other worker's inbox) rather than serve it itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A worker's listening socket, and its place among the workers sharing the port.
pub struct Listener {
    pub(crate) socket: TcpListener,
    pub(crate) balance: Option<Balance>,
}

impl Listener {
    /// `socket`, one of the workers' ([`crate::bind_workers`]) with its [`Balance`].
    pub fn balanced(socket: TcpListener, balance: Balance) -> Self {
        Self {
            socket,
            balance: Some(balance),
        }
    }
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

impl From<TcpListener> for Listener {
    /// A socket served on its own.
    fn from(socket: TcpListener) -> Self {
        Self {
            socket,
            balance: None,
        }
    }
}

/// One worker's share of a [`balance`] group.
pub struct Balance {
    index: usize,
    group: Arc<Group>,
    inbox: mpsc::UnboundedReceiver<Handed>,
}

struct Group {
    /// Connections each worker serves (or was handed and has yet to pick up).
    open: Vec<AtomicUsize>,
    inboxes: Vec<mpsc::UnboundedSender<Handed>>,
}

/// A connection one worker handed to another.
pub(crate) struct Handed {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) seat: Seat,
}

/// A connection's place in its worker's count, given up when it is dropped.
pub(crate) struct Seat {
    group: Arc<Group>,
    index: usize,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.group.open[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where an accepted connection is served.
pub(crate) enum Placed {
    Here(Seat),
    /// Handed over: nothing more to do with it here.
    Elsewhere,
}

/// A group of `workers` that balance their connections, one [`Balance`] for each.
pub fn balance(workers: usize) -> Vec<Balance> {
    let workers = workers.max(1);
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
    let group = Arc::new(Group {
        open: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
        inboxes: senders,
    });
    receivers
        .into_iter()
        .enumerate()
        .map(|(index, inbox)| Balance {
            index,
            group: group.clone(),
            inbox,
        })
        .collect()
}

/// Whether a worker serving `mine` connections should hand a new one to one serving
/// `theirs`: when it has clearly more (by 2, or an eighth, whichever is more), so that the
/// counts even out without a hand-over (two system calls and a wake-up) for every small
/// difference of the moment.
fn hand_over(mine: usize, theirs: usize) -> bool {
    mine > theirs + 2.max(theirs / 8)
}

impl Balance {
    /// Where `stream`, just accepted here, is served: here, or handed to the worker with
    /// the fewest connections.
    pub(crate) fn place(&self, stream: TcpStream, peer: SocketAddr) -> (Option<TcpStream>, Placed) {
        let open = &self.group.open;
        let mine = open[self.index].load(Ordering::Relaxed);
        let fewest = (0..open.len())
            .filter(|&i| i != self.index)
            .min_by_key(|&i| open[i].load(Ordering::Relaxed));
        if let Some(other) = fewest.filter(|&i| hand_over(mine, open[i].load(Ordering::Relaxed))) {
            // Counted there at once, so the next decisions see it.
            let seat = self.seat(other);
            match stream.into_std() {
                Ok(stream) => {
                    let handed = Handed { stream, peer, seat };
                    match self.group.inboxes[other].send(handed) {
                        Ok(()) => return (None, Placed::Elsewhere),
                        // That worker has stopped: the connection is served here after all.
                        Err(mpsc::error::SendError(handed)) => {
                            drop(handed.seat);
                            return match TcpStream::from_std(handed.stream) {
                                Ok(stream) => (Some(stream), Placed::Here(self.seat(self.index))),
                                Err(_) => (None, Placed::Elsewhere),
                            };
                        }
                    }
                }
                // Could not be taken off this worker's runtime: it is gone.
                Err(_) => return (None, Placed::Elsewhere),
            }
        }
        (Some(stream), Placed::Here(self.seat(self.index)))
    }

    /// The next connection another worker handed to this one.
    pub(crate) async fn handed(&mut self) -> Option<Handed> {
        self.inbox.recv().await
    }

    fn seat(&self, index: usize) -> Seat {
        self.group.open[index].fetch_add(1, Ordering::Relaxed);
        Seat {
            group: self.group.clone(),
            index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_differences_stay_and_clear_ones_are_handed_over() {
        assert!(!hand_over(0, 0));
        assert!(!hand_over(2, 0));
        assert!(hand_over(3, 0));
        assert!(!hand_over(34, 32));
        assert!(hand_over(37, 28));
        assert!(!hand_over(1100, 1000));
        assert!(hand_over(1200, 1000));
    }

    #[tokio::test]
    async fn a_worker_with_more_connections_hands_new_ones_to_the_one_with_fewest() {
        let mut workers = balance(2);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut kept = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..8 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
            let (stream, peer) = listener.accept().await.expect("accept");
            match workers[0].place(stream, peer) {
                (Some(stream), Placed::Here(seat)) => kept.push((stream, seat)),
                (None, Placed::Elsewhere) => {}
                _ => panic!("a connection placed here must come back"),
            }
        }
        let mut handed = Vec::new();
        while let Ok(h) = workers[1].inbox.try_recv() {
            handed.push(h);
        }
        // 8 connections: worker 0 keeps them until it has 3 more than worker 1, then the
        // counts stay within that.
        assert_eq!(kept.len() + handed.len(), 8);
        assert_eq!((kept.len(), handed.len()), (5, 3));
        assert_eq!(workers[0].group.open[0].load(Ordering::Relaxed), 5);
        assert_eq!(workers[0].group.open[1].load(Ordering::Relaxed), 3);
        // A closed connection gives its seat up.
        drop(handed.pop());
        assert_eq!(workers[0].group.open[1].load(Ordering::Relaxed), 2);
        drop(clients);
    }
}
