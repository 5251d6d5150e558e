//! The value types of the least-privilege options: who workers run as (`user`, `group`), what
//! they may use (`rlimits`, `nice`, `cpu_affinity`), their `umask`, and which of the master's
//! variables they see (`env_allow`). Only their text forms live here; the master resolves
//! them (names to ids, CPU lists to sets) before it starts a worker, in
//! `supervisor/privileges.rs`.

use std::fmt;
use std::str::FromStr;

use super::parse::{ParseError, bytes_text, parse_bytes};
use super::value::OptionValue;

/// A user or a group, as written: a name to look up in the system's database, or a number.
///
/// ```
/// use cluster_core::options::Account;
///
/// assert_eq!("nobody".parse(), Ok(Account::Name("nobody".into())));
/// assert_eq!("65534".parse(), Ok(Account::Id(65534)));
/// assert!("no body".parse::<Account>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Account {
    /// A name, looked up when the master starts.
    Name(String),
    /// A numeric uid or gid, used as it is.
    Id(u32),
}

impl FromStr for Account {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        let name = text.trim();
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
            return name.parse().map(Account::Id).map_err(|_| {
                ParseError::new(format!(
                    "{name} is too large for a uid or gid (at most 4294967295)"
                ))
            });
        }
        // POSIX portable names, plus `$` for Samba machine accounts; anything else (a space,
        // `:`, `/`) is a typo that the database lookup would only report as "not found".
        let valid = !name.is_empty()
            && name.len() <= 256
            && !name.starts_with('-')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'));
        if valid {
            Ok(Account::Name(name.to_owned()))
        } else {
            Err(ParseError::new(format!(
                "{text:?} is not a user or group name; expected a name made of letters, digits, `_`, `-`, `.` (such as \"nobody\") or a numeric id"
            )))
        }
    }
}

impl From<u32> for Account {
    fn from(id: u32) -> Self {
        Account::Id(id)
    }
}

impl From<&str> for Account {
    /// A name as written; [`Account`]'s `FromStr` also reads digits as an id.
    fn from(name: &str) -> Self {
        Account::Name(name.to_owned())
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::Name(name) => f.write_str(name),
            Account::Id(id) => write!(f, "{id}"),
        }
    }
}

impl OptionValue for Account {
    fn parse_text(text: &str) -> Result<Self, ParseError> {
        text.parse()
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
    fn to_rust(&self) -> String {
        match self {
            // Checked where it was written: no quote, backslash or `$crate` in a name.
            Account::Name(name) => {
                format!("$crate::options::Account::Name({name:?}.to_owned())")
            }
            Account::Id(id) => format!("$crate::options::Account::Id({id}u32)"),
        }
    }
}

/// The file mode creation mask, written in octal (`0027`).
///
/// ```
/// use cluster_core::options::Umask;
///
/// assert_eq!("027".parse::<Umask>().map(|u| u.bits()), Ok(0o027));
/// assert_eq!(Umask::new(0o27).map(|u| u.to_string()), Some("0027".to_owned()));
/// assert!("0999".parse::<Umask>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Umask(u32);

impl Umask {
    /// A mask of permission bits; `None` above `0o777`.
    #[must_use]
    pub fn new(bits: u32) -> Option<Umask> {
        (bits <= 0o777).then_some(Umask(bits))
    }

    /// The mask of `bits`' permission bits (the low nine), the rest ignored.
    #[must_use]
    pub const fn masked(bits: u32) -> Umask {
        Umask(bits & 0o777)
    }

    /// The mask's bits.
    #[must_use]
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl FromStr for Umask {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        let digits = text.trim();
        u32::from_str_radix(digits, 8)
            .ok()
            .filter(|_| !digits.is_empty() && digits.len() <= 4 && !digits.starts_with('+'))
            .and_then(Umask::new)
            .ok_or_else(|| {
                ParseError::new(format!(
                    "{text:?} is not a umask; expected up to four octal digits of at most 0777, such as \"0027\""
                ))
            })
    }
}

impl fmt::Display for Umask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl OptionValue for Umask {
    fn parse_text(text: &str) -> Result<Self, ParseError> {
        text.parse()
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
    fn to_rust(&self) -> String {
        format!("$crate::options::Umask::masked({:#o}u32)", self.0)
    }
}

/// A resource that `rlimits` can limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Limit {
    /// `nofile`: open file descriptors (`RLIMIT_NOFILE`).
    Nofile,
    /// `nproc`: processes and threads of the workers' user (`RLIMIT_NPROC`).
    Nproc,
    /// `core`: the size of a core dump, in bytes; 0 turns them off (`RLIMIT_CORE`).
    Core,
    /// `as`: the address space, in bytes (`RLIMIT_AS`).
    As,
}

impl Limit {
    /// Every limit, in the order they are written.
    pub const ALL: [Limit; 4] = [Limit::Nofile, Limit::Nproc, Limit::Core, Limit::As];

    /// The name in `rlimits` (`nofile`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Limit::Nofile => "nofile",
            Limit::Nproc => "nproc",
            Limit::Core => "core",
            Limit::As => "as",
        }
    }

    /// Whether the value is a byte size (`2GiB`) rather than a count.
    fn is_bytes(self) -> bool {
        matches!(self, Limit::Core | Limit::As)
    }

    fn value_text(self, value: Option<u64>) -> String {
        match value {
            None => "unlimited".to_owned(),
            Some(n) if self.is_bytes() => bytes_text(n),
            Some(n) => n.to_string(),
        }
    }

    fn parse_value(self, text: &str) -> Result<Option<u64>, ParseError> {
        let text = text.trim();
        if text == "unlimited" {
            return Ok(None);
        }
        if self.is_bytes() {
            return parse_bytes(text).map(Some);
        }
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = text.parse() {
                return Ok(Some(n));
            }
        }
        Err(ParseError::new(format!(
            "{text:?} is not a count; expected a whole number or `unlimited`"
        )))
    }
}

/// One resource limit: its soft and hard values, `None` for unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rlimit {
    /// Which resource.
    pub limit: Limit,
    /// The soft limit, which the process may raise up to the hard one.
    pub soft: Option<u64>,
    /// The hard limit.
    pub hard: Option<u64>,
}

/// Resource limits of the workers: `name=value` pairs (`"nofile=65536, core=0, as=2GiB"`),
/// `value` being `soft:hard` or one value for both, `unlimited` allowed; limits not named are
/// inherited from the master. Empty or `off` sets none.
///
/// ```
/// use cluster_core::options::{Limit, Rlimits};
///
/// let limits: Rlimits = "nofile=1024:4096, core=0, as=2GiB".parse()?;
/// assert_eq!(limits.get(Limit::Nofile).map(|l| (l.soft, l.hard)), Some((Some(1024), Some(4096))));
/// assert_eq!(limits.get(Limit::As).map(|l| l.hard), Some(Some(2 << 30)));
/// assert_eq!(limits.to_string(), "nofile=1024:4096, core=0B, as=2GiB");
/// assert!("nofile=4096:1024".parse::<Rlimits>().is_err());
/// # Ok::<(), cluster_core::options::ParseError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Rlimits(Vec<Rlimit>);

impl Rlimits {
    /// No limit set: every one inherited from the master.
    #[must_use]
    pub fn new() -> Self {
        Rlimits::default()
    }

    /// Sets one limit (replacing a value set before for the same resource).
    #[must_use]
    pub fn with(mut self, limit: Limit, soft: Option<u64>, hard: Option<u64>) -> Self {
        self.0.retain(|l| l.limit != limit);
        self.0.push(Rlimit { limit, soft, hard });
        self.0.sort_by_key(|l| l.limit);
        self
    }

    /// The value set for `limit`, if any.
    #[must_use]
    pub fn get(&self, limit: Limit) -> Option<&Rlimit> {
        self.0.iter().find(|l| l.limit == limit)
    }

    /// Every limit set, in the order of [`Limit::ALL`].
    pub fn iter(&self) -> impl Iterator<Item = &Rlimit> {
        self.0.iter()
    }

    /// Whether no limit is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// These limits, with `over`'s replacing them resource by resource (a group's over the
    /// cluster's).
    #[must_use]
    pub fn overlaid(&self, over: &Rlimits) -> Rlimits {
        over.iter()
            .fold(self.clone(), |all, l| all.with(l.limit, l.soft, l.hard))
    }
}

impl FromStr for Rlimits {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        const FORMS: &str = "expected name=value pairs separated by commas, the names nofile, nproc, core and as, each value `soft:hard`, one value for both, or `unlimited`, such as \"nofile=65536, core=0\"";
        if text.trim() == "off" {
            return Ok(Rlimits::new());
        }
        let mut limits = Rlimits::new();
        for (i, pair) in text
            .split(',')
            .enumerate()
            .filter(|(_, p)| !p.trim().is_empty())
        {
            let Some((name, value)) = pair.split_once('=') else {
                return Err(
                    ParseError::new(format!("{pair:?} is not name=value; {FORMS}")).at_item(i),
                );
            };
            let name = name.trim();
            let Some(limit) = Limit::ALL.into_iter().find(|l| l.name() == name) else {
                return Err(ParseError::new(format!("unknown limit {name:?}; {FORMS}")).at_item(i));
            };
            if limits.get(limit).is_some() {
                return Err(
                    ParseError::new(format!("{name} is set twice; set each limit once")).at_item(i),
                );
            }
            let bad = |e: ParseError| ParseError::new(format!("rlimit {name}: {e}")).at_item(i);
            let (soft, hard) = match value.split_once(':') {
                Some((soft, hard)) => (
                    limit.parse_value(soft).map_err(bad)?,
                    limit.parse_value(hard).map_err(bad)?,
                ),
                None => {
                    let both = limit.parse_value(value).map_err(bad)?;
                    (both, both)
                }
            };
            // `None` is unlimited, above every number.
            if hard.is_some_and(|hard| soft.is_none_or(|soft| soft > hard)) {
                return Err(bad(ParseError::new(format!(
                    "the soft limit {} is above the hard limit {}; write soft:hard with soft at most hard",
                    limit.value_text(soft),
                    limit.value_text(hard)
                ))));
            }
            limits = limits.with(limit, soft, hard);
        }
        Ok(limits)
    }
}

impl fmt::Display for Rlimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("off");
        }
        let pairs: Vec<String> = self
            .0
            .iter()
            .map(|l| {
                if l.soft == l.hard {
                    format!("{}={}", l.limit.name(), l.limit.value_text(l.soft))
                } else {
                    format!(
                        "{}={}:{}",
                        l.limit.name(),
                        l.limit.value_text(l.soft),
                        l.limit.value_text(l.hard)
                    )
                }
            })
            .collect();
        f.write_str(&pairs.join(", "))
    }
}

impl OptionValue for Rlimits {
    fn parse_text(text: &str) -> Result<Self, ParseError> {
        text.parse()
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
    fn to_rust(&self) -> String {
        let value = |v: Option<u64>| {
            v.map_or_else(
                || "::std::option::Option::None".to_owned(),
                |n| format!("::std::option::Option::Some({n}u64)"),
            )
        };
        self.0
            .iter()
            .fold("$crate::options::Rlimits::new()".to_owned(), |expr, l| {
                format!(
                    "{expr}.with($crate::options::Limit::{:?}, {}, {})",
                    l.limit,
                    value(l.soft),
                    value(l.hard)
                )
            })
    }
}

/// A nice value, from -20 (most favoured) to 19 (least).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nice(i8);

impl Nice {
    /// `None` outside -20..=19.
    #[must_use]
    pub fn new(value: i32) -> Option<Nice> {
        i8::try_from(value)
            .ok()
            .filter(|v| (-20..=19).contains(v))
            .map(Nice)
    }

    /// `value` brought into -20..=19.
    #[must_use]
    pub const fn clamped(value: i8) -> Nice {
        Nice(if value < -20 {
            -20
        } else if value > 19 {
            19
        } else {
            value
        })
    }

    /// The value.
    #[must_use]
    pub fn get(self) -> i32 {
        i32::from(self.0)
    }
}

impl FromStr for Nice {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        text.trim()
            .parse::<i32>()
            .ok()
            .and_then(Nice::new)
            .ok_or_else(|| {
                ParseError::new(format!(
                    "{text:?} is not a nice value; expected a whole number from -20 to 19"
                ))
            })
    }
}

impl fmt::Display for Nice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl OptionValue for Nice {
    fn parse_text(text: &str) -> Result<Self, ParseError> {
        text.parse()
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
    fn to_rust(&self) -> String {
        format!("$crate::options::Nice::clamped({}i8)", self.0)
    }
}

/// Which CPUs workers may run on.
///
/// ```
/// use cluster_core::options::CpuAffinity;
///
/// assert_eq!("spread".parse(), Ok(CpuAffinity::Spread));
/// assert_eq!("0-2, 5".parse(), Ok(CpuAffinity::Cpus(vec![0, 1, 2, 5])));
/// assert_eq!(CpuAffinity::Cpus(vec![0, 1, 2, 5]).to_string(), "0-2, 5");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum CpuAffinity {
    /// Inherited from the master.
    #[default]
    Off,
    /// Slot `i` is pinned to the `i mod n`-th of the `n` CPUs the master may use.
    Spread,
    /// Every worker may run on these CPUs only (sorted, no repeats).
    Cpus(Vec<usize>),
}

/// The highest CPU number a set can hold (`CPU_SETSIZE` - 1).
pub(crate) const MAX_CPU: usize = 1023;

impl FromStr for CpuAffinity {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        const FORMS: &str =
            "expected `off`, `spread`, or CPU numbers and ranges such as \"0-3, 6\"";
        match text.trim() {
            "off" => return Ok(CpuAffinity::Off),
            "spread" => return Ok(CpuAffinity::Spread),
            _ => {}
        }
        let number = |s: &str, i: usize| {
            let s = s.trim();
            s.parse::<usize>()
                .ok()
                .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
                .filter(|&n| n <= MAX_CPU)
                .ok_or_else(|| {
                    ParseError::new(format!(
                        "{s:?} is not a CPU number from 0 to {MAX_CPU}; {FORMS}"
                    ))
                    .at_item(i)
                })
        };
        let mut cpus = Vec::new();
        for (i, item) in text.split(',').enumerate() {
            match item.split_once('-') {
                Some((from, to)) => {
                    let (from, to) = (number(from, i)?, number(to, i)?);
                    if from > to {
                        return Err(ParseError::new(format!(
                            "range {item:?} runs backwards; write it low-high"
                        ))
                        .at_item(i));
                    }
                    cpus.extend(from..=to);
                }
                None => cpus.push(number(item, i)?),
            }
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuAffinity::Cpus(cpus))
    }
}

impl fmt::Display for CpuAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cpus = match self {
            CpuAffinity::Off => return f.write_str("off"),
            CpuAffinity::Spread => return f.write_str("spread"),
            CpuAffinity::Cpus(cpus) => cpus,
        };
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for &cpu in cpus {
            match ranges.last_mut() {
                Some((_, end)) if *end + 1 == cpu => *end = cpu,
                _ => ranges.push((cpu, cpu)),
            }
        }
        let items: Vec<String> = ranges
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        f.write_str(&items.join(", "))
    }
}

impl OptionValue for CpuAffinity {
    fn parse_text(text: &str) -> Result<Self, ParseError> {
        text.parse()
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
    fn to_rust(&self) -> String {
        match self {
            CpuAffinity::Off => "$crate::options::CpuAffinity::Off".to_owned(),
            CpuAffinity::Spread => "$crate::options::CpuAffinity::Spread".to_owned(),
            CpuAffinity::Cpus(cpus) => {
                let items: Vec<String> = cpus.iter().map(|c| format!("{c}usize")).collect();
                format!(
                    "$crate::options::CpuAffinity::Cpus(vec![{}])",
                    items.join(", ")
                )
            }
        }
    }
}

/// With `env_clear`: the names of the master's variables that workers still get; a name
/// ending in `*` stands for every name with that prefix (`LC_*`).
///
/// ```
/// use cluster_core::options::EnvAllow;
///
/// let allow: EnvAllow = "PATH, LC_*".parse()?;
/// assert!(allow.allows("PATH") && allow.allows("LC_ALL"));
/// assert!(!allow.allows("HOME"));
/// # Ok::<(), cluster_core::options::ParseError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct EnvAllow(Vec<String>);

impl EnvAllow {
    /// The names as written.
    #[must_use]
    pub fn names(&self) -> &[String] {
        &self.0
    }

    /// Whether variable `name` is allowed.
    #[must_use]
    pub fn allows(&self, name: &str) -> bool {
        self.0
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == pattern,
            })
    }

    /// These names and `more`'s (a group's over the cluster's).
    #[must_use]
    pub fn joined(&self, more: &EnvAllow) -> EnvAllow {
        let mut names = self.0.clone();
        names.extend(more.0.iter().filter(|n| !self.0.contains(n)).cloned());
        EnvAllow(names)
    }
}

impl<S: Into<String>> FromIterator<S> for EnvAllow {
    fn from_iter<I: IntoIterator<Item = S>>(names: I) -> Self {
        EnvAllow(names.into_iter().map(Into::into).collect())
    }
}

impl FromStr for EnvAllow {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        let mut names = Vec::new();
        for (i, name) in text.split(',').map(str::trim).enumerate() {
            if name.is_empty() && text.trim().is_empty() {
                break;
            }
            let stem = name.strip_suffix('*').unwrap_or(name);
            let valid = !name.is_empty()
                && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !stem.bytes().next().is_some_and(|b| b.is_ascii_digit());
            if !valid {
                return Err(ParseError::new(format!(
                    "{name:?} is not a variable name; expected names made of letters, digits and `_`, optionally ending in `*` for a prefix, such as \"PATH, LC_*\""
                ))
                .at_item(i));
            }
            names.push(name.to_owned());
        }
        Ok(EnvAllow(names))
    }
}

impl fmt::Display for EnvAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

impl OptionValue for EnvAllow {
    const LIST: bool = true;
    fn parse_text(text: &str) -> Result<Self, ParseError> {
        text.parse()
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
    fn to_rust(&self) -> String {
        // Checked names: letters, digits, `_` and `*` only.
        let names: Vec<String> = self.0.iter().map(|n| format!("{n:?}")).collect();
        format!(
            "[{}].into_iter().collect::<$crate::options::EnvAllow>()",
            names.join(", ")
        )
    }
}

#[cfg(test)]
mod tests;
