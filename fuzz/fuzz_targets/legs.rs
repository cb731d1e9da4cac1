//! Superblock and bitmap-header parsing plus assembly's decisions over
//! crafted legs, with no I/O: the bytes become up to four legs (their sizes
//! and superblock blocks) and a bitmap file; assembly's `plan` decides as
//! `mdfuse mount` would. Nothing may panic, and whatever assembly accepts
//! must be safe for the running array (slots inside raid_disks, at most 64,
//! every member's data and the array inside its leg, events that cannot
//! wrap).
//!
//! Input: byte 0 holds flags (legs 1..=4 in bits 0-1, --run in bit 2,
//! keep the checksum as given in bit 3, raw blocks in bit 4); then per leg
//! 8 bytes of leg size and either (raw) a u16 length and that many block
//! bytes, or (patched, the default) a valid member's block with a u8 count
//! of patches, each a u16 offset, a u8 width (1, 2, 4, 8) and 8 value bytes;
//! the rest is the bitmap file.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mdfuse::array::assemble::{plan, Candidate, MAX_RAID_DISKS};
use mdfuse::array::AssembleOptions;
use mdfuse::format::bitmap::{page_chunk_range, BitmapSuper, BITMAP_SUPER_SIZE};
use mdfuse::format::superblock::{
    checksum_of, DevRole, MdTime, NewMember, Superblock, EVENTS_LIMIT, SB_BLOCK_BYTES,
};
use mdfuse::io::leg::IoMode;
use mdfuse::report::examine::render_examine;
use mdfuse::report::examine_bitmap::render_examine_bitmap;
use std::path::PathBuf;
use std::sync::OnceLock;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_le_bytes([
            b.first().copied().unwrap_or(0),
            b.get(1).copied().unwrap_or(0),
        ])
    }
    fn u64(&mut self) -> u64 {
        let mut a = [0u8; 8];
        let b = self.take(8);
        a[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(a)
    }
}

const LEG_SECTORS: u64 = 1 << 16;

/// A valid member's block, made once per (dev_number, legs).
fn template(dev_number: u32, legs: u32) -> Vec<u8> {
    static TEMPLATES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let all = TEMPLATES.get_or_init(|| {
        (1..=4u32)
            .flat_map(|legs| (0..4u32).map(move |dev| make_template(dev, legs)))
            .collect()
    });
    all[((legs - 1) * 4 + dev_number) as usize].clone()
}

fn make_template(dev_number: u32, legs: u32) -> Vec<u8> {
    let mut sb = Superblock::new_raid1_member(&NewMember {
        set_uuid: [0x5a; 16],
        name: "fuzz:legs",
        raid_disks: legs.max(dev_number + 1).max(2),
        dev_number,
        device_uuid: [dev_number as u8; 16],
        device_sectors: LEG_SECTORS,
        array_sectors: LEG_SECTORS - 2048,
        data_offset: None,
        ctime: MdTime(0),
    })
    .expect("a valid template");
    sb.events = 7;
    sb.to_bytes()
}

fn leg(input: &mut Input, i: u32, legs: u32, flags: u8) -> (u64, Vec<u8>) {
    let raw_size = input.u64();
    // Mostly near the template's leg size; sometimes anything.
    let size = match raw_size & 3 {
        0 => raw_size,
        _ => LEG_SECTORS * 512 + ((raw_size >> 2) % (1 << 20)) - (1 << 19),
    };
    let mut block = if flags & 16 != 0 {
        let n = usize::from(input.u16()).min(SB_BLOCK_BYTES);
        let mut b = input.take(n).to_vec();
        b.resize(SB_BLOCK_BYTES, 0);
        b
    } else {
        let mut b = template(i, legs);
        for _ in 0..input.u8() % 8 {
            let at = usize::from(input.u16()) % SB_BLOCK_BYTES;
            let width = [1usize, 2, 4, 8][usize::from(input.u8() % 4)];
            let value = input.u64().to_le_bytes();
            let end = (at + width).min(SB_BLOCK_BYTES);
            b[at..end].copy_from_slice(&value[..end - at]);
        }
        b
    };
    if flags & 8 == 0 {
        if let Some(c) = checksum_of(&block) {
            block[216..220].copy_from_slice(&c.to_le_bytes());
        }
    }
    (size, block)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = input.u8();
    let legs = u32::from(flags & 3) + 1;
    let mut candidates = Vec::new();
    for i in 0..legs {
        let (size, block) = leg(&mut input, i, legs, flags);
        if let Ok(parsed) = Superblock::parse_unverified(&block) {
            let _ = render_examine("leg", &parsed, size / 512, Some("fuzz"));
        }
        let sb = Superblock::parse(&block);
        if let Ok(sb) = &sb {
            if sb.validate_on_leg(size, MAX_RAID_DISKS).is_ok() {
                let end = sb.data_offset.checked_add(sb.data_size).expect("no wrap");
                assert!(end.checked_mul(512).expect("bytes fit") <= size);
                assert!(sb.size >= 1 && sb.size <= sb.data_size);
                assert!(sb.data_clear_of_superblock());
                assert!(sb.version_on(size / 512).is_some());
            }
        }
        candidates.push(Candidate {
            path: PathBuf::from(format!("leg{i}")),
            size,
            sb,
            handle: (),
        });
    }
    let sizes: Vec<u64> = candidates.iter().map(|c| c.size).collect();
    let opts = AssembleOptions {
        io_mode: IoMode::Direct,
        read_only: false,
        run_degraded: flags & 4 != 0,
        force_from: None,
    };
    let planned = plan(candidates, &opts);
    if let Ok(p) = &planned {
        assert!(p.raid_disks >= 1 && p.raid_disks <= MAX_RAID_DISKS);
        assert!(p.array_sectors >= 1 && p.events <= EVENTS_LIMIT);
        assert!(!p.members.is_empty());
        let mut seen = 0u64;
        for m in &p.members {
            assert!(u32::from(m.slot) < p.raid_disks);
            assert!(seen & (1 << m.slot) == 0, "two members in one slot");
            seen |= 1 << m.slot;
            assert!(matches!(m.sb.own_role(), DevRole::Active(s) if s == m.slot));
            assert!(p.events - m.sb.events <= 1);
            let i: usize = m.path.to_string_lossy()[3..].parse().expect("leg index");
            let end =
                m.sb.data_offset
                    .checked_add(p.array_sectors)
                    .and_then(|s| s.checked_mul(512))
                    .expect("no wrap");
            assert!(end <= sizes[i]);
            assert!(m.sb.version_on(sizes[i] / 512).is_some());
            assert!(m.sb.data_clear_of_superblock());
        }
    } else if let Err(e) = &planned {
        let _ = e.to_string();
    }
    // The rest is a bitmap file.
    let file = input.0;
    if let Ok(sb) = BitmapSuper::parse(file) {
        let chunks = sb.chunks();
        let _ = (sb.file_len(), sb.file_pages());
        let bits = &file[BITMAP_SUPER_SIZE..];
        for page in 0..3 {
            let r = page_chunk_range(page, chunks);
            assert!(r.start <= r.end && r.end <= chunks);
        }
        let _ = mdfuse::format::bitmap::count_dirty(bits, chunks);
        let _ = mdfuse::format::bitmap::dirty_chunks(bits, chunks);
        let _ = render_examine_bitmap("bitmap", &sb, bits);
        if let Ok(p) = &planned {
            let _ = sb.sync_size == p.array_sectors && sb.uuid == p.set_uuid;
        }
    }
});
