//! The value of the `sticky_cookie` and `sticky_header` options: the name of the cookie or
//! header that holds `Balance::StickyKey`'s key.

use std::fmt;

use super::parse::ParseError;
use super::value::OptionValue;

/// A cookie or header name: an HTTP token (RFC 9110's `tchar`s), compared without case for
/// headers and exactly for cookies.
///
/// ```
/// use cluster_core::options::{KeyName, OptionValue};
///
/// assert_eq!(KeyName::parse_text("sid").unwrap().as_str(), "sid");
/// assert!(KeyName::parse_text("my cookie").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyName(String);

impl KeyName {
    /// The name, unchecked: [`Options::validate`](super::Options::validate) refuses one
    /// that is not a token.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        KeyName(name.into())
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The option's rule, for names set in code.
pub(super) fn check(name: &Option<KeyName>) -> Result<(), ParseError> {
    name.as_ref()
        .map_or(Ok(()), |KeyName(name)| check_name(name))
}

fn check_name(name: &str) -> Result<(), ParseError> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        return Err(ParseError::new(format!(
            "{name:?} is not a cookie or header name; use letters, digits and !#$%&'*+-.^_`|~ only, such as \"sid\""
        )));
    }
    Ok(())
}

impl OptionValue for KeyName {
    fn parse_text(text: &str) -> Result<Self, ParseError> {
        let name = text.trim();
        check_name(name)?;
        Ok(KeyName(name.to_owned()))
    }
    fn to_text(&self) -> String {
        self.0.clone()
    }
    fn to_rust(&self) -> String {
        format!("$crate::options::KeyName::new({:?})", self.0)
    }
}
