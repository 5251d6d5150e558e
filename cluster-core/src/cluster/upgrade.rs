//! The start of a master that an old master started to take over (an upgrade): its channel
//! to the old master, found before the runtime starts; the offer read from it (listening
//! sockets, the control socket and status port, the state to keep); and, for a failure
//! before this master could run at all (a bad option), the `Failed` the old master must hear
//! so that it serves on and says why.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use cluster_ipc::{Channel, Config, Sender};

use crate::handover::{ENV_UPGRADE_FD, HANDOVER_VERSION, Handed, MAX_HANDED, State, ToNew, ToOld};
use crate::net::inherited::Inherited;
use crate::supervisor::notice;
use crate::supervisor::upgrade::HandedServers;
use crate::{Error, ErrorKind, Result};

/// What the old master offered.
pub(super) struct Received {
    pub(super) old_pid: u32,
    pub(super) channel: Channel<ToOld, ToNew>,
    pub(super) listeners: Inherited,
    pub(super) servers: HandedServers,
    pub(super) state: State,
}

/// The channel to the old master, when this process is the new master of an upgrade; the
/// variable is removed so that no worker inherits it. Before the runtime: the environment is
/// edited.
pub(super) fn take_channel() -> Result<Option<Incoming>> {
    if std::env::var_os(ENV_UPGRADE_FD).is_none() {
        return Ok(None);
    }
    // Before anything of this process opens a descriptor: all that is open now came from the
    // old master. Only stdin, stdout, stderr and the channel should have, and what the old
    // master passes to every child (see `receive`).
    let at_start = open_descriptors();
    let stream = cluster_ipc::bootstrap::from_parent(ENV_UPGRADE_FD).map_err(|e| {
        Error::new(
            ErrorKind::Bootstrap,
            format!("cannot take the channel to the old master of an upgrade: {e}"),
        )
    })?;
    crate::sys::remove_env(ENV_UPGRADE_FD.as_ref());
    Ok(stream.map(|stream| Incoming { stream, at_start }))
}

/// The channel to the old master, and the descriptors this process was started with.
pub(super) struct Incoming {
    pub(super) stream: UnixStream,
    at_start: Vec<(i32, String)>,
}

/// The descriptors this process's children inherit without asking: open and not
/// close-on-exec, beyond stdin, stdout and stderr. Once the sockets of socket activation and
/// the upgrade's channel are taken (both close-on-exec then), only what this master was
/// started with.
pub(super) fn inheritable_descriptors() -> Vec<i32> {
    /// `O_CLOEXEC` in the octal `flags:` line of `/proc/self/fdinfo/N`.
    const CLOEXEC: u32 = 0o2_000_000;
    open_descriptors()
        .into_iter()
        .map(|(fd, _)| fd)
        .filter(|fd| *fd > 2)
        .filter(|fd| {
            let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
                return false;
            };
            info.lines()
                .find_map(|line| line.strip_prefix("flags:"))
                .and_then(|flags| u32::from_str_radix(flags.trim(), 8).ok())
                .is_some_and(|flags| flags & CLOEXEC == 0)
        })
        .collect()
}

/// Says which descriptors this process started with, and warns of any the old master
/// should not have passed on.
fn check_descriptors(at_start: &[(i32, String)], passed_through: &[i32], old: u32) {
    let listed: Vec<String> = at_start.iter().map(|(fd, _)| fd.to_string()).collect();
    let leaked: Vec<String> = at_start
        .iter()
        .filter(|(fd, _)| *fd > 3 && !passed_through.contains(fd))
        .map(|(fd, what)| format!("{fd} ({what})"))
        .collect();
    notice!(
        info,
        "upgrade: started by master {old} with descriptors {} open ({} passed to every child of it)",
        listed.join(", "),
        if passed_through.is_empty() {
            "none".to_owned()
        } else {
            passed_through
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    if !leaked.is_empty() {
        notice!(
            warn,
            "upgrade: descriptors {} leaked from the old master (not close-on-exec)",
            leaked.join(", ")
        );
    }
}

/// This process's open descriptors and what each is, the directory listing them left out.
fn open_descriptors() -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let numbers: Vec<i32> = dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // Read once the listing is closed: its own descriptor is gone by then.
    let mut fds: Vec<(i32, String)> = numbers
        .into_iter()
        .filter_map(|fd| {
            let what = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
            Some((fd, what.display().to_string()))
        })
        .collect();
    fds.sort_unstable();
    fds
}

/// Reads the old master's offer: the channel's handshake, then the offer and its sockets.
/// An offer this build cannot take is refused with `Failed`, which the old master reads as
/// "serve on".
pub(super) async fn receive(incoming: Incoming) -> Result<Received> {
    let config = Config::default().with_max_fds(MAX_HANDED);
    let mut channel = Channel::<ToOld, ToNew>::from_std(incoming.stream, config)
        .await
        .map_err(|e| ipc_error("cannot talk to the old master", e))?;
    let offer = channel
        .recv_with_fds()
        .await
        .map_err(|e| ipc_error("cannot read the old master's offer", e))?;
    let (offer, fds) = match offer {
        Some((ToNew::Offer(offer), fds)) => (offer, fds),
        Some((ToNew::TakeOver, _)) | None => {
            return Err(Error::new(
                ErrorKind::Bootstrap,
                "the old master sent no offer; nothing to take over",
            ));
        }
    };
    let refusal = if offer.version > HANDOVER_VERSION {
        Some(format!(
            "the old master speaks upgrade protocol version {}, this build knows {HANDOVER_VERSION} at most; upgrade to a build at least as new",
            offer.version
        ))
    } else if fds.len() != offer.sockets.len() {
        Some(format!(
            "the old master offered {} sockets but passed {} descriptors",
            offer.sockets.len(),
            fds.len()
        ))
    } else {
        None
    };
    if let Some(refusal) = refusal {
        let error = Error::new(ErrorKind::Bootstrap, refusal);
        report(&channel.sender(), &error).await;
        return Err(error);
    }
    check_descriptors(&incoming.at_start, &offer.passed_through, offer.pid);
    let mut listeners = Vec::new();
    let mut servers = HandedServers::default();
    for (fd, handed) in fds.into_iter().zip(offer.sockets) {
        match handed {
            Handed::Listener { bound_as, name } => listeners.push((fd, name, bound_as)),
            Handed::Status => servers.status = Some(std::net::TcpListener::from(fd)),
            Handed::Control { path } => {
                servers.control = Some((std::os::unix::net::UnixListener::from(fd), path));
            }
        }
    }
    notice!(
        info,
        "upgrade: master {} handed over {} listening socket{}{}{}",
        offer.pid,
        listeners.len(),
        if listeners.len() == 1 { "" } else { "s" },
        if servers.control.is_some() {
            ", the control socket"
        } else {
            ""
        },
        if servers.status.is_some() {
            ", the status port"
        } else {
            ""
        },
    );
    Ok(Received {
        old_pid: offer.pid,
        channel,
        listeners: Inherited::handed(listeners),
        servers,
        state: offer.state,
    })
}

fn ipc_error(what: &str, e: cluster_ipc::Error) -> Error {
    Error::new(ErrorKind::Bootstrap, format!("upgrade: {what}: {e}"))
}

/// Tells the old master this one gives up, with why.
pub(super) async fn report(tx: &Sender<ToOld>, error: &Error) {
    let failed = ToOld::Failed {
        reason: format!("{error:#}"),
        lines: Vec::new(),
    };
    let send = async {
        tx.send(&failed).await?;
        tx.flush().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send).await;
}

/// A failure before this master could start its runtime (a bad option): reported to the old
/// master on a runtime of its own, after reading (and closing) the offer's sockets.
pub(super) fn refuse(incoming: Incoming, error: &Error) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        // The old master still hears the channel close, and says the new master exited.
        return;
    };
    runtime.block_on(async {
        let config = Config::default().with_max_fds(MAX_HANDED);
        let Ok(mut channel) = Channel::<ToOld, ToNew>::from_std(incoming.stream, config).await
        else {
            return;
        };
        let _offer: Option<(ToNew, Vec<OwnedFd>)> = channel.recv_with_fds().await.ok().flatten();
        report(&channel.sender(), error).await;
    });
}
