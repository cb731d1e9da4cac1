//! `mdfuse create`: md v1.x superblocks on every leg (metadata 1.2 by
//! default, or 1.0 or 1.1), as `mdadm --create --metadata=1.x --level=1`
//! writes them, and optionally the write-intent bitmap file.
//!
//! Order: every check first; then the bitmap file is written and synced
//! beside its final name; then the legs; then the bitmap is renamed into
//! place. A create that fails before the legs are written changes nothing.

use super::error::ArrayError;
use super::superblocks::{now_md_time, read_superblock_block, write_superblock};
use crate::bitmap::stage_bitmap_file;
use crate::format::bitmap::{default_chunk_size, BitmapSuper};
use crate::format::signatures;
use crate::format::superblock::{
    mdadm_default_data_offset_for, mdadm_internal_bitmap_chunk, mdadm_raid1_array_sectors_for,
    MetadataVersion, NewMember, Superblock,
};
use crate::io::aligned::AlignedBuf;
use crate::io::leg::{IoMode, Leg};
use crate::report::uuid_string;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Most legs one array may have (a read-balance bitmask holds them).
pub const MAX_LEGS: usize = 32;

#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The array's name, stored in the superblocks (md's set_name).
    pub name: String,
    /// Array size in bytes; default: all the smallest leg offers.
    pub size: Option<u64>,
    /// Overwrite legs that hold a superblock or a filesystem (and an
    /// existing bitmap file no mdfuse uses).
    pub force: bool,
    /// The write-intent bitmap file to create with the array.
    pub bitmap: Option<NewBitmap>,
    /// Where the superblocks go: 1.2 (4 KiB from the start, mdadm's
    /// default), 1.1 (at the start) or 1.0 (at the end, the data from
    /// sector 0).
    pub metadata: MetadataVersion,
    /// Legs named write-mostly or read-write; a remote leg named neither
    /// is write-mostly when a local leg is given too.
    pub write_mostly: super::write_mostly::WriteMostlyChoice,
}

/// A bitmap file to create with the array.
#[derive(Debug, Clone)]
pub struct NewBitmap {
    pub path: PathBuf,
    /// Bytes of array per bit; `None`: the default for the array's size.
    pub chunk: Option<u32>,
    /// The header's daemon_sleep, seconds.
    pub daemon_sleep: u32,
    /// An internal bitmap on every leg (mdadm's `--bitmap=internal`):
    /// `path` is not used.
    pub internal: bool,
}

#[derive(Debug, Clone)]
pub struct Created {
    pub uuid: [u8; 16],
    pub name: String,
    pub array_sectors: u64,
    pub data_offset_sectors: u64,
    pub metadata: MetadataVersion,
    pub legs: Vec<PathBuf>,
    /// The bitmap file's header, when one was created.
    pub bitmap: Option<BitmapSuper>,
    /// The legs made write-mostly.
    pub write_mostly: Vec<PathBuf>,
}

pub(super) fn random_uuid() -> Result<[u8; 16], ArrayError> {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most 16 bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 16, 0) };
    if n != 16 {
        return Err(ArrayError::Random(std::io::Error::last_os_error()));
    }
    Ok(b)
}

/// Refuses the same leg given twice (the same file, or the same device
/// under two names), before anything is opened or locked.
pub fn check_distinct(paths: &[PathBuf]) -> Result<(), ArrayError> {
    let mut seen: Vec<((u64, u64, u64), &PathBuf)> = Vec::new();
    // NBD URIs: the same leg when equal once parsed (the same host, port
    // and export; or socket and export).
    let mut remote: Vec<(crate::io::leg::Locator, &PathBuf)> = Vec::new();
    for p in paths {
        if crate::io::leg::is_remote_name(p) {
            let l = crate::io::leg::Locator::parse(p)?;
            if let Some((_, prev)) = remote.iter().find(|(other, _)| other.same_leg(&l)) {
                return Err(ArrayError::SameLeg {
                    a: (*prev).clone(),
                    b: p.clone(),
                });
            }
            remote.push((l, p));
            continue;
        }
        let m = std::fs::metadata(p).map_err(|source| crate::io::leg::LegError::Open {
            path: p.clone(),
            source,
            hint: " (check the path; a leg must exist: create a file with `truncate -s SIZE FILE`)",
        })?;
        let id = (m.dev(), m.ino(), m.rdev());
        if let Some((_, prev)) = seen
            .iter()
            .find(|(other, _)| (other.0, other.1) == (id.0, id.1) || (id.2 != 0 && other.2 == id.2))
        {
            return Err(ArrayError::SameLeg {
                a: (*prev).clone(),
                b: p.clone(),
            });
        }
        seen.push((id, p));
    }
    check_unique_names(paths.iter().map(PathBuf::as_path))
}

/// md/ names a leg `dev-<its file name>` (md: dev-<kernel name>), so two
/// legs of one array may not share a file name.
pub fn check_unique_names<'a>(
    paths: impl IntoIterator<Item = &'a std::path::Path>,
) -> Result<(), ArrayError> {
    let mut seen: Vec<(String, &std::path::Path)> = Vec::new();
    for p in paths {
        let name = crate::io::leg::short_name(p);
        if let Some((_, prev)) = seen.iter().find(|(n, _)| *n == name) {
            return Err(ArrayError::SameName {
                a: prev.to_path_buf(),
                b: p.to_path_buf(),
                name,
            });
        }
        seen.push((name, p));
    }
    Ok(())
}

/// Refuses a leg holding an md superblock or a known signature, unless forced.
pub(super) fn check_blank(leg: &Leg, force: bool) -> Result<(), ArrayError> {
    if force {
        return Ok(());
    }
    if let Ok(sb) = Superblock::parse(&read_superblock_block(leg)?) {
        return Err(ArrayError::HasSuperblock {
            path: leg.path().to_owned(),
            uuid: uuid_string(&sb.set_uuid),
            name: sb.name(),
        });
    }
    let probe = (signatures::PROBE_BYTES as u64).min(leg.size() / 4096 * 4096) as usize;
    let mut head = AlignedBuf::new(signatures::PROBE_BYTES);
    leg.read_at(&mut head.as_mut_slice()[..probe], 0)?;
    let refuse = |what| {
        Err(ArrayError::HasSignature {
            path: leg.path().to_owned(),
            what,
        })
    };
    if let Some(what) = signatures::detect(&head.as_slice()[..probe]) {
        return refuse(what);
    }
    // A v1.2 superblock that does not parse (a bad checksum, a version we
    // do not know) is still somebody's array.
    if signatures::has_md_magic(head.as_slice().get(4096..probe).unwrap_or(&[])) {
        return refuse("an md v1.2 superblock that does not verify");
    }
    for (offset, what) in signatures::md_tail_superblocks(leg.size()) {
        let Some(offset) = offset.filter(|o| o + 4096 <= leg.size()) else {
            continue;
        };
        leg.read_at(&mut head.as_mut_slice()[..4096], offset)?;
        if signatures::has_md_magic(head.as_slice()) {
            return refuse(what);
        }
    }
    Ok(())
}

/// Smallest leg `mdfuse create` takes for `version`: its metadata plus one
/// 64 KiB unit of data (mdadm rounds a RAID1's size down to 64 KiB).
pub fn min_leg_sectors_for(version: MetadataVersion) -> u64 {
    (24u64..)
        .step_by(8)
        .find(|&s| {
            mdadm_raid1_array_sectors_for(version, s, mdadm_default_data_offset_for(version, s))
                >= 128
        })
        .unwrap_or(u64::MAX)
}

/// Creates a RAID1 on `paths`. Nothing is written until every leg has been
/// checked. The data regions are zeroed (holes punched in file legs), so the
/// legs start identical, like `--assume-clean` on blank disks.
pub fn create(paths: &[PathBuf], opts: &CreateOptions) -> Result<Created, ArrayError> {
    if paths.len() < 2 {
        return Err(ArrayError::TooFewLegs(paths.len()));
    }
    if paths.len() > MAX_LEGS {
        return Err(ArrayError::TooManyLegs {
            given: paths.len(),
            max: MAX_LEGS,
        });
    }
    check_distinct(paths)?;
    opts.write_mostly.check(paths)?;
    let any_local = paths.iter().any(|p| !crate::io::leg::is_remote_name(p));
    let version = opts.metadata;
    let mut legs = Vec::with_capacity(paths.len());
    for p in paths {
        let leg = Leg::open(p, IoMode::Direct, true, true)?;
        let sectors = leg.size() / 512;
        // One 64 KiB unit of data at least (mdadm's rounding of a RAID1's
        // size), after this version's metadata.
        let data_offset = mdadm_default_data_offset_for(version, sectors);
        if mdadm_raid1_array_sectors_for(version, sectors, data_offset) < 128 {
            let min = min_leg_sectors_for(version);
            return Err(ArrayError::Geometry {
                path: p.clone(),
                source: crate::format::superblock::GeometryError::DeviceTooSmall {
                    device_sectors: sectors,
                    data_offset,
                    needed_data: 128,
                    min,
                },
            });
        }
        check_blank(&leg, opts.force)?;
        legs.push(leg);
    }
    // mdadm takes the data offset from the first leg and uses it for all.
    let data_offset = mdadm_default_data_offset_for(version, legs[0].size() / 512);
    let smallest = legs
        .iter()
        .min_by_key(|l| l.size())
        .expect("at least two legs");
    let available = mdadm_raid1_array_sectors_for(version, smallest.size() / 512, data_offset);
    let array_sectors = match opts.size {
        None => available,
        Some(bytes) => {
            // Whole 4 KiB blocks, so direct I/O reaches the array's end.
            let wanted = bytes / 4096 * 8;
            if wanted == 0 {
                return Err(ArrayError::SizeTooSmall { size: bytes });
            }
            if wanted > available {
                return Err(ArrayError::SizeTooLarge {
                    path: smallest.path().to_owned(),
                    size: bytes,
                    avail: available * 512,
                });
            }
            wanted
        }
    };
    let set_uuid = random_uuid()?;
    let ctime = now_md_time();
    let mut superblocks = Vec::with_capacity(legs.len());
    for (slot, leg) in legs.iter().enumerate() {
        let mut sb = Superblock::new_raid1_member_of(
            &NewMember {
                set_uuid,
                name: &opts.name,
                raid_disks: legs.len() as u32,
                dev_number: slot as u32,
                device_uuid: random_uuid()?,
                device_sectors: leg.size() / 512,
                array_sectors,
                data_offset: Some(data_offset),
                ctime,
            },
            version,
        )
        .map_err(|source| ArrayError::Geometry {
            path: leg.path().to_owned(),
            source,
        })?;
        let path = &paths[slot];
        sb.set_write_mostly(
            opts.write_mostly
                .said(path)
                .unwrap_or_else(|| super::write_mostly::default_for(path, any_local)),
        );
        superblocks.push(sb);
    }
    // An internal bitmap: placed in every superblock as mdadm places it,
    // written on each leg before its superblock.
    let internal = match &opts.bitmap {
        Some(b) if b.internal => {
            let chunk = mdadm_internal_bitmap_chunk(array_sectors, b.chunk.map(u64::from))
                .map_err(|source| ArrayError::Geometry {
                    path: legs[0].path().to_owned(),
                    source,
                })?;
            for (leg, sb) in legs.iter().zip(superblocks.iter_mut()) {
                sb.add_internal_bitmap(chunk)
                    .and_then(|()| sb.check_fits(leg.size() / 512))
                    .map_err(|source| ArrayError::Geometry {
                        path: leg.path().to_owned(),
                        source,
                    })?;
            }
            Some(BitmapSuper::new_for_array(
                set_uuid,
                array_sectors,
                chunk,
                b.daemon_sleep,
                0,
            ))
        }
        _ => None,
    };
    // The bitmap before the legs: if it cannot be made (missing directory,
    // read-only filesystem, file in use), no leg has been touched. Dropped
    // uncommitted (a leg write failed), it is removed.
    let bitmap = match &opts.bitmap {
        Some(b) if b.internal => None,
        None => None,
        Some(b) => {
            let chunk = b
                .chunk
                .unwrap_or_else(|| default_chunk_size(array_sectors * 512));
            let sb = BitmapSuper::new_for_array(set_uuid, array_sectors, chunk, b.daemon_sleep, 0);
            Some((stage_bitmap_file(&b.path, &sb, opts.force)?, sb))
        }
    };
    for (leg, sb) in legs.iter().zip(&superblocks) {
        leg.zero_range(data_offset * 512, array_sectors * 512)
            .map_err(|source| ArrayError::Zero {
                path: leg.path().to_owned(),
                source,
            })?;
        if let Some(bsb) = &internal {
            super::internal_bitmap::write_new(leg, sb, bsb)?;
        }
        write_superblock(leg, sb)?;
    }
    let bitmap = match bitmap {
        None => internal,
        Some((staged, sb)) => {
            staged.commit()?;
            Some(sb)
        }
    };
    Ok(Created {
        uuid: set_uuid,
        name: opts.name.clone(),
        array_sectors,
        data_offset_sectors: data_offset,
        metadata: version,
        legs: paths.to_vec(),
        bitmap,
        write_mostly: paths
            .iter()
            .zip(&superblocks)
            .filter(|(_, sb)| sb.is_write_mostly())
            .map(|(p, _)| p.clone())
            .collect(),
    })
}
