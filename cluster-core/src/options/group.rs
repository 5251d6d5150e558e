//! The options of one group of workers.

use super::{Account, Autoscale, Count, EnvAllow, Options, RestartPolicy, Rlimits, check};
use crate::Error;

/// Options of one group of workers: workers of a group run the same worker function under
/// their own name, count and environment.
///
/// # Examples
///
/// ```
/// use cluster_core::{GroupOptions, RestartMode, RestartPolicy};
///
/// let web = GroupOptions::new("web")
///     .with_count(3)
///     .with_env("PORT", "8080")
///     .with_restart(RestartPolicy::new().with_mode(RestartMode::Transient));
/// web.validate()?;
/// assert_eq!(web.name(), "web");
/// assert_eq!(web.env(), [("PORT".to_owned(), "8080".to_owned())]);
/// # Ok::<(), cluster_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GroupOptions {
    name: String,
    count: Count,
    env: Vec<(String, String)>,
    restart: Option<RestartPolicy>,
    user: Option<Account>,
    group: Option<Account>,
    rlimits: Rlimits,
    env_allow: EnvAllow,
    autoscale: Option<Autoscale>,
}

impl GroupOptions {
    /// A group with the given name, the default count (2), no extra environment, and the
    /// cluster's restart policy.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        GroupOptions {
            name: name.into(),
            count: Count::default(),
            env: Vec::new(),
            restart: None,
            user: None,
            group: None,
            rlimits: Rlimits::new(),
            env_allow: EnvAllow::default(),
            autoscale: None,
        }
    }

    /// How many workers this group runs.
    #[must_use]
    pub fn with_count(mut self, count: impl Into<Count>) -> Self {
        self.count = count.into();
        self
    }

    /// One worker per available CPU.
    #[must_use]
    pub fn with_count_cpus(self) -> Self {
        self.with_count(Count::Cpus)
    }

    /// Adds an environment variable to this group's workers; a later value for the same key
    /// replaces the earlier one.
    #[must_use]
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        let value = value.into();
        match self.env.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.env.push((key, value)),
        }
        self
    }

    /// A restart policy for this group instead of the cluster's.
    #[must_use]
    pub fn with_restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = Some(policy);
        self
    }

    /// The user this group's workers run as, instead of the cluster's `user` (see
    /// [`Options::with_user`]); its group is then this group's [`GroupOptions::with_group`],
    /// else the cluster's `group`, else the user's primary group.
    #[must_use]
    pub fn with_user(mut self, user: impl Into<Account>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The group this group's workers run as, instead of the cluster's `group`.
    #[must_use]
    pub fn with_group(mut self, group: impl Into<Account>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Resource limits of this group's workers, each replacing the cluster's limit of the
    /// same resource (see [`Options::with_rlimits`]).
    #[must_use]
    pub fn with_rlimits(mut self, rlimits: Rlimits) -> Self {
        self.rlimits = rlimits;
        self
    }

    /// With the cluster's `env_clear`: more of the master's variables that this group's
    /// workers get, besides the cluster's `env_allow`.
    #[must_use]
    pub fn with_env_allow(mut self, names: EnvAllow) -> Self {
        self.env_allow = names;
        self
    }

    /// Autoscales this group between `min` and `max` workers on its load (off by default);
    /// its `count` is the starting size, brought into the range. The thresholds and windows
    /// are the cluster's `autoscale_*` options.
    #[must_use]
    pub fn with_autoscale(mut self, min: usize, max: usize) -> Self {
        self.autoscale = Some(Autoscale::new(min, max));
        self
    }

    /// See [`GroupOptions::with_autoscale`]; `None`: a fixed size.
    #[must_use]
    pub fn autoscale(&self) -> Option<Autoscale> {
        self.autoscale
    }

    /// See [`GroupOptions::with_user`]; `None` means the cluster's.
    #[must_use]
    pub fn user(&self) -> Option<&Account> {
        self.user.as_ref()
    }

    /// See [`GroupOptions::with_group`]; `None` means the cluster's.
    #[must_use]
    pub fn group(&self) -> Option<&Account> {
        self.group.as_ref()
    }

    /// See [`GroupOptions::with_rlimits`].
    #[must_use]
    pub fn rlimits(&self) -> &Rlimits {
        &self.rlimits
    }

    /// See [`GroupOptions::with_env_allow`].
    #[must_use]
    pub fn env_allow(&self) -> &EnvAllow {
        &self.env_allow
    }

    /// See [`GroupOptions::new`].
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// See [`GroupOptions::with_count`].
    #[must_use]
    pub fn count(&self) -> Count {
        self.count
    }

    /// See [`GroupOptions::with_env`]; in insertion order.
    #[must_use]
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// This group's own policy; `None` means the cluster's.
    #[must_use]
    pub fn restart(&self) -> Option<&RestartPolicy> {
        self.restart.as_ref()
    }

    /// The policy that applies to this group: its own, or else `cluster`'s.
    #[must_use]
    pub fn effective_restart<'a>(&'a self, cluster: &'a Options) -> &'a RestartPolicy {
        self.restart.as_ref().unwrap_or(&cluster.restart)
    }

    /// Checks the name (non-empty, only `A-Z a-z 0-9 _ -`, since it appears in log prefixes
    /// and in the worker's environment), the count (at least 1), the environment keys and
    /// values, and the group's own restart policy if any.
    ///
    /// # Errors
    ///
    /// an error of kind [`InvalidOption`](crate::ErrorKind::InvalidOption) with option `name`, `count`, `env`, or one of the restart
    /// policy's options, or `autoscale`.
    pub fn validate(&self) -> Result<(), Error> {
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::invalid_option(
                "name",
                format!(
                    "group name {:?} is invalid; use a non-empty name made of A-Z, a-z, 0-9, `_` and `-`",
                    self.name
                ),
            ));
        }
        check::count(&self.count).map_err(|reason| {
            Error::invalid_option("count", format!("group `{}`: {reason}", self.name))
        })?;
        check::autoscale(&self.autoscale).map_err(|reason| {
            Error::invalid_option("autoscale", format!("group `{}`: {reason}", self.name))
        })?;
        for (key, value) in &self.env {
            let reason = if key.is_empty() || key.contains('=') || key.contains('\0') {
                Some(format!(
                    "key {key:?} is not a valid variable name; use a non-empty name without `=` or NUL"
                ))
            } else if key.starts_with("CLUSTER_WORKER_") || key.starts_with("CLUSTER_IPC_") {
                // The master uses these to tell a worker who it is (see identity.rs).
                Some(format!(
                    "key {key:?} is reserved for the cluster itself; use another name"
                ))
            } else if value.contains('\0') {
                Some(format!(
                    "the value of {key:?} contains a NUL byte, which no environment can hold"
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::invalid_option(
                    "env",
                    format!("group `{}`: {reason}", self.name),
                ));
            }
        }
        match &self.restart {
            Some(policy) => policy.validate(),
            None => Ok(()),
        }
    }
}
