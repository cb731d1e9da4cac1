//! NBD URIs (the NBD project's `doc/uri.md`, over RFC 3986):
//! `nbd://HOST[:PORT]/EXPORT` and `nbd+unix:///EXPORT?socket=PATH`,
//! parsed once into an [`NbdUri`] whose [`Display`](std::fmt::Display) is
//! its canonical form (port always written, export percent-encoded), so two
//! spellings of one export compare equal once parsed.
//!
//! `nbds://` and `nbds+unix://` (TLS) are refused: mdfuse has no TLS yet.
//! Query parameters: `socket` (Unix only, required there),
//! `x-timeout=SECONDS` (the per-request timeout) and `x-keepalive=SECONDS`
//! (how long a connection may stay silent before it is probed; 0: never);
//! any other is refused.

use std::path::PathBuf;
use std::time::Duration;

/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;
/// The per-request timeout when the URI gives none: the kernel nbd
/// driver's default, within DRBD's and nbd-client's range.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest timeout a URI may ask for.
pub const MAX_TIMEOUT_S: u64 = 3600;
/// How long a connection may be silent (no reply) before a probe request
/// checks the server is there, when the URI does not say: DRBD's ping-int.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NbdAddr {
    Tcp { host: String, port: u16 },
    Unix { socket: PathBuf },
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NbdUri {
    pub addr: NbdAddr,
    pub export: String,
    /// `x-timeout`: the per-request timeout.
    pub timeout: Option<Duration>,
    /// `x-keepalive`: the silence before a probe (Some(ZERO): no probes).
    pub keepalive: Option<Duration>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    #[error(
        "{uri}: {scheme}:// is NBD over TLS, which mdfuse does not support yet; \
         use nbd:// or nbd+unix:// over a trusted network or socket"
    )]
    Tls { uri: String, scheme: String },
    #[error("{uri}: {why}")]
    Invalid { uri: String, why: String },
}

/// True when `s` names an NBD leg (an `nbd*://` URI, TLS or not), not a
/// path: the test every place that takes a leg's name uses first.
pub fn is_nbd_uri(s: &str) -> bool {
    ["nbd://", "nbd+unix://", "nbds://", "nbds+unix://"]
        .iter()
        .any(|p| s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p))
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Decodes `%XX` escapes.
fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(&h), Some(&l)) = (b.get(i + 1), b.get(i + 2)) else {
                return Err(format!("a '%' not followed by two hex digits in {s:?}"));
            };
            let (Some(h), Some(l)) = (hex(h), hex(l)) else {
                return Err(format!("a '%' not followed by two hex digits in {s:?}"));
            };
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Encodes every byte but RFC 3986's unreserved ones and `/`.
fn percent_encode(b: &[u8], keep: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        if c.is_ascii_alphanumeric() || b"-._~".contains(&c) || keep.contains(&c) {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

impl NbdUri {
    /// Parses an NBD URI.
    pub fn parse(uri: &str) -> Result<NbdUri, UriError> {
        let bad = |why: String| UriError::Invalid {
            uri: uri.to_owned(),
            why,
        };
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(bad("not a URI (no scheme://)".into()));
        };
        let scheme_l = scheme.to_ascii_lowercase();
        let unix = match scheme_l.as_str() {
            "nbd" => false,
            "nbd+unix" => true,
            "nbds" | "nbds+unix" => {
                return Err(UriError::Tls {
                    uri: uri.to_owned(),
                    scheme: scheme_l,
                })
            }
            _ => {
                return Err(bad(format!(
                    "scheme {scheme:?} is not NBD's (nbd:// or nbd+unix://)"
                )))
            }
        };
        if rest.contains('#') {
            return Err(bad("a URI of a leg has no #fragment".into()));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let export_bytes = percent_decode(path.strip_prefix('/').unwrap_or(path)).map_err(bad)?;
        if export_bytes.contains(&0) {
            return Err(bad("the export name holds a NUL byte".into()));
        }
        let export = String::from_utf8(export_bytes)
            .map_err(|_| bad("the export name is not UTF-8".into()))?;
        if export.len() > super::proto::MAX_STRING {
            return Err(bad(format!(
                "the export name is {} bytes long; NBD allows at most {}",
                export.len(),
                super::proto::MAX_STRING
            )));
        }
        let mut socket: Option<PathBuf> = None;
        let mut timeout = None;
        let mut keepalive = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).map_err(bad)?;
            match k {
                "socket" if unix => {
                    if socket.is_some() {
                        return Err(bad("socket= given twice".into()));
                    }
                    if v.is_empty() || v[0] == 0 {
                        return Err(bad(
                            "socket= must name a socket file (abstract sockets are not supported)"
                                .into(),
                        ));
                    }
                    use std::os::unix::ffi::OsStringExt;
                    socket = Some(PathBuf::from(std::ffi::OsString::from_vec(v)));
                }
                "socket" => {
                    return Err(bad("socket= belongs to nbd+unix:// URIs, not nbd://".into()))
                }
                "x-timeout" => {
                    let s = std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .filter(|&s| (1..=MAX_TIMEOUT_S).contains(&s))
                        .ok_or_else(|| {
                            bad(format!(
                                "x-timeout must be whole seconds from 1 to {MAX_TIMEOUT_S}"
                            ))
                        })?;
                    timeout = Some(Duration::from_secs(s));
                }
                "x-keepalive" => {
                    let s = std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .filter(|&s| s <= MAX_TIMEOUT_S)
                        .ok_or_else(|| {
                            bad(format!(
                                "x-keepalive must be whole seconds from 0 (no probes) to {MAX_TIMEOUT_S}"
                            ))
                        })?;
                    keepalive = Some(Duration::from_secs(s));
                }
                k if k.starts_with("tls") => {
                    return Err(UriError::Tls {
                        uri: uri.to_owned(),
                        scheme: format!("{scheme_l} with {k}="),
                    })
                }
                k => {
                    return Err(bad(format!(
                        "unknown query parameter {k:?} (known: socket for nbd+unix://, x-timeout, x-keepalive)"
                    )))
                }
            }
        }
        let addr = if unix {
            if !authority.is_empty() {
                return Err(bad(format!(
                    "an nbd+unix:// URI has no host (got {authority:?}): write nbd+unix:///EXPORT?socket=PATH"
                )));
            }
            NbdAddr::Unix {
                socket: socket.ok_or_else(|| bad("nbd+unix:// needs ?socket=PATH".into()))?,
            }
        } else {
            if authority.contains('@') {
                return Err(bad(
                    "a user name in the URI is for TLS authentication, which mdfuse does not support"
                        .into(),
                ));
            }
            let bracketed = authority.starts_with('[');
            let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
                let Some((h, after)) = v6.split_once(']') else {
                    return Err(bad("an IPv6 address without its closing ']'".into()));
                };
                if h.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(bad(format!("{h:?} is not an IPv6 address")));
                }
                let port = match after {
                    "" => None,
                    p => Some(p.strip_prefix(':').ok_or_else(|| {
                        bad(format!("unexpected {after:?} after the IPv6 address"))
                    })?),
                };
                (h.to_ascii_lowercase(), port)
            } else {
                match authority.rsplit_once(':') {
                    Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
                    None => (authority.to_ascii_lowercase(), None),
                }
            };
            if host.is_empty() {
                return Err(bad("no host: write nbd://HOST[:PORT]/EXPORT".into()));
            }
            if !host.starts_with(|c: char| c.is_ascii_alphanumeric())
                || !host.chars().all(|c| {
                    c.is_ascii_alphanumeric() || "-._".contains(c) || (c == ':' && bracketed)
                })
            {
                return Err(bad(format!("{host:?} is not a host name or address")));
            }
            let port =
                match port {
                    None => DEFAULT_PORT,
                    Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| {
                        bad(format!("port {p:?} is not a number from 1 to 65535"))
                    })?,
                };
            NbdAddr::Tcp { host, port }
        };
        Ok(NbdUri {
            addr,
            export,
            timeout,
            keepalive,
        })
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// The silence after which the connection is probed (None: never).
    pub fn keepalive(&self) -> Option<Duration> {
        Some(self.keepalive.unwrap_or(DEFAULT_KEEPALIVE)).filter(|d| !d.is_zero())
    }

    /// A name safe as a file name (md's `dev-NAME`): the host, port and
    /// export (or the socket's file name and the export), every byte but
    /// `[A-Za-z0-9._-]` made `_`, at most 100 bytes.
    pub fn safe_name(&self) -> String {
        let raw = match &self.addr {
            NbdAddr::Tcp { host, port } => format!("nbd-{host}-{port}"),
            NbdAddr::Unix { socket } => format!(
                "nbd-unix-{}",
                socket
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        };
        let raw = if self.export.is_empty() {
            raw
        } else {
            format!("{raw}-{}", self.export)
        };
        let mut s: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        s.truncate(100);
        s
    }
}

impl std::fmt::Display for NbdUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let export = percent_encode(self.export.as_bytes(), b"/");
        match &self.addr {
            NbdAddr::Tcp { host, port } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{export}")?
            }
            NbdAddr::Tcp { host, port } => write!(f, "nbd://{host}:{port}/{export}")?,
            NbdAddr::Unix { socket } => {
                use std::os::unix::ffi::OsStrExt;
                write!(
                    f,
                    "nbd+unix:///{export}?socket={}",
                    percent_encode(socket.as_os_str().as_bytes(), b"/")
                )?
            }
        }
        let mut sep = if matches!(self.addr, NbdAddr::Unix { .. }) {
            '&'
        } else {
            '?'
        };
        if let Some(t) = self.timeout {
            write!(f, "{sep}x-timeout={}", t.as_secs())?;
            sep = '&';
        }
        if let Some(k) = self.keepalive {
            write!(f, "{sep}x-keepalive={}", k.as_secs())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tcp(host: &str, port: u16, export: &str) -> NbdUri {
        NbdUri {
            addr: NbdAddr::Tcp {
                host: host.into(),
                port,
            },
            export: export.into(),
            timeout: None,
            keepalive: None,
        }
    }

    #[test]
    fn the_specs_examples_parse() {
        assert_eq!(
            NbdUri::parse("nbd://example.com:10809/export").unwrap(),
            tcp("example.com", 10809, "export")
        );
        assert_eq!(
            NbdUri::parse("nbd://example.com/disk").unwrap(),
            tcp("example.com", DEFAULT_PORT, "disk")
        );
        assert_eq!(NbdUri::parse("nbd://example.com/").unwrap().export, "");
        assert_eq!(NbdUri::parse("nbd://example.com").unwrap().export, "");
        assert_eq!(
            NbdUri::parse("nbd://example.com//disk").unwrap().export,
            "/disk"
        );
        assert_eq!(
            NbdUri::parse("nbd://example.com/hello%20world")
                .unwrap()
                .export,
            "hello world"
        );
        let u = NbdUri::parse("nbd+unix:///disk?socket=/run/nbd.sock").unwrap();
        assert_eq!(
            u.addr,
            NbdAddr::Unix {
                socket: "/run/nbd.sock".into()
            }
        );
        assert_eq!(u.export, "disk");
        assert_eq!(
            NbdUri::parse("nbd://[fd00::1]:2000/x").unwrap(),
            tcp("fd00::1", 2000, "x")
        );
        let t = NbdUri::parse("nbd://10.0.0.1/x?x-timeout=5").unwrap();
        assert_eq!(t.timeout(), Duration::from_secs(5));
        assert_eq!(tcp("h", 1, "").timeout(), DEFAULT_TIMEOUT);
        assert_eq!(tcp("h", 1, "").keepalive(), Some(DEFAULT_KEEPALIVE));
        let k = NbdUri::parse("nbd://h/x?x-keepalive=3&x-timeout=9").unwrap();
        assert_eq!(k.keepalive(), Some(Duration::from_secs(3)));
        assert_eq!(k.to_string(), "nbd://h:10809/x?x-timeout=9&x-keepalive=3");
        assert_eq!(NbdUri::parse(&k.to_string()).unwrap(), k);
        let off = NbdUri::parse("nbd+unix:///x?socket=/s&x-keepalive=0").unwrap();
        assert_eq!(off.keepalive(), None);
        assert_eq!(NbdUri::parse(&off.to_string()).unwrap(), off);
    }

    #[test]
    fn tls_and_malformed_uris_are_refused_with_a_reason() {
        for u in ["nbds://h/x", "nbds+unix:///x?socket=/s", "NBDS://h/x"] {
            let e = NbdUri::parse(u).unwrap_err();
            assert!(matches!(e, UriError::Tls { .. }), "{u}: {e}");
            assert!(e.to_string().contains("TLS"), "{e}");
            assert!(e.to_string().contains("not support"), "{e}");
        }
        for (u, why) in [
            ("nbd+unix:///x", "socket"),
            ("nbd+unix://host/x?socket=/s", "no host"),
            ("nbd://h:0/x", "port"),
            ("nbd://h:99999/x", "port"),
            ("nbd://h:x/x", "port"),
            ("nbd:///x", "no host"),
            ("nbd://h/x?socket=/s", "socket"),
            ("nbd://h/x?foo=1", "unknown"),
            ("nbd://h/x?tls-type=x509", "TLS"),
            ("nbd://u@h/x", "user"),
            ("nbd://[zz]/x", "IPv6"),
            ("nbd://h/%4", "hex"),
            ("nbd://h/a%00b", "NUL"),
            ("nbd://h/x?x-timeout=0", "x-timeout"),
            ("nbd://h/x?x-keepalive=-1", "x-keepalive"),
            ("nbd://h/x?x-keepalive=3601", "x-keepalive"),
            ("nbd://h/x#f", "fragment"),
            ("nbd://h h/x", "host"),
            ("http://h/x", "scheme"),
        ] {
            let e = NbdUri::parse(u).unwrap_err().to_string();
            assert!(e.contains(why), "{u}: {e}");
        }
    }

    #[test]
    fn nbd_uris_are_told_from_paths() {
        assert!(is_nbd_uri("nbd://h/x"));
        assert!(is_nbd_uri("NBD+unix:///x?socket=/s"));
        assert!(is_nbd_uri("nbds://h/x"));
        assert!(!is_nbd_uri("/dev/sdb"));
        assert!(!is_nbd_uri("nbd:/x"));
        assert!(!is_nbd_uri("./nbd://x"));
    }

    #[test]
    fn two_spellings_of_one_export_are_equal_once_parsed() {
        let a = NbdUri::parse("nbd://Host.Example/a%20b").unwrap();
        let b = NbdUri::parse("NBD://host.example:10809/a b").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "nbd://host.example:10809/a%20b");
        assert_eq!(NbdUri::parse(&a.to_string()).unwrap(), a);
        let u = NbdUri::parse("nbd+unix:///d?socket=/tmp/a%20b.sock&x-timeout=7").unwrap();
        assert_eq!(NbdUri::parse(&u.to_string()).unwrap(), u);
        assert_eq!(u.safe_name(), "nbd-unix-a_b.sock-d");
        assert_eq!(a.safe_name(), "nbd-host.example-10809-a_b");
        assert_eq!(tcp("::1", 5, "").to_string(), "nbd://[::1]:5/");
        assert_eq!(tcp("::1", 5, "").safe_name(), "nbd-__1-5");
    }

    proptest! {
        /// Whatever the string, parsing returns; what parses prints to a
        /// URI that parses back to the same value, and its safe name is a
        /// file name.
        #[test]
        fn parse_print_parse(s in "(nbd|nbd\\+unix|nbds)://[a-z0-9.:\\[\\]@%/ ?=&_-]{0,40}") {
            if let Ok(u) = NbdUri::parse(&s) {
                prop_assert_eq!(NbdUri::parse(&u.to_string()), Ok(u.clone()));
                let n = u.safe_name();
                prop_assert!(!n.is_empty() && !n.contains('/') && n != "." && n != "..");
            }
        }

        #[test]
        fn any_export_name_round_trips(export in "\\PC{0,30}", port in 1u16..) {
            let u = NbdUri { addr: NbdAddr::Tcp { host: "h".into(), port }, export, timeout: None, keepalive: None };
            prop_assert_eq!(NbdUri::parse(&u.to_string()), Ok(u));
        }
    }
}
