//! md's write-intent bitmap FILE format (`bitmap_super_t` + bit array).
//!
//! A bitmap file is a 256-byte little-endian header followed by one bit per
//! chunk of the array, starting at file byte 256, in little-endian bit order
//! (chunk `i` is bit `i % 8` of byte `256 + i / 8`, md's `set_bit_le`).
//! mdadm makes the file exactly `256 + ceil(chunks / 8)` bytes long.
//! md reads and writes the file in 4096-byte pages; page 0 holds the header
//! and the first `(4096 - 256) * 8` chunks.

use thiserror::Error;

/// "bitm" read as a little-endian u32.
pub const BITMAP_MAGIC: u32 = 0x6d74_6962;
/// Oldest version md accepts (bits in host order; identical to 4 on little-endian hosts).
pub const BITMAP_MAJOR_LO: u32 = 3;
/// The version mdadm writes for non-clustered arrays.
pub const BITMAP_MAJOR_HI: u32 = 4;
/// Clustered md bitmaps (one bitmap per node); md accepts it, we parse it.
pub const BITMAP_MAJOR_CLUSTERED: u32 = 5;

/// Size of the on-disk header, and the file offset of the first bit.
pub const BITMAP_SUPER_SIZE: usize = 256;
/// md's page unit for reading and writing the file.
pub const BITMAP_PAGE_SIZE: usize = 4096;
/// Bits held by one file page.
pub const BITS_PER_PAGE: u64 = (BITMAP_PAGE_SIZE * 8) as u64;

/// `state` bit: the bitmap is older than the array (md: BITMAP_STALE).
pub const BITMAP_STATE_STALE: u32 = 1 << 1;
/// `state` bit: a bitmap write failed (md: BITMAP_WRITE_ERROR).
pub const BITMAP_STATE_WRITE_ERROR: u32 = 1 << 2;
/// `state` bit: bits are host-endian (md: BITMAP_HOSTENDIAN).
pub const BITMAP_STATE_HOSTENDIAN: u32 = 1 << 15;

/// md's limit on `write_behind` (COUNTER_MAX of its 14-bit counters).
pub const WRITE_BEHIND_MAX: u32 = 16383;

/// mdadm's DEFAULT_BITMAP_CHUNK (4 KiB) used by CreateBitmap when no chunk is given.
pub const MDADM_DEFAULT_BITMAP_CHUNK: u32 = 4096;
/// Our floor for a default chunk: see [`default_chunk_size`].
pub const MIN_DEFAULT_CHUNK: u32 = 1024 * 1024;

#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum BitmapFormatError {
    #[error(
        "bitmap header too short: {len} bytes, need {BITMAP_SUPER_SIZE}; not an md bitmap file"
    )]
    TooShort { len: usize },
    #[error(
        "bitmap magic is {found:#010x}, not {BITMAP_MAGIC:#010x} (\"bitm\"): not an md bitmap file"
    )]
    BadMagic { found: u32 },
    #[error("bitmap version is {found}; md accepts {BITMAP_MAJOR_LO} to {BITMAP_MAJOR_CLUSTERED}")]
    BadVersion { found: u32 },
    #[error("bitmap chunksize is {chunksize}; md needs a power of two of at least 512 bytes")]
    BadChunkSize { chunksize: u32 },
    #[error("bitmap daemon_sleep is {daemon_sleep} s; md needs at least 1")]
    BadDaemonSleep { daemon_sleep: u32 },
    #[error("bitmap write_behind is {write_behind}; md allows 0 to {WRITE_BEHIND_MAX}")]
    BadWriteBehind { write_behind: u32 },
}

impl BitmapFormatError {
    /// The header field at fault (md's name).
    pub fn field(&self) -> &'static str {
        match self {
            BitmapFormatError::TooShort { .. } => "header",
            BitmapFormatError::BadMagic { .. } => "magic",
            BitmapFormatError::BadVersion { .. } => "version",
            BitmapFormatError::BadChunkSize { .. } => "chunksize",
            BitmapFormatError::BadDaemonSleep { .. } => "daemon_sleep",
            BitmapFormatError::BadWriteBehind { .. } => "write_behind",
        }
    }
}

/// md's `bitmap_super_t`, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapSuper {
    pub magic: u32,
    pub version: u32,
    pub uuid: [u8; 16],
    pub events: u64,
    pub events_cleared: u64,
    /// Size of the array in 512-byte sectors.
    pub sync_size: u64,
    pub state: u32,
    /// Bytes per bit; a power of two >= 512.
    pub chunksize: u32,
    /// Seconds between daemon passes.
    pub daemon_sleep: u32,
    pub write_behind: u32,
    pub sectors_reserved: u32,
    pub nodes: u32,
    pub cluster_name: [u8; 64],
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn valid_chunksize(c: u32) -> bool {
    c >= 512 && c.is_power_of_two()
}

impl BitmapSuper {
    /// The header `mdadm --create --bitmap=FILE` would produce for this array,
    /// in the state md reaches once it has loaded it.
    ///
    /// mdadm's CreateBitmap writes events = events_cleared = 0, state 0 and
    /// every bit SET; the kernel then finds the bitmap older than the array
    /// (BITMAP_STALE), sets events_cleared to the array's events and, the array
    /// being in sync (--assume-clean), clears the bits. We write that settled
    /// state directly (zero bits, events = events_cleared = the array's
    /// events), so md sees an up-to-date, clean bitmap. Passing `events = 0`
    /// gives mdadm's header byte for byte.
    pub fn new_for_array(
        uuid: [u8; 16],
        sync_size_sectors: u64,
        chunksize: u32,
        daemon_sleep: u32,
        events: u64,
    ) -> Self {
        BitmapSuper {
            magic: BITMAP_MAGIC,
            version: BITMAP_MAJOR_HI,
            uuid,
            events,
            events_cleared: events,
            sync_size: sync_size_sectors,
            state: 0,
            chunksize,
            daemon_sleep,
            write_behind: 0,
            sectors_reserved: 0,
            nodes: 0,
            cluster_name: [0; 64],
        }
    }

    /// Decodes and checks a header the way md's md_bitmap_read_sb does.
    pub fn parse(bytes: &[u8]) -> Result<Self, BitmapFormatError> {
        if bytes.len() < BITMAP_SUPER_SIZE {
            return Err(BitmapFormatError::TooShort { len: bytes.len() });
        }
        let b = &bytes[..BITMAP_SUPER_SIZE];
        let magic = le32(b, 0);
        if magic != BITMAP_MAGIC {
            return Err(BitmapFormatError::BadMagic { found: magic });
        }
        let version = le32(b, 4);
        if !(BITMAP_MAJOR_LO..=BITMAP_MAJOR_CLUSTERED).contains(&version) {
            return Err(BitmapFormatError::BadVersion { found: version });
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[8..24]);
        let mut cluster_name = [0u8; 64];
        cluster_name.copy_from_slice(&b[72..136]);
        let sb = BitmapSuper {
            magic,
            version,
            uuid,
            events: le64(b, 24),
            events_cleared: le64(b, 32),
            sync_size: le64(b, 40),
            state: le32(b, 48),
            chunksize: le32(b, 52),
            daemon_sleep: le32(b, 56),
            write_behind: le32(b, 60),
            sectors_reserved: le32(b, 64),
            nodes: le32(b, 68),
            cluster_name,
        };
        if !valid_chunksize(sb.chunksize) {
            return Err(BitmapFormatError::BadChunkSize {
                chunksize: sb.chunksize,
            });
        }
        if sb.daemon_sleep == 0 {
            return Err(BitmapFormatError::BadDaemonSleep {
                daemon_sleep: sb.daemon_sleep,
            });
        }
        if sb.write_behind > WRITE_BEHIND_MAX {
            return Err(BitmapFormatError::BadWriteBehind {
                write_behind: sb.write_behind,
            });
        }
        Ok(sb)
    }

    /// Encodes the 256-byte on-disk header.
    pub fn to_bytes(&self) -> [u8; BITMAP_SUPER_SIZE] {
        let mut b = [0u8; BITMAP_SUPER_SIZE];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..24].copy_from_slice(&self.uuid);
        b[24..32].copy_from_slice(&self.events.to_le_bytes());
        b[32..40].copy_from_slice(&self.events_cleared.to_le_bytes());
        b[40..48].copy_from_slice(&self.sync_size.to_le_bytes());
        b[48..52].copy_from_slice(&self.state.to_le_bytes());
        b[52..56].copy_from_slice(&self.chunksize.to_le_bytes());
        b[56..60].copy_from_slice(&self.daemon_sleep.to_le_bytes());
        b[60..64].copy_from_slice(&self.write_behind.to_le_bytes());
        b[64..68].copy_from_slice(&self.sectors_reserved.to_le_bytes());
        b[68..72].copy_from_slice(&self.nodes.to_le_bytes());
        b[72..136].copy_from_slice(&self.cluster_name);
        b
    }

    /// Number of chunks (bits) this header describes.
    pub fn chunks(&self) -> u64 {
        chunk_count(self.sync_size, self.chunksize)
    }

    /// Exact file length mdadm gives this bitmap.
    pub fn file_len(&self) -> u64 {
        file_len(self.chunks())
    }

    /// Number of 4096-byte file pages.
    pub fn file_pages(&self) -> usize {
        page_count(self.file_len())
    }
}

/// Chunks needed to cover `sync_size_sectors` (the last one may be partial).
pub fn chunk_count(sync_size_sectors: u64, chunksize: u32) -> u64 {
    if chunksize == 0 {
        return 0;
    }
    let sectors_per_chunk = (chunksize as u64 / 512).max(1);
    sync_size_sectors.div_ceil(sectors_per_chunk)
}

/// File length for `chunks` bits: header plus whole bytes of bits.
pub fn file_len(chunks: u64) -> u64 {
    BITMAP_SUPER_SIZE as u64 + chunks.div_ceil(8)
}

/// Pages of a file of `file_len` bytes.
pub fn page_count(file_len: u64) -> usize {
    file_len.div_ceil(BITMAP_PAGE_SIZE as u64) as usize
}

/// Bytes of page `page` within a file of `file_len` bytes (the last page is short).
pub fn page_len(file_len: u64, page: usize) -> usize {
    let start = page as u64 * BITMAP_PAGE_SIZE as u64;
    file_len.saturating_sub(start).min(BITMAP_PAGE_SIZE as u64) as usize
}

/// Where chunk `chunk`'s bit lives: (file page, bit index within that page).
pub fn chunk_to_page_and_bit(chunk: u64) -> (usize, usize) {
    let file_bit = BITMAP_SUPER_SIZE as u64 * 8 + chunk;
    (
        (file_bit / BITS_PER_PAGE) as usize,
        (file_bit % BITS_PER_PAGE) as usize,
    )
}

/// Chunks whose bits live in file page `page`, given `chunks` in total.
pub fn page_chunk_range(page: usize, chunks: u64) -> std::ops::Range<u64> {
    let header_bits = BITMAP_SUPER_SIZE as u64 * 8;
    let first_bit = page as u64 * BITS_PER_PAGE;
    let start = first_bit.saturating_sub(header_bits).min(chunks);
    let end = (first_bit + BITS_PER_PAGE - header_bits).min(chunks);
    start..end.max(start)
}

/// Tests bit `bit` (little-endian bit order) of `bits`; out of range reads as clear.
pub fn test_bit(bits: &[u8], bit: u64) -> bool {
    bits.get((bit / 8) as usize)
        .is_some_and(|b| b & (1 << (bit % 8)) != 0)
}

/// Sets bit `bit`; returns whether it was already set. Out of range is ignored (false).
pub fn set_bit(bits: &mut [u8], bit: u64) -> bool {
    match bits.get_mut((bit / 8) as usize) {
        Some(b) => {
            let mask = 1 << (bit % 8);
            let was = *b & mask != 0;
            *b |= mask;
            was
        }
        None => false,
    }
}

/// Clears bit `bit`; returns whether it was set.
pub fn clear_bit(bits: &mut [u8], bit: u64) -> bool {
    match bits.get_mut((bit / 8) as usize) {
        Some(b) => {
            let mask = 1 << (bit % 8);
            let was = *b & mask != 0;
            *b &= !mask;
            was
        }
        None => false,
    }
}

/// Set bits among the first `chunks` bits of `bits` (the bytes after the header).
/// Bits missing because `bits` is short count as clean here; mdadm -X warns instead.
pub fn count_dirty(bits: &[u8], chunks: u64) -> u64 {
    let whole = ((chunks / 8) as usize).min(bits.len());
    let mut n: u64 = bits[..whole].iter().map(|b| b.count_ones() as u64).sum();
    let rest = chunks % 8;
    if rest != 0 {
        if let Some(b) = bits.get(whole) {
            n += (b & ((1u16 << rest) - 1) as u8).count_ones() as u64;
        }
    }
    n
}

/// Indices of the set bits among the first `chunks` bits.
pub fn dirty_chunks(bits: &[u8], chunks: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for (i, &b) in bits.iter().enumerate() {
        if b == 0 {
            continue;
        }
        for j in 0..8u64 {
            let c = i as u64 * 8 + j;
            if c >= chunks {
                return out;
            }
            if b & (1 << j) != 0 {
                out.push(c);
            }
        }
    }
    out
}

/// Chunk size for a bitmap FILE created without an explicit chunk.
///
/// mdadm's CreateBitmap starts at DEFAULT_BITMAP_CHUNK (4 KiB) and doubles
/// until the array has at most 2^20 chunks. The first write to a clean chunk
/// waits for a synchronous bitmap flush, so small chunks make every burst of
/// scattered writes after an idle spell slow: measured on 1 GiB, 4 KiB random
/// writes at QD16 lost 17% in the 8 s after the bits cleared with 64 KiB
/// chunks, and nothing with 1 MiB. So we start at 1 MiB (LVM's raid1 uses
/// 2 MiB regions, md's internal bitmaps 64 MiB) and then apply mdadm's
/// doubling rule: max(1 MiB, mdadm's rule).
pub fn default_chunk_size(array_bytes: u64) -> u32 {
    let array_sectors = array_bytes.div_ceil(512);
    let mut chunk = MIN_DEFAULT_CHUNK.max(MDADM_DEFAULT_BITMAP_CHUNK) as u64;
    // <<20 for 2^20 chunks, >>9 bytes to sectors.
    while array_sectors > chunk << (20 - 9) && chunk < (1 << 31) {
        chunk <<= 1;
    }
    chunk as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> BitmapSuper {
        let mut sb = BitmapSuper::new_for_array([7; 16], 63488, 65536, 5, 2);
        sb.events_cleared = 1;
        sb
    }

    #[test]
    fn fixture_header_layout() {
        // Bytes 0..0x40 of fixture a-clean's md0.bitmap (MANIFEST xxd).
        let mut b = [0u8; 256];
        let head: [u8; 64] = [
            0x62, 0x69, 0x74, 0x6d, 0x04, 0, 0, 0, 0xf7, 0x74, 0xb9, 0xb4, 0x92, 0x94, 0x33, 0x91,
            0x34, 0x99, 0x95, 0x82, 0x0b, 0x47, 0xed, 0xc5, 0x02, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0,
            0, 0, 0, 0, 0, 0x00, 0xf8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0x05, 0, 0, 0,
            0, 0, 0, 0,
        ];
        b[..64].copy_from_slice(&head);
        let sb = BitmapSuper::parse(&b).unwrap();
        assert_eq!(sb.events, 2);
        assert_eq!(sb.events_cleared, 1);
        assert_eq!(sb.sync_size, 63488);
        assert_eq!(sb.chunksize, 65536);
        assert_eq!(sb.daemon_sleep, 5);
        assert_eq!(sb.chunks(), 496);
        assert_eq!(sb.file_len(), 318);
        assert_eq!(sb.to_bytes(), b);
    }

    #[test]
    fn typed_errors() {
        let good = sample().to_bytes();
        assert_eq!(
            BitmapSuper::parse(&good[..100]),
            Err(BitmapFormatError::TooShort { len: 100 })
        );
        let mut b = good;
        b[0] = 0;
        assert!(matches!(
            BitmapSuper::parse(&b),
            Err(BitmapFormatError::BadMagic { .. })
        ));
        for (v, ok) in [(2, false), (3, true), (4, true), (5, true), (6, false)] {
            let mut s = sample();
            s.version = v;
            assert_eq!(BitmapSuper::parse(&s.to_bytes()).is_ok(), ok, "version {v}");
        }
        for (c, ok) in [
            (0, false),
            (256, false),
            (512, true),
            (65536, true),
            (65537, false),
        ] {
            let mut s = sample();
            s.chunksize = c;
            assert_eq!(BitmapSuper::parse(&s.to_bytes()).is_ok(), ok, "chunk {c}");
        }
        let mut s = sample();
        s.daemon_sleep = 0;
        assert!(BitmapSuper::parse(&s.to_bytes()).is_err());
        let mut s = sample();
        s.write_behind = WRITE_BEHIND_MAX + 1;
        assert!(BitmapSuper::parse(&s.to_bytes()).is_err());
    }

    #[test]
    fn every_refusal_names_its_field() {
        let mut cases: Vec<[u8; BITMAP_SUPER_SIZE]> = Vec::new();
        let mut b = sample().to_bytes();
        b[0] ^= 1;
        cases.push(b);
        for edit in [
            (|s: &mut BitmapSuper| s.version = 9) as fn(&mut BitmapSuper),
            |s| s.chunksize = 0,
            |s| s.chunksize = 3 << 20,
            |s| s.daemon_sleep = 0,
            |s| s.write_behind = u32::MAX,
        ] {
            let mut s = sample();
            edit(&mut s);
            cases.push(s.to_bytes());
        }
        for b in cases {
            let err = BitmapSuper::parse(&b).unwrap_err();
            assert!(err.to_string().contains(err.field()), "{err}");
        }
        let err = BitmapSuper::parse(&[0; 10]).unwrap_err();
        assert_eq!(err.field(), "header");
    }

    #[test]
    fn geometry_edges() {
        assert_eq!(chunk_count(0, 65536), 0);
        assert_eq!(chunk_count(1, 65536), 1);
        assert_eq!(chunk_count(128, 65536), 1);
        assert_eq!(chunk_count(129, 65536), 2);
        assert_eq!(chunk_count(63488, 65536), 496);
        assert_eq!(file_len(0), 256);
        assert_eq!(file_len(1), 257);
        assert_eq!(file_len(496), 318);
        assert_eq!(chunk_to_page_and_bit(0), (0, 2048));
        assert_eq!(chunk_to_page_and_bit(30719), (0, 32767));
        assert_eq!(chunk_to_page_and_bit(30720), (1, 0));
        assert_eq!(page_chunk_range(0, 496), 0..496);
        assert_eq!(page_chunk_range(0, 100_000), 0..30720);
        assert_eq!(page_chunk_range(1, 100_000), 30720..63488);
        assert_eq!(page_len(318, 0), 318);
        assert_eq!(page_len(5000, 1), 904);
        assert_eq!(page_count(4096), 1);
        assert_eq!(page_count(4097), 2);
    }

    #[test]
    fn default_chunk_rule() {
        assert_eq!(default_chunk_size(32 << 20), 1 << 20);
        // 1 MiB * 2^20 = 1 TiB is the largest array at 1 MiB.
        assert_eq!(default_chunk_size(1 << 40), 1 << 20);
        assert_eq!(default_chunk_size((1 << 40) + 512), 2 << 20);
        assert_eq!(default_chunk_size(4 << 40), 4 << 20);
    }

    fn any_super() -> impl Strategy<Value = BitmapSuper> {
        (
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            9u32..31,
            1u32..100_000,
            0u32..=WRITE_BEHIND_MAX,
            any::<u32>(),
            (
                any::<u32>(),
                3u32..=5,
                proptest::collection::vec(any::<u8>(), 64),
            ),
        )
            .prop_map(
                |(uuid, ev, evc, sync, state, shift, ds, wb, sr, (nodes, v, name))| {
                    let mut cluster_name = [0u8; 64];
                    cluster_name.copy_from_slice(&name);
                    BitmapSuper {
                        magic: BITMAP_MAGIC,
                        version: v,
                        uuid,
                        events: ev,
                        events_cleared: evc,
                        sync_size: sync,
                        state,
                        chunksize: 1 << shift,
                        daemon_sleep: ds,
                        write_behind: wb,
                        sectors_reserved: sr,
                        nodes,
                        cluster_name,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn roundtrip(sb in any_super()) {
            prop_assert_eq!(BitmapSuper::parse(&sb.to_bytes()).unwrap(), sb);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = BitmapSuper::parse(&bytes);
        }

        #[test]
        fn bits_agree_with_naive_model(
            nbits in 0u64..200,
            ops in proptest::collection::vec((any::<bool>(), 0u64..220), 0..100),
        ) {
            let mut bytes = vec![0u8; nbits.div_ceil(8) as usize];
            let mut model = vec![false; bytes.len() * 8];
            for (set, bit) in ops {
                let in_range = (bit as usize) < model.len();
                let was = if set { set_bit(&mut bytes, bit) } else { clear_bit(&mut bytes, bit) };
                if in_range {
                    prop_assert_eq!(was, model[bit as usize]);
                    model[bit as usize] = set;
                } else {
                    prop_assert!(!was);
                }
                for (i, &m) in model.iter().enumerate() {
                    prop_assert_eq!(test_bit(&bytes, i as u64), m);
                }
            }
            let want: Vec<u64> = (0..nbits).filter(|&i| model[i as usize]).collect();
            prop_assert_eq!(count_dirty(&bytes, nbits), want.len() as u64);
            prop_assert_eq!(dirty_chunks(&bytes, nbits), want);
        }

        #[test]
        fn chunk_count_covers_exactly(sync in 0u64..1 << 40, shift in 9u32..27) {
            let chunk = 1u32 << shift;
            let n = chunk_count(sync, chunk);
            let spc = (chunk / 512) as u64;
            prop_assert!(n * spc >= sync);
            prop_assert!(n == 0 || (n - 1) * spc < sync);
            prop_assert_eq!(file_len(n), 256 + n.div_ceil(8));
        }

        #[test]
        fn page_mapping_consistent(chunk in 0u64..1 << 24) {
            let (page, bit) = chunk_to_page_and_bit(chunk);
            prop_assert!(page_chunk_range(page, chunk + 1).contains(&chunk));
            prop_assert_eq!(page as u64 * BITS_PER_PAGE + bit as u64, 2048 + chunk);
        }
    }
}
