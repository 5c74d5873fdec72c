//! Free local ports.

use std::net::{SocketAddr, TcpListener};

/// A port that was free a moment ago: bind 127.0.0.1:0, read the port, close.
/// Used for "nothing listens here" cluster endpoints.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// A port on which nothing listens (the connection is refused).
pub fn closed_port() -> u16 {
    free_port()
}

/// A bound listener on a free port (kept bound: no race with other tests).
pub fn bind_free() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    (listener, addr)
}
