//! Supervision of a cluster of worker processes.
