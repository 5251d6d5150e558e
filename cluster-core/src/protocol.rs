//! Control messages between master and workers.
//!
//! During a rolling deploy an old master talks to new workers (and the other way round), and
//! the codecs are positional, so these enums are **append-only**: add new variants and new
//! fields at the end only, never reorder or remove. `tests::pinned_bytes` pins the encoding.
//!
//! App messages travel inside as opaque bytes encoded with the same codec, so a worker whose
//! message types differ from the master's fails to decode only those messages and the control
//! traffic keeps working.

use serde::{Deserialize, Serialize};

/// Master to worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Stop gracefully: finish in-flight work and return.
    Shutdown,
    /// An app message.
    User(Vec<u8>),
    /// An app request; answer with `ToMaster::Response` carrying the same id.
    Request { id: u64, payload: Vec<u8> },
    /// The answer to a worker's `ToMaster::Request`.
    Response { id: u64, payload: Vec<u8> },
}

/// Worker to master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ToMaster {
    /// The worker is ready to take work.
    Ready,
    /// An app message.
    User(Vec<u8>),
    /// An app request; answer with `ToWorker::Response` carrying the same id.
    Request { id: u64, payload: Vec<u8> },
    /// The answer to a master's `ToWorker::Request`.
    Response { id: u64, payload: Vec<u8> },
    /// The worker is exiting on its own (its function returned, or it got SIGTERM):
    /// `failed` says whether it returned an error.
    Exiting { failed: bool },
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_ipc::{Bincode, Codec};

    fn bytes<T: Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        Bincode.encode(value, &mut out).unwrap();
        out
    }

    /// If this fails, a variant or field was inserted, removed or reordered: old and new
    /// binaries would misread each other during a rolling deploy. Append instead.
    #[test]
    fn pinned_bytes() {
        assert_eq!(bytes(&ToWorker::Shutdown), [0]);
        assert_eq!(bytes(&ToWorker::User(vec![7, 8])), [1, 2, 7, 8]);
        assert_eq!(
            bytes(&ToWorker::Request {
                id: 5,
                payload: vec![9]
            }),
            [2, 5, 1, 9]
        );
        assert_eq!(
            bytes(&ToWorker::Response {
                id: 300,
                payload: vec![]
            }),
            [3, 251, 44, 1, 0]
        );
        assert_eq!(bytes(&ToMaster::Ready), [0]);
        assert_eq!(bytes(&ToMaster::User(vec![1])), [1, 1, 1]);
        assert_eq!(
            bytes(&ToMaster::Request {
                id: 1,
                payload: vec![2]
            }),
            [2, 1, 1, 2]
        );
        assert_eq!(
            bytes(&ToMaster::Response {
                id: 2,
                payload: vec![3]
            }),
            [3, 2, 1, 3]
        );
        assert_eq!(bytes(&ToMaster::Exiting { failed: true }), [4, 1]);
    }

    #[test]
    fn round_trip() {
        for msg in [
            ToMaster::Ready,
            ToMaster::Exiting { failed: false },
            ToMaster::User(vec![1, 2, 3]),
        ] {
            assert_eq!(Bincode.decode::<ToMaster>(&bytes(&msg)).unwrap(), msg);
        }
    }
}
