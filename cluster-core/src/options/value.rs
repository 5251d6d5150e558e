//! Each value type of an option as text (the [`OptionValue`] the table uses), and the
//! `FromStr`/`Display` of this crate's value types: each text reads back to the same value.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::parse::{ParseError, bytes_text, duration_text, parse_bytes, parse_duration};
use super::{Autoscale, Backoff, Balance, Count, RestartMode, signal};

/// A value of an option as text: how the table parses, prints and, for `#[cluster::main]`,
/// writes it as a Rust expression. Implemented once per value type, so that an option of a
/// type already here is one entry in the table.
#[doc(hidden)]
pub trait OptionValue: Sized {
    /// Whether the value is a list (an array in `#[cluster::main]`).
    const LIST: bool = false;
    /// Reads the value; the error says what would be accepted.
    fn parse_text(text: &str) -> Result<Self, ParseError>;
    /// The text that [`OptionValue::parse_text`] reads back.
    fn to_text(&self) -> String;
    /// A Rust expression of the value, whose paths to this crate start with `$crate`.
    fn to_rust(&self) -> String;
}

fn whole_number<T: FromStr>(text: &str) -> Result<T, ParseError> {
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = trimmed.parse() {
            return Ok(n);
        }
        return Err(ParseError::new(format!("{text:?} is too large")));
    }
    Err(ParseError::new(format!(
        "{text:?} is not a whole number; expected digits only, such as 5"
    )))
}

macro_rules! whole_numbers {
    ($($ty:ty),*) => {$(
        impl OptionValue for $ty {
            fn parse_text(text: &str) -> Result<Self, ParseError> {
                whole_number(text)
            }
            fn to_text(&self) -> String {
                self.to_string()
            }
            fn to_rust(&self) -> String {
                format!("{self}{}", stringify!($ty))
            }
        }
    )*};
}

whole_numbers!(u32, u64, usize);

impl OptionValue for bool {
    fn parse_text(text: &str) -> Result<Self, ParseError> {
        match text.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(ParseError::new(format!(
                "{text:?} is not a flag; expected true or false"
            ))),
        }
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
    fn to_rust(&self) -> String {
        self.to_string()
    }
}

impl OptionValue for Duration {
    fn parse_text(text: &str) -> Result<Self, ParseError> {
        parse_duration(text)
    }
    fn to_text(&self) -> String {
        duration_text(self)
    }
    fn to_rust(&self) -> String {
        format!(
            "::std::time::Duration::new({}u64, {}u32)",
            self.as_secs(),
            self.subsec_nanos()
        )
    }
}

/// A file's path, as written: any non-empty text (`off` is taken by `Option`'s `None`).
impl OptionValue for std::path::PathBuf {
    fn parse_text(text: &str) -> Result<Self, ParseError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(ParseError::new("an empty path names no file"));
        }
        Ok(trimmed.into())
    }
    fn to_text(&self) -> String {
        self.display().to_string()
    }
    fn to_rust(&self) -> String {
        format!(
            "::std::path::PathBuf::from({:?})",
            self.display().to_string()
        )
    }
}

/// `off` is `None`; anything else is the value.
impl<T: OptionValue> OptionValue for Option<T> {
    fn parse_text(text: &str) -> Result<Self, ParseError> {
        if text.trim() == "off" {
            return Ok(None);
        }
        T::parse_text(text)
            .map(Some)
            .map_err(|e| ParseError::new(format!("{e}, or \"off\"")))
    }
    fn to_text(&self) -> String {
        match self {
            Some(value) => value.to_text(),
            None => "off".to_owned(),
        }
    }
    fn to_rust(&self) -> String {
        match self {
            Some(value) => format!("::std::option::Option::Some({})", value.to_rust()),
            None => "::std::option::Option::None".to_owned(),
        }
    }
}

/// A byte size, for the options that hold one as a `u64`.
pub(super) struct Bytes;

impl Bytes {
    pub(super) fn parse(text: &str) -> Result<u64, ParseError> {
        parse_bytes(text)
    }

    pub(super) fn text(value: &u64) -> String {
        bytes_text(*value)
    }

    pub(super) fn parse_optional(text: &str) -> Result<Option<u64>, ParseError> {
        if text.trim() == "off" {
            return Ok(None);
        }
        parse_bytes(text)
            .map(Some)
            .map_err(|e| ParseError::new(format!("{e}, or \"off\"")))
    }

    pub(super) fn optional_text(value: &Option<u64>) -> String {
        value.map_or_else(|| "off".to_owned(), bytes_text)
    }
}

/// The address of `status_addr`: a bare port is on 127.0.0.1.
pub(super) struct StatusAddr;

impl StatusAddr {
    pub(super) fn parse_optional(text: &str) -> Result<Option<SocketAddr>, ParseError> {
        let trimmed = text.trim();
        if trimmed == "off" {
            return Ok(None);
        }
        if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
            // Loopback unless told otherwise: exposing the status to the network should take
            // an address written out.
            return match trimmed.parse::<u16>() {
                Ok(port) => Ok(Some(SocketAddr::from(([127, 0, 0, 1], port)))),
                Err(_) => Err(ParseError::new(format!(
                    "port {trimmed} is out of range; a port is at most 65535"
                ))),
            };
        }
        SocketAddr::parse_text(text).map(Some).map_err(|e| {
            ParseError::new(format!(
                "{e}, a port such as \"8001\" (on 127.0.0.1), or \"off\""
            ))
        })
    }

    pub(super) fn optional_text(value: &Option<SocketAddr>) -> String {
        value.to_text()
    }
}

impl OptionValue for SocketAddr {
    fn parse_text(text: &str) -> Result<Self, ParseError> {
        // Host names are refused: resolving one is a run-time matter that could fail later.
        text.trim().parse().map_err(|e| {
            ParseError::new(format!(
                "invalid address {text:?}: {e}; expected an IP address and port such as \"127.0.0.1:8001\" or \"[::1]:8001\""
            ))
        })
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
    fn to_rust(&self) -> String {
        // Constructor calls: the address was checked where it was written, so the generated
        // code has nothing left to parse.
        match self {
            SocketAddr::V4(v4) => {
                let [a, b, c, d] = v4.ip().octets();
                format!(
                    "::std::net::SocketAddr::V4(::std::net::SocketAddrV4::new(::std::net::Ipv4Addr::new({a}, {b}, {c}, {d}), {}u16))",
                    v4.port()
                )
            }
            SocketAddr::V6(v6) => {
                let segments: Vec<String> = v6
                    .ip()
                    .segments()
                    .iter()
                    .map(|s| format!("{s}u16"))
                    .collect();
                format!(
                    "::std::net::SocketAddr::V6(::std::net::SocketAddrV6::new(::std::net::Ipv6Addr::new({}), {}u16, {}u32, {}u32))",
                    segments.join(", "),
                    v6.port(),
                    v6.flowinfo(),
                    v6.scope_id()
                )
            }
        }
    }
}

impl OptionValue for Vec<Signal> {
    const LIST: bool = true;
    fn parse_text(text: &str) -> Result<Self, ParseError> {
        signal::signal_list(text)
    }
    fn to_text(&self) -> String {
        signal::signal_list_text(self)
    }
    fn to_rust(&self) -> String {
        let names: Vec<String> = self
            .iter()
            .map(|s| format!("$crate::Signal::{}", s.as_str()))
            .collect();
        format!("[{}]", names.join(", "))
    }
}

/// The types of this crate: their `FromStr` and `Display` are the text.
macro_rules! by_from_str {
    ($($ty:ty),*) => {$(
        impl OptionValue for $ty {
            fn parse_text(text: &str) -> Result<Self, ParseError> {
                text.parse()
            }
            fn to_text(&self) -> String {
                self.to_string()
            }
            fn to_rust(&self) -> String {
                self.rust_expr()
            }
        }
    )*};
}

by_from_str!(Autoscale, Count, Balance, RestartMode, Backoff);

/// `cpus`, or a number of workers.
///
/// ```
/// use cluster_core::Count;
///
/// assert_eq!("cpus".parse(), Ok(Count::Cpus));
/// assert_eq!("4".parse(), Ok(Count::Fixed(4)));
/// assert_eq!(Count::Cpus.to_string(), "cpus");
/// ```
impl FromStr for Count {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        if text.trim() == "cpus" {
            return Ok(Count::Cpus);
        }
        whole_number(text).map(Count::Fixed).map_err(|_| {
            ParseError::new(format!(
                "{text:?} is not a count; expected a number of workers such as 4, or `cpus` for one per CPU"
            ))
        })
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::Fixed(n) => write!(f, "{n}"),
            Count::Cpus => f.write_str("cpus"),
        }
    }
}

impl Count {
    fn rust_expr(&self) -> String {
        match self {
            Count::Fixed(n) => format!("$crate::Count::Fixed({n}usize)"),
            Count::Cpus => "$crate::Count::Cpus".to_owned(),
        }
    }
}

/// The names of the strategies, as the docs write them, and the variants' names.
const BALANCE_NAMES: [(Balance, &str, &str); 6] = [
    (Balance::Shared, "shared", "Shared"),
    (Balance::RoundRobin, "round-robin", "RoundRobin"),
    (
        Balance::LeastConnections,
        "least-connections",
        "LeastConnections",
    ),
    (Balance::Sticky, "sticky", "Sticky"),
    (Balance::ReusePort, "reuseport", "ReusePort"),
    (Balance::StickyKey, "sticky-key", "StickyKey"),
];

/// `shared`, `round-robin`, `least-connections`, `sticky`, `sticky-key` or `reuseport`, or the variant's
/// name (`RoundRobin`).
///
/// ```
/// use cluster_core::Balance;
///
/// assert_eq!("round-robin".parse(), Ok(Balance::RoundRobin));
/// assert_eq!("LeastConnections".parse(), Ok(Balance::LeastConnections));
/// assert_eq!(Balance::ReusePort.to_string(), "reuseport");
/// assert!("round_robin".parse::<Balance>().is_err());
/// ```
impl FromStr for Balance {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        let name = text.trim();
        BALANCE_NAMES
            .iter()
            .find(|(_, kebab, variant)| name == *kebab || name == *variant)
            .map(|(balance, _, _)| *balance)
            .ok_or_else(|| {
                ParseError::new(format!(
                    "unknown balance {text:?}; expected \"shared\" (the default), \"round-robin\", \"least-connections\", \"sticky\", \"sticky-key\" or \"reuseport\", or the variant: Shared, RoundRobin, LeastConnections, Sticky, StickyKey, ReusePort"
                ))
            })
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = BALANCE_NAMES
            .iter()
            .find(|(balance, _, _)| balance == self)
            .map_or("shared", |(_, kebab, _)| kebab);
        f.write_str(name)
    }
}

impl Balance {
    fn rust_expr(&self) -> String {
        format!("$crate::Balance::{self:?}")
    }
}

/// `permanent`, `transient` or `temporary`, in any case.
impl FromStr for RestartMode {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "permanent" => Ok(RestartMode::Permanent),
            "transient" => Ok(RestartMode::Transient),
            "temporary" => Ok(RestartMode::Temporary),
            _ => Err(ParseError::new(format!(
                "unknown restart mode {text:?}; expected \"permanent\" (always restart), \"transient\" (only after a failure) or \"temporary\" (never)"
            ))),
        }
    }
}

impl fmt::Display for RestartMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartMode::Permanent => "permanent",
            RestartMode::Transient => "transient",
            RestartMode::Temporary => "temporary",
        })
    }
}

impl RestartMode {
    fn rust_expr(&self) -> String {
        format!("$crate::RestartMode::{self:?}")
    }
}

/// `field=value` pairs separated by commas, for the fields that differ from the defaults:
/// `"base=50ms, factor=3, cap=2s, reset_after=30s"`.
impl FromStr for Backoff {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        const FORMS: &str = "expected field=value pairs separated by commas, the fields base, factor, cap and reset_after, such as \"base=50ms, cap=2s\"";
        let mut backoff = Backoff::default();
        for (i, pair) in text
            .split(',')
            .enumerate()
            .filter(|(_, p)| !p.trim().is_empty())
        {
            let Some((field, value)) = pair.split_once('=') else {
                return Err(
                    ParseError::new(format!("{pair:?} is not field=value; {FORMS}")).at_item(i),
                );
            };
            let bad = |e: ParseError| {
                ParseError::new(format!("backoff {}: {e}", field.trim())).at_item(i)
            };
            match field.trim() {
                "base" => backoff.base = parse_duration(value).map_err(bad)?,
                "cap" => backoff.cap = parse_duration(value).map_err(bad)?,
                "reset_after" => backoff.reset_after = parse_duration(value).map_err(bad)?,
                "factor" => {
                    backoff.factor = value.trim().parse().map_err(|_| {
                        bad(ParseError::new(format!(
                            "{value:?} is not a number such as 2 or 1.5"
                        )))
                    })?;
                }
                other => {
                    return Err(
                        ParseError::new(format!("unknown field {other:?}; {FORMS}")).at_item(i)
                    );
                }
            }
        }
        Ok(backoff)
    }
}

impl fmt::Display for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "base={}, factor={}, cap={}, reset_after={}",
            duration_text(&self.base),
            self.factor,
            duration_text(&self.cap),
            duration_text(&self.reset_after)
        )
    }
}

impl Backoff {
    fn rust_expr(&self) -> String {
        format!(
            "$crate::Backoff::new().with_base({}).with_factor({:?}f64).with_cap({}).with_reset_after({})",
            self.base.to_rust(),
            self.factor,
            self.cap.to_rust(),
            self.reset_after.to_rust()
        )
    }
}
