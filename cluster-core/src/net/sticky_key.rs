//! `Balance::StickyKey`'s key: what the master reads in the first bytes of a connection
//! (peeked, so that they stay in the socket for the worker) to route it by application key.
//!
//! The key is, first found first: the value of the cookie `sticky_cookie`, the value of the
//! header `sticky_header`, then (with `sticky_proxy`) the client's IP address from a PROXY
//! protocol header. A pure function of the bytes peeked so far ([`find`]), so that it is fed
//! a growing prefix, is tested on its own, and never panics on any input.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use super::proxy_header::{self, Parsed};

/// The most bytes the master peeks per connection: a request head with its cookies fits.
pub(crate) const PEEK_MAX: usize = 8 * 1024;

/// Where `StickyKey` finds a connection's key (the `sticky_*` options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyRules {
    /// The cookie whose value is the key (`sticky_cookie`).
    pub(crate) cookie: Option<String>,
    /// The HTTP header whose value is the key (`sticky_header`).
    pub(crate) header: Option<String>,
    /// Connections start with a PROXY protocol header whose source IP is the key
    /// (`sticky_proxy`).
    pub(crate) proxy: bool,
    /// How long the master waits for the bytes that hold the key (`sticky_peek_timeout`).
    pub(crate) peek_timeout: Duration,
}

impl KeyRules {
    /// Whether any key is looked for at all.
    pub(crate) fn has_source(&self) -> bool {
        self.cookie.is_some() || self.header.is_some() || self.proxy
    }
}

/// What the bytes so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    /// The key's hash, if one was found: what more bytes could change is only a better key
    /// (a cookie after the PROXY address), so this one stands if no more come.
    pub(crate) key: Option<u64>,
    /// More bytes cannot change the answer: stop peeking.
    pub(crate) settled: bool,
}

fn hash_of(kind: u8, bytes: &[u8]) -> u64 {
    // SipHash with fixed keys: the same key hashes the same for the master's whole life.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    kind.hash(&mut h);
    bytes.hash(&mut h);
    h.finish()
}

/// The key in `bytes`, the first bytes of a connection.
pub(crate) fn find(rules: &KeyRules, bytes: &[u8]) -> Found {
    let mut start = 0;
    let mut proxy_key = None;
    if rules.proxy {
        match proxy_header::parse(bytes) {
            Parsed::Header { len, source } => {
                start = len;
                proxy_key = source.map(|addr| match addr.ip() {
                    std::net::IpAddr::V4(ip) => hash_of(4, &ip.octets()),
                    std::net::IpAddr::V6(ip) => hash_of(6, &ip.octets()),
                });
            }
            Parsed::Partial if bytes.len() < PEEK_MAX => {
                return Found {
                    key: None,
                    settled: false,
                };
            }
            // The worker refuses a connection without its header; no key is worth waiting for.
            Parsed::Partial | Parsed::Invalid(_) => {
                return Found {
                    key: None,
                    settled: true,
                };
            }
        }
    }
    if rules.cookie.is_none() && rules.header.is_none() {
        return Found {
            key: proxy_key,
            settled: true,
        };
    }
    let http = http_key(rules, &bytes[start..]);
    Found {
        key: http.key.or(proxy_key),
        settled: http.settled,
    }
}

/// The cookie's or header's value in an HTTP/1.x request head (or its start).
fn http_key(rules: &KeyRules, head: &[u8]) -> Found {
    let not_http = Found {
        key: None,
        settled: true,
    };
    // A request line starts with a method, a token of capitals: anything else (TLS, another
    // protocol) holds no key, however long the master waits.
    let method = head.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match head.get(method) {
        Some(b' ') if method > 0 => {}
        None if method == head.len() && method < 16 => {
            return Found {
                key: None,
                settled: false,
            };
        }
        _ => return not_http,
    }
    let mut lines = head.split(|&b| b == b'\n');
    // The request line; a last piece without its '\n' is incomplete and not looked at.
    lines.next();
    let mut cookie = None;
    let mut header = None;
    let mut complete = false;
    let complete_lines = head.iter().filter(|&&b| b == b'\n').count();
    for line in lines.take(complete_lines.saturating_sub(1)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            complete = true;
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if let Some(wanted) = &rules.cookie {
            if cookie.is_none() && name.eq_ignore_ascii_case(b"cookie") {
                cookie = cookie_value(value, wanted.as_bytes());
            }
        }
        if let Some(wanted) = &rules.header {
            if header.is_none() && !value.is_empty() && name.eq_ignore_ascii_case(wanted.as_bytes())
            {
                header = Some(value);
            }
        }
    }
    // The cookie wins over the header; a header found before the end of the head stands
    // once no cookie is looked for.
    let settled = complete || cookie.is_some() || (rules.cookie.is_none() && header.is_some());
    let key = cookie
        .map(|c| hash_of(b'c', c))
        .or_else(|| header.map(|h| hash_of(b'h', h)));
    Found { key, settled }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace());
    match (start, end) {
        (Some(start), Some(end)) => &bytes[start..=end],
        _ => &[],
    }
}

/// The value of cookie `name` in a `Cookie` header's value (`a=1; sid=xyz`), quotes removed.
fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        if trim(&pair[..eq]) != name {
            return None;
        }
        let value = trim(&pair[eq + 1..]);
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        (!value.is_empty()).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules(cookie: Option<&str>, header: Option<&str>, proxy: bool) -> KeyRules {
        KeyRules {
            cookie: cookie.map(str::to_owned),
            header: header.map(str::to_owned),
            proxy,
            peek_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_cookie_is_the_key_and_only_its_value_counts() {
        let r = rules(Some("sid"), None, false);
        let a = find(
            &r,
            b"GET / HTTP/1.1\r\nHost: x\r\nCookie: theme=dark; sid=abc\r\n\r\n",
        );
        let b = find(
            &r,
            b"POST /x HTTP/1.1\r\nCookie: sid=\"abc\"\r\nHost: y\r\n",
        );
        let c = find(&r, b"GET / HTTP/1.1\r\nCookie: sid=abd\r\n\r\n");
        assert!(a.settled && b.settled && c.settled);
        assert!(a.key.is_some());
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, c.key);
        // Another cookie's name containing this one's is not it.
        let none = find(&r, b"GET / HTTP/1.1\r\nCookie: xsid=abc; sidx=1\r\n\r\n");
        assert_eq!(
            none,
            Found {
                key: None,
                settled: true
            }
        );
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        let r = rules(Some("sid"), Some("x-session"), false);
        let head = b"GET / HTTP/1.1\r\nX-Session: 42\r\nCookie: sid=7\r\n\r\n";
        // The header is found first, but a cookie may still come: not settled until it does.
        let at_header = find(&r, &head[..32]);
        assert!(!at_header.settled);
        assert!(at_header.key.is_some());
        let whole = find(&r, head);
        assert!(whole.settled);
        assert_eq!(
            whole.key,
            find(&r, b"GET / HTTP/1.1\r\nCookie: sid=7\r\n").key
        );
        assert_ne!(whole.key, at_header.key);
        for cut in 0..20 {
            assert!(!find(&r, &head[..cut]).settled, "{cut}");
        }
    }

    #[test]
    fn a_header_alone_is_matched_without_case() {
        let r = rules(None, Some("X-Session"), false);
        let found = find(&r, b"GET / HTTP/1.1\r\nx-session:  abc \r\n");
        assert!(found.settled);
        assert_eq!(
            found.key,
            find(&r, b"GET / HTTP/1.1\r\nX-SESSION: abc\r\n").key
        );
    }

    #[test]
    fn not_http_settles_without_a_key() {
        let r = rules(Some("sid"), None, false);
        for bytes in [&b"\x16\x03\x01\x02\x00"[..], b"get / HTTP/1.1\r\n", b" GET"] {
            assert_eq!(
                find(&r, bytes),
                Found {
                    key: None,
                    settled: true
                },
                "{bytes:?}"
            );
        }
        assert!(!find(&r, b"").settled);
    }

    #[test]
    fn the_proxy_address_is_the_key_unless_a_cookie_is_found() {
        let proxy_only = rules(None, None, true);
        let from_7 = find(&proxy_only, b"PROXY TCP4 10.0.0.7 10.0.0.1 5000 80\r\n");
        let from_7_again = find(&proxy_only, b"PROXY TCP4 10.0.0.7 10.0.0.1 6000 80\r\nGET");
        let from_8 = find(&proxy_only, b"PROXY TCP4 10.0.0.8 10.0.0.1 5000 80\r\n");
        assert!(from_7.settled && from_7.key.is_some());
        // Another source port is the same client.
        assert_eq!(from_7.key, from_7_again.key);
        assert_ne!(from_7.key, from_8.key);
        assert!(!find(&proxy_only, b"PROXY TCP4 10.0").settled);
        assert_eq!(
            find(&proxy_only, b"GET / HTTP/1.1\r\n"),
            Found {
                key: None,
                settled: true
            }
        );

        let both = rules(Some("sid"), None, true);
        let header = b"PROXY TCP4 10.0.0.7 10.0.0.1 5000 80\r\n";
        let waiting = find(&both, header);
        assert_eq!(waiting.key, from_7.key);
        assert!(!waiting.settled);
        let with_cookie = find(
            &both,
            &[&header[..], b"GET / HTTP/1.1\r\nCookie: sid=1\r\n"].concat(),
        );
        assert!(with_cookie.settled);
        assert_ne!(with_cookie.key, from_7.key);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), proxy in any::<bool>()) {
            let _ = find(&rules(Some("sid"), Some("x-key"), proxy), &bytes);
        }

        #[test]
        fn never_panics_on_near_requests(
            tail in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b':'), Just(b';'), Just(b'='), Just(b'"'), Just(b' '), any::<u8>()], 0..400),
            proxy in any::<bool>(),
        ) {
            let mut bytes = b"GET / HTTP/1.1\r\nCookie: ".to_vec();
            bytes.extend_from_slice(&tail);
            let r = rules(Some("sid"), Some("x-key"), proxy);
            let _ = find(&r, &bytes);
            let _ = find(&r, &[&b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"[..], &bytes].concat());
        }
    }
}
