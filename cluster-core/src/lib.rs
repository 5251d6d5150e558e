//! Supervision of a cluster of worker processes.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod error;

pub use error::{Error, Result};
