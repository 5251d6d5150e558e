//! The master's own servers, the control socket and the status port: bound at start, or
//! taken from the old master of an upgrade once this master has taken over. Either way the
//! supervisor keeps a copy of each listening socket, to hand to a master after it.

use std::os::fd::AsFd;
use std::sync::Arc;

use crate::options::Options;
use crate::supervisor::control_server;
use crate::supervisor::upgrade::{HandedServers, Servers};
use crate::supervisor::{CommandSource, notice};
use crate::{Error, ErrorKind, Result};

/// What the servers answer from.
pub(super) use control_server::Parts;

/// Binds the control socket (first thing: a second master of the same name stops here).
pub(super) async fn bind_control(options: &Options, parts: &Parts) -> Result<Servers> {
    let control = control_server::start(options, parts).await?;
    Ok(Servers {
        stop: parts.stop.clone(),
        tasks: parts.tasks.clone(),
        control,
        status: None,
    })
}

/// Binds the status port, if one is set, and serves it.
pub(super) async fn bind_status(
    options: &Options,
    parts: &Parts,
) -> Result<Option<std::net::TcpListener>> {
    let Some(addr) = options.status_addr() else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::new(ErrorKind::Listen, format!("cannot serve status on {addr}")).with_source(e)
    })?;
    serve_status(listener, options, parts).map(Some)
}

/// Serves the sockets an old master handed over; a server whose address or path this
/// master's options changed is bound anew instead.
pub(super) async fn start_handed(
    options: &Options,
    parts: &Parts,
    handed: HandedServers,
) -> Result<Servers> {
    let name = options.name().resolve();
    let control = match (handed.control, options.control_path().resolve(&name)) {
        (Some((listener, path)), Some(want)) if path == want => Some(control_server::start_handed(
            listener, path, options, parts,
        )?),
        (_, Some(_)) => bind_control(options, parts).await?.control,
        (_, None) => None,
    };
    let status = match (handed.status, options.status_addr()) {
        (Some(listener), Some(want))
            if listener
                .local_addr()
                .is_ok_and(|at| at == want || want.port() == 0) =>
        {
            let listener = listener
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(listener))
                .map_err(|e| Error::io("cannot serve the status port handed over", e))?;
            Some(serve_status(listener, options, parts)?)
        }
        (_, Some(_)) => bind_status(options, parts).await?,
        (_, None) => None,
    };
    Ok(Servers {
        stop: parts.stop.clone(),
        tasks: parts.tasks.clone(),
        control,
        status,
    })
}

/// Serves `/status`, `/metrics` and the probes on `listener` until `parts.stop`; returns a
/// copy of the listening socket.
fn serve_status(
    listener: tokio::net::TcpListener,
    options: &Options,
    parts: &Parts,
) -> Result<std::net::TcpListener> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("the status port has no address", e))?;
    let copy = listener
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io("cannot copy the status port's socket", e))?;
    let source = Arc::new(CommandSource {
        commands: parts.commands.clone(),
    });
    let token = options.status_token().cloned();
    if token.is_none() && !addr.ip().is_loopback() {
        // Not refused: a cluster probed from another host (a pod IP) needs such an
        // address, and the probes need no token. But /status and /metrics are then
        // open to that network, which an operator should hear about.
        notice!(
            warn,
            "the status server on {addr} is reachable from other hosts and /status and /metrics need no token; set `status_token`, or a loopback address such as 127.0.0.1:{}",
            addr.port()
        );
    }
    let status_options = crate::observe::status_server::StatusOptions {
        min_ready: options.min_ready(),
        token,
        ..Default::default()
    };
    parts
        .tasks
        .spawn(crate::observe::status_server::serve_status(
            listener,
            source,
            status_options,
            parts.stop.clone(),
        ));
    Ok(std::net::TcpListener::from(copy))
}
