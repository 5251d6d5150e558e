//! The PROXY protocol header (HAProxy's, versions 1 and 2), which a load balancer sends
//! before the client's bytes so that the server learns the client's address.
//!
//! One parser for both sides: the master reads the source address from a peeked header to
//! route `Balance::StickyKey` connections by the real client, and `cluster::http` reads the
//! same header off the connection before serving it. A pure function of the bytes received
//! so far, so that it can be fed a growing prefix and never panics on any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version 2's signature, its first 12 bytes.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1's longest header, `\r\n` included (the specification's bound).
pub const V1_MAX: usize = 107;
/// Version 2's fixed part: the signature, version and command, family, and length.
const V2_FIXED: usize = 16;
/// The longest header this parser takes: version 2's fixed part and the largest length it
/// can announce.
pub const MAX_LEN: usize = V2_FIXED + u16::MAX as usize;

/// What the bytes received so far are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A complete header of `len` bytes. `source` is the client's address, `None` for a
    /// header that carries none (version 1's `UNKNOWN`, version 2's `LOCAL` command or a
    /// Unix-socket family): the connection is then the load balancer's own.
    Header {
        /// The header's length: the client's bytes start after it.
        len: usize,
        /// The client's address, when the header carries one.
        source: Option<SocketAddr>,
    },
    /// The start of a header: more bytes are needed.
    Partial,
    /// Not a PROXY header, or a malformed one; the reason names what is wrong.
    Invalid(&'static str),
}

/// Reads a PROXY header (version 1 or 2) at the start of `bytes`.
///
/// ```
/// use cluster_core::proxy_header::{Parsed, parse};
///
/// let header = b"PROXY TCP4 192.0.2.7 192.0.2.1 51000 80\r\nGET / HTTP/1.1\r\n";
/// assert_eq!(
///     parse(header),
///     Parsed::Header { len: 41, source: Some("192.0.2.7:51000".parse().unwrap()) }
/// );
/// assert_eq!(parse(b"PROXY TCP4 192.0"), Parsed::Partial);
/// assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Invalid(_)));
/// ```
#[must_use]
pub fn parse(bytes: &[u8]) -> Parsed {
    if bytes.len() < V2_SIGNATURE.len() && V2_SIGNATURE.starts_with(bytes) {
        return Parsed::Partial;
    }
    if bytes.starts_with(V2_SIGNATURE) {
        return parse_v2(bytes);
    }
    let v1 = b"PROXY ";
    if bytes.len() < v1.len() && v1.starts_with(bytes) {
        return Parsed::Partial;
    }
    if bytes.starts_with(v1) {
        return parse_v1(bytes);
    }
    Parsed::Invalid("no PROXY protocol signature")
}

fn parse_v1(bytes: &[u8]) -> Parsed {
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if bytes.len() >= V1_MAX {
            Parsed::Invalid("a version 1 header longer than 107 bytes")
        } else {
            Parsed::Partial
        };
    };
    let len = end + 2;
    let Ok(line) = std::str::from_utf8(&bytes[..end]) else {
        return Parsed::Invalid("a version 1 header that is not ASCII");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Parsed::Header { len, source: None },
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v4 = *family == "TCP4";
            let ip = |text: &str| -> Option<IpAddr> {
                if v4 {
                    text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
                } else {
                    text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
                }
            };
            // Ports are decimal without a sign or leading zeros (the specification's form).
            let port = |text: &str| -> Option<u16> {
                let canonical = text.bytes().all(|b| b.is_ascii_digit())
                    && !text.is_empty()
                    && (text == "0" || !text.starts_with('0'));
                canonical.then(|| text.parse().ok()).flatten()
            };
            match (ip(src), ip(dst), port(sport), port(dport)) {
                (Some(src), Some(_), Some(sport), Some(_)) => Parsed::Header {
                    len,
                    source: Some(SocketAddr::new(src, sport)),
                },
                _ => Parsed::Invalid("a version 1 header with a bad address or port"),
            }
        }
        _ => Parsed::Invalid("a version 1 header of an unknown form"),
    }
}

fn parse_v2(bytes: &[u8]) -> Parsed {
    if bytes.len() < V2_FIXED {
        return Parsed::Partial;
    }
    let version_command = bytes[12];
    if version_command >> 4 != 2 {
        return Parsed::Invalid("a version 2 signature with another version");
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Parsed::Invalid("a version 2 header with an unknown command"),
    };
    let family = bytes[13];
    let body = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let len = V2_FIXED + body;
    if bytes.len() < len {
        return Parsed::Partial;
    }
    let addresses = &bytes[V2_FIXED..len];
    if local {
        return Parsed::Header { len, source: None };
    }
    // The high nibble is the address family, the low one the transport (1 stream, 2 datagram).
    let source = match family >> 4 {
        0 => None,
        1 => match addresses {
            [a, b, c, d, _, _, _, _, p, q, _, _, ..] => Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(*a, *b, *c, *d)),
                u16::from_be_bytes([*p, *q]),
            )),
            _ => return Parsed::Invalid("a version 2 IPv4 header shorter than its addresses"),
        },
        2 => {
            if addresses.len() < 36 {
                return Parsed::Invalid("a version 2 IPv6 header shorter than its addresses");
            }
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&addresses[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(ip)),
                u16::from_be_bytes([addresses[32], addresses[33]]),
            ))
        }
        3 => None,
        _ => return Parsed::Invalid("a version 2 header with an unknown address family"),
    };
    Parsed::Header { len, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        out.extend_from_slice(addresses);
        out
    }

    #[test]
    fn version_1_forms() {
        let tcp6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 443 8443\r\n";
        assert_eq!(
            parse(tcp6),
            Parsed::Header {
                len: tcp6.len(),
                source: Some("[2001:db8::7]:443".parse().unwrap())
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN whatever\r\nrest"),
            Parsed::Header {
                len: 24,
                source: None
            }
        );
        for bad in [
            &b"PROXY TCP4 1.2.3.4 1.2.3.5 080 80\r\n"[..],
            b"PROXY TCP4 1.2.3.4 1.2.3.5 65536 80\r\n",
            b"PROXY TCP6 1.2.3.4 1.2.3.5 1 80\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1\r\n",
            b"PROXY UDP4 1.2.3.4 1.2.3.5 1 2\r\n",
        ] {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{bad:?}");
        }
        // Every prefix of a good header asks for more, and no longer one is accepted.
        let good = b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n";
        for cut in 1..good.len() {
            assert_eq!(parse(&good[..cut]), Parsed::Partial, "{cut}");
        }
        let endless = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat();
        assert!(matches!(parse(&endless), Parsed::Invalid(_)));
    }

    #[test]
    fn version_2_forms() {
        let mut four = vec![192, 0, 2, 7, 192, 0, 2, 1];
        four.extend_from_slice(&51000u16.to_be_bytes());
        four.extend_from_slice(&80u16.to_be_bytes());
        // A TLV after the addresses is part of the header.
        four.extend_from_slice(&[0x04, 0, 1, 0]);
        let header = v2(1, 0x11, &four);
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&bytes),
            Parsed::Header {
                len: header.len(),
                source: Some("192.0.2.7:51000".parse().unwrap())
            }
        );
        for cut in 1..header.len() {
            assert_eq!(parse(&header[..cut]), Parsed::Partial, "{cut}");
        }
        let mut six = vec![0u8; 36];
        six[15] = 1;
        six[32..34].copy_from_slice(&443u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &six)),
            Parsed::Header {
                len: 52,
                source: Some("[::1]:443".parse().unwrap())
            }
        );
        // A health check of the balancer itself: no client.
        assert_eq!(
            parse(&v2(0, 0x00, &[])),
            Parsed::Header {
                len: 16,
                source: None
            }
        );
        assert!(matches!(
            parse(&v2(1, 0x11, &[1, 2, 3])),
            Parsed::Invalid(_)
        ));
        assert!(matches!(parse(&v2(7, 0x11, &four)), Parsed::Invalid(_)));
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_within_the_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Parsed::Header { len, .. } = parse(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }

        #[test]
        fn never_panics_after_a_signature(tail in proptest::collection::vec(any::<u8>(), 0..300), v1 in any::<bool>()) {
            let start: &[u8] = if v1 { b"PROXY " } else { V2_SIGNATURE };
            let bytes = [start, &tail].concat();
            if let Parsed::Header { len, .. } = parse(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }
    }
}
