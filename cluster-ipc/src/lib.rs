//! Typed, length-prefixed IPC channels over Unix stream sockets, with file-descriptor passing.
//!
//! This crate knows nothing of processes beyond handing a socket to a spawned child
//! ([`bootstrap`]). It gives:
//!
//! - **Framing**: a `u32` little-endian length, then the payload ([`frame`](crate#wire-format)).
//!   A length over [`Config::max_frame_len`], a truncated frame or a payload that does not
//!   decode is a typed [`Error`] that closes the channel; nothing panics and nothing allocates a
//!   claimed length before checking it.
//! - **Codecs** behind the [`Codec`] trait: [`Bincode`] (default) and `Postcard` (feature
//!   `postcard`).
//! - **Typed channels** ([`Channel`], [`Sender`], [`Receiver`]) with backpressure and write
//!   batching.
//! - **Descriptor passing**: [`Sender::send_with_fds`] / [`Receiver::recv_with_fds`], with
//!   SCM_RIGHTS on a frame of their own so descriptors never tear from their message.
//! - **A versioned handshake**: each side's first frame carries [`PROTOCOL_VERSION`] and the
//!   codec's name.
//!
//! # Wire format
#![doc = include_str!("../WIRE.md")]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod bootstrap;
mod channel;
mod codec;
mod error;
mod frame;
mod sys;

pub use channel::{Channel, Config, MAX_FDS_LIMIT, Receiver, Sender};
#[cfg(feature = "postcard")]
pub use codec::Postcard;
pub use codec::{Bincode, Codec, DefaultCodec};
pub use error::{Error, Result};
pub use frame::PROTOCOL_VERSION;
