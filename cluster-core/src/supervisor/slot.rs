//! A slot and the worker processes in it. A process's life is one enum, [`Phase`], whose
//! variants hold what only they need: no flags that can disagree with each other.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::outbox::Outbox;
use super::recycle::Limits;
use super::report::Beat;
use super::restart::SlotBackoff;
use crate::model::{WorkerId, WorkerState};
use crate::protocol::ToWorker;

/// Why the master ended a worker. Decides how its exit is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// The cluster is shutting down.
    Shutdown,
    /// Its replacement took over (reload, memory).
    Replaced,
    /// A reload was abandoned: a replacement that will not take over.
    Abandoned,
    /// Its slot was removed by a scale-down.
    Retired,
    /// No heartbeat within `heartbeat_timeout`: killed.
    Hung,
    /// Not ready within `ready_timeout`: killed.
    FailedStart,
}

impl StopReason {
    /// Whether the exit that follows is the master's doing, not the worker's failure.
    pub(crate) fn deliberate(self) -> bool {
        !matches!(self, StopReason::Hung | StopReason::FailedStart)
    }

    /// The reason recorded with a restart it causes.
    pub(crate) fn restart_reason(self) -> &'static str {
        match self {
            StopReason::Hung => "hung",
            StopReason::FailedStart => "failed_start",
            _ => "crash",
        }
    }
}

/// Where one worker process is in its life.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Spawned; its channel is not up yet.
    Starting { ready_by: Instant },
    /// Its channel is up; not ready yet.
    Online { tx: Outbox, ready_by: Instant },
    /// Ready for work.
    Ready { tx: Outbox },
    /// Asked to stop (or killed); killed at `kill_at` if still alive.
    Stopping {
        tx: Option<Outbox>,
        kill_at: Instant,
        reason: StopReason,
    },
}

impl Phase {
    pub(crate) fn state(&self) -> WorkerState {
        match self {
            Phase::Starting { .. } => WorkerState::Starting,
            Phase::Online { .. } => WorkerState::Online,
            Phase::Ready { .. } => WorkerState::Ready,
            Phase::Stopping { .. } => WorkerState::Stopping,
        }
    }

    pub(crate) fn outbox(&self) -> Option<&Outbox> {
        match self {
            Phase::Starting { .. } => None,
            Phase::Online { tx, .. } | Phase::Ready { tx } => Some(tx),
            Phase::Stopping { tx, .. } => tx.as_ref(),
        }
    }

    pub(crate) fn stop_reason(&self) -> Option<StopReason> {
        match self {
            Phase::Stopping { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

/// One worker process.
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) id: WorkerId,
    pub(crate) pid: Option<u32>,
    pub(crate) phase: Phase,
    pub(crate) started: Instant,
    kill: Option<oneshot::Sender<()>>,
    /// Its channel, once up: the listeners hand connections over it directly.
    pub(crate) link: Option<cluster_ipc::Sender<ToWorker>>,
    /// What it said when it exited on its own (`Some(failed)`).
    pub(crate) exiting: Option<bool>,
    /// Its heartbeats: the watchdog's clock, its event-loop lag and open connections.
    pub(crate) beat: Arc<Beat>,
    /// Broadcasts sent while it was starting, written first once its channel is up.
    pub(crate) held: Vec<ToWorker>,
    /// Resident bytes and CPU seconds at the last sample.
    pub(crate) usage: Option<(u64, f64)>,
    /// CPU used between the last two samples, in cores.
    pub(crate) cpu_cores: Option<f64>,
    /// Consecutive samples above `max_memory`.
    pub(crate) over_memory: u32,
    /// Its `max_requests` and `max_lifetime`, jitter drawn.
    pub(crate) limits: Limits,
}

impl Proc {
    pub(crate) fn new(
        id: WorkerId,
        pid: Option<u32>,
        kill: oneshot::Sender<()>,
        beat: Arc<Beat>,
        now: Instant,
        ready_by: Instant,
    ) -> Self {
        Proc {
            id,
            pid,
            phase: Phase::Starting { ready_by },
            started: now,
            kill: Some(kill),
            link: None,
            exiting: None,
            beat,
            held: Vec::new(),
            usage: None,
            cpu_cores: None,
            over_memory: 0,
            limits: Limits::default(),
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. })
    }

    /// Whether it was killed already.
    pub(crate) fn killed(&self) -> bool {
        self.kill.is_none()
    }

    /// Kills the process (once); its exit is reported as for any other.
    pub(crate) fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }

    /// When the watchdog gives up on it, if it watches it.
    pub(crate) fn hung_at(&self, timeout: Option<Duration>) -> Option<Instant> {
        match self.phase {
            Phase::Online { .. } | Phase::Ready { .. } => Some(self.beat.last()? + timeout?),
            _ => None,
        }
    }

    /// Its next deadline of its own: ready, kill or heartbeat.
    pub(crate) fn deadline(&self, heartbeat_timeout: Option<Duration>) -> Option<Instant> {
        let own = match self.phase {
            Phase::Starting { ready_by } | Phase::Online { ready_by, .. } => Some(ready_by),
            Phase::Stopping { kill_at, .. } => self.kill.as_ref().map(|_| kill_at),
            Phase::Ready { .. } => None,
        };
        match (own, self.hung_at(heartbeat_timeout)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A worker's place in its group: the process serving it, a replacement starting for it, and
/// replaced processes still finishing their work.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) current: Option<Proc>,
    /// A replacement (reload, memory), until it is ready and takes over.
    pub(crate) next: Option<Proc>,
    /// Replaced or retired processes finishing their work.
    pub(crate) draining: Vec<Proc>,
    pub(crate) backoff: SlotBackoff,
    pub(crate) restart_at: Option<Instant>,
    /// Restarts after unexpected exits.
    pub(crate) restarts: u64,
    /// Failed starts in a row: the retry backs off with them.
    pub(crate) spawn_failures: u32,
}

impl Slot {
    pub(crate) fn new(backoff: SlotBackoff) -> Self {
        Slot {
            current: None,
            next: None,
            draining: Vec::new(),
            backoff,
            restart_at: None,
            restarts: 0,
            spawn_failures: 0,
        }
    }

    pub(crate) fn procs(&self) -> impl Iterator<Item = &Proc> {
        self.current.iter().chain(&self.next).chain(&self.draining)
    }

    pub(crate) fn procs_mut(&mut self) -> impl Iterator<Item = &mut Proc> {
        self.current
            .iter_mut()
            .chain(&mut self.next)
            .chain(&mut self.draining)
    }

    /// The process of generation `generation`, wherever it is in the slot.
    pub(crate) fn proc_mut(&mut self, generation: u64) -> Option<&mut Proc> {
        self.procs_mut().find(|p| p.id.generation == generation)
    }

    /// Where in the slot the process of `generation` is.
    pub(crate) fn place_of(&self, generation: u64) -> Option<Place> {
        if self
            .current
            .as_ref()
            .is_some_and(|p| p.id.generation == generation)
        {
            Some(Place::Current)
        } else if self
            .next
            .as_ref()
            .is_some_and(|p| p.id.generation == generation)
        {
            Some(Place::Next)
        } else {
            self.draining
                .iter()
                .position(|p| p.id.generation == generation)
                .map(Place::Draining)
        }
    }

    /// Takes the process at `place` out of the slot.
    pub(crate) fn take(&mut self, place: Place) -> Option<Proc> {
        match place {
            Place::Current => self.current.take(),
            Place::Next => self.next.take(),
            Place::Draining(i) => (i < self.draining.len()).then(|| self.draining.swap_remove(i)),
        }
    }
}

/// A process's place in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    Current,
    Next,
    Draining(usize),
}
