//! `cluster`: run a service as a supervised cluster of worker processes.
pub use cluster_ipc as ipc;
