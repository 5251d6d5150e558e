//! Option values as text, the one way every source writes them: `#[cluster::main(...)]`
//! (checked at compile time), [`Options::set_from_str`](super::Options::set_from_str), and
//! the examples and tests that read values from the environment.
//!
//! - durations: a whole number with a unit, `ns`, `us`, `ms`, `s`, `m` or `h` (`"500ms"`,
//!   `"3s"`, `"1m"`); a bare number is milliseconds, as the origin took them;
//! - byte sizes: a whole number with a unit, `B`, `kB`, `MB`, `GB`, `TB` (powers of 1000) or
//!   `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024), in any case (`"512MiB"`); a bare number is
//!   bytes. Fractions (`"1.5GB"`) are refused rather than rounded: a limit should be the
//!   number written, so write `"1536MiB"`;
//! - `off` for an optional value that is turned off;
//! - lists: items separated by commas (`"SIGINT, SIGTERM"`).
//!
//! How each value type is read, printed and written as Rust is in value.rs.

use std::fmt;
use std::time::Duration;

/// Why a text is not a value of an option: what was wrong and what would be accepted.
///
/// For a list, [`ParseError::item`] tells which item (from 0) is at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    message: String,
    item: Option<usize>,
}

impl ParseError {
    pub(super) fn new(message: impl Into<String>) -> Self {
        ParseError {
            message: message.into(),
            item: None,
        }
    }

    pub(super) fn at_item(mut self, item: usize) -> Self {
        self.item = Some(item);
        self
    }

    /// The item of a list that is at fault, counted from 0, if the error is about one.
    #[must_use]
    pub fn item(&self) -> Option<usize> {
        self.item
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

impl From<String> for ParseError {
    fn from(message: String) -> Self {
        ParseError::new(message)
    }
}

/// What a duration may be written as, for the errors on one.
pub(super) const DURATION_FORMS: &str = "a whole number of milliseconds (3000) or a whole number with a unit: \"500ms\", \"3s\", \"1m\" or \"2h\" (also ns, us)";

/// What a byte size may be written as, for the errors on one.
pub(super) const BYTES_FORMS: &str = "a whole number of bytes, or a whole number with a unit such as \"512MiB\", \"1GiB\" or \"100MB\" (B, kB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB of 1024)";

/// Splits `"<digits><unit>"`. `what` names the kind of value, `smaller` gives an example of
/// a fraction written in a smaller unit, `forms` says what is accepted, for the errors.
fn number_and_unit<'a>(
    text: &'a str,
    what: &str,
    smaller: &str,
    forms: &str,
) -> Result<(u64, &'a str), ParseError> {
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let unit = unit.trim_start();
    let problem = if digits.is_empty() {
        "it does not start with a whole number".to_owned()
    } else if unit.starts_with(['.', ',']) {
        format!("fractions are not accepted; use a smaller unit, such as {smaller}")
    } else if let Ok(n) = digits.parse::<u64>() {
        return Ok((n, unit));
    } else {
        "the number does not fit in 64 bits".to_owned()
    };
    Err(ParseError::new(format!(
        "invalid {what} {text:?}: {problem}; expected {forms}"
    )))
}

/// Parses a duration: `"3s"`, `"500ms"`, `"1m"`, `"2h"`, `"250us"`, `"10ns"`, or a bare
/// number of milliseconds (`"3000"`). Whitespace around the number and the unit is ignored.
///
/// # Errors
///
/// A [`ParseError`] saying what is wrong and what is accepted: no number, a fraction, an
/// unknown unit, or a value that does not fit.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cluster_core::options::parse_duration;
///
/// assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
/// assert_eq!(parse_duration("1500"), Ok(Duration::from_millis(1500)));
/// assert!(parse_duration("1.5s").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    let (n, unit) = number_and_unit(text, "duration", "\"1500ms\" for 1.5 s", DURATION_FORMS)?;
    let too_long = || {
        ParseError::new(format!(
            "invalid duration {text:?}: it is too long; expected {DURATION_FORMS}"
        ))
    };
    Ok(match unit {
        "ns" => Duration::from_nanos(n),
        "us" | "µs" => Duration::from_micros(n),
        "" | "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_long)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_long)?),
        _ => {
            return Err(ParseError::new(format!(
                "invalid duration {text:?}: unknown unit {unit:?}; expected {DURATION_FORMS}"
            )));
        }
    })
}

/// A duration in the largest unit that keeps it exact (`"5s"`, `"1m"`, `"100ms"`), which
/// [`parse_duration`] reads back.
#[must_use]
pub fn duration_text(value: &Duration) -> String {
    let (secs, nanos) = (value.as_secs(), value.subsec_nanos());
    if nanos == 0 {
        return match secs {
            0 => "0s".to_owned(),
            s if s % 3600 == 0 => format!("{}h", s / 3600),
            s if s % 60 == 0 => format!("{}m", s / 60),
            s => format!("{s}s"),
        };
    }
    let total = value.as_nanos();
    if total.is_multiple_of(1_000_000) {
        format!("{}ms", total / 1_000_000)
    } else if total.is_multiple_of(1_000) {
        format!("{}us", total / 1_000)
    } else {
        format!("{total}ns")
    }
}

/// Parses a byte size: `"512MiB"`, `"1GiB"`, `"100MB"`, `"7B"`, or a bare number of bytes.
/// Units are case-insensitive; fractions are refused (write `"1536MiB"`, not `"1.5GiB"`).
///
/// # Errors
///
/// A [`ParseError`] saying what is wrong and what is accepted.
///
/// # Examples
///
/// ```
/// use cluster_core::options::parse_bytes;
///
/// assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
/// assert_eq!(parse_bytes("100MB"), Ok(100_000_000));
/// assert_eq!(parse_bytes("4096"), Ok(4096));
/// assert!(parse_bytes("1.5GiB").is_err());
/// ```
pub fn parse_bytes(text: &str) -> Result<u64, ParseError> {
    let (n, unit) = number_and_unit(text, "byte size", "\"1536MiB\" for 1.5 GiB", BYTES_FORMS)?;
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(ParseError::new(format!(
                "invalid byte size {text:?}: unknown unit {unit:?}; expected {BYTES_FORMS}"
            )));
        }
    };
    n.checked_mul(factor).ok_or_else(|| {
        ParseError::new(format!(
            "invalid byte size {text:?}: it does not fit in 64 bits; expected {BYTES_FORMS}"
        ))
    })
}

/// A byte size in the largest unit that keeps it exact, binary units first (`"512MiB"`,
/// `"100MB"`, `"7B"`), which [`parse_bytes`] reads back.
#[must_use]
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [(u64, &str); 8] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
        (1_000_000_000_000, "TB"),
        (1_000_000_000, "GB"),
        (1_000_000, "MB"),
        (1_000, "kB"),
    ];
    match UNITS
        .iter()
        .find(|(size, _)| bytes != 0 && bytes.is_multiple_of(*size))
    {
        Some((size, unit)) => format!("{}{unit}", bytes / size),
        None => format!("{bytes}B"),
    }
}
