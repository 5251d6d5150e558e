//! Sampling a process's resource use (resident memory and CPU time) from Linux's `/proc`.
//!
//! The supervisor samples every worker about once a second, so [`sample`] is built to be cheap:
//! two small files (`/proc/<pid>/stat` for CPU time, `/proc/<pid>/statm` for memory) read into
//! a stack buffer and parsed in place, with no heap allocation at all.
//!
//! Memory comes from `statm` although `stat` has an `rss` field too: since Linux 6.2 the RSS
//! counters are per-CPU, and `stat` reports the cheap approximate read, which was seen off by
//! more than 10% for a small process, while `statm` (like `VmRSS` in `status`) sums them
//! precisely.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::OnceLock;

use nix::unistd::{SysconfVar, sysconf};

/// A process's resource use at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Usage {
    /// Resident set size: the bytes of the process's memory that are in RAM right now.
    pub rss_bytes: u64,
    /// CPU time consumed since the process started, user plus system, in seconds.
    pub cpu_seconds: f64,
}

/// Samples the resource use of process `pid`.
///
/// `None` if the process does not exist (any more), is a zombie (it has exited and only waits
/// to be reaped: its memory is gone and its CPU time is final), or `/proc` cannot be read or
/// parsed (not Linux, `/proc` not mounted, `hidepid`).
pub(crate) fn sample(pid: u32) -> Option<Usage> {
    let units = units()?;
    // /proc/<pid>/stat is at most ~1.2 KiB: 52 numeric fields of at most 20 digits plus a comm
    // of at most 15 bytes (TASK_COMM_LEN - 1). 4 KiB leaves room for future fields.
    let mut buf = [0u8; 4096];
    let stat = parse_stat(read_proc_file(pid, "stat", &mut buf).ok()?)?;
    if matches!(stat.state, b'Z' | b'X' | b'x') {
        return None;
    }
    // Read second: if the process died in between, this fails and gives None, as it should.
    let resident_pages = parse_statm_resident(read_proc_file(pid, "statm", &mut buf).ok()?)?;
    Some(Usage {
        rss_bytes: resident_pages.saturating_mul(units.page_size),
        // u64 -> f64 loses precision only beyond 2^53 ticks (~2.8 million years at 100 Hz).
        cpu_seconds: stat.cpu_ticks as f64 / units.ticks_per_second as f64,
    })
}

/// The conversion factors for `/proc` numbers, which are in pages and clock ticks.
#[derive(Debug, Clone, Copy)]
struct Units {
    page_size: u64,
    ticks_per_second: u64,
}

/// The system's page size and clock-tick rate, asked of `sysconf` once per process (they
/// cannot change while it runs). `None` if `sysconf` does not know them: guessing (4096, 100)
/// would report wrong numbers on 16/64 KiB-page systems, which is worse than reporting none.
fn units() -> Option<Units> {
    static UNITS: OnceLock<Option<Units>> = OnceLock::new();
    *UNITS.get_or_init(|| {
        let positive = |var| match sysconf(var) {
            Ok(Some(n)) if n > 0 => u64::try_from(n).ok(),
            _ => None,
        };
        Some(Units {
            page_size: positive(SysconfVar::PAGE_SIZE)?,
            ticks_per_second: positive(SysconfVar::CLK_TCK)?,
        })
    })
}

/// Reads `/proc/<pid>/<name>` into `buf` and returns the bytes read (truncated at
/// `buf.len()`, which callers size to hold the whole file). The path is formatted on the
/// stack, so nothing is allocated.
fn read_proc_file<'b>(pid: u32, name: &str, buf: &'b mut [u8]) -> io::Result<&'b [u8]> {
    // "/proc/" + 10 digits of u32 + "/" + name: 64 bytes fit every name used here.
    let mut path = [0u8; 64];
    let mut cursor = io::Cursor::new(&mut path[..]);
    write!(cursor, "/proc/{pid}/{name}")?;
    // The cursor's position is at most 64, so the cast cannot truncate.
    let len = cursor.position() as usize;
    let mut file = File::open(Path::new(OsStr::from_bytes(&path[..len])))?;
    // /proc files are generated whole on the first read, but a read may still return less
    // than asked, so loop until EOF or a full buffer.
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(&buf[..filled])
}

/// The fields of `/proc/<pid>/stat` that [`sample`] needs.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z`, ...
    state: u8,
    /// Fields 14 + 15: `utime + stime`, in clock ticks.
    cpu_ticks: u64,
}

/// Parses the contents of `/proc/<pid>/stat`.
///
/// The second field is the command name in parentheses, and that name is chosen by the
/// process (`prctl(PR_SET_NAME)`, the executable's file name): it may hold spaces and `)`.
/// The kernel does not escape it, so the only reliable anchor is the *last* `)` in the line;
/// every field after it is numeric (or the one-letter state) and space-separated.
fn parse_stat(stat: &[u8]) -> Option<Stat> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let mut fields = stat[close + 1..]
        .split(|b| b.is_ascii_whitespace())
        .filter(|field| !field.is_empty());
    // Field numbers as in proc(5); the iterator starts at field 3.
    let state = *fields.next()?.first()?;
    let utime = parse_u64(fields.nth(10)?)?; // field 14
    let stime = parse_u64(fields.next()?)?; // field 15
    Some(Stat {
        state,
        cpu_ticks: utime.saturating_add(stime),
    })
}

/// Parses the second field of `/proc/<pid>/statm`: the resident set size, in pages.
fn parse_statm_resident(statm: &[u8]) -> Option<u64> {
    let mut fields = statm
        .split(|b| b.is_ascii_whitespace())
        .filter(|field| !field.is_empty());
    parse_u64(fields.nth(1)?)
}

/// Parses a decimal `u64` from ASCII bytes, without allocating.
fn parse_u64(field: &[u8]) -> Option<u64> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const MIB: u64 = 1024 * 1024;

    fn own_pid() -> u32 {
        std::process::id()
    }

    #[test]
    fn own_process_gives_plausible_numbers() {
        let usage = sample(own_pid()).expect("our own /proc entry is readable");
        // A Rust test binary with a tokio runtime linked in is a few MiB resident at least.
        assert!(usage.rss_bytes >= MIB, "{usage:?}");
        assert!(usage.rss_bytes < 64 * 1024 * MIB, "{usage:?}");
        assert!(usage.cpu_seconds >= 0.0, "{usage:?}");
        assert!(usage.cpu_seconds < 24.0 * 3600.0, "{usage:?}");
    }

    #[test]
    fn rss_matches_status_vmrss() {
        // An idle child, so its memory does not move between the reads once it has finished
        // exec and dynamic loading: retry until VmRSS reads the same before and after.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let vm_rss_kib = || -> u64 {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let before = vm_rss_kib();
            let usage = sample(pid).expect("the child is alive");
            if vm_rss_kib() == before {
                assert_eq!(usage.rss_bytes, before * 1024);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the child's memory never settled"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().expect("kill sleep");
        child.wait().expect("reap sleep");
    }

    #[test]
    fn rss_grows_after_touching_50_mib() {
        // Tests running concurrently in this process allocate and free tens of MiB too, which
        // can hide part of the growth in one attempt; it cannot do so in every attempt.
        let mut attempts = Vec::new();
        for _ in 0..10 {
            let before = sample(own_pid()).unwrap();
            // vec![1; n] writes every byte (a zeroed allocation could stay unmapped), so all
            // 50 MiB become resident. glibc serves an allocation this large with a fresh mmap,
            // so it cannot be recycled memory that was already resident.
            let block = vec![1u8; 50 * MIB as usize];
            std::hint::black_box(&block);
            let after = sample(own_pid()).unwrap();
            drop(block);
            let grown = after.rss_bytes.saturating_sub(before.rss_bytes);
            if grown >= 45 * MIB {
                return;
            }
            attempts.push((before, after));
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("RSS did not grow by 50 MiB: {attempts:?}");
    }

    #[test]
    fn cpu_seconds_grow_after_busy_loop() {
        let before = sample(own_pid()).unwrap();
        let start = Instant::now();
        let mut x = 0u64;
        // Spin ~200 ms, and longer if a loaded machine gave this thread too little CPU; the
        // deadline only keeps a broken sampler from hanging the test.
        loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let elapsed = start.elapsed();
            if elapsed >= Duration::from_millis(200) {
                let now = sample(own_pid()).unwrap();
                if now.cpu_seconds - before.cpu_seconds >= 0.15 {
                    break;
                }
                assert!(
                    elapsed < Duration::from_secs(20),
                    "CPU time did not grow: {before:?} -> {now:?}"
                );
            }
        }
    }

    #[test]
    fn dead_process_gives_none() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("reap true");
        // Reaped: /proc/<pid> is gone (the pid could be reused, but not this quickly).
        assert_eq!(sample(pid), None);
        assert_eq!(sample(0), None);
        assert_eq!(sample(u32::MAX), None);
    }

    #[test]
    fn zombie_gives_none() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        // Not reaped yet: wait until it has exited and is a zombie.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read(format!("/proc/{pid}/stat")).unwrap();
            if parse_stat(&stat).unwrap().state == b'Z' {
                break;
            }
            assert!(Instant::now() < deadline, "the child never became a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sample(pid), None);
        child.wait().expect("reap true");
    }

    #[test]
    fn parser_splits_at_the_last_parenthesis() {
        let line = b"1234 (a) b (c) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 \
                     5000 10485760 777 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 17 3 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: b'S',
                cpu_ticks: 300,
            })
        );
    }

    #[test]
    fn parser_rejects_garbage() {
        assert_eq!(parse_stat(b""), None);
        assert_eq!(parse_stat(b"1234 (no close paren S 1 2 3"), None);
        // Too few fields.
        assert_eq!(parse_stat(b"1234 (x) S 1 2 3"), None);
        // A non-numeric utime.
        assert_eq!(
            parse_stat(b"1 (x) S 1 1 1 0 -1 0 0 0 0 0 zz 0 0 0 20 0 1 0 0 0 5 0"),
            None
        );
        // Only fields up to stime are needed.
        assert_eq!(
            parse_stat(b"1 (x) R 1 1 1 0 -1 0 0 0 0 0 7 8"),
            Some(Stat {
                state: b'R',
                cpu_ticks: 15,
            })
        );
    }

    #[test]
    fn statm_parser() {
        assert_eq!(parse_statm_resident(b"730 447 419 5 0 89 0\n"), Some(447));
        assert_eq!(parse_statm_resident(b"730"), None);
        assert_eq!(parse_statm_resident(b""), None);
        assert_eq!(parse_statm_resident(b"730 -1 0"), None);
    }
}
