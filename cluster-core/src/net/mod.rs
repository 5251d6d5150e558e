//! Sockets shared by the cluster: binding, the master's accept-and-hand-off, the shared load
//! table, and the worker's side of a listener.

pub(crate) mod listener;
pub(crate) mod load;
