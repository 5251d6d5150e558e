//! Least privilege for workers: the options `user`, `group`, `umask`, `rlimits`, `nice`,
//! `cpu_affinity`, `no_new_privs`, `env_clear` and `env_allow`, with a group's own `user`,
//! `group`, `rlimits` and `env_allow` over them, resolved once when the master starts into a
//! [`Policy`] per group.
//!
//! Resolving means everything that may fail or allocate: names to ids through the system's
//! databases, the supplementary groups as `initgroups` would set them, CPU lists against the
//! CPUs the master may use, and whether the master has the right to grant all of it. A
//! mistake here is a configuration error that stops the master (exit code 2) before any
//! worker starts. What is left for the child between fork and exec is system calls on data
//! prepared here (`sys::restrict`).
//!
//! The master itself keeps its credentials: workers ask it to bind their listening addresses
//! at any time (a reload, a new listener), and a port below 1024 needs root or
//! `CAP_NET_BIND_SERVICE` for that bind.

use std::ffi::CString;

use nix::sys::resource::{Resource, getrlimit};
use nix::unistd::{Gid, Group, Uid, User, getegid, geteuid, getgrouplist};

use crate::identity::{ENV_GENERATION, ENV_GROUP, ENV_HEARTBEAT_MS, ENV_IPC_FD, ENV_SLOT};
use crate::model::WorkerId;
use crate::options::{Account, CpuAffinity, EnvAllow, GroupOptions, Limit, Options, Rlimits};
use crate::sys::{Restrictions, Step};
use crate::{Error, Result};

/// What a group's workers take on when they start.
pub(crate) struct Policy {
    /// Everything but the CPUs of `spread`, which depend on the slot.
    restrictions: Restrictions,
    /// With `cpu_affinity = spread`: the CPUs the master may use, slot i getting i mod n.
    spread: Option<Vec<usize>>,
    env_clear: bool,
    env_allow: EnvAllow,
    /// Who the workers run as, for messages: `nobody (uid 65534, gid 65534)`.
    who: Option<String>,
}

impl Policy {
    /// The policy of each group, by group name, said in the log for those that change user.
    ///
    /// # Errors
    ///
    /// As [`Policy::resolve`], for the first group at fault.
    pub(crate) fn resolve_all(
        options: &Options,
        groups: &[GroupOptions],
    ) -> Result<Vec<(String, Policy)>> {
        let mut policies = Vec::with_capacity(groups.len());
        for group in groups {
            let policy = Policy::resolve(options, group)?;
            if let Some(who) = policy.who() {
                super::notice!(info, "workers of group `{}` run as {who}", group.name());
            }
            policies.push((group.name().to_owned(), policy));
        }
        Ok(policies)
    }

    /// Resolves the policy of `group`'s workers.
    ///
    /// # Errors
    ///
    /// An [`InvalidOption`](crate::ErrorKind::InvalidOption) error naming the option: a user
    /// or group that does not exist, a change the master has no right to make, a CPU it may
    /// not use.
    pub(crate) fn resolve(options: &Options, group: &GroupOptions) -> Result<Policy> {
        let name = group.name();
        let user = group.user().or(options.user());
        let group_account = group.group().or(options.group());
        let mut restrictions = Restrictions::default();
        let who = credentials(user, group_account, &mut restrictions)
            .map_err(|(option, reason)| Error::invalid_option(option, in_group(name, reason)))?;
        let rlimits = options.rlimits().overlaid(group.rlimits());
        restrictions.rlimits = limits(&rlimits)
            .map_err(|reason| Error::invalid_option("rlimits", in_group(name, reason)))?;
        if let Some(nice) = options.nice() {
            if nice.get() < 0 && !geteuid().is_root() {
                return Err(Error::invalid_option(
                    "nice",
                    format!(
                        "a nice value of {nice} favours workers over other processes, which only root may grant, and the master runs as uid {}; use 0 or more, or start the master as root",
                        geteuid()
                    ),
                ));
            }
            restrictions.nice = Some(nice.get());
        }
        let mut spread = None;
        match options.cpu_affinity() {
            CpuAffinity::Off => {}
            CpuAffinity::Spread => spread = Some(allowed_cpus()?),
            CpuAffinity::Cpus(cpus) => {
                let allowed = allowed_cpus()?;
                let missing: Vec<String> = cpus
                    .iter()
                    .filter(|c| !allowed.contains(c))
                    .map(ToString::to_string)
                    .collect();
                if !missing.is_empty() {
                    return Err(Error::invalid_option(
                        "cpu_affinity",
                        format!(
                            "CPU {} is not one the master may run on (it may use {}); name only those, or use `spread`",
                            missing.join(", "),
                            CpuAffinity::Cpus(allowed)
                        ),
                    ));
                }
                restrictions.cpus = Some(cpu_set(cpus)?);
            }
        }
        restrictions.umask = options.umask().map(|u| u.bits());
        restrictions.no_new_privs = options.no_new_privs();
        Ok(Policy {
            restrictions,
            spread,
            env_clear: options.env_clear(),
            env_allow: options.env_allow().joined(group.env_allow()),
            who,
        })
    }

    /// Who the workers run as, when `user` or `group` is set.
    pub(crate) fn who(&self) -> Option<&str> {
        self.who.as_deref()
    }

    /// What worker `slot` takes on between fork and exec; `None` when nothing.
    pub(crate) fn restrictions(&self, slot: usize) -> Result<Option<Restrictions>> {
        let mut r = self.restrictions.clone();
        if let Some(cpus) = &self.spread {
            if let Some(cpu) = cpus.get(slot % cpus.len().max(1)) {
                r.cpus = Some(cpu_set(&[*cpu])?);
            }
        }
        let none = r.nice.is_none()
            && r.rlimits.is_empty()
            && r.cpus.is_none()
            && r.umask.is_none()
            && r.groups.is_none()
            && r.gid.is_none()
            && r.uid.is_none()
            && !r.no_new_privs;
        Ok((!none).then_some(r))
    }

    /// With `env_clear`: starts `cmd` from an empty environment plus the master's variables
    /// that `env_allow` names. Called before the cluster sets its own variables.
    pub(crate) fn start_env(&self, cmd: &mut tokio::process::Command) {
        if !self.env_clear {
            return;
        }
        cmd.env_clear();
        for (key, value) in std::env::vars_os() {
            let reserved = [
                ENV_GROUP,
                ENV_SLOT,
                ENV_GENERATION,
                ENV_IPC_FD,
                ENV_HEARTBEAT_MS,
            ];
            if key
                .to_str()
                .is_some_and(|k| self.env_allow.allows(k) && !reserved.contains(&k))
            {
                cmd.env(key, value);
            }
        }
    }

    /// The error of a worker whose start failed at `step` of taking on this policy.
    pub(crate) fn step_error(&self, id: &WorkerId, step: Step, error: std::io::Error) -> Error {
        let (option, what) = match step {
            Step::Nice => ("nice", "setting its nice value"),
            Step::Rlimit => ("rlimits", "setting its resource limits"),
            Step::Affinity => ("cpu_affinity", "setting its CPUs"),
            Step::Setgroups => ("group", "setting its supplementary groups"),
            Step::Setgid => ("group", "switching to its group"),
            Step::Setuid => ("user", "switching to its user"),
            Step::RootRegained => ("user", "checking the switch: it could become root again"),
            Step::NoNewPrivs => ("no_new_privs", "setting no_new_privs"),
        };
        let who = self.who.as_deref().unwrap_or("the master's user");
        Error::invalid_option(
            option,
            format!("worker {id} (to run as {who}) failed {what}: {error}"),
        )
    }
}

fn in_group(group: &str, reason: String) -> String {
    format!("group `{group}`: {reason}")
}

/// Fills the credentials of `r` from `user` and `group`; returns who that is.
fn credentials(
    user: Option<&Account>,
    group: Option<&Account>,
    r: &mut Restrictions,
) -> std::result::Result<Option<String>, (&'static str, String)> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let (uid, user_name, primary) = match user {
        Some(Account::Name(name)) => match User::from_name(name) {
            Ok(Some(u)) => (Some(u.uid), Some(u.name), Some(u.gid)),
            Ok(None) => {
                return Err((
                    "user",
                    format!(
                        "no user named {name:?}: getpwnam found no such entry in the system's user database (/etc/passwd, or what /etc/nsswitch.conf names); use an existing user name or a numeric uid"
                    ),
                ));
            }
            Err(e) => {
                return Err((
                    "user",
                    format!(
                        "looking up user {name:?} in the system's user database (getpwnam) failed: {e}"
                    ),
                ));
            }
        },
        // A uid without an entry is allowed (containers run as arbitrary uids); it then has
        // no name, so no supplementary groups, and no primary group.
        Some(Account::Id(uid)) => match User::from_uid(Uid::from_raw(*uid)) {
            Ok(Some(u)) => (Some(u.uid), Some(u.name), Some(u.gid)),
            Ok(None) => (Some(Uid::from_raw(*uid)), None, None),
            Err(e) => {
                return Err((
                    "user",
                    format!(
                        "looking up uid {uid} in the system's user database (getpwuid) failed: {e}"
                    ),
                ));
            }
        },
        None => (None, None, None),
    };
    let gid = match group {
        Some(Account::Name(name)) => Some(
            Group::from_name(name)
                .map_err(|e| ("group", format!("looking up group {name:?} in the system's group database (getgrnam) failed: {e}")))?
                .ok_or_else(|| {
                    (
                        "group",
                        format!("no group named {name:?}: getgrnam found no such entry in the system's group database (/etc/group, or what /etc/nsswitch.conf names); use an existing group name or a numeric gid"),
                    )
                })?
                .gid,
        ),
        Some(Account::Id(gid)) => Some(Gid::from_raw(*gid)),
        None => primary,
    };
    let Some(gid) = gid else {
        let uid = uid.map_or_else(String::new, |u| u.to_string());
        return Err((
            "group",
            format!(
                "uid {uid} has no entry in the user database, so it has no primary group; set `group` too"
            ),
        ));
    };
    // As initgroups(3): the user's groups and the primary one; a group alone replaces root's.
    let groups = match &user_name {
        Some(name) => {
            let c_name = CString::new(name.as_str())
                .map_err(|_| ("user", format!("user name {name:?} holds a NUL byte")))?;
            getgrouplist(&c_name, gid).map_err(|e| {
                (
                    "user",
                    format!("listing the groups of user {name:?} (getgrouplist) failed: {e}"),
                )
            })?
        }
        None => vec![gid],
    };
    let euid = geteuid();
    let same = uid.is_none_or(|u| u == euid) && gid == getegid();
    if !euid.is_root() && !same {
        let option = if uid.is_some_and(|u| u != euid) {
            "user"
        } else {
            "group"
        };
        return Err((
            option,
            format!(
                "the master runs as uid {euid}, not root, so it cannot start workers as another user or group; start the master as root (it keeps root to bind ports and drops it in each worker), or leave `user` and `group` off"
            ),
        ));
    }
    let who = match (&user_name, uid) {
        (Some(name), Some(uid)) => format!("{name} (uid {uid}, gid {gid})"),
        (None, Some(uid)) => format!("uid {uid}, gid {gid}"),
        _ => format!("gid {gid}"),
    };
    if !same {
        r.groups = Some(groups.iter().map(|g| g.as_raw()).collect());
        r.gid = Some(gid.as_raw());
        r.uid = uid.map(Uid::as_raw);
    }
    Ok(Some(who))
}

/// The system's resource for each limit.
fn resource(limit: Limit) -> Resource {
    match limit {
        Limit::Nofile => Resource::RLIMIT_NOFILE,
        Limit::Nproc => Resource::RLIMIT_NPROC,
        Limit::Core => Resource::RLIMIT_CORE,
        Limit::As => Resource::RLIMIT_AS,
    }
}

/// The limits to set, checked against what the master may grant.
fn limits(rlimits: &Rlimits) -> std::result::Result<Vec<(Resource, nix::libc::rlimit)>, String> {
    let infinity = nix::libc::RLIM_INFINITY;
    let root = geteuid().is_root();
    let mut out = Vec::new();
    for l in rlimits.iter() {
        let name = l.limit.name();
        let soft = l.soft.unwrap_or(infinity);
        let hard = l.hard.unwrap_or(infinity);
        let resource = resource(l.limit);
        let (_, master_hard) = getrlimit(resource)
            .map_err(|e| format!("reading the master's {name} limit failed: {e}"))?;
        if hard > master_hard && !root {
            return Err(format!(
                "{name}'s hard limit {} is above the master's {}, which only root may raise, and the master runs as uid {}; lower it, or start the master as root",
                shown(hard),
                shown(master_hard),
                geteuid()
            ));
        }
        if l.limit == Limit::Nofile {
            // The kernel refuses more descriptors than fs.nr_open, even to root.
            if let Some(nr_open) = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
            {
                if hard > nr_open {
                    return Err(format!(
                        "nofile's hard limit {} is above the kernel's fs.nr_open of {nr_open}; lower it, or raise fs.nr_open",
                        shown(hard)
                    ));
                }
            }
        }
        out.push((
            resource,
            nix::libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            },
        ));
    }
    Ok(out)
}

fn shown(value: u64) -> String {
    if value == nix::libc::RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        value.to_string()
    }
}

/// The CPUs the master may run on, in order.
fn allowed_cpus() -> Result<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map_err(|e| Error::io("cannot read the CPUs the master may use", e.into()))?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}

fn cpu_set(cpus: &[usize]) -> Result<nix::sched::CpuSet> {
    let mut set = nix::sched::CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).map_err(|e| {
            Error::invalid_option("cpu_affinity", format!("CPU {cpu} cannot be named: {e}"))
        })?;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_that_does_not_exist_names_the_option_and_the_lookup() {
        let options = Options::new().with_user(Some(Account::from("no-such-user-here")));
        let error = Policy::resolve(&options, &GroupOptions::new("web"))
            .err()
            .map(|e| (e.option(), e.to_string()));
        let (option, message) = error.unwrap_or_default();
        assert_eq!(option, Some("user"));
        assert!(
            message.contains("no user named \"no-such-user-here\""),
            "{message}"
        );
        assert!(message.contains("getpwnam"), "{message}");
        assert!(message.contains("group `web`"), "{message}");
    }

    #[test]
    fn a_group_user_and_limits_replace_the_clusters() {
        let options = Options::new()
            .with_user(Some(Account::Id(0)))
            .with_rlimits("nofile=100, core=0".parse().unwrap_or_default());
        let group = GroupOptions::new("jobs")
            .with_user(Account::from("root"))
            .with_rlimits("nofile=200".parse().unwrap_or_default());
        let policy = Policy::resolve(&options, &group).ok();
        let policy = policy.as_ref();
        assert_eq!(
            policy
                .and_then(Policy::who)
                .map(|w| w.starts_with("root (uid 0")),
            Some(true)
        );
        let r = policy
            .and_then(|p| p.restrictions(0).ok().flatten())
            .unwrap_or_default();
        let nofile = r
            .rlimits
            .iter()
            .find(|(res, _)| *res == Resource::RLIMIT_NOFILE);
        assert_eq!(nofile.map(|(_, l)| l.rlim_max), Some(200));
        assert!(
            r.rlimits
                .iter()
                .any(|(res, l)| *res == Resource::RLIMIT_CORE && l.rlim_max == 0)
        );
    }

    #[test]
    fn spread_pins_each_slot_to_one_allowed_cpu_in_turn() {
        let allowed = allowed_cpus().unwrap_or_default();
        assert!(!allowed.is_empty());
        let options = Options::new().with_cpu_affinity(CpuAffinity::Spread);
        let policy = Policy::resolve(&options, &GroupOptions::new("web")).ok();
        for slot in 0..2 * allowed.len() {
            let cpus = policy
                .as_ref()
                .and_then(|p| p.restrictions(slot).ok().flatten())
                .and_then(|r| r.cpus);
            let set: Vec<usize> = (0..nix::sched::CpuSet::count())
                .filter(|&c| cpus.is_some_and(|s| s.is_set(c).unwrap_or(false)))
                .collect();
            assert_eq!(set, [allowed[slot % allowed.len()]], "slot {slot}");
        }
    }

    #[test]
    fn a_cpu_the_master_may_not_use_is_refused() {
        let options = Options::new().with_cpu_affinity(CpuAffinity::Cpus(vec![1023]));
        let error = Policy::resolve(&options, &GroupOptions::new("web")).err();
        assert_eq!(error.as_ref().and_then(Error::option), Some("cpu_affinity"));
    }
}
