//! The status server's bearer token (`status_token`): a secret, so nothing that prints
//! options or logs them may show it, and comparing it must not tell an attacker how much of
//! a guess was right.

use std::fmt;

use super::parse::ParseError;
use super::value::OptionValue;

/// The token that `GET /status` and `GET /metrics` require, as `Authorization: Bearer
/// <token>`, when the `status_token` option is set.
///
/// Its `Debug` prints `StatusToken(<redacted>)` and it has no `Display`, so logging the
/// [`Options`](super::Options) or the [`StatusOptions`](crate::StatusOptions) never shows the
/// secret; [`StatusToken::as_str`] is the one way to read it.
///
/// The characters are those of a bearer credential (RFC 6750's `b64token`): letters, digits,
/// `-`, `.`, `_`, `~`, `+`, `/`, then optionally `=` padding. Anything else would not survive
/// the trip through an HTTP header, so [`Options::validate`](super::Options::validate)
/// refuses it before the master starts.
///
/// # Examples
///
/// ```
/// use cluster_core::options::StatusToken;
///
/// let token = StatusToken::new("s3cr3t-t0ken");
/// assert_eq!(format!("{token:?}"), "StatusToken(<redacted>)");
/// assert_eq!(token.as_str(), "s3cr3t-t0ken");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct StatusToken(String);

impl StatusToken {
    /// A token; its characters are checked with the other options, by
    /// [`Options::validate`](super::Options::validate).
    #[must_use]
    pub fn new(token: impl Into<String>) -> Self {
        StatusToken(token.into())
    }

    /// The secret itself.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `given` is the token, in a time that depends only on the token's length: a
    /// comparison that stopped at the first wrong byte would let a client find the token
    /// byte by byte by timing its 401s.
    #[must_use]
    pub(crate) fn matches(&self, given: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        // Every byte of the token is looked at whatever `given` is; the length of `given` is
        // the client's own, so branching on it leaks nothing.
        let mut difference = usize::from(given.len() != expected.len());
        for (i, &byte) in expected.iter().enumerate() {
            let other = given.get(i).copied().unwrap_or(0);
            difference |= usize::from(byte ^ other);
        }
        // Keeps the optimiser from turning the fold back into an early exit.
        std::hint::black_box(difference) == 0
    }

    /// Why the token cannot be used, if it cannot. The reason never quotes the token: it ends
    /// up in errors and logs.
    pub(super) fn problem(&self) -> Option<String> {
        let bytes = self.0.as_bytes();
        if bytes.is_empty() {
            return Some(
                "the token is empty, so any client would be let in; set a long random token (such as 32 characters from `openssl rand -base64 24`), or `off`"
                    .to_owned(),
            );
        }
        let padding = bytes.iter().rev().take_while(|&&b| b == b'=').count();
        let body = &bytes[..bytes.len() - padding];
        if body.is_empty() {
            return Some(
                "the token is only `=` padding, which is no bearer token; set a long random token"
                    .to_owned(),
            );
        }
        if let Some(at) = body.iter().position(|&b| !is_token_char(b)) {
            return Some(format!(
                "character {} of the token cannot be in a bearer token; use only letters, digits, `-`, `.`, `_`, `~`, `+`, `/`, and `=` at the end",
                at + 1
            ));
        }
        None
    }
}

fn is_token_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
}

impl fmt::Debug for StatusToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatusToken(<redacted>)")
    }
}

impl From<String> for StatusToken {
    fn from(token: String) -> Self {
        StatusToken(token)
    }
}

impl From<&str> for StatusToken {
    fn from(token: &str) -> Self {
        StatusToken(token.to_owned())
    }
}

/// The text is the token itself, around which spaces are dropped (a token read from a file or
/// an environment variable often ends with a newline); `off` (in `Option`) is no token.
impl OptionValue for StatusToken {
    fn parse_text(text: &str) -> Result<Self, ParseError> {
        Ok(StatusToken::new(text.trim()))
    }
    fn to_text(&self) -> String {
        self.0.clone()
    }
    fn to_rust(&self) -> String {
        // The token was checked where it was written, so it holds no quote, backslash or `$`
        // (the macro replaces `$crate`): the literal is the token as written.
        format!("$crate::options::StatusToken::new({:?})", self.0)
    }
}

/// The rule of `status_token`, run with the other options' rules.
pub(super) fn check(token: &Option<StatusToken>) -> Result<(), String> {
    match token.as_ref().and_then(StatusToken::problem) {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}
