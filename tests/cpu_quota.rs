//! `count = cpus` under CPU limits: a cluster started in a cgroup with a CPU quota of one core
//! (what Kubernetes sets for `limits: cpu: 1`), or with an affinity mask of one CPU, starts one
//! worker, not one per CPU of the machine. The count comes from
//! `std::thread::available_parallelism`, which reads both the affinity mask and the cgroup
//! quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`).
//!
//! The quota test needs root (it creates a cgroup) and a CPU controller it can write: the
//! cgroup v2 one when `cpu` is among the v2 hierarchy's controllers, else the v1 `cpu`
//! hierarchy (on a hybrid mount, as on the machines this is built on, the `cpu` controller is
//! bound to v1 and cgroup v2 cannot have it). Both need a machine of at least 2 CPUs, where one
//! worker per CPU would be more than one.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::ops::get;
use support::process::{Captured, Group, group_command};
use support::{WAIT, example, free_port, poll, wait_until};

/// examples/http with `WORKERS=cpus`, started by `launcher` (a shell command that ends by
/// exec'ing the program, given as `$0`, so that the master keeps the shell's pid).
struct CpusCluster {
    group: Group,
    status: SocketAddr,
    stdout: Captured,
    stderr: Captured,
}

impl CpusCluster {
    fn start(launcher: &str, args: &[&str]) -> CpusCluster {
        let mut cmd = group_command(Path::new("/bin/sh"), &["CLUSTER_"]);
        let status_port = free_port();
        cmd.arg("-c")
            .arg(launcher)
            .arg(example("http"))
            .args(args)
            .env("HOST", "127.0.0.1")
            .env("PORT", free_port().to_string())
            .env("STATUS_PORT", status_port.to_string())
            .env("WORKERS", "cpus");
        let (group, pipes) = Group::spawn(&mut cmd, "examples/http with WORKERS=cpus");
        CpusCluster {
            group,
            status: SocketAddr::from(([127, 0, 0, 1], status_port)),
            stdout: Captured::start(pipes.stdout),
            stderr: Captured::start(pipes.stderr),
        }
    }

    /// The worker slots in `/status` once `/readyz` says ready.
    fn slots_when_ready(&mut self) -> Vec<u64> {
        poll("the cluster to be ready", WAIT, || {
            if let Some(exit) = self.group.try_exit() {
                panic!(
                    "the master exited ({exit:?}):\n{}{}",
                    self.stdout.text(),
                    self.stderr.text()
                );
            }
            match get(self.status, "/readyz", std::time::Duration::from_secs(5)) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("/readyz answered {}", r.status)),
                Err(e) => Err(e.to_string()),
            }
        });
        let status = support::ops::status(self.status);
        let mut slots: Vec<u64> = status["workers"]
            .as_array()
            .unwrap_or_else(|| panic!("/status has no workers: {status}"))
            .iter()
            .filter_map(|w| w["slot"].as_u64())
            .collect();
        slots.sort_unstable();
        slots.dedup();
        slots
    }
}

fn machine_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A cgroup of this test's own with a CPU quota of one core, removed on drop (after the
/// processes in it are gone).
struct QuotaCgroup {
    dir: PathBuf,
}

impl QuotaCgroup {
    /// Creates it under this process's own cgroup, on the v2 hierarchy if it has the `cpu`
    /// controller, else on the v1 `cpu` hierarchy. `Err` says why neither can be used.
    fn one_core() -> Result<QuotaCgroup, String> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")
            .map_err(|e| format!("read /proc/self/mounts: {e}"))?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("read /proc/self/cgroup: {e}"))?;
        let name = format!("cluster-cpu-quota-test-{}", std::process::id());
        let mut why = Vec::new();
        match Self::v2(&mounts, &own, &name) {
            Ok(cg) => return Ok(cg),
            Err(e) => why.push(format!("cgroup v2: {e}")),
        }
        match Self::v1(&mounts, &own, &name) {
            Ok(cg) => return Ok(cg),
            Err(e) => why.push(format!("cgroup v1: {e}")),
        }
        Err(why.join("; "))
    }

    fn v2(mounts: &str, own: &str, name: &str) -> Result<QuotaCgroup, String> {
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[2] == "cgroup2")
            .map(|f| PathBuf::from(f[1]))
            .ok_or("no cgroup2 mount")?;
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
            .map_err(|e| format!("read {}/cgroup.controllers: {e}", root.display()))?;
        if !controllers.split_whitespace().any(|c| c == "cpu") {
            return Err(format!(
                "the cpu controller is not available in {} (controllers: {}): it is bound to \
                 the v1 hierarchy",
                root.display(),
                controllers.trim()
            ));
        }
        let path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("this process has no cgroup v2 path")?;
        let parent = root.join(path.trim_start_matches('/'));
        // The parent must hand the cpu controller down; a non-root cgroup holding processes
        // cannot (the no-internal-processes rule), which is then the reason given.
        write(&parent.join("cgroup.subtree_control"), "+cpu")?;
        let dir = parent.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let cg = QuotaCgroup { dir };
        write(&cg.dir.join("cpu.max"), "100000 100000")?;
        Ok(cg)
    }

    fn v1(mounts: &str, own: &str, name: &str) -> Result<QuotaCgroup, String> {
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "cpu"))
            .map(|f| PathBuf::from(f[1]))
            .ok_or("no cgroup v1 hierarchy with the cpu controller")?;
        let path = own
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers.split(',').any(|c| c == "cpu").then_some(path)
            })
            .ok_or("this process is in no v1 cpu cgroup")?;
        let dir = root.join(path.trim_start_matches('/')).join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let cg = QuotaCgroup { dir };
        write(&cg.dir.join("cpu.cfs_period_us"), "100000")?;
        write(&cg.dir.join("cpu.cfs_quota_us"), "100000")?;
        Ok(cg)
    }
}

impl Drop for QuotaCgroup {
    fn drop(&mut self) {
        // The cluster's group was killed before this runs; its processes leave the cgroup as
        // they are reaped, and only an empty cgroup can be removed.
        let procs = self.dir.join("cgroup.procs");
        let deadline = std::time::Instant::now() + WAIT;
        while std::fs::read_to_string(&procs).is_ok_and(|p| !p.trim().is_empty())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("could not remove the cgroup {}: {e}", self.dir.display());
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("write {value:?} to {}: {e}", path.display()))
}

#[test]
fn count_cpus_follows_a_cgroup_cpu_quota_of_one_core() {
    if machine_cpus() < 2 {
        eprintln!("skipped: this machine has 1 CPU, so a quota of 1 core changes nothing");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: creating a cgroup needs root");
        return;
    }
    let cgroup = QuotaCgroup::one_core()
        .unwrap_or_else(|why| panic!("no cgroup with a CPU quota can be made here: {why}"));
    // The shell moves itself into the cgroup, then becomes the master: the master and the
    // workers it spawns are all under the quota from their first instruction.
    let procs = cgroup.dir.join("cgroup.procs");
    let mut cluster = CpusCluster::start(
        r#"echo $$ > "$1" && exec "$0""#,
        &[procs.to_str().expect("a UTF-8 cgroup path")],
    );
    let master = cluster.group.pid().to_string();
    wait_until("the master to be in the cgroup", WAIT, || {
        std::fs::read_to_string(&procs).is_ok_and(|p| p.lines().any(|l| l == master))
    });
    let slots = cluster.slots_when_ready();
    assert_eq!(
        slots,
        vec![0],
        "one worker under a quota of one core, on a machine of {} CPUs",
        machine_cpus()
    );
    drop(cluster);
    drop(cgroup);
}

#[test]
fn count_cpus_follows_the_affinity_mask() {
    if machine_cpus() < 2 {
        eprintln!("skipped: this machine has 1 CPU, so a mask of 1 CPU changes nothing");
        return;
    }
    if Command::new("taskset").arg("-V").output().is_err() {
        panic!("taskset is not installed (apt-get install -y util-linux)");
    }
    // CPU 0 only: `taskset` sets the mask and execs the program, which keeps its pid.
    let mut cluster = CpusCluster::start(r#"exec taskset -c 0 "$0""#, &[]);
    assert_eq!(cluster.slots_when_ready(), vec![0]);
}
