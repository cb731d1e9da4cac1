//! A leg on an NBD server: the wire format ([`proto`]), the URIs that name
//! such a leg ([`uri`]), one connection with several requests in flight
//! ([`client`]) and the [`NbdDevice`] that serves a leg's I/O over it (the
//! device seam, [`LegDevice`]).
//!
//! Durability: a write reply says the server has the data, not that it is
//! on stable storage. Only a flush reply (or a FUA write's) does, and only
//! when the server advertised `NBD_FLAG_SEND_FLUSH` (and `SEND_FUA`). A
//! server that advertises no flush makes its leg *volatile*
//! ([`NbdDevice::is_volatile`]): its flushes do nothing, and the array
//! says so.

pub mod client;
pub mod proto;
pub mod uri;

use std::time::Duration;

use parking_lot::Mutex;

use super::device::LegDevice;
use client::{Connection, NbdError, Ticket};
use proto::{BlockSizes, Export};
use uri::NbdUri;

/// The largest minimum block size a leg may have: the engine aligns the
/// I/O of direct-mode legs to 4 KiB.
pub const MAX_MIN_BLOCK: u32 = 4096;
/// Requests of one call in flight at once (a large read, write or zeroing
/// is cut in pieces of the server's maximum payload).
const QUEUE_DEPTH: usize = 64;

/// A leg's storage on an NBD server.
#[derive(Debug)]
pub struct NbdDevice {
    conn: Connection,
    size: u64,
    block: BlockSizes,
    max_request: u32,
    /// Held over the read-modify-write of a request not aligned to the
    /// server's minimum block (two such writes into one block must not
    /// interleave; an aligned write covering the block overlaps both and
    /// is ordered by the engine's range lock).
    rmw: Mutex<()>,
}

impl NbdDevice {
    /// Connects to `uri` and checks that the export can serve as a leg.
    pub fn open(uri: &NbdUri, writable: bool) -> Result<NbdDevice, NbdError> {
        let conn = Connection::open(uri)?;
        let e: Export = *conn.export();
        let unsuitable = |why: String| NbdError::Unsuitable {
            uri: uri.to_string(),
            why,
        };
        if writable && e.has(proto::TFLAG_READ_ONLY) {
            return Err(unsuitable(
                "the server exports it read-only; a leg must be writable".into(),
            ));
        }
        if e.block.min > MAX_MIN_BLOCK {
            return Err(unsuitable(format!(
                "the server's minimum block size is {} bytes; mdfuse aligns leg I/O to at most {MAX_MIN_BLOCK}",
                e.block.min
            )));
        }
        let size = e.size - e.size % u64::from(e.block.min);
        let max_request = e.block.max_request();
        if !e.can_flush() {
            log::warn!(
                "leg {uri}: the server advertises no flush (NBD_FLAG_SEND_FLUSH): the leg is \
                 volatile, its writes may be lost to a crash of the server's host even after an \
                 fsync of array.img"
            );
        }
        log::info!(
            "leg {uri}: NBD export of {size} bytes, block sizes {}/{}/{} (min/preferred/max{}), \
             flush {}, FUA {}, write-zeroes {}, request timeout {} s",
            e.block.min,
            e.block.preferred,
            e.block.max,
            if e.block_advertised {
                ""
            } else {
                ", not advertised: defaults"
            },
            yes(e.can_flush()),
            yes(e.has(proto::TFLAG_SEND_FUA)),
            yes(e.has(proto::TFLAG_SEND_WRITE_ZEROES)),
            uri.timeout().as_secs()
        );
        Ok(NbdDevice {
            conn,
            size,
            block: e.block,
            max_request,
            rmw: Mutex::new(()),
        })
    }

    /// The export's usable size (a multiple of its minimum block).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The server advertised no flush: nothing written is known durable.
    pub fn is_volatile(&self) -> bool {
        !self.conn.export().can_flush()
    }

    pub fn export(&self) -> &Export {
        self.conn.export()
    }

    pub fn uri(&self) -> &NbdUri {
        self.conn.uri()
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        self.conn.uri().timeout()
    }

    fn aligned(&self, v: u64) -> bool {
        v.is_multiple_of(u64::from(self.block.min))
    }

    /// `[offset, offset+len)` inside the export, or UnexpectedEof.
    fn check_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{} bytes at offset {offset} pass the export's end ({} bytes)",
                    len, self.size
                ),
            )),
        }
    }

    /// The aligned range covering `[offset, offset+len)` (inside the
    /// export when the range is: the size is a multiple of the block).
    fn widen(&self, offset: u64, len: u64) -> (u64, u64) {
        let b = u64::from(self.block.min);
        let start = offset - offset % b;
        let end = (offset + len).div_ceil(b) * b;
        (start, end - start)
    }

    /// `(offset, len)` pieces of at most the server's maximum payload.
    fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
        let step = u64::from(self.max_request);
        let n = len.div_ceil(step);
        (0..n).map(move |i| {
            let at = i * step;
            (offset + at, (len - at).min(step) as u32)
        })
    }

    /// Runs `submit` for each piece, at most [`QUEUE_DEPTH`] in flight;
    /// `done(i, data)` takes each reply's data in order.
    fn run_pieces(
        &self,
        offset: u64,
        len: u64,
        mut submit: impl FnMut(usize, u64, u32) -> Result<Ticket, NbdError>,
        mut done: impl FnMut(usize, Vec<u8>),
    ) -> std::io::Result<()> {
        let all: Vec<(u64, u32)> = self.pieces(offset, len).collect();
        for (batch_no, batch) in all.chunks(QUEUE_DEPTH).enumerate() {
            let mut tickets = Vec::with_capacity(batch.len());
            let mut failed = None;
            for (j, &(at, n)) in batch.iter().enumerate() {
                match submit(batch_no * QUEUE_DEPTH + j, at, n) {
                    Ok(t) => tickets.push(t),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            // Every request sent is waited for, even after a failure.
            let replies = self.conn.wait_all(tickets);
            if let Some(e) = failed {
                return Err(e.into());
            }
            for (j, d) in replies?.into_iter().enumerate() {
                done(batch_no * QUEUE_DEPTH + j, d);
            }
        }
        Ok(())
    }

    fn read_aligned(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let step = self.max_request as usize;
        self.run_pieces(
            offset,
            buf.len() as u64,
            |_, at, n| self.conn.submit(proto::CMD_READ, 0, at, n, None),
            |i, data| {
                let start = i * step;
                let dst = &mut buf[start..start + data.len()];
                dst.copy_from_slice(&data);
            },
        )
    }

    fn write_aligned(&self, buf: &[u8], offset: u64, flags: u16) -> std::io::Result<()> {
        let step = self.max_request as usize;
        self.run_pieces(
            offset,
            buf.len() as u64,
            |i, at, n| {
                let start = i * step;
                let payload = &buf[start..start + n as usize];
                self.conn
                    .submit(proto::CMD_WRITE, flags, at, n, Some(payload))
            },
            |_, _| {},
        )
    }

    fn write(&self, buf: &[u8], offset: u64, flags: u16) -> std::io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        if self.aligned(offset) && self.aligned(buf.len() as u64) {
            return self.write_aligned(buf, offset, flags);
        }
        let _held = self.rmw.lock();
        let (start, len) = self.widen(offset, buf.len() as u64);
        let mut whole = vec![0u8; len as usize];
        self.read_aligned(&mut whole, start)?;
        let at = (offset - start) as usize;
        whole[at..at + buf.len()].copy_from_slice(buf);
        self.write_aligned(&whole, start, flags)
    }

    fn flush_now(&self) -> std::io::Result<()> {
        let t = self.conn.submit(proto::CMD_FLUSH, 0, 0, 0, None)?;
        self.conn.wait(t)?;
        Ok(())
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl LegDevice for NbdDevice {
    fn is_volatile(&self) -> bool {
        NbdDevice::is_volatile(self)
    }

    fn link_status(&self) -> Option<crate::io::device::LinkStatus> {
        Some(self.conn.status())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        if self.aligned(offset) && self.aligned(buf.len() as u64) {
            return self.read_aligned(buf, offset);
        }
        let (start, len) = self.widen(offset, buf.len() as u64);
        let mut whole = vec![0u8; len as usize];
        self.read_aligned(&mut whole, start)?;
        let at = (offset - start) as usize;
        buf.copy_from_slice(&whole[at..at + buf.len()]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.write(buf, offset, 0)
    }

    fn write_all_at_durable(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let e = self.conn.export();
        if e.can_flush() && e.has(proto::TFLAG_SEND_FUA) {
            return self.write(buf, offset, proto::CMD_FLAG_FUA);
        }
        self.write(buf, offset, 0)?;
        // Without FUA, a flush; without flush, nothing can make it
        // durable (the leg is volatile, and says so).
        self.flush()
    }

    fn flush(&self) -> std::io::Result<()> {
        if self.conn.export().can_flush() {
            self.flush_now()
        } else {
            // A volatile leg: the server has no flush to give.
            match self.conn.dead() {
                Some(why) => Err(NbdError::Dead {
                    uri: self.conn.uri().to_string(),
                    why,
                }
                .into()),
                None => Ok(()),
            }
        }
    }

    fn zero_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.check_range(offset, len)?;
        let e = self.conn.export();
        if e.has(proto::TFLAG_SEND_WRITE_ZEROES) && self.aligned(offset) && self.aligned(len) {
            // NBD_CMD_WRITE_ZEROES: the server may punch holes (no
            // NBD_CMD_FLAG_NO_HOLE); it reads back as zeros either way.
            // (TRIM is not used: what a trimmed range reads is unspecified.)
            return self.run_pieces(
                offset,
                len,
                |_, at, n| self.conn.submit(proto::CMD_WRITE_ZEROES, 0, at, n, None),
                |_, _| {},
            );
        }
        let zeros = vec![0u8; (1usize << 20).min(len as usize)];
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(zeros.len() as u64) as usize;
            self.write(&zeros[..n], pos, 0)?;
            pos += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::proto::*;
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::Path;

    /// How the fake server behaves.
    #[derive(Clone, Copy)]
    struct Fake {
        flags: u16,
        block: Option<(u32, u32, u32)>,
        /// Answer the first four requests in reverse order of arrival.
        reorder: bool,
        /// Fail writes at this offset with NBD_ENOSPC.
        fail_at: Option<u64>,
        /// Never answer a flush.
        hang_flush: bool,
    }

    const SIZE: usize = 1 << 20;
    type Server = std::thread::JoinHandle<Vec<(u16, u16, u64, u32)>>;

    fn opt_reply(s: &mut UnixStream, kind: u32, data: &[u8]) {
        let mut v = OPT_REPLY_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&OPT_GO.to_be_bytes());
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        s.write_all(&v).unwrap();
    }

    /// Serves one client on `path`; returns the requests it saw.
    fn serve(path: &Path, f: Fake) -> Server {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut disk = vec![0u8; SIZE];
            let mut seen = Vec::new();
            let mut g = NBD_MAGIC.to_be_bytes().to_vec();
            g.extend_from_slice(&IHAVEOPT.to_be_bytes());
            g.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
            s.write_all(&g).unwrap();
            let mut b4 = [0u8; 4];
            s.read_exact(&mut b4).unwrap();
            let mut h = [0u8; 16];
            s.read_exact(&mut h).unwrap();
            let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data).unwrap();
            if let Some((a, b, c)) = f.block {
                let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                for w in [a, b, c] {
                    d.extend_from_slice(&w.to_be_bytes());
                }
                opt_reply(&mut s, REP_INFO, &d);
            }
            let mut d = INFO_EXPORT.to_be_bytes().to_vec();
            d.extend_from_slice(&(SIZE as u64).to_be_bytes());
            d.extend_from_slice(&(TFLAG_HAS_FLAGS | f.flags).to_be_bytes());
            opt_reply(&mut s, REP_INFO, &d);
            opt_reply(&mut s, REP_ACK, &[]);
            let mut held: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut rh = [0u8; REQUEST_LEN];
                if s.read_exact(&mut rh).is_err() {
                    return seen;
                }
                let r = Request::decode(&rh).unwrap();
                seen.push((r.kind, r.flags, r.offset, r.len));
                let (o, n) = (r.offset as usize, r.len as usize);
                let mut out = SimpleReply {
                    error: 0,
                    cookie: r.cookie,
                }
                .encode()
                .to_vec();
                match r.kind {
                    CMD_DISC => return seen,
                    CMD_READ => out.extend_from_slice(&disk[o..o + n]),
                    CMD_WRITE => {
                        s.read_exact(&mut disk[o..o + n]).unwrap();
                        if f.fail_at == Some(r.offset) {
                            out[4..8].copy_from_slice(&28u32.to_be_bytes());
                        }
                    }
                    CMD_WRITE_ZEROES => disk[o..o + n].fill(0),
                    CMD_FLUSH if f.hang_flush => continue,
                    _ => {}
                }
                if f.reorder && seen.len() <= 4 {
                    held.push(out);
                    if held.len() == 4 {
                        for o in held.drain(..).rev() {
                            s.write_all(&o).unwrap();
                        }
                    }
                } else {
                    s.write_all(&out).unwrap();
                }
            }
        })
    }

    fn setup(f: Fake, query: &str) -> (tempfile::TempDir, NbdDevice, Server) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let server = serve(&sock, f);
        let uri =
            NbdUri::parse(&format!("nbd+unix:///e?socket={}{query}", sock.display())).unwrap();
        let dev = NbdDevice::open(&uri, true).unwrap();
        (dir, dev, server)
    }

    const PLAIN: Fake = Fake {
        flags: TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_SEND_WRITE_ZEROES,
        block: Some((512, 4096, 64 * 1024)),
        reorder: false,
        fail_at: None,
        hang_flush: false,
    };

    #[test]
    fn io_round_trips_in_pieces_in_flight_together_and_out_of_order() {
        let (_d, dev, server) = setup(
            Fake {
                reorder: true,
                ..PLAIN
            },
            "",
        );
        assert_eq!(dev.size(), SIZE as u64);
        assert!(!dev.is_volatile());
        // 256 KiB in 64 KiB pieces: four writes in flight, answered two by
        // two in reverse.
        let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        dev.write_all_at(&data, 4096).unwrap();
        let mut back = vec![0u8; data.len()];
        dev.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(back, data);
        // Unaligned: read-modify-write of the covering blocks.
        dev.write_all_at(b"hello", 10).unwrap();
        let mut b = [0u8; 7];
        dev.read_exact_at(&mut b, 9).unwrap();
        assert_eq!(&b, b"\0hello\0");
        dev.write_all_at_durable(&[1; 512], 0).unwrap();
        dev.zero_range(4096, 8192).unwrap();
        dev.flush().unwrap();
        assert!(dev.read_exact_at(&mut b, SIZE as u64 - 3).is_err());
        assert!(dev.write_all_at(&b, u64::MAX - 2).is_err());
        drop(dev);
        let seen = server.join().unwrap();
        let kinds: Vec<u16> = seen.iter().map(|s| s.0).collect();
        assert_eq!(kinds.iter().filter(|&&k| k == CMD_WRITE).count(), 4 + 1 + 1);
        assert!(seen
            .iter()
            .all(|s| s.3 <= 64 * 1024 && s.2 % 512 == 0 && s.3 % 512 == 0));
        assert!(seen.contains(&(CMD_WRITE, CMD_FLAG_FUA, 0, 512)));
        assert!(seen.contains(&(CMD_WRITE_ZEROES, 0, 4096, 8192)));
        assert!(kinds.contains(&CMD_FLUSH));
        assert_eq!(kinds.last(), Some(&CMD_DISC));
    }

    #[test]
    fn without_flush_the_leg_is_volatile_and_sends_no_flush_or_fua() {
        let (_d, dev, server) = setup(
            Fake {
                flags: 0,
                block: None,
                ..PLAIN
            },
            "",
        );
        assert!(dev.is_volatile());
        dev.write_all_at_durable(&[3; 4096], 0).unwrap();
        dev.flush().unwrap();
        dev.zero_range(0, 4096).unwrap();
        drop(dev);
        let seen = server.join().unwrap();
        assert!(seen
            .iter()
            .all(|s| s.0 != CMD_FLUSH && s.0 != CMD_WRITE_ZEROES && s.1 == 0));
        // Without advertised sizes: 512-byte alignment, 32 MiB pieces.
        assert!(seen.iter().all(|s| s.2 % 512 == 0));
    }

    #[test]
    fn a_server_error_is_its_errno_and_a_timeout_kills_the_connection() {
        let (_d, dev, _server) = setup(
            Fake {
                fail_at: Some(8192),
                hang_flush: true,
                ..PLAIN
            },
            "&x-timeout=1",
        );
        let e = dev.write_all_at(&[1; 4096], 8192).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        dev.write_all_at(&[1; 4096], 0).unwrap();
        let t = std::time::Instant::now();
        let e = dev.flush().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("no reply within 1 s"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        // Dead from now on, at once.
        let e = dev.write_all_at(&[1; 4096], 0).unwrap_err();
        assert!(e.to_string().contains("connection lost"), "{e}");
    }

    #[test]
    fn a_read_only_export_or_a_huge_minimum_block_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let _s = serve(
            &sock,
            Fake {
                flags: TFLAG_READ_ONLY,
                ..PLAIN
            },
        );
        let uri = NbdUri::parse(&format!("nbd+unix:///e?socket={}", sock.display())).unwrap();
        let e = NbdDevice::open(&uri, true).unwrap_err();
        assert!(e.to_string().contains("read-only"), "{e}");
        let sock = dir.path().join("t");
        let _t = serve(
            &sock,
            Fake {
                block: Some((65536, 65536, 1 << 20)),
                ..PLAIN
            },
        );
        let uri = NbdUri::parse(&format!("nbd+unix:///e?socket={}", sock.display())).unwrap();
        let e = NbdDevice::open(&uri, true).unwrap_err();
        assert!(e.to_string().contains("minimum block size is 65536"), "{e}");
    }
}
