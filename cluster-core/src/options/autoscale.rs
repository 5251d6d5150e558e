//! The `autoscale` range of a group: the fewest and the most workers the autoscaler may run.

use std::fmt;
use std::str::FromStr;

use super::parse::ParseError;

/// Between how many workers a group is autoscaled: at least `min`, at most `max`.
///
/// # Examples
///
/// ```
/// use cluster_core::Autoscale;
///
/// let range: Autoscale = "2..8".parse()?;
/// assert_eq!(range, Autoscale::new(2, 8));
/// assert_eq!((range.min(), range.max()), (2, 8));
/// assert_eq!(range.to_string(), "2..8");
/// assert!("8..2".parse::<Autoscale>().is_err());
/// # Ok::<(), cluster_core::options::ParseError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autoscale {
    min: usize,
    max: usize,
}

impl Autoscale {
    /// The range `min..=max`; checked by the options' `validate` (1 ≤ `min` ≤ `max`).
    #[must_use]
    pub const fn new(min: usize, max: usize) -> Self {
        Autoscale { min, max }
    }

    /// The fewest workers.
    #[must_use]
    pub const fn min(&self) -> usize {
        self.min
    }

    /// The most workers.
    #[must_use]
    pub const fn max(&self) -> usize {
        self.max
    }

    /// Why the range cannot work, if it cannot.
    pub(super) fn check(&self) -> Result<(), String> {
        if self.min == 0 {
            return Err(format!(
                "autoscale {self} would stop the last worker of a quiet group; use a minimum of at least 1"
            ));
        }
        if self.min > self.max {
            return Err(format!(
                "autoscale {self} has its minimum above its maximum; write MIN..MAX, such as {}..{}",
                self.max, self.min
            ));
        }
        Ok(())
    }

    /// `count` brought into the range: a group's count is its starting size.
    #[must_use]
    pub fn clamp(&self, count: usize) -> usize {
        count.clamp(self.min.min(self.max), self.max)
    }

    pub(super) fn rust_expr(&self) -> String {
        format!(
            "$crate::options::Autoscale::new({}usize, {}usize)",
            self.min, self.max
        )
    }
}

impl FromStr for Autoscale {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        let wrong = || {
            ParseError::new(format!(
                "{text:?} is not a range of workers; expected MIN..MAX such as 2..8"
            ))
        };
        let (min, max) = text.trim().split_once("..").ok_or_else(wrong)?;
        let number = |t: &str| -> Result<usize, ParseError> {
            let t = t.trim();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(wrong());
            }
            t.parse().map_err(|_| wrong())
        };
        let range = Autoscale::new(number(min)?, number(max)?);
        range.check().map_err(ParseError::new)?;
        Ok(range)
    }
}

impl fmt::Display for Autoscale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.min, self.max)
    }
}
