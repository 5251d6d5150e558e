//! Binding a TCP listening socket with the options servers expect. Its own module because
//! both sides bind: the master for every policy but `ReusePort`, each worker for `ReusePort`;
//! here neither side has to import the other.

use std::io;
use std::net::SocketAddr;

/// Binds a TCP listening socket the way servers expect: SO_REUSEADDR (a restarted master can
/// rebind at once), a deep backlog, non-blocking, CLOEXEC, and TCP_NODELAY, which Linux's
/// accepted sockets inherit from their listener: set here, before `listen`, every connection
/// has it without a `setsockopt` of its own (see `Listener::accepted_nodelay`).
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
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A Unix listening socket and the file that names it, removed when the master lets go of
/// the socket: a path left behind would make the next master's bind fail with "address in
/// use" although nobody listens there.
#[derive(Debug)]
pub(crate) struct UnixSocketFile {
    pub(crate) listener: std::os::unix::net::UnixListener,
    /// The path and the device and inode of the file the bind made: the file is removed only
    /// if the path still names it, never a socket some other process has bound there since.
    /// `None` for an inherited socket, whose file belongs to whoever bound it (systemd).
    file: Option<(std::path::PathBuf, (u64, u64))>,
}

impl UnixSocketFile {
    /// An inherited listening socket: its file is left alone.
    pub(crate) fn inherited(listener: std::os::unix::net::UnixListener) -> Self {
        UnixSocketFile {
            listener,
            file: None,
        }
    }
}

impl UnixSocketFile {
    /// The socket now belongs to another process too (a new master took it over in an
    /// upgrade): its file is no longer this process's to remove.
    pub(crate) fn keep_file(&mut self) {
        self.file = None;
    }
}

impl Drop for UnixSocketFile {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let Some((path, file)) = &self.file else {
            return;
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if (meta.dev(), meta.ino()) == *file {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Binds a Unix stream listening socket at `path`, non-blocking. A socket file left there by
/// a process that died (nobody accepts on it: connecting is refused) is replaced; a live one
/// is an error, as is any other kind of file.
pub(crate) fn bind_unix(path: &std::path::Path) -> io::Result<UnixSocketFile> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let listener = match std::os::unix::net::UnixListener::bind(path) {
        Ok(listener) => listener,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let stale = std::fs::symlink_metadata(path)
                .is_ok_and(|meta| meta.file_type().is_socket())
                && std::os::unix::net::UnixStream::connect(path)
                    .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused);
            if !stale {
                return Err(e);
            }
            std::fs::remove_file(path)?;
            std::os::unix::net::UnixListener::bind(path)?
        }
        Err(e) => return Err(e),
    };
    listener.set_nonblocking(true)?;
    let meta = std::fs::symlink_metadata(path)?;
    Ok(UnixSocketFile {
        listener,
        file: Some((path.to_owned(), (meta.dev(), meta.ino()))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `bind_tcp` counts on to spare each connection its `setsockopt`: an accepted
    /// socket has TCP_NODELAY when, and only when, its listener had it.
    #[test]
    fn accepted_connections_inherit_tcp_nodelay_from_the_listener() {
        let accepted_nodelay = |listener: std::net::TcpListener| {
            listener.set_nonblocking(false).unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (accepted, _) = listener.accept().unwrap();
            drop(client);
            accepted.nodelay().unwrap()
        };
        let ours = bind_tcp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert!(socket2::SockRef::from(&ours).tcp_nodelay().unwrap());
        assert!(accepted_nodelay(ours));
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!accepted_nodelay(plain));
    }

    #[test]
    fn a_unix_socket_file_is_removed_with_its_socket_and_a_stale_one_is_replaced() {
        let dir = std::env::temp_dir().join(format!("cluster-bind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);

        let first = bind_unix(&path).unwrap();
        // A live socket is not taken over.
        assert_eq!(
            bind_unix(&path).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(first);
        assert!(!path.exists(), "the socket file outlived its socket");

        // A socket file whose process died (bound, then closed without removing the file).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let again = bind_unix(&path).unwrap();
        drop(again);
        assert!(!path.exists());

        // Any other file is left alone.
        std::fs::write(&path, b"data").unwrap();
        assert!(bind_unix(&path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
