//! `clusterctl monit`: a live view of the workers, redrawn every second in the terminal's
//! alternate screen until q or Ctrl-C.
//!
//! A task owns the connection and fetches a snapshot (`status` and `list`) every second, so
//! that keys are answered at once even while the master is slow. Each frame is a list of
//! lines cut to the terminal's size (the rows that do not fit are counted in "... N more");
//! only the lines that changed since the last frame are rewritten, inside a synchronized
//! update, so nothing flickers. Raw mode, the hidden cursor and the alternate screen are
//! undone on every way out: q, Ctrl-C, a signal, the master going away, an error, a panic.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use cluster::control::client::{Client, ClientError};
use cluster::control::protocol::{MasterInfo, Request, Response, WorkerRow};
use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::style::{Attribute, Print, SetAttribute};
use crossterm::terminal::{self, ClearType};
use crossterm::{cursor, execute, queue};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::{Failure, show};

/// How often the view is refreshed.
const REFRESH: Duration = Duration::from_secs(1);
/// How long the master gets to answer one refresh before monit gives up on it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// monit needs a terminal to draw on: say what to use instead when there is none.
pub(crate) fn check_terminal() -> Result<(), Failure> {
    if std::io::stdout().is_terminal() {
        Ok(())
    } else {
        Err(Failure(
            2,
            "monit draws a live view and needs a terminal on stdout; for scripts, use `clusterctl list --json` (or `status --json`)".to_owned(),
        ))
    }
}

/// What one refresh fetched.
struct Snapshot {
    master: MasterInfo,
    workers: Vec<WorkerRow>,
}

pub(crate) async fn run(mut client: Client) -> Result<(), Failure> {
    // The first snapshot before the screen is taken, so that an error is printed plainly.
    let first = fetch(&mut client).await?;
    let mut signals = Signals::new()?;
    let (keys_tx, mut keys) = mpsc::unbounded_channel();
    let (snapshots_tx, mut snapshots) = mpsc::channel(1);
    let mut screen =
        Screen::enter().map_err(|e| Failure(1, format!("cannot set up the terminal: {e}")))?;
    read_terminal(keys_tx).map_err(|e| Failure(1, format!("cannot read the terminal: {e}")))?;
    let poller = tokio::spawn(poll(client, snapshots_tx));
    let mut shown = first;
    let end = loop {
        if let Err(e) = screen.draw(&shown) {
            break Err(Failure(1, format!("cannot draw on the terminal: {e}")));
        }
        tokio::select! {
            snapshot = snapshots.recv() => match snapshot {
                Some(Ok(snapshot)) => shown = snapshot,
                Some(Err(failure)) => break Err(failure),
                None => break Err(Failure(1, "the connection to the master ended".to_owned())),
            },
            event = keys.recv() => match event {
                Some(Ok(Event::Key(key))) if quits(&key) => break Ok(()),
                Some(Ok(Event::Resize(..))) => screen.resized(),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(Failure(1, format!("cannot read the terminal: {e}"))),
                None => break Err(Failure(1, "the terminal's input ended".to_owned())),
            },
            name = signals.recv() => break Err(Failure(1, format!("stopped by {name}"))),
        }
    };
    poller.abort();
    // The terminal is restored before main prints the failure, if any.
    drop(screen);
    end
}

/// q, Esc and Ctrl-C (in raw mode a key, not SIGINT).
fn quits(key: &KeyEvent) -> bool {
    key.kind != KeyEventKind::Release
        && match key.code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// A snapshot every [`REFRESH`] until the master fails to answer, which ends the view.
async fn poll(mut client: Client, snapshots: mpsc::Sender<Result<Snapshot, Failure>>) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is now, and the caller has drawn that one.
    tick.tick().await;
    loop {
        tick.tick().await;
        let snapshot = fetch(&mut client).await;
        let failed = snapshot.is_err();
        if snapshots.send(snapshot).await.is_err() || failed {
            return;
        }
    }
}

async fn fetch(client: &mut Client) -> Result<Snapshot, Failure> {
    let master = match ask(client, &Request::Status).await? {
        Response::Status(master) => *master,
        other => return Err(unexpected(&other)),
    };
    let workers = match ask(client, &Request::List).await? {
        Response::Workers(mut workers) => {
            workers.sort_by(|a, b| {
                (&a.group, a.slot, a.generation).cmp(&(&b.group, b.slot, b.generation))
            });
            workers
        }
        other => return Err(unexpected(&other)),
    };
    Ok(Snapshot { master, workers })
}

async fn ask(client: &mut Client, request: &Request) -> Result<Response, Failure> {
    let (pid, name) = (client.pid(), client.name().to_owned());
    match tokio::time::timeout(ANSWER_TIMEOUT, client.request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(ClientError::Refused(why))) => Err(Failure(1, why)),
        Ok(Err(e)) => Err(Failure(
            1,
            format!("the master of {name} (pid {pid}) went away ({e}); monit stopped"),
        )),
        Err(_) => Err(Failure(
            1,
            format!(
                "the master of {name} (pid {pid}) did not answer within {}s; monit stopped",
                ANSWER_TIMEOUT.as_secs()
            ),
        )),
    }
}

fn unexpected(response: &Response) -> Failure {
    Failure(
        1,
        format!("unexpected answer from the master: {response:?}"),
    )
}

/// Reads keys and resizes on a thread of its own (crossterm's read blocks), for as long as
/// the process lives or the receiver does.
fn read_terminal(keys: mpsc::UnboundedSender<std::io::Result<Event>>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("monit-keys".to_owned())
        .spawn(move || {
            loop {
                let event = crossterm::event::read();
                let failed = event.is_err();
                if keys.send(event).is_err() || failed {
                    return;
                }
            }
        })
        .map(drop)
}

/// The signals that end monit like q does, but with the terminal restored (their default
/// action would leave it raw).
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, Failure> {
        let on = |kind| signal(kind).map_err(|e| Failure(1, format!("cannot handle signals: {e}")));
        Ok(Signals {
            term: on(SignalKind::terminate())?,
            hup: on(SignalKind::hangup())?,
            int: on(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// One line of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    text: String,
    bold: bool,
}

impl Line {
    fn plain(text: String) -> Line {
        Line { text, bold: false }
    }
}

/// The terminal while monit owns it; dropping it gives the terminal back as it was.
struct Screen {
    /// The lines on screen, to rewrite only those that change.
    shown: Vec<Line>,
    /// The screen must be cleared before the next frame (it was resized).
    stale: bool,
}

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        terminal::enable_raw_mode()?;
        // From here on, dropping the screen (or a panic) restores the terminal.
        let screen = Screen {
            shown: Vec::new(),
            stale: true,
        };
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide,
            terminal::DisableLineWrap
        )?;
        Ok(screen)
    }

    fn resized(&mut self) {
        self.stale = true;
    }

    fn draw(&mut self, snapshot: &Snapshot) -> std::io::Result<()> {
        let (cols, rows) = terminal::size()?;
        let lines = frame(snapshot, usize::from(cols), usize::from(rows));
        let mut out = std::io::stdout().lock();
        queue!(out, terminal::BeginSynchronizedUpdate)?;
        if self.stale {
            queue!(out, terminal::Clear(ClearType::All))?;
            self.shown.clear();
            self.stale = false;
        }
        for (i, line) in lines.iter().enumerate() {
            if self.shown.get(i) == Some(line) {
                continue;
            }
            let row = u16::try_from(i).unwrap_or(u16::MAX);
            queue!(out, cursor::MoveTo(0, row))?;
            if line.bold {
                queue!(out, SetAttribute(Attribute::Bold))?;
            }
            queue!(
                out,
                Print(&line.text),
                SetAttribute(Attribute::Reset),
                terminal::Clear(ClearType::UntilNewLine)
            )?;
        }
        if self.shown.len() > lines.len() {
            let row = u16::try_from(lines.len()).unwrap_or(u16::MAX);
            queue!(
                out,
                cursor::MoveTo(0, row),
                terminal::Clear(ClearType::FromCursorDown)
            )?;
        }
        queue!(out, terminal::EndSynchronizedUpdate)?;
        out.flush()?;
        self.shown = lines;
        Ok(())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Undoes [`Screen::enter`]; harmless when done twice (a panic, then the drop).
fn restore() {
    let _ = execute!(
        std::io::stdout(),
        terminal::EnableLineWrap,
        cursor::Show,
        terminal::LeaveAlternateScreen
    );
    let _ = terminal::disable_raw_mode();
}

/// The lines of one frame for a terminal of `cols` by `rows`: two lines about the master, a
/// blank, the header, then one line per worker, as many as fit, the last line saying how
/// many did not. Each line is cut to `cols` characters, so none wraps.
fn frame(snapshot: &Snapshot, cols: usize, rows: usize) -> Vec<Line> {
    let m = &snapshot.master;
    let mut lines = vec![
        Line::plain(format!(
            "{} · master pid {} · up {} · cluster {}",
            m.name,
            m.pid,
            show::uptime(m.uptime_ms),
            m.version
        )),
        Line::plain(format!(
            "{} workers, {} ready · {} restarts · {} reloads · q to quit",
            m.workers, m.ready, m.restarts_total, m.reloads_total
        )),
        Line::plain(String::new()),
    ];
    let cells: Vec<[String; 11]> = snapshot
        .workers
        .iter()
        .map(|w| {
            [
                w.group.clone(),
                w.slot.to_string(),
                show::pid(w),
                w.generation.to_string(),
                w.state.clone(),
                show::uptime(w.uptime_ms),
                show::cpu(w),
                show::memory(w.memory_bytes),
                w.connections.to_string(),
                w.restarts.to_string(),
                w.lag_ms
                    .map_or_else(|| "-".to_owned(), |l| format!("{l:.1}ms")),
            ]
        })
        .collect();
    let header = [
        "group", "slot", "pid", "gen", "state", "uptime", "cpu", "mem", "conns", "↺", "lag",
    ];
    let mut table = show::columns(header, &cells).into_iter();
    if let Some(head) = table.next() {
        lines.push(Line {
            text: head,
            bold: true,
        });
    }
    let room = rows.saturating_sub(lines.len());
    let workers: Vec<String> = table.collect();
    if workers.len() <= room {
        lines.extend(workers.into_iter().map(Line::plain));
    } else {
        let shown = room.saturating_sub(1);
        let more = workers.len() - shown;
        lines.extend(workers.into_iter().take(shown).map(Line::plain));
        lines.push(Line::plain(format!("... {more} more")));
    }
    lines.truncate(rows);
    for line in &mut lines {
        if line.text.chars().count() > cols {
            line.text = line.text.chars().take(cols).collect();
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(n: usize) -> Snapshot {
        let workers = (0..n)
            .map(|slot| WorkerRow {
                group: "worker".into(),
                slot,
                pid: Some(1000 + slot as u32),
                generation: 1,
                state: "ready".into(),
                uptime_ms: 61_000,
                restarts: 2,
                cpu_percent: Some(12.4),
                memory_bytes: Some(9 << 20),
                connections: 3,
                lag_ms: Some(0.25),
            })
            .collect();
        Snapshot {
            master: MasterInfo {
                name: "shop".into(),
                pid: 9,
                uptime_ms: 5000,
                version: "0.1.0".into(),
                exe: "/bin/shop".into(),
                exe_hash: "0".into(),
                control_path: "/run/shop.sock".into(),
                workers: n as u64,
                ready: n as u64,
                restarts_total: 2,
                reloads_total: 0,
                options: Vec::new(),
            },
            workers,
        }
    }

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn every_worker_fits_on_a_tall_terminal() {
        let lines = frame(&snapshot(3), 200, 50);
        let texts = texts(&lines);
        assert_eq!(texts.len(), 4 + 3, "{texts:#?}");
        assert!(
            texts[0].starts_with("shop · master pid 9 · up 5s"),
            "{texts:#?}"
        );
        assert!(lines[3].bold, "{texts:#?}");
        assert_eq!(
            texts[3],
            "group   slot  pid   gen  state  uptime  cpu  mem    conns  ↺  lag"
        );
        assert_eq!(
            texts[4],
            "worker  0     1000  1    ready  1m      12%  9.0mb  3      2  0.2ms"
        );
        assert!(texts.iter().all(|t| !t.contains("more")));
    }

    #[test]
    fn workers_beyond_the_rows_are_counted() {
        // 10 rows: 4 lines of header, 5 workers, and the line for the other 15.
        let lines = frame(&snapshot(20), 200, 10);
        let texts = texts(&lines);
        assert_eq!(texts.len(), 10, "{texts:#?}");
        assert!(texts[8].starts_with("worker  4 "), "{texts:#?}");
        assert_eq!(texts[9], "... 15 more");
    }

    #[test]
    fn lines_are_cut_to_the_width_and_the_frame_to_the_height() {
        let lines = frame(&snapshot(3), 12, 2);
        assert_eq!(texts(&lines), ["shop · maste", "3 workers, 3"]);
        assert!(frame(&snapshot(3), 80, 0).is_empty());
    }
}
