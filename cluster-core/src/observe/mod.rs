//! What the cluster shows about itself: status, the status server, the /proc sampler,
//! metrics, and the forwarding of workers' output.

pub(crate) mod logs;
pub(crate) mod metrics;
pub(crate) mod resources;
pub(crate) mod status;
pub(crate) mod status_server;
