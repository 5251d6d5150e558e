//! Binding a TCP listening socket with the options servers expect. Its own module because
//! both sides bind: the master for every policy but `ReusePort`, each worker for `ReusePort`;
//! here neither side has to import the other.

use std::io;
use std::net::SocketAddr;

/// Binds a TCP listening socket the way servers expect: SO_REUSEADDR (a restarted master can
/// rebind at once), a deep backlog, non-blocking, CLOEXEC.
pub(crate) fn bind_tcp(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
