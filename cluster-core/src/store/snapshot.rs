//! The store's snapshot file (`store_snapshot`): every live key, its value and its deadline
//! as wall-clock time, so that a key given a minute to live before a restart has what is left
//! of that minute after it. Written whole to `<path>.tmp` and renamed over `<path>`, so that
//! a crash mid-write leaves the previous snapshot, never half of one.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_ipc::{Bincode, Codec};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::state::StoreState;
use crate::{Error, ErrorKind, Result};

/// The file's first bytes: what it is and the version of its layout.
const MAGIC: &[u8; 8] = b"CLSTORE1";

/// One key: its value and its deadline in milliseconds since the Unix epoch.
#[derive(Serialize, Deserialize)]
struct Saved {
    key: String,
    value: Vec<u8>,
    expires_unix_ms: Option<u64>,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The snapshot's bytes. Bincode whatever the crate's default codec: a file written by one
/// build must read in another.
pub(crate) fn encode(state: &StoreState) -> Result<Vec<u8>> {
    let now = Instant::now();
    let wall = SystemTime::now();
    let saved: Vec<Saved> = state
        .entries(now)
        .map(|(key, entry)| Saved {
            key: key.clone(),
            value: entry.value.clone(),
            expires_unix_ms: entry
                .expires
                .map(|at| unix_ms(wall + at.saturating_duration_since(now))),
        })
        .collect();
    let mut out = MAGIC.to_vec();
    Bincode.encode(&saved, &mut out).map_err(|e| {
        Error::new(ErrorKind::Store, "cannot encode the store's snapshot").with_source(e)
    })?;
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, flushed to disk, renamed
/// over it, and the directory flushed so that the rename survives a power cut.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let failed = |what: &str, e: std::io::Error| {
        Error::new(
            ErrorKind::Store,
            format!("cannot save the store to {}: {what}", path.display()),
        )
        .with_source(e)
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut file =
        std::fs::File::create(&tmp).map_err(|e| failed("creating the temporary file", e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| failed("writing the temporary file", e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| failed("renaming the temporary file over it", e))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Loads the snapshot at `path` into `state`, skipping keys whose deadline has passed;
/// returns how many keys it loaded. No file is an empty store.
///
/// # Errors
///
/// [`ErrorKind::Store`]: the file exists but cannot be read or is not a store snapshot.
pub(crate) fn load(path: &Path, state: &mut StoreState) -> Result<usize> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(Error::new(
                ErrorKind::Store,
                format!("cannot read the store's snapshot {}", path.display()),
            )
            .with_source(e));
        }
    };
    let corrupt = || {
        Error::new(
            ErrorKind::Store,
            format!(
                "{} is not a store snapshot this version can read (or it is damaged): move it away to start with an empty store, or set `store_snapshot` to another file",
                path.display()
            ),
        )
    };
    let body = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(corrupt)?;
    let saved: Vec<Saved> = Bincode.decode(body).map_err(|e| corrupt().with_source(e))?;
    let now = Instant::now();
    let wall = unix_ms(SystemTime::now());
    let mut loaded = 0;
    for entry in saved {
        let expires = match entry.expires_unix_ms {
            Some(ms) if ms <= wall => continue,
            Some(ms) => now.checked_add(Duration::from_millis(ms - wall)),
            None => None,
        };
        state.load(entry.key, entry.value, expires);
        loaded += 1;
    }
    Ok(loaded)
}
