//! A reload's second read of the options file and the environment: the options a running
//! cluster can take are applied (`count` by scaling), the others are reported as needing a
//! restart. Apart from reload.rs because only the master started by `Cluster::run` has a
//! configuration to re-read; the supervisor's own tests run without one.

use std::sync::Arc;

use super::process::Launcher;
use super::{Supervisor, notice};
use crate::control::protocol::OptionRow;
use crate::options::Resolved;

/// The configuration the master started with, kept for reloads.
pub(crate) struct LiveConfig {
    /// The options in force and their sources (what a control socket would show).
    pub(crate) resolved: Resolved,
    /// The groups that take the cluster's `count` (those added by `Cluster::worker`).
    pub(crate) count_groups: Vec<Arc<str>>,
}

impl<L: Launcher> Supervisor<L> {
    /// Keeps `config` for reloads to re-read.
    pub(crate) fn set_config(&mut self, config: LiveConfig) {
        self.config = Some(config);
    }

    /// The options in force and where each came from, when the master has a configuration.
    pub(crate) fn resolved(&self) -> Option<&Resolved> {
        self.config.as_ref().map(|c| &c.resolved)
    }

    /// Every option in force with its source, for the control socket's `status`: the
    /// configuration's (as the last reload left it), or without one the options this loop
    /// runs with, as the code set them.
    pub(super) fn option_rows(&self) -> Vec<OptionRow> {
        let code_only;
        let resolved = match self.resolved() {
            Some(resolved) => resolved,
            None => {
                code_only = Resolved::code_only(self.options.clone());
                &code_only
            }
        };
        resolved
            .sources()
            .map(|o| OptionRow {
                name: o.name.to_owned(),
                value: o.value,
                source: o.source.into(),
            })
            .collect()
    }

    /// Reads the options file and the environment again and applies what a running cluster
    /// can take; says which options it applied and which need a restart. A bad file leaves
    /// every option as it was: a reload must not take down a running cluster.
    pub(super) async fn reread_config(&mut self) {
        let Some(config) = &self.config else { return };
        let reloaded = match config.resolved.reload() {
            Ok(reloaded) => reloaded,
            Err(e) => {
                notice!(
                    warn,
                    "reload: options not re-read, the running ones are kept: {}",
                    crate::error::chain(&e)
                );
                return;
            }
        };
        for warning in reloaded.resolved.warnings() {
            notice!(warn, "{warning}");
        }
        if !reloaded.needs_restart.is_empty() {
            notice!(
                warn,
                "reload: changed options that need a restart of the master, kept as they are: {}",
                reloaded.needs_restart.join(", ")
            );
        }
        if reloaded.applied.is_empty() {
            if let Some(config) = &mut self.config {
                config.resolved = reloaded.resolved;
            }
            return;
        }
        let described: Vec<String> = reloaded
            .applied
            .iter()
            .filter_map(|name| {
                reloaded
                    .resolved
                    .sources()
                    .find(|o| o.name == *name)
                    .map(|o| format!("{name} = {} ({})", o.value, o.source))
            })
            .collect();
        notice!(info, "reload: options applied: {}", described.join(", "));
        let options = reloaded.resolved.options().clone();
        let count_changed = reloaded.applied.contains(&"count");
        let groups = match &mut self.config {
            Some(config) => {
                config.resolved = reloaded.resolved;
                config.count_groups.clone()
            }
            None => Vec::new(),
        };
        let count = options.count();
        self.options = options;
        if count_changed {
            for name in groups {
                if let Some(g) = self.group_index(&name) {
                    self.groups[g].options = self.groups[g].options.clone().with_count(count);
                    self.resize(g, count.resolve()).await;
                }
            }
        }
    }
}
