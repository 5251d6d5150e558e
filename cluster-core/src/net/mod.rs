//! Sockets shared by the cluster: binding, the master's accept-and-hand-off, the shared load
//! table, and the worker's side of a listener.
//!
//! The master binds each address once and keeps the socket for the cluster's whole life, so a
//! worker that dies or is replaced never closes the port. With
//! [`Balance::Shared`](crate::protocol::Balance::Shared) the master passes the listening
//! socket itself and every worker accepts from its one kernel queue. With the master-accept
//! policies (`RoundRobin`, `LeastConnections`, `Sticky`, `StickyKey`) the master accepts and hands each
//! connection's descriptor to a worker; it keeps its own copy until the worker acknowledges
//! it, so a connection handed to a worker that dies first goes to another worker instead of
//! hanging unanswered. With `ReusePort` each worker binds its own socket and the master is
//! not involved.
//!
//! A master started by socket activation (`LISTEN_FDS`) takes the inherited socket that matches
//! an address instead of binding it (`inherited`), under every policy. With `StickyKey` the
//! master also reads each connection's first bytes for a key before handing it out:
//! `proxy_header` and `sticky_key` parse them (pure functions), `peek` reads them without
//! taking them from the socket.
//!
//! Bottom to top: `bind` (the socket options), `inherited` (socket activation), `load` (the
//! load table), `proxy_header`, `sticky_key` (which uses `proxy_header`) and `peek` (which
//! uses `sticky_key`) use nothing else here; `dispatch` (one listener's accept loop and
//! hand-out) uses `peek`; `master_listeners` (every address the master has bound or adopted)
//! uses `bind`, `inherited`, `load`, `sticky_key` and `dispatch`; `listener` (the worker's side) uses
//! only `load`. The master's and the worker's sides never import each other.

pub(crate) mod bind;
pub(crate) mod dispatch;
pub(crate) mod inherited;
pub(crate) mod listener;
pub(crate) mod load;
pub(crate) mod master_listeners;
mod peek;
pub mod proxy_header;
pub(crate) mod sticky_key;
