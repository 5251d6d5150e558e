//! Socket activation: the listening sockets systemd (or `systemd-socket-activate`, or any
//! manager speaking the `LISTEN_FDS` protocol) opened for the master. A worker's listen for an
//! address one of them is bound to takes that socket instead of binding, so the port stays
//! open while the whole master restarts: connections queue on the manager's socket.
//!
//! A socket matches a TCP address when its family, type (stream) and bound address are the
//! ones asked for, a Unix path when it is a stream socket bound at that path, and a name
//! (`listen_named`) when `LISTEN_FDNAMES` gave it that name. Each is adopted at most once;
//! a second address or name naming it gets the listener the first made.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::protocol::ListenAddr;

/// What an inherited descriptor is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// Anything else (a datagram socket, an unnamed Unix socket, a FIFO): never adopted.
    Other(String),
}

struct Socket {
    /// Until adopted.
    fd: Option<OwnedFd>,
    name: String,
    kind: Kind,
    /// Addresses it also answers to: those the master that handed it over in an upgrade had
    /// bound it as (`127.0.0.1:0` for the port that master picked).
    aliases: Vec<ListenAddr>,
    /// The master's listener made of it.
    listener: Option<u32>,
}

/// The descriptors the master inherited, in `LISTEN_FDS` order.
#[derive(Default)]
pub(crate) struct Inherited {
    sockets: Vec<Socket>,
}

/// A socket taken for a listener.
pub(crate) enum Adopted {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// What a listen request finds among the inherited sockets.
pub(crate) enum Found {
    /// No inherited socket matches: bind as usual.
    None,
    /// A socket already adopted for this listener.
    Listener(u32),
    /// A socket to adopt; report the listener made of it with [`Inherited::adopted_as`].
    Adopt(usize, Adopted),
}

impl Inherited {
    /// Inherited descriptors `fds`, each with its name (systemd's `LISTEN_FDNAMES`, "unknown"
    /// when unnamed).
    pub(crate) fn new(fds: Vec<(OwnedFd, String)>) -> Self {
        let sockets = fds
            .into_iter()
            .map(|(fd, name)| Socket {
                kind: kind_of(&fd),
                fd: Some(fd),
                name,
                aliases: Vec::new(),
                listener: None,
            })
            .collect();
        Inherited { sockets }
    }

    /// The listening sockets an old master handed over in an upgrade, each with its name
    /// and the addresses it was bound as there.
    pub(crate) fn handed(fds: Vec<(OwnedFd, String, Vec<ListenAddr>)>) -> Self {
        let sockets = fds
            .into_iter()
            .map(|(fd, name, aliases)| Socket {
                kind: kind_of(&fd),
                fd: Some(fd),
                name,
                aliases,
                listener: None,
            })
            .collect();
        Inherited { sockets }
    }

    /// The name of the socket that became `listener`, if one did.
    pub(crate) fn name_of(&self, listener: u32) -> Option<&str> {
        self.sockets
            .iter()
            .find(|s| s.listener == Some(listener))
            .map(|s| s.name.as_str())
    }

    /// Copies of the sockets no worker has claimed, with their names, for a new master.
    pub(crate) fn unclaimed_fds(&self) -> std::io::Result<Vec<(OwnedFd, String)>> {
        self.sockets
            .iter()
            .filter(|s| s.listener.is_none())
            .filter_map(|s| s.fd.as_ref().map(|fd| (fd, &s.name)))
            .map(|(fd, name)| Ok((fd.try_clone()?, name.clone())))
            .collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.sockets.len()
    }

    /// The inherited socket `addr` asks for. A name that matches nothing is an error: it can
    /// only mean an inherited socket, and binding cannot stand in for it.
    pub(crate) fn find(&mut self, addr: &ListenAddr) -> Result<Found, String> {
        let index = self.sockets.iter().position(|s| {
            s.aliases.contains(addr)
                || match addr {
                    ListenAddr::Tcp(want) => s.kind == Kind::Tcp(*want),
                    ListenAddr::Unix(path) => s.kind == Kind::Unix(path.clone()),
                    ListenAddr::Named(name) => s.name == *name,
                }
        });
        let Some(index) = index else {
            if let ListenAddr::Named(name) = addr {
                return Err(self.no_such_name(name));
            }
            return Ok(Found::None);
        };
        let socket = &mut self.sockets[index];
        if let Some(listener) = socket.listener {
            return Ok(Found::Listener(listener));
        }
        let describe = |e: std::io::Error| {
            format!(
                "cannot use the inherited socket {:?} ({}): {e}",
                socket.name,
                describe_kind(&socket.kind)
            )
        };
        let adopted = match &socket.kind {
            Kind::Tcp(_) => {
                let Some(fd) = socket.fd.take() else {
                    return Ok(Found::None);
                };
                let listener = std::net::TcpListener::from(fd);
                listener.set_nonblocking(true).map_err(describe)?;
                Adopted::Tcp(listener)
            }
            Kind::Unix(_) => {
                let Some(fd) = socket.fd.take() else {
                    return Ok(Found::None);
                };
                let listener = std::os::unix::net::UnixListener::from(fd);
                listener.set_nonblocking(true).map_err(describe)?;
                Adopted::Unix(listener)
            }
            Kind::Other(what) => {
                return Err(format!(
                    "the inherited socket {:?} is {what}, not a listening stream socket",
                    socket.name
                ));
            }
        };
        Ok(Found::Adopt(index, adopted))
    }

    /// The socket found at `index` became `listener`.
    pub(crate) fn adopted_as(&mut self, index: usize, listener: u32) {
        if let Some(socket) = self.sockets.get_mut(index) {
            socket.listener = Some(listener);
        }
    }

    /// The inherited sockets no worker has asked for, described for the operator.
    pub(crate) fn unclaimed(&self) -> Vec<String> {
        self.sockets
            .iter()
            .filter(|s| s.listener.is_none())
            .map(|s| format!("{:?} ({})", s.name, describe_kind(&s.kind)))
            .collect()
    }

    fn no_such_name(&self, name: &str) -> String {
        let names: Vec<&str> = self.sockets.iter().map(|s| s.name.as_str()).collect();
        if names.is_empty() {
            format!(
                "no inherited socket is named {name:?}: the master was not started with sockets (LISTEN_FDS), as a systemd socket unit or systemd-socket-activate would"
            )
        } else {
            format!(
                "no inherited socket is named {name:?}; the master inherited {} (names from LISTEN_FDNAMES, FileDescriptorName= in the socket unit)",
                names.join(", ")
            )
        }
    }
}

fn describe_kind(kind: &Kind) -> String {
    match kind {
        Kind::Tcp(addr) => format!("TCP {addr}"),
        Kind::Unix(path) => format!("Unix {}", path.display()),
        Kind::Other(what) => what.clone(),
    }
}

/// What `fd` is, from the kernel: family, type, whether it listens, and its bound address.
fn kind_of(fd: &OwnedFd) -> Kind {
    let sock = socket2::SockRef::from(fd);
    let Ok(ty) = sock.r#type() else {
        return Kind::Other("not a socket".into());
    };
    if ty != socket2::Type::STREAM {
        return Kind::Other(format!("a socket of type {ty:?}"));
    }
    if !sock.is_listener().unwrap_or(false) {
        return Kind::Other("a stream socket that does not listen".into());
    }
    let Ok(local) = sock.local_addr() else {
        return Kind::Other("a socket without an address".into());
    };
    if let Some(addr) = local.as_socket() {
        return Kind::Tcp(addr);
    }
    match local.as_pathname() {
        Some(path) => Kind::Unix(Path::to_path_buf(path)),
        None => Kind::Other("an unnamed or abstract Unix socket".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd_of(listener: impl Into<OwnedFd>) -> OwnedFd {
        listener.into()
    }

    #[test]
    fn sockets_are_found_by_address_path_or_name_and_adopted_once() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let dir = std::env::temp_dir().join(format!("cluster-inherited-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.sock");
        let _ = std::fs::remove_file(&path);
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut inherited = Inherited::new(vec![
            (fd_of(tcp), "web".into()),
            (fd_of(unix), "admin".into()),
            (fd_of(udp), "dns".into()),
        ]);

        // Another port, another path: bind as usual.
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(matches!(
            inherited.find(&ListenAddr::Tcp(other)),
            Ok(Found::None)
        ));
        let Ok(Found::Adopt(index, Adopted::Tcp(listener))) =
            inherited.find(&ListenAddr::Tcp(addr))
        else {
            panic!("the TCP socket was not found by its address");
        };
        assert_eq!(listener.local_addr().unwrap(), addr);
        inherited.adopted_as(index, 7);
        // Its name now finds the listener made of it, not a second copy.
        assert!(matches!(
            inherited.find(&ListenAddr::Named("web".into())),
            Ok(Found::Listener(7))
        ));
        assert!(matches!(
            inherited.find(&ListenAddr::Unix(path.clone())),
            Ok(Found::Adopt(1, Adopted::Unix(_)))
        ));
        let error = inherited
            .find(&ListenAddr::Named("dns".into()))
            .err()
            .unwrap();
        assert!(error.contains("not a listening stream socket"), "{error}");
        let error = inherited
            .find(&ListenAddr::Named("nope".into()))
            .err()
            .unwrap();
        assert!(error.contains("web, admin, dns"), "{error}");
        // The Unix socket was found but not reported adopted; the datagram socket never is.
        let unclaimed = inherited.unclaimed();
        assert_eq!(unclaimed.len(), 2, "{unclaimed:?}");
        assert!(unclaimed[0].contains("admin"), "{unclaimed:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
