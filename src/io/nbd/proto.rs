//! The NBD wire format, as a client sees it: the fixed newstyle handshake
//! (greeting, options, option replies, `NBD_INFO_*`), the transmission
//! requests it sends and the simple replies it reads. Bytes to values and
//! back, no sockets: what reads goes through a generic [`Read`], so the
//! fuzz target and the unit tests drive it from byte slices.
//!
//! Numbers are big-endian on the wire. Every length a server sends is
//! checked against a bound before anything is allocated for it.

use std::io::{Read, Write};

/// `NBDMAGIC`: the greeting's first 8 bytes.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation (the greeting's next 8 bytes, and the
/// start of every option the client sends).
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The start of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Options.
pub const OPT_ABORT: u32 = 2;
pub const OPT_GO: u32 = 7;

/// Option reply types (errors have bit 31 set).
pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_BIT: u32 = 1 << 31;

/// `NBD_INFO_*` types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;

/// The longest string (export name, error message) the protocol allows.
pub const MAX_STRING: usize = 4096;
/// The longest option reply payload read: an `NBD_INFO_*` is at most a
/// string and a few bytes; an error reply's message is a string.
pub const MAX_OPTION_REPLY: u32 = 2 * MAX_STRING as u32 + 16;
/// At most this many option replies to one `NBD_OPT_GO` (a server that
/// sends infos forever is refused).
pub const MAX_GO_REPLIES: usize = 64;
/// The largest payload of one request, whatever the server advertises:
/// the protocol's portable limit (2^25).
pub const MAX_PAYLOAD: u32 = 1 << 25;
/// The size of a request header and of a simple reply header.
pub const REQUEST_LEN: usize = 28;
pub const SIMPLE_REPLY_LEN: usize = 16;

/// What a server sent that a client cannot go on with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("not an NBD server (greeting magic {0:#018x})")]
    NotNbd(u64),
    #[error(
        "the server speaks oldstyle NBD (or not newstyle: magic {0:#018x}); mdfuse needs the fixed newstyle handshake"
    )]
    NotNewstyle(u64),
    #[error("the server does not offer the fixed newstyle handshake (flags {0:#06x})")]
    NotFixedNewstyle(u16),
    #[error("bad option reply magic {0:#018x}")]
    BadReplyMagic(u64),
    #[error("option reply to option {got} while waiting for a reply to option {want}")]
    WrongOption { want: u32, got: u32 },
    #[error("option reply of {0} bytes is longer than the {MAX_OPTION_REPLY} a reply may be")]
    ReplyTooLong(u32),
    #[error("option reply type {kind} has a length of {len} bytes, which it cannot have")]
    BadReplyLength { kind: u32, len: u32 },
    #[error("the server refused the export: {0}")]
    Refused(OptionRefusal),
    #[error("unexpected option reply type {0:#x}")]
    UnexpectedReply(u32),
    #[error("more than {MAX_GO_REPLIES} replies to NBD_OPT_GO")]
    TooManyReplies,
    #[error("the server acknowledged NBD_OPT_GO without NBD_INFO_EXPORT (size and flags)")]
    NoExportInfo,
    #[error("NBD_INFO_{what} of {len} bytes: it must be {want}")]
    BadInfoLength {
        what: &'static str,
        len: usize,
        want: usize,
    },
    #[error("invalid block sizes: minimum {min}, preferred {preferred}, maximum {max}: {why}")]
    BadBlockSize {
        min: u32,
        preferred: u32,
        max: u32,
        why: &'static str,
    },
    #[error("the export's transmission flags {0:#06x} lack NBD_FLAG_HAS_FLAGS")]
    NoHasFlags(u16),
    #[error("export name of {0} bytes: the protocol allows at most {MAX_STRING}")]
    NameTooLong(usize),
    #[error("export name holds a NUL byte")]
    NameHasNul,
    #[error("bad reply magic {magic:#010x}{}", if *magic == STRUCTURED_REPLY_MAGIC { " (a structured reply, which was not negotiated)" } else { "" })]
    BadSimpleReplyMagic { magic: u32 },
    #[error("reply for cookie {0:#x}, which no request in flight has")]
    UnknownCookie(u64),
    #[error("the server closed the connection")]
    Eof,
    #[error("{0}")]
    Io(String),
}

impl ProtoError {
    fn from_io(e: std::io::Error) -> ProtoError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtoError::Eof
        } else {
            ProtoError::Io(e.to_string())
        }
    }
}

/// An error reply to an option: its type and the server's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionRefusal {
    pub kind: u32,
    pub message: String,
}

impl std::fmt::Display for OptionRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.kind {
            k if k == REP_ERR_BIT | 1 => "NBD_REP_ERR_UNSUP (the server has no NBD_OPT_GO)",
            k if k == REP_ERR_BIT | 2 => "NBD_REP_ERR_POLICY",
            k if k == REP_ERR_BIT | 3 => "NBD_REP_ERR_INVALID",
            k if k == REP_ERR_BIT | 4 => "NBD_REP_ERR_PLATFORM",
            k if k == REP_ERR_BIT | 5 => {
                "NBD_REP_ERR_TLS_REQD (the server requires TLS, which mdfuse does not speak yet)"
            }
            k if k == REP_ERR_BIT | 6 => "NBD_REP_ERR_UNKNOWN (no such export)",
            k if k == REP_ERR_BIT | 7 => "NBD_REP_ERR_SHUTDOWN",
            k if k == REP_ERR_BIT | 8 => "NBD_REP_ERR_BLOCK_SIZE_REQD",
            k if k == REP_ERR_BIT | 9 => "NBD_REP_ERR_TOO_BIG",
            _ => "error",
        };
        write!(f, "{name} ({:#x})", self.kind)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// The server's block size constraints (`NBD_INFO_BLOCK_SIZE`), checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    pub min: u32,
    pub preferred: u32,
    pub max: u32,
}

impl BlockSizes {
    /// What a client assumes when the server advertises none: the
    /// portable choice (512-byte alignment, 32 MiB payloads).
    pub const DEFAULT: BlockSizes = BlockSizes {
        min: 512,
        preferred: 4096,
        max: MAX_PAYLOAD,
    };

    /// Checks the rules of the protocol: min a power of two up to 64 KiB,
    /// preferred a power of two at least max(min, 512), max at least
    /// preferred.
    pub fn checked(min: u32, preferred: u32, max: u32) -> Result<BlockSizes, ProtoError> {
        let bad = |why| ProtoError::BadBlockSize {
            min,
            preferred,
            max,
            why,
        };
        if !min.is_power_of_two() || min > 1 << 16 {
            return Err(bad("the minimum must be a power of 2 from 1 to 65536"));
        }
        if !preferred.is_power_of_two() || preferred < min.max(512) {
            return Err(bad(
                "the preferred size must be a power of 2 at least the minimum and 512",
            ));
        }
        if max < preferred {
            return Err(bad("the maximum must be at least the preferred size"));
        }
        Ok(BlockSizes {
            min,
            preferred,
            max,
        })
    }

    /// The largest payload mdfuse sends in one request: the server's
    /// maximum, at most 32 MiB, rounded down to the minimum block.
    pub fn max_request(&self) -> u32 {
        let m = self.max.min(MAX_PAYLOAD);
        m - m % self.min
    }
}

/// One `NBD_INFO_*` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    Export {
        size: u64,
        flags: u16,
    },
    BlockSize(BlockSizes),
    /// Names, descriptions and types this client does not use.
    Other(u16),
}

/// Parses an `NBD_REP_INFO` payload.
pub fn parse_info(data: &[u8]) -> Result<Info, ProtoError> {
    let Some((kind, rest)) = data.split_first_chunk::<2>() else {
        return Err(ProtoError::BadInfoLength {
            what: "(type)",
            len: data.len(),
            want: 2,
        });
    };
    match u16::from_be_bytes(*kind) {
        INFO_EXPORT => {
            let Ok(b) = <&[u8; 10]>::try_from(rest) else {
                return Err(ProtoError::BadInfoLength {
                    what: "EXPORT",
                    len: data.len(),
                    want: 12,
                });
            };
            let size = u64::from_be_bytes(b[..8].try_into().unwrap_or_default());
            let flags = u16::from_be_bytes([b[8], b[9]]);
            Ok(Info::Export { size, flags })
        }
        INFO_BLOCK_SIZE => {
            let Ok(b) = <&[u8; 12]>::try_from(rest) else {
                return Err(ProtoError::BadInfoLength {
                    what: "BLOCK_SIZE",
                    len: data.len(),
                    want: 14,
                });
            };
            let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            Ok(Info::BlockSize(BlockSizes::checked(
                word(0),
                word(4),
                word(8),
            )?))
        }
        other => Ok(Info::Other(other)),
    }
}

/// The option header and payload a client sends.
pub fn encode_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + data.len());
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    // Callers bound `data` (an export name of at most 4096 bytes and a few
    // info requests).
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// `NBD_OPT_GO` for `export`, asking for `NBD_INFO_BLOCK_SIZE` (the export
/// info comes anyway).
pub fn encode_opt_go(export: &str) -> Result<Vec<u8>, ProtoError> {
    if export.len() > MAX_STRING {
        return Err(ProtoError::NameTooLong(export.len()));
    }
    if export.as_bytes().contains(&0) {
        return Err(ProtoError::NameHasNul);
    }
    let mut data = Vec::with_capacity(8 + export.len());
    data.extend_from_slice(&(export.len() as u32).to_be_bytes());
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    Ok(encode_option(OPT_GO, &data))
}

/// What the handshake settled: the export's size, transmission flags and
/// block sizes (the server's, or the defaults when it sent none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Export {
    pub size: u64,
    pub flags: u16,
    pub block: BlockSizes,
    /// The server advertised its block sizes.
    pub block_advertised: bool,
}

impl Export {
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
    /// Writes can be made durable (NBD_CMD_FLUSH or FUA advertised).
    pub fn can_flush(&self) -> bool {
        self.has(TFLAG_SEND_FLUSH)
    }
}

fn read_array<const N: usize, R: Read>(r: &mut R) -> Result<[u8; N], ProtoError> {
    let mut b = [0u8; N];
    r.read_exact(&mut b).map_err(ProtoError::from_io)?;
    Ok(b)
}

/// Reads `len` bytes (already bounded by the caller).
fn read_vec<R: Read>(r: &mut R, len: u32) -> Result<Vec<u8>, ProtoError> {
    let mut v = vec![0u8; len as usize];
    r.read_exact(&mut v).map_err(ProtoError::from_io)?;
    Ok(v)
}

/// The client's side of the fixed newstyle handshake on `stream`, up to
/// the transmission phase: greeting, client flags, `NBD_OPT_GO` for
/// `export` with its replies. On a refusal the client sends
/// `NBD_OPT_ABORT` (best effort) before returning the error.
pub fn handshake<S: Read + Write>(stream: &mut S, export: &str) -> Result<Export, ProtoError> {
    let greeting: [u8; 18] = read_array(stream)?;
    let magic = u64::from_be_bytes(greeting[..8].try_into().unwrap_or_default());
    if magic != NBD_MAGIC {
        return Err(ProtoError::NotNbd(magic));
    }
    let second = u64::from_be_bytes(greeting[8..16].try_into().unwrap_or_default());
    if second != IHAVEOPT {
        return Err(ProtoError::NotNewstyle(second));
    }
    let flags = u16::from_be_bytes([greeting[16], greeting[17]]);
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(ProtoError::NotFixedNewstyle(flags));
    }
    let mut client = FLAG_C_FIXED_NEWSTYLE;
    if flags & FLAG_NO_ZEROES != 0 {
        client |= FLAG_C_NO_ZEROES;
    }
    let io = |e: std::io::Error| ProtoError::Io(e.to_string());
    stream.write_all(&client.to_be_bytes()).map_err(io)?;
    stream.write_all(&encode_opt_go(export)?).map_err(io)?;
    stream.flush().map_err(io)?;
    match go_replies(stream) {
        Ok(e) => Ok(e),
        Err(e) => {
            if matches!(e, ProtoError::Refused(_)) {
                // The server is waiting for another option: say goodbye.
                let _ = stream.write_all(&encode_option(OPT_ABORT, &[]));
                let _ = stream.flush();
            }
            Err(e)
        }
    }
}

/// Reads the replies to `NBD_OPT_GO` up to its final one.
fn go_replies<R: Read>(r: &mut R) -> Result<Export, ProtoError> {
    let mut export: Option<(u64, u16)> = None;
    let mut block: Option<BlockSizes> = None;
    for _ in 0..MAX_GO_REPLIES {
        let h: [u8; 20] = read_array(r)?;
        let magic = u64::from_be_bytes(h[..8].try_into().unwrap_or_default());
        if magic != OPT_REPLY_MAGIC {
            return Err(ProtoError::BadReplyMagic(magic));
        }
        let word = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let (option, kind, len) = (word(8), word(12), word(16));
        if option != OPT_GO {
            return Err(ProtoError::WrongOption {
                want: OPT_GO,
                got: option,
            });
        }
        if len > MAX_OPTION_REPLY {
            return Err(ProtoError::ReplyTooLong(len));
        }
        let data = read_vec(r, len)?;
        match kind {
            REP_ACK => {
                if len != 0 {
                    return Err(ProtoError::BadReplyLength { kind, len });
                }
                let (size, flags) = export.ok_or(ProtoError::NoExportInfo)?;
                if flags & TFLAG_HAS_FLAGS == 0 {
                    return Err(ProtoError::NoHasFlags(flags));
                }
                return Ok(Export {
                    size,
                    flags,
                    block: block.unwrap_or(BlockSizes::DEFAULT),
                    block_advertised: block.is_some(),
                });
            }
            REP_INFO => match parse_info(&data)? {
                Info::Export { size, flags } => export = Some((size, flags)),
                Info::BlockSize(b) => block = Some(b),
                Info::Other(_) => {}
            },
            k if k & REP_ERR_BIT != 0 => {
                let message = String::from_utf8_lossy(&data[..data.len().min(MAX_STRING)])
                    .chars()
                    .filter(|c| !c.is_control())
                    .collect();
                return Err(ProtoError::Refused(OptionRefusal { kind: k, message }));
            }
            k => return Err(ProtoError::UnexpectedReply(k)),
        }
    }
    Err(ProtoError::TooManyReplies)
}

/// A transmission request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// The inverse of [`Request::encode`] (for tests and fake servers).
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Option<Request> {
        let w32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let w64 = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or_default());
        (w32(0) == REQUEST_MAGIC).then(|| Request {
            flags: u16::from_be_bytes([b[4], b[5]]),
            kind: u16::from_be_bytes([b[6], b[7]]),
            cookie: w64(8),
            offset: w64(16),
            len: w32(24),
        })
    }
}

/// A simple reply's header: the request's cookie and its error (0: done).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub cookie: u64,
}

impl SimpleReply {
    pub fn parse(b: &[u8; SIMPLE_REPLY_LEN]) -> Result<SimpleReply, ProtoError> {
        let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(ProtoError::BadSimpleReplyMagic { magic });
        }
        Ok(SimpleReply {
            error: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            cookie: u64::from_be_bytes(b[8..16].try_into().unwrap_or_default()),
        })
    }

    pub fn encode(&self) -> [u8; SIMPLE_REPLY_LEN] {
        let mut b = [0u8; SIMPLE_REPLY_LEN];
        b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.error.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b
    }
}

/// The OS error number for an NBD error value (unknown ones are EIO).
pub fn errno_of(nbd_error: u32) -> i32 {
    match nbd_error {
        1 => libc::EPERM,
        5 => libc::EIO,
        12 => libc::ENOMEM,
        22 => libc::EINVAL,
        28 => libc::ENOSPC,
        75 => libc::EOVERFLOW,
        95 => libc::EOPNOTSUPP,
        108 => libc::ESHUTDOWN,
        _ => libc::EIO,
    }
}

/// Reads one simple reply from `r`. `read_len(cookie)` says how many data
/// bytes follow for the request with that cookie (its read length; 0 for
/// other commands), or None when no request in flight has it. The data of
/// a successful read is read into the buffer `sink(cookie, len)` returns
/// (at most the length `read_len` gave, so the server cannot make the
/// client allocate); a failed request has no data.
pub fn read_simple_reply<R: Read>(
    r: &mut R,
    read_len: impl FnOnce(u64) -> Option<u32>,
    sink: impl FnOnce(u64) -> Vec<u8>,
) -> Result<(SimpleReply, Vec<u8>), ProtoError> {
    let h: [u8; SIMPLE_REPLY_LEN] = read_array(r)?;
    let reply = SimpleReply::parse(&h)?;
    let len = read_len(reply.cookie).ok_or(ProtoError::UnknownCookie(reply.cookie))?;
    if reply.error != 0 || len == 0 {
        return Ok((reply, Vec::new()));
    }
    let mut buf = sink(reply.cookie);
    buf.resize(len as usize, 0);
    r.read_exact(&mut buf).map_err(ProtoError::from_io)?;
    Ok((reply, buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    /// A server's side of a handshake, as bytes, and a sink for what the
    /// client writes.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl Read for Duplex {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(b)
        }
    }
    impl Write for Duplex {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn greeting(flags: u16) -> Vec<u8> {
        let mut v = NBD_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&IHAVEOPT.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
        v
    }

    fn reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
        let mut v = OPT_REPLY_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&option.to_be_bytes());
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    fn info_export(size: u64, flags: u16) -> Vec<u8> {
        let mut d = INFO_EXPORT.to_be_bytes().to_vec();
        d.extend_from_slice(&size.to_be_bytes());
        d.extend_from_slice(&flags.to_be_bytes());
        reply(OPT_GO, REP_INFO, &d)
    }

    fn info_block(min: u32, pref: u32, max: u32) -> Vec<u8> {
        let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for w in [min, pref, max] {
            d.extend_from_slice(&w.to_be_bytes());
        }
        reply(OPT_GO, REP_INFO, &d)
    }

    fn run(server: Vec<u8>, export: &str) -> (Result<Export, ProtoError>, Vec<u8>) {
        let mut d = Duplex {
            input: Cursor::new(server),
            output: Vec::new(),
        };
        let r = handshake(&mut d, export);
        (r, d.output)
    }

    #[test]
    fn a_go_with_block_sizes_settles_the_export() {
        let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        s.extend(info_block(512, 4096, 1 << 20));
        s.extend(info_export(1 << 30, TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH));
        s.extend(reply(OPT_GO, REP_ACK, &[]));
        let (r, sent) = run(s, "disk");
        let e = r.unwrap();
        assert_eq!(e.size, 1 << 30);
        assert!(e.can_flush() && !e.has(TFLAG_SEND_FUA));
        assert_eq!(e.block, BlockSizes::checked(512, 4096, 1 << 20).unwrap());
        assert!(e.block_advertised);
        // Client flags, then NBD_OPT_GO for "disk" asking for the block size.
        assert_eq!(
            sent[..4],
            (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes()
        );
        assert_eq!(&sent[4..], &encode_opt_go("disk").unwrap()[..]);
        let go = &sent[4..];
        assert_eq!(go[..8], IHAVEOPT.to_be_bytes());
        assert_eq!(go[8..12], OPT_GO.to_be_bytes());
        assert_eq!(go[12..16], 12u32.to_be_bytes());
        assert_eq!(&go[16..20], &4u32.to_be_bytes());
        assert_eq!(&go[20..24], b"disk");
        assert_eq!(&go[24..], &[0, 1, 0, 3]);
    }

    #[test]
    fn without_block_sizes_the_portable_defaults_apply() {
        let mut s = greeting(FLAG_FIXED_NEWSTYLE);
        s.extend(info_export(4096, TFLAG_HAS_FLAGS));
        s.extend(reply(OPT_GO, REP_ACK, &[]));
        let (r, sent) = run(s, "");
        let e = r.unwrap();
        assert_eq!(e.block, BlockSizes::DEFAULT);
        assert!(!e.block_advertised && !e.can_flush());
        assert_eq!(sent[..4], FLAG_C_FIXED_NEWSTYLE.to_be_bytes());
    }

    #[test]
    fn refusals_and_malformed_handshakes_are_errors_named() {
        let mut s = greeting(FLAG_FIXED_NEWSTYLE);
        s.extend(reply(OPT_GO, REP_ERR_BIT | 6, b"no export named x"));
        let (r, sent) = run(s, "x");
        let e = r.unwrap_err();
        assert!(e.to_string().contains("no such export"), "{e}");
        assert!(e.to_string().contains("no export named x"), "{e}");
        // NBD_OPT_ABORT was sent after the refusal.
        assert!(sent.ends_with(&encode_option(OPT_ABORT, &[])));

        assert_eq!(run(greeting(0), "").0, Err(ProtoError::NotFixedNewstyle(0)));
        let mut old = NBD_MAGIC.to_be_bytes().to_vec();
        old.extend_from_slice(&0x0000_4202_8186_1253_u64.to_be_bytes());
        old.extend_from_slice(&[0; 2]);
        assert!(matches!(run(old, "").0, Err(ProtoError::NotNewstyle(_))));
        assert_eq!(run(b"HTTP/1.1 400".to_vec(), "").0, Err(ProtoError::Eof));

        let mut s = greeting(FLAG_FIXED_NEWSTYLE);
        s.extend(reply(OPT_GO, REP_ACK, &[]));
        assert_eq!(run(s, "").0, Err(ProtoError::NoExportInfo));

        let mut s = greeting(FLAG_FIXED_NEWSTYLE);
        s.extend(info_export(4096, 0));
        s.extend(reply(OPT_GO, REP_ACK, &[]));
        assert_eq!(run(s, "").0, Err(ProtoError::NoHasFlags(0)));

        let mut s = greeting(FLAG_FIXED_NEWSTYLE);
        s.extend(info_block(3, 4096, 1 << 20));
        assert!(matches!(run(s, "").0, Err(ProtoError::BadBlockSize { .. })));

        // A length far beyond any reply is refused before it is read.
        let mut s = greeting(FLAG_FIXED_NEWSTYLE);
        let mut r = OPT_REPLY_MAGIC.to_be_bytes().to_vec();
        r.extend_from_slice(&OPT_GO.to_be_bytes());
        r.extend_from_slice(&REP_INFO.to_be_bytes());
        r.extend_from_slice(&u32::MAX.to_be_bytes());
        s.extend(r);
        assert_eq!(run(s, "").0, Err(ProtoError::ReplyTooLong(u32::MAX)));

        // Endless infos end.
        let mut s = greeting(FLAG_FIXED_NEWSTYLE);
        for _ in 0..=MAX_GO_REPLIES {
            s.extend(info_export(4096, TFLAG_HAS_FLAGS));
        }
        assert_eq!(run(s, "").0, Err(ProtoError::TooManyReplies));

        assert_eq!(
            encode_opt_go(&"x".repeat(MAX_STRING + 1)),
            Err(ProtoError::NameTooLong(MAX_STRING + 1))
        );
        assert_eq!(encode_opt_go("a\0b"), Err(ProtoError::NameHasNul));
    }

    #[test]
    fn block_sizes_follow_the_protocol_rules() {
        assert!(BlockSizes::checked(1, 512, 512).is_ok());
        assert!(BlockSizes::checked(4096, 4096, u32::MAX).is_ok());
        assert!(BlockSizes::checked(0, 512, 512).is_err());
        assert!(BlockSizes::checked(1 << 17, 1 << 17, 1 << 20).is_err());
        assert!(BlockSizes::checked(512, 256, 4096).is_err());
        assert!(BlockSizes::checked(512, 4096, 2048).is_err());
        assert!(BlockSizes::checked(512, 3000, 4096).is_err());
        let b = BlockSizes::checked(4096, 4096, u32::MAX).unwrap();
        assert_eq!(b.max_request(), MAX_PAYLOAD);
        let b = BlockSizes::checked(4096, 4096, 10_000).unwrap();
        assert_eq!(b.max_request(), 8192);
    }

    #[test]
    fn replies_are_matched_by_cookie_and_bounded() {
        let mut wire = SimpleReply {
            error: 0,
            cookie: 7,
        }
        .encode()
        .to_vec();
        wire.extend_from_slice(&[9; 8]);
        wire.extend_from_slice(
            &SimpleReply {
                error: 28,
                cookie: 8,
            }
            .encode(),
        );
        wire.extend_from_slice(
            &SimpleReply {
                error: 0,
                cookie: 99,
            }
            .encode(),
        );
        let mut c = Cursor::new(wire);
        let lens = |c: u64| match c {
            7 => Some(8),
            8 => Some(4096),
            _ => None,
        };
        let (r, d) = read_simple_reply(&mut c, lens, |_| Vec::new()).unwrap();
        assert_eq!((r.cookie, r.error, d), (7, 0, vec![9; 8]));
        let (r, d) = read_simple_reply(&mut c, lens, |_| Vec::new()).unwrap();
        // A failed read carries no data.
        assert_eq!((r.cookie, errno_of(r.error), d.len()), (8, libc::ENOSPC, 0));
        assert_eq!(
            read_simple_reply(&mut c, lens, |_| Vec::new()).unwrap_err(),
            ProtoError::UnknownCookie(99)
        );
        let mut s = Cursor::new(STRUCTURED_REPLY_MAGIC.to_be_bytes().repeat(4));
        let e = read_simple_reply(&mut s, lens, |_| Vec::new()).unwrap_err();
        assert!(e.to_string().contains("structured"), "{e}");
    }

    proptest! {
        #[test]
        fn requests_round_trip(flags: u16, kind: u16, cookie: u64, offset: u64, len: u32) {
            let r = Request { flags, kind, cookie, offset, len };
            prop_assert_eq!(Request::decode(&r.encode()), Some(r));
        }

        /// Whatever follows a valid greeting, the handshake returns (no
        /// panic), and what it accepts has checked block sizes.
        #[test]
        fn any_server_bytes_end_the_handshake(tail in proptest::collection::vec(any::<u8>(), 0..512),
                                               infos in proptest::collection::vec((any::<u32>(), any::<u32>(), any::<u32>()), 0..3)) {
            let mut s = greeting(FLAG_FIXED_NEWSTYLE);
            for (a, b, c) in infos {
                s.extend(info_block(a, b, c));
            }
            s.extend(tail);
            if let Ok(e) = run(s, "x").0 {
                prop_assert!(BlockSizes::checked(e.block.min, e.block.preferred, e.block.max).is_ok());
                prop_assert!(e.flags & TFLAG_HAS_FLAGS != 0);
            }
        }
    }
}
