//! Reading and writing md v1.x superblocks on legs (metadata 1.0, 1.1 and
//! 1.2, each at its place), and the keeper that records the array's state
//! changes in them (md's md_update_sb): every change bumps `events` and is
//! written to every member still in the array.

use super::error::ArrayError;
use crate::format::superblock::{
    choose_superblock, v0_90_super_sector, DevRole, MdTime, MetadataVersion, Superblock,
    SuperblockError, FEATURE_BITMAP_OFFSET, FEATURE_RECOVERY_BITMAP, FEATURE_RECOVERY_OFFSET,
    MAX_SECTOR,
};
use crate::io::aligned::AlignedBuf;
use crate::io::leg::{Leg, LegError};
use crate::raid1::{ArrayEvents, RecordError};
use parking_lot::Mutex;
use std::sync::Arc;

/// Bytes read and written for a superblock: md reads 4 KiB at its place.
pub const SUPER_BYTES: usize = 4096;

/// What a leg's superblock places hold: the block that answers for the leg
/// (the superblock, or what stands in its way) and the verdict of
/// [`choose_superblock`].
pub struct Probe {
    /// The 4 KiB block found (zeroes when the leg holds nothing md wrote).
    pub block: Vec<u8>,
    /// The metadata version whose superblock it is, or why there is none.
    pub version: Result<MetadataVersion, SuperblockError>,
}

fn read_block(leg: &Leg, sector: u64) -> Result<Option<Vec<u8>>, LegError> {
    let Some(at) = sector.checked_mul(512) else {
        return Ok(None);
    };
    if at
        .checked_add(SUPER_BYTES as u64)
        .is_none_or(|end| end > leg.size())
    {
        return Ok(None);
    }
    let mut buf = AlignedBuf::new(SUPER_BYTES);
    leg.read_at(&mut buf.as_mut_slice()[..SUPER_BYTES], at)?;
    Ok(Some(buf.as_slice()[..SUPER_BYTES].to_vec()))
}

/// Reads the 4 KiB at each place a metadata 1.x superblock may sit on
/// `leg` (1.0 near its end, 1.1 at sector 0, 1.2 at sector 8) and at
/// metadata 0.90's, and decides which is the leg's superblock as mdadm
/// does ([`choose_superblock`]). Aligned reads, so direct-mode legs work.
pub fn probe_superblock(leg: &Leg) -> Result<Probe, LegError> {
    let sectors = leg.size() / 512;
    let mut reads: Vec<(MetadataVersion, u64, Vec<u8>)> = Vec::new();
    for version in MetadataVersion::ALL {
        let Some(at) = version.super_offset(sectors) else {
            continue;
        };
        if let Some(block) = read_block(leg, at)? {
            reads.push((version, at, block));
        }
    }
    if reads.is_empty() {
        // Shorter than any superblock place: the read at 1.2's place says so.
        let mut buf = AlignedBuf::new(SUPER_BYTES);
        leg.read_at(
            &mut buf.as_mut_slice()[..SUPER_BYTES],
            MetadataVersion::V1_2.super_offset(sectors).unwrap_or(8) * 512,
        )?;
    }
    let v0_90 = match v0_90_super_sector(sectors) {
        Some(at) => read_block(leg, at)?.map(|b| (at, b)),
        None => None,
    };
    let views: Vec<(MetadataVersion, u64, &[u8])> =
        reads.iter().map(|(v, at, b)| (*v, *at, &b[..])).collect();
    let (index, version) = choose_superblock(&views, v0_90.as_ref().map(|(at, b)| (*at, &b[..])));
    let block = match index {
        Some(i) => reads.swap_remove(i).2,
        None => vec![0; SUPER_BYTES],
    };
    Ok(Probe { block, version })
}

/// The 4 KiB block that answers for `leg`'s superblock (see
/// [`probe_superblock`]), for `mdfuse examine`.
pub fn read_superblock_block(leg: &Leg) -> Result<Vec<u8>, LegError> {
    let probe = probe_superblock(leg)?;
    match probe.version {
        // Examine shows why, as mdadm says it finds no superblock.
        Err(SuperblockError::Version0_90 { at }) => {
            let mut block = vec![0; SUPER_BYTES];
            if let Some(b) = read_block(leg, at)? {
                block = b;
            }
            Ok(block)
        }
        _ => Ok(probe.block),
    }
}

/// Reads and checks the superblock of `leg`, wherever its metadata version
/// keeps it; the outer error is I/O, the inner one says the leg holds no
/// valid superblock (with the block's own fault when one was found).
pub fn read_superblock(leg: &Leg) -> Result<Result<Superblock, SuperblockError>, LegError> {
    let probe = probe_superblock(leg)?;
    Ok(probe.version.and_then(|_| Superblock::parse(&probe.block)))
}

/// Writes `sb` at its place on `leg` and makes it durable.
pub fn write_superblock(leg: &Leg, sb: &Superblock) -> Result<(), ArrayError> {
    write_superblock_with(leg, sb, Vouch::Nothing)
}

/// What a superblock update says of the data on the legs, which decides
/// what must be durable before it (md's REQ_PREFLUSH | REQ_FUA on a
/// superblock write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vouch {
    /// A state change that claims nothing of the data written so far
    /// (active, a leg faulty or removed, a recovery begun): written, then
    /// flushed.
    Nothing,
    /// It says data is in place (clean, a resync or recovery checkpoint, a
    /// recovered leg joining): the leg is flushed first, so the data it
    /// vouches for is durable before the superblock can be; then written,
    /// then flushed.
    Data,
}

/// Writes `sb` at its place on `leg`, flushing the leg first when it
/// vouches for data, and makes it durable.
pub fn write_superblock_with(leg: &Leg, sb: &Superblock, vouch: Vouch) -> Result<(), ArrayError> {
    let bytes = sb.to_bytes();
    let mut buf = AlignedBuf::new(SUPER_BYTES);
    buf.as_mut_slice()[..bytes.len()].copy_from_slice(&bytes);
    let at = sb
        .super_offset
        .checked_mul(512)
        .ok_or_else(|| ArrayError::WriteSuperblock {
            path: leg.path().to_owned(),
            source: LegError::Io {
                path: leg.path().to_owned(),
                op: "write",
                offset: u64::MAX,
                len: SUPER_BYTES,
                source: std::io::Error::other("super_offset overflows"),
            },
        })?;
    let preflush = || match vouch {
        Vouch::Data => leg.sync_data(),
        Vouch::Nothing => Ok(()),
    };
    preflush()
        .and_then(|()| leg.write_at(&buf.as_slice()[..SUPER_BYTES], at))
        .and_then(|()| leg.sync_data())
        .map_err(|source| ArrayError::WriteSuperblock {
            path: leg.path().to_owned(),
            source,
        })
}

pub fn now_md_time() -> MdTime {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    MdTime::from_parts(d.as_secs(), d.subsec_micros())
}

type EventsHook = Box<dyn Fn(u64) + Send + Sync>;
/// Whether the leg in a slot is write-mostly now (None: no say, the
/// superblock keeps what it has).
type WriteMostlyOf = Box<dyn Fn(usize) -> Option<bool> + Send + Sync>;

/// One member as the keeper holds it.
struct Kept {
    leg: Arc<Leg>,
    sb: Superblock,
    /// Still in the array: its superblock is kept up to date.
    present: bool,
}

/// Keeps the members' superblocks, by slot, and writes every state change
/// to the members still in the array.
pub struct SuperblockKeeper {
    members: Mutex<Vec<Option<Kept>>>,
    /// Called with the new event count after each update (the bitmap's
    /// header follows the array's events, as md_bitmap_update_sb does).
    on_events: Mutex<Option<EventsHook>>,
    /// One update at a time (events are counted from the members).
    updating: Mutex<()>,
    /// Members whose superblock write failed, to be failed by the engine.
    unwritten: Mutex<Vec<(usize, String)>>,
    /// Where each member's WriteMostly flag comes from at every write (md's
    /// super_1_sync writes devflags from the rdev's flags).
    write_mostly_of: Mutex<Option<WriteMostlyOf>>,
}

impl SuperblockKeeper {
    /// `members`: (slot, leg, its superblock) of the legs in the array.
    pub fn new(raid_disks: usize, members: Vec<(usize, Arc<Leg>, Superblock)>) -> Self {
        let mut slots: Vec<Option<Kept>> = (0..raid_disks).map(|_| None).collect();
        for (slot, leg, sb) in members {
            if let Some(s) = slots.get_mut(slot) {
                *s = Some(Kept {
                    leg,
                    sb,
                    present: true,
                });
            }
        }
        SuperblockKeeper {
            members: Mutex::new(slots),
            on_events: Mutex::new(None),
            updating: Mutex::new(()),
            unwritten: Mutex::new(Vec::new()),
            write_mostly_of: Mutex::new(None),
        }
    }

    pub fn set_on_events(&self, f: EventsHook) {
        *self.on_events.lock() = Some(f);
    }

    /// From now on every superblock written carries the member's
    /// WriteMostly flag as `f` says it is (the running engine's).
    pub fn set_write_mostly_source(&self, f: WriteMostlyOf) {
        *self.write_mostly_of.lock() = Some(f);
    }

    /// `sb` (of the member in `slot`) with the WriteMostly flag the source says.
    fn apply_write_mostly(&self, slot: usize, sb: &mut Superblock) {
        if let Some(on) = self.write_mostly_of.lock().as_ref().and_then(|f| f(slot)) {
            sb.set_write_mostly(on);
        }
    }

    pub fn events(&self) -> u64 {
        self.members
            .lock()
            .iter()
            .flatten()
            .filter(|k| k.present)
            .map(|k| k.sb.events)
            .max()
            .unwrap_or(0)
    }

    /// A copy of the freshest present member's superblock (an in-sync
    /// member's rather than a recovering one's, whose own fields differ).
    pub fn current(&self) -> Option<Superblock> {
        self.members
            .lock()
            .iter()
            .flatten()
            .filter(|k| k.present)
            .max_by_key(|k| (k.sb.events, !is_recovering(&k.sb)))
            .map(|k| k.sb.clone())
    }

    /// Applies `change` to every present member's superblock, bumps events,
    /// writes the bitmap header (through the events hook) and then every
    /// member, in md's order (md_update_sb writes the bitmap first). A
    /// member whose write fails is queued for [`SuperblockKeeper::take_unwritten`]
    /// (md fails such a member: `super_written` → `md_error`) and the others
    /// are still written; the update fails only when no member took it.
    fn update(&self, vouch: Vouch, change: impl Fn(&mut Superblock)) -> Result<u64, ArrayError> {
        let _one = self.updating.lock();
        let events = self.events() + 1;
        if let Some(f) = self.on_events.lock().as_ref() {
            f(events);
        }
        let mut members = self.members.lock();
        let now = now_md_time();
        // md (super_1_sync) rewrites the role table from the devices it has:
        // an active role whose device is not with the array becomes empty.
        let known: Vec<u32> = members.iter().flatten().map(|k| k.sb.dev_number).collect();
        let mut first_error = None;
        let mut written = 0;
        for (slot, k) in members.iter_mut().enumerate() {
            let Some(k) = k.as_mut().filter(|k| k.present) else {
                continue;
            };
            for d in 0..k.sb.max_dev() {
                if matches!(k.sb.role_of(d), DevRole::Active(_)) && !known.contains(&d) {
                    let _ = k.sb.set_role(d, DevRole::Spare);
                }
            }
            change(&mut k.sb);
            self.apply_write_mostly(slot, &mut k.sb);
            k.sb.events = events;
            k.sb.utime = now;
            match write_superblock_with(&k.leg, &k.sb, vouch) {
                Ok(()) => written += 1,
                Err(e) => {
                    log::error!("{e}");
                    self.unwritten.lock().push((slot, e.to_string()));
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if written == 0 => Err(e),
            _ => Ok(events),
        }
    }

    /// The members whose superblock could not be written since the last
    /// call, with why: they are to be failed.
    pub fn take_unwritten(&self) -> Vec<(usize, String)> {
        std::mem::take(&mut *self.unwritten.lock())
    }

    /// The array is about to be written: record it active (md: in_sync = 0,
    /// so resync_offset = 0 until it is clean again).
    pub fn mark_active(&self) -> Result<u64, ArrayError> {
        self.update(Vouch::Nothing, |sb| sb.resync_offset = 0)
    }

    /// Every write is on stable storage and every present leg is in sync:
    /// record the array clean.
    pub fn mark_clean(&self) -> Result<u64, ArrayError> {
        self.update(Vouch::Data, |sb| sb.resync_offset = MAX_SECTOR)
    }

    /// Writes every member's superblock again with its devflags as the
    /// engine has them now (md_update_sb after `writemostly` or
    /// `-writemostly` to `dev-*/state`).
    pub fn record_devflags(&self) -> Result<u64, ArrayError> {
        self.update(Vouch::Nothing, |_| {})
    }

    /// Records where an interrupted resync resumes (md's resync_offset).
    pub fn record_resync_offset(&self, sectors: u64) -> Result<u64, ArrayError> {
        self.update(Vouch::Data, |sb| sb.resync_offset = sectors)
    }

    /// The array's bitmap changed (md's `bitmap/location` store, then
    /// MD_SB_CHANGE_DEVS): every member records an internal bitmap at
    /// `internal` sectors from its superblock (MD_FEATURE_BITMAP_OFFSET), or
    /// none (the feature off, bitmap_offset 0; a bitmap file leaves no trace
    /// in the superblocks).
    /// The legs are flushed first: a new bitmap's clean bits say the data
    /// written so far is on every leg.
    pub fn set_internal_bitmap(&self, internal: Option<i32>) -> Result<u64, ArrayError> {
        self.update(Vouch::Data, |sb| match internal {
            Some(offset) => {
                sb.feature_map |= FEATURE_BITMAP_OFFSET;
                sb.bitmap_offset = offset;
            }
            None => {
                sb.feature_map &= !FEATURE_BITMAP_OFFSET;
                sb.bitmap_offset = 0;
            }
        })
    }

    fn dev_number(&self, slot: usize) -> Option<u32> {
        self.members
            .lock()
            .get(slot)
            .and_then(|k| k.as_ref().map(|k| k.sb.dev_number))
    }

    /// Records leg `slot` as faulty in the other members' superblocks and
    /// stops writing its own.
    pub fn mark_faulty(&self, slot: usize) -> Result<u64, ArrayError> {
        let Some(dev_number) = self.dev_number(slot) else {
            return Ok(self.events());
        };
        if let Some(Some(k)) = self.members.lock().get_mut(slot) {
            k.present = false;
        }
        self.update(Vouch::Nothing, |sb| {
            let _ = sb.set_role(dev_number, DevRole::Faulty);
        })
    }

    /// Forgets the leg in `slot` (md: removed, its role becomes empty).
    pub fn remove(&self, slot: usize) -> Result<u64, ArrayError> {
        let Some(dev_number) = self.dev_number(slot) else {
            return Ok(self.events());
        };
        if let Some(k) = self.members.lock().get_mut(slot) {
            *k = None;
        }
        self.update(Vouch::Nothing, |sb| {
            let _ = sb.set_role(dev_number, DevRole::Spare);
        })
    }

    /// A copy of the superblock of the member in `slot`, if it is still in
    /// the array.
    pub fn member_superblock(&self, slot: usize) -> Option<Superblock> {
        self.members
            .lock()
            .get(slot)
            .and_then(|k| k.as_ref().filter(|k| k.present).map(|k| k.sb.clone()))
    }

    /// The data size (sectors) the superblock of the leg in `slot` records,
    /// a faulty one's included (md's `dev-*/size` shows it, in KiB).
    pub fn data_sectors(&self, slot: usize) -> Option<u64> {
        self.members
            .lock()
            .get(slot)
            .and_then(|k| k.as_ref().map(|k| k.sb.data_size))
    }

    /// A dev_number no present member uses (md's role table index).
    pub fn free_dev_number(&self) -> u32 {
        let members = self.members.lock();
        (0u32..)
            .find(|n| {
                !members
                    .iter()
                    .flatten()
                    .any(|k| k.present && k.sb.dev_number == *n)
            })
            .unwrap_or(0)
    }

    /// A former member starts its recovery (md's super_1_sync for a device
    /// with a raid_disk but not In_sync): it is kept as a member from now
    /// on, every superblock records it active in `slot`, and its own says
    /// MD_FEATURE_RECOVERY_OFFSET with recovery_offset 0 (and
    /// MD_FEATURE_RECOVERY_BITMAP when the bitmap guides it), so it is never
    /// assembled as in sync before its recovery ends.
    pub fn begin_recovery(
        &self,
        slot: usize,
        leg: Arc<Leg>,
        mut sb: Superblock,
        bitmap_guided: bool,
    ) -> Result<u64, ArrayError> {
        if let Some(current) = self.current() {
            sb.dev_roles_from(&current);
            sb.resync_offset = current.resync_offset;
            sb.events = current.events;
        }
        sb.feature_map |= FEATURE_RECOVERY_OFFSET;
        if bitmap_guided {
            sb.feature_map |= FEATURE_RECOVERY_BITMAP;
        } else {
            sb.feature_map &= !FEATURE_RECOVERY_BITMAP;
        }
        sb.recovery_offset = 0;
        self.keep_active(slot, leg, sb, Vouch::Nothing)
    }

    /// Records how far the recovery of the leg in `slot` got (sectors): its
    /// own superblock only, without a new event (the others are unchanged).
    pub fn record_recovery_offset(&self, slot: usize, sectors: u64) -> Result<(), ArrayError> {
        let mut members = self.members.lock();
        let Some(Some(k)) = members.get_mut(slot) else {
            return Ok(());
        };
        if !k.present || !is_recovering(&k.sb) {
            return Ok(());
        }
        k.sb.recovery_offset = sectors;
        self.apply_write_mostly(slot, &mut k.sb);
        // The recovered data below the offset is durable before the offset.
        write_superblock_with(&k.leg, &k.sb, Vouch::Data)
    }

    /// A recovered leg joins: its superblock (`sb`, with its dev_number) is
    /// kept from now on, and every member records it active in `slot`. A
    /// leg whose recovery began with [`begin_recovery`](Self::begin_recovery)
    /// keeps the superblock it has, without the recovery fields.
    pub fn join(&self, slot: usize, leg: Arc<Leg>, mut sb: Superblock) -> Result<u64, ArrayError> {
        let dev_number = sb.dev_number;
        {
            let mut members = self.members.lock();
            if let Some(Some(k)) = members.get_mut(slot) {
                if k.present && Arc::ptr_eq(&k.leg, &leg) {
                    k.sb.feature_map &= !(FEATURE_RECOVERY_OFFSET | FEATURE_RECOVERY_BITMAP);
                    k.sb.recovery_offset = 0;
                    drop(members);
                    return self.update(Vouch::Data, |sb| {
                        let _ = sb.set_role(dev_number, DevRole::Active(slot as u16));
                    });
                }
            }
        }
        if let Some(current) = self.current() {
            // Its view of the array is the array's, from now on.
            sb.dev_roles_from(&current);
            sb.resync_offset = current.resync_offset;
        }
        self.keep_active(slot, leg, sb, Vouch::Data)
    }

    /// Keeps `leg` (with `sb`) as the member in `slot` from now on, and has
    /// every member's superblock record it active there.
    fn keep_active(
        &self,
        slot: usize,
        leg: Arc<Leg>,
        sb: Superblock,
        vouch: Vouch,
    ) -> Result<u64, ArrayError> {
        let dev_number = sb.dev_number;
        if let Some(k) = self.members.lock().get_mut(slot) {
            *k = Some(Kept {
                leg,
                sb,
                present: true,
            });
        }
        self.update(vouch, |sb| {
            let _ = sb.set_role(dev_number, DevRole::Active(slot as u16));
        })
    }
}

/// The superblock is a member's whose recovery has not ended (md's
/// MD_FEATURE_RECOVERY_OFFSET).
pub fn is_recovering(sb: &Superblock) -> bool {
    sb.has_feature(FEATURE_RECOVERY_OFFSET)
}

impl ArrayEvents for SuperblockKeeper {
    fn mark_active(&self) -> Result<(), RecordError> {
        SuperblockKeeper::mark_active(self)
            .map(|_| ())
            .map_err(RecordError::from)
    }

    fn leg_failed(&self, slot: usize, reason: &str) -> Result<(), RecordError> {
        self.mark_faulty(slot).map(|_| ()).map_err(|e| {
            log::error!("recording leg {slot} faulty ({reason}) failed: {e}");
            RecordError::from(e)
        })
    }

    fn take_unwritten(&self) -> Vec<(usize, String)> {
        SuperblockKeeper::take_unwritten(self)
    }
}
