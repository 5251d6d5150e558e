//! Signal names as people write them, and which signals can stop or reload a cluster.

use nix::sys::signal::Signal;

use super::parse::ParseError;
use crate::Error;

/// Parses a signal name: `"SIGINT"`, `"INT"`, `"sigint"` and `"int"` all give
/// [`Signal::SIGINT`].
///
/// The name is matched case-insensitively, with or without the `SIG` prefix. Surrounding
/// whitespace is ignored, so values read from a config file or an environment variable work.
///
/// # Errors
///
/// an error of kind [`InvalidOption`](crate::ErrorKind::InvalidOption) (option `signals`) naming the input when it is not a signal name
/// this platform knows.
///
/// # Examples
///
/// ```
/// use cluster_core::{parse_signal, Signal};
///
/// assert_eq!(parse_signal("SIGTERM").unwrap(), Signal::SIGTERM);
/// assert_eq!(parse_signal("hup").unwrap(), Signal::SIGHUP);
/// assert!(parse_signal("SIGNOPE").is_err());
/// ```
pub fn parse_signal(name: &str) -> Result<Signal, Error> {
    signal(name).map_err(|e| Error::invalid_option("signals", e.to_string()))
}

/// [`parse_signal`] with the error of the text parsers.
pub(super) fn signal(name: &str) -> Result<Signal, ParseError> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>().map_err(|_| {
        let known: Vec<&str> = Signal::iterator().map(Signal::as_str).collect();
        ParseError::new(format!(
            "unknown signal name {:?}; expected one of {} (with or without `SIG`, in any case)",
            name.trim(),
            known.join(", ")
        ))
    })
}

/// A list of signals as text: names separated by commas (`"SIGINT, SIGTERM"`); empty text is
/// the empty list. An error says which item is wrong.
pub(super) fn signal_list(text: &str) -> Result<Vec<Signal>, ParseError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .enumerate()
        .map(|(i, name)| signal(name).map_err(|e| e.at_item(i)))
        .collect()
}

/// The text [`signal_list`] reads back.
pub(super) fn signal_list_text(signals: &[Signal]) -> String {
    signals
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a signal cannot be used as a shutdown or reload signal, or `None` if it can.
fn unfit_signal(signal: Signal) -> Option<&'static str> {
    match signal {
        Signal::SIGKILL | Signal::SIGSTOP => Some("it cannot be caught or ignored by any process"),
        // A handler that merely records these and returns re-executes the faulting
        // instruction forever; tokio refuses to register them for that reason.
        Signal::SIGILL | Signal::SIGFPE | Signal::SIGSEGV | Signal::SIGBUS | Signal::SIGTRAP => {
            Some("it reports a synchronous fault (crash) and cannot be handled asynchronously")
        }
        Signal::SIGCHLD => Some(
            "the master receives it every time a worker exits, so it would stop the cluster at the first exit",
        ),
        Signal::SIGPIPE => Some(
            "it is raised by writes to a closed pipe or socket (the Rust runtime ignores it), not sent by operators",
        ),
        _ => None,
    }
}

/// Checks one signal list: every signal catchable and fit, none twice. The error says which
/// item is wrong, so that the attribute can point at it.
pub(super) fn check_list(signals: &[Signal]) -> Result<(), ParseError> {
    for (i, &signal) in signals.iter().enumerate() {
        if let Some(why) = unfit_signal(signal) {
            return Err(ParseError::new(format!(
                "{signal} cannot be used: {why}; use signals such as SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 or SIGUSR2"
            ))
            .at_item(i));
        }
        if signals[..i].contains(&signal) {
            return Err(ParseError::new(format!(
                "{signal} is listed twice; list each signal once"
            ))
            .at_item(i));
        }
    }
    Ok(())
}

/// The reason a signal in both lists is refused; `other` describes the list it is also in.
#[doc(hidden)]
pub fn in_both_lists(signal: Signal, other: &str) -> String {
    format!("{signal} is also {other}; a signal can either stop or reload the cluster, not both")
}
