//! The `watch` option: new builds of the executable on disk, for the loop to reload onto.
//!
//! The directory is watched, not the file: a build renamed over the path (a deploy, cargo's
//! hard link) gives the path a new inode, and a watch on the old inode would hear nothing
//! more. inotify's events come on notify's own thread; those that name the file (other than
//! opening and reading it: every worker's exec and our own hashing do that) wake a debouncer
//! task, which waits until the file has been quiet for `watch_debounce`, then looks at it
//! (see [`inspect`]) and reports a build only when it is complete and differs from the last
//! one reported, or at first from the one this master runs. A file that is not yet complete
//! is reported on a later event, when its writer goes on.

use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::notice;
use crate::{Error, ErrorKind, Result};

/// A new build of the executable: complete, executable, and not the one last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewBuild {
    pub(crate) path: PathBuf,
    pub(crate) bytes: u64,
    pub(crate) hash: u64,
}

impl fmt::Display for NewBuild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a new build of {} ({} bytes, hash {:016x})",
            self.path.display(),
            self.bytes,
            self.hash
        )
    }
}

/// The watch on the executable, owned by the supervisor: dropping it removes the inotify watch
/// (notify's thread ends with it) and stops the debouncer.
pub(crate) struct ExeWatch {
    builds: mpsc::UnboundedReceiver<NewBuild>,
    _watcher: Option<RecommendedWatcher>,
    debouncer: Option<JoinHandle<()>>,
}

impl ExeWatch {
    /// Watches `exe`, reporting a build once the file has been quiet for `quiet`.
    pub(crate) fn start(exe: &Path, quiet: Duration) -> Result<ExeWatch> {
        let name = exe.file_name().map(OsStr::to_owned).ok_or_else(|| {
            Error::new(
                ErrorKind::Io,
                format!("watch: {} names no file to watch", exe.display()),
            )
        })?;
        let dir = match exe.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let (pings, woken) = mpsc::unbounded_channel();
        let handler = move |event: notify::Result<Event>| match event {
            Ok(event) => {
                if concerns(&event, &name) {
                    // The debouncer gone means the watch is being dropped: nothing to tell.
                    let _ = pings.send(());
                }
            }
            Err(e) => {
                // An overflowed inotify queue, say: the file may have changed unseen, so it is
                // looked at again (an unchanged build is not reported twice).
                notice!(warn, "watch: {e}; looking at the executable again");
                let _ = pings.send(());
            }
        };
        let mut watcher = notify::recommended_watcher(handler).map_err(|e| watch_error(&dir, e))?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| watch_error(&dir, e))?;
        let (builds_tx, builds) = mpsc::unbounded_channel();
        let debouncer = tokio::spawn(debounce(exe.to_owned(), quiet, woken, builds_tx));
        Ok(ExeWatch {
            builds,
            _watcher: Some(watcher),
            debouncer: Some(debouncer),
        })
    }

    /// A watch fed by hand, for the supervisor's unit tests.
    #[cfg(test)]
    pub(crate) fn fake() -> (mpsc::UnboundedSender<NewBuild>, ExeWatch) {
        let (tx, builds) = mpsc::unbounded_channel();
        let watch = ExeWatch {
            builds,
            _watcher: None,
            debouncer: None,
        };
        (tx, watch)
    }

    /// The next new build; never returns if the debouncer has ended (it says why when it
    /// does), so that the loop's other inputs go on.
    pub(crate) async fn next(&mut self) -> NewBuild {
        match self.builds.recv().await {
            Some(build) => build,
            None => std::future::pending().await,
        }
    }
}

impl Drop for ExeWatch {
    fn drop(&mut self) {
        if let Some(task) = &self.debouncer {
            task.abort();
        }
    }
}

fn watch_error(dir: &Path, e: notify::Error) -> Error {
    Error::new(
        ErrorKind::Io,
        format!(
            "watch: cannot watch {} for new builds (option `watch`)",
            dir.display()
        ),
    )
    .with_source(e)
}

/// Whether `event` may have changed the file `name` of the watched directory.
fn concerns(event: &Event, name: &OsStr) -> bool {
    let changes = match event.kind {
        // The writer closed it: the end of a write in place.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        // Opening and reading change nothing, and every exec of a worker and every hashing
        // of ours opens the file: counting them would never let the file be quiet.
        EventKind::Access(_) => false,
        _ => true,
    };
    // A rescan (the kernel's queue overflowed) names no file but may hide a change.
    changes && (event.need_rescan() || event.paths.iter().any(|p| p.file_name() == Some(name)))
}

/// Reports each new build of `exe`, once it has been quiet for `quiet`.
async fn debounce(
    exe: PathBuf,
    quiet: Duration,
    mut woken: mpsc::UnboundedReceiver<()>,
    builds: mpsc::UnboundedSender<NewBuild>,
) {
    // The build this master runs, whatever the path holds now: the baseline that a touch or
    // a rebuild with the same output does not reload.
    let mut last = tokio::task::spawn_blocking(|| inspect(Path::new("/proc/self/exe")))
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|b| b.hash);
    while woken.recv().await.is_some() {
        // Every change restarts the wait: the build is looked at once its writer paused.
        loop {
            match tokio::time::timeout(quiet, woken.recv()).await {
                Ok(Some(())) => {}
                Ok(None) => return,
                Err(_quiet) => break,
            }
        }
        let path = exe.clone();
        let looked = match tokio::task::spawn_blocking(move || inspect(&path)).await {
            Ok(looked) => looked,
            Err(e) => {
                notice!(
                    error,
                    "watch: looking at {} failed: {e}; no longer watching",
                    exe.display()
                );
                return;
            }
        };
        match looked {
            Ok(build) if Some(build.hash) == last => {
                notice!(
                    debug,
                    "watch: {} changed on disk but holds the same build; no reload",
                    exe.display()
                );
            }
            Ok(build) => {
                last = Some(build.hash);
                if builds.send(build).is_err() {
                    return;
                }
            }
            Err(NotYet(why)) => notice!(
                info,
                "watch: {} changed but {why}; waiting for it to change again",
                exe.display()
            ),
        }
    }
}

/// Why a file is not (yet) a build to start.
#[derive(Debug)]
struct NotYet(String);

/// Looks at the file at `path`: a regular file, executable, not empty, unchanged while it was
/// read (size, modification time and inode the same before and after) and, if it is an ELF
/// file, long enough for every table and segment its header names (a linker's output cut
/// short fails this: its section table is at the end). Blocking: reads the whole file.
fn inspect(path: &Path) -> std::result::Result<NewBuild, NotYet> {
    let before = std::fs::metadata(path).map_err(|e| NotYet(format!("cannot be read ({e})")))?;
    if !before.is_file() {
        return Err(NotYet("is not a regular file".into()));
    }
    if before.permissions().mode() & 0o111 == 0 {
        return Err(NotYet("is not executable".into()));
    }
    if before.len() == 0 {
        return Err(NotYet("is empty".into()));
    }
    let mut file =
        std::fs::File::open(path).map_err(|e| NotYet(format!("cannot be opened ({e})")))?;
    let mut hasher = std::hash::DefaultHasher::new();
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(NotYet(format!("cannot be read ({e})"))),
        };
        let chunk = &buf[..n];
        if head.len() < HEAD {
            let take = (HEAD - head.len()).min(n);
            head.extend_from_slice(&chunk[..take]);
        }
        std::hash::Hasher::write(&mut hasher, chunk);
        bytes += n as u64;
    }
    let after = file
        .metadata()
        .map_err(|e| NotYet(format!("cannot be read ({e})")))?;
    let same = |m: &std::fs::Metadata| (m.len(), m.mtime(), m.mtime_nsec(), m.ino());
    if same(&before) != same(&after) || bytes != after.len() {
        return Err(NotYet("changed while it was being read".into()));
    }
    if let Some(why) = elf_incomplete(&head, bytes) {
        return Err(NotYet(why));
    }
    Ok(NewBuild {
        path: path.to_owned(),
        bytes,
        hash: std::hash::Hasher::finish(&hasher),
    })
}

/// How much of the file's start [`elf_incomplete`] reads: the header and, in practice, the
/// program headers, which linkers put right after it.
const HEAD: usize = 4096;

/// Why an ELF file of `len` bytes starting with `head` is cut short, if it is; `None` for a
/// complete one and for a file that is not ELF (a script, say: nothing to check).
fn elf_incomplete(head: &[u8], len: u64) -> Option<String> {
    if !head.starts_with(b"\x7fELF") {
        return None;
    }
    let big_endian = match head.get(5) {
        Some(1) => false,
        Some(2) => true,
        _ => return Some("its ELF header is cut short or unknown".into()),
    };
    let read = |at: usize, size: usize| -> Option<u64> {
        let field = head.get(at..at.checked_add(size)?)?;
        let mut value = 0u64;
        for i in 0..size {
            let byte = if big_endian {
                field[i]
            } else {
                field[size - 1 - i]
            };
            value = (value << 8) | u64::from(byte);
        }
        Some(value)
    };
    // Field offsets of the ELF header and of a program header's p_offset and p_filesz, by
    // class (32 or 64 bits), from the System V ABI.
    let layout = match head.get(4) {
        Some(1) => (0x1c, 4, 0x20, 0x2a, 0x2c, 0x2e, 0x30, (0x04, 4), (0x10, 4)),
        Some(2) => (0x20, 8, 0x28, 0x36, 0x38, 0x3a, 0x3c, (0x08, 8), (0x20, 8)),
        _ => return Some("its ELF class is unknown".into()),
    };
    let (
        phoff_at,
        word,
        shoff_at,
        phentsize_at,
        phnum_at,
        shentsize_at,
        shnum_at,
        p_offset,
        p_filesz,
    ) = layout;
    let fields = (|| {
        Some((
            read(phoff_at, word)?,
            read(shoff_at, word)?,
            read(phentsize_at, 2)?,
            read(phnum_at, 2)?,
            read(shentsize_at, 2)?,
            read(shnum_at, 2)?,
        ))
    })();
    let Some((phoff, shoff, phentsize, phnum, shentsize, shnum)) = fields else {
        return Some("its ELF header is cut short".into());
    };
    let end = |off: u64, size: u64, n: u64| size.checked_mul(n).and_then(|t| t.checked_add(off));
    for (what, table_end) in [
        ("program header table", end(phoff, phentsize, phnum)),
        ("section header table", end(shoff, shentsize, shnum)),
    ] {
        match table_end {
            Some(e) if e <= len => {}
            _ => return Some(format!("its ELF {what} ends past its {len} bytes")),
        }
    }
    // Each segment's bytes in the file, for the program headers within `head`.
    for i in 0..phnum {
        let Some(at) = phentsize
            .checked_mul(i)
            .and_then(|o| o.checked_add(phoff))
            .and_then(|o| usize::try_from(o).ok())
        else {
            break;
        };
        let (Some(offset), Some(size)) = (
            read(at + p_offset.0, p_offset.1),
            read(at + p_filesz.0, p_filesz.1),
        ) else {
            break;
        };
        if offset.checked_add(size).is_none_or(|e| e > len) {
            return Some(format!("a segment of it ends past its {len} bytes"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn this_binary() -> Vec<u8> {
        std::fs::read("/proc/self/exe").unwrap()
    }

    #[test]
    fn a_complete_elf_file_passes_and_any_cut_of_it_fails() {
        let elf = this_binary();
        let len = elf.len() as u64;
        assert_eq!(elf_incomplete(&elf[..HEAD], len), None);
        // With bytes appended (as the deploy tests do) it is still complete.
        assert_eq!(elf_incomplete(&elf[..HEAD], len + 100), None);
        for cut in [len / 4, len / 2, len - 1] {
            assert!(
                elf_incomplete(&elf[..HEAD], cut).is_some(),
                "cut at {cut} of {len} passed"
            );
        }
        assert!(elf_incomplete(&elf[..30], 30).is_some());
        assert_eq!(elf_incomplete(b"#!/bin/sh\n", 10), None);
    }

    #[test]
    fn opening_and_reading_are_not_changes_but_writes_renames_and_rescans_are() {
        use notify::event::{CreateKind, Flag, ModifyKind, RenameMode};
        let name = OsString::from("app");
        let at = |kind, path: &str| Event::new(kind).add_path(PathBuf::from(path));
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(!concerns(&at(open, "/d/app"), &name));
        assert!(concerns(&at(closed, "/d/app"), &name));
        assert!(concerns(&at(renamed, "/d/app"), &name));
        assert!(!concerns(&at(renamed, "/d/app.new"), &name));
        assert!(concerns(
            &at(EventKind::Create(CreateKind::File), "/d/app"),
            &name
        ));
        assert!(concerns(
            &Event::new(EventKind::Other).set_flag(Flag::Rescan),
            &name
        ));
    }

    #[test]
    fn inspect_refuses_what_is_not_a_whole_executable() {
        let dir = std::env::temp_dir().join(format!("cluster-watch-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app");
        let elf = this_binary();
        std::fs::write(&path, &elf[..elf.len() / 2]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(inspect(&path).is_err(), "half a binary");
        std::fs::write(&path, &elf).unwrap();
        let whole = inspect(&path).unwrap();
        assert_eq!(whole.bytes, elf.len() as u64);
        assert_eq!(
            whole.hash,
            inspect(Path::new("/proc/self/exe")).unwrap().hash
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(inspect(&path).is_err(), "not executable");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
