//! Changing the bitmap of a running array: md's `bitmap/location` store
//! (what `mdadm --grow --bitmap=none|internal` writes), and `mdfuse grow`.
//!
//! As md's `location_store`: refused while a sync runs or is owed; a bitmap
//! in place can only be removed (`none`), and only then another added.
//!
//! - **Removing** waits for the writes in flight and holds new ones back
//!   (md's `mddev_suspend`), records the superblocks without a bitmap
//!   (MD_FEATURE_BITMAP_OFFSET off), and takes the bitmap off the engine;
//!   a bitmap file is then released (its immutable flag and lock lifted).
//!   From then on an unclean stop resyncs the whole array.
//! - **Adding** lays the bitmap out (an internal one as mdadm's
//!   `add_internal_bitmap1` for a grow; a file created as mdadm's
//!   `CreateBitmap` and attached with every check a mount makes), then,
//!   with every write held back: when every leg is in sync and the legs
//!   took a flush, the legs are identical and the bitmap starts clean;
//!   otherwise (degraded) every bit is set and kept until a resync, as md
//!   keeps a new bitmap's bits on an array that may differ. Every copy is
//!   written before a superblock names it; then the superblocks (header
//!   events first, md_update_sb's order), then the engine takes it.

use super::bitmap_attach::{attach_to, ArrayFacts, AttachedBitmap, BitmapAttachOptions, BitmapIo};
use super::error::ArrayError;
use super::internal_bitmap::{
    on_disk_bytes, place_on_leg, LegPageStore, Target, MAX_INTERNAL_CHUNKS,
};
use super::running::{bind_to_engine, RunningArray};
use crate::bitmap::{BitmapOptions, WriteIntentBitmap};
use crate::format::bitmap::{chunk_count, default_chunk_size, set_bit, BitmapSuper};
use crate::format::superblock::FEATURE_BITMAP_OFFSET;
use crate::io::leg::IoMode;
use crate::raid1::LegState;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// md's default daemon_sleep for a new bitmap (mdadm's DEFAULT_BITMAP_DELAY).
const DEFAULT_DELAY_SECS: u32 = 5;

/// A value written to `md/bitmap/location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BitmapChange {
    /// `none`: remove the bitmap.
    Remove,
    /// md's `+N` (or `N`, `-N`): an internal bitmap N sectors from each
    /// superblock; mdfuse's `internal`: where mdfuse places it (None).
    Internal(Option<i64>),
    /// mdfuse's `file:PATH` (md refuses `file:`, mdadm uses an ioctl): a
    /// new bitmap file at PATH, which must not exist.
    File(PathBuf),
}

impl BitmapChange {
    /// md's `location_store` reading (a value may start with `none`, md
    /// compares 4 bytes; a number is kstrtoll's, `+` allowed), with
    /// mdfuse's `internal` and `file:PATH`.
    pub fn parse(value: &str) -> Result<BitmapChange, String> {
        if value.starts_with("none") {
            return Ok(BitmapChange::Remove);
        }
        if value == "internal" {
            return Ok(BitmapChange::Internal(None));
        }
        if let Some(path) = value.strip_prefix("file:") {
            if !path.starts_with('/') {
                return Err("file: takes the bitmap file's absolute path".into());
            }
            return Ok(BitmapChange::File(PathBuf::from(path)));
        }
        let digits = value.strip_prefix('+').unwrap_or(value);
        let (negative, digits) = match digits.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, digits.strip_prefix('+').unwrap_or(digits)),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(
                "location takes none, +N (sectors from the superblock), internal or file:PATH"
                    .into(),
            );
        }
        let n: i64 = digits
            .parse()
            .map_err(|_| format!("{value}: out of range"))?;
        let n = if negative { -n } else { n };
        if n == 0 {
            return Err("an internal bitmap cannot be at the superblock (offset 0)".into());
        }
        Ok(BitmapChange::Internal(Some(n)))
    }
}

fn refused(why: impl Into<String>, errno: i32) -> ArrayError {
    ArrayError::BitmapChange {
        why: why.into(),
        errno,
    }
}

impl RunningArray {
    /// md's `bitmap/location` store: removes the bitmap, or adds one when
    /// there is none. Returns what was done, for the log.
    pub fn change_bitmap(&self, change: BitmapChange) -> Result<String, ArrayError> {
        if self.read_only {
            return Err(ArrayError::ReadOnly);
        }
        let _config = self.config.lock();
        if self.stopped.load(Ordering::Acquire) {
            return Err(ArrayError::Busy("the array is stopping".into()));
        }
        if let Some(p) = self.sync_progress() {
            return Err(ArrayError::Busy(format!(
                "a {} is running; the bitmap can be changed once it ends (mdfuse wait), \
                 as md refuses it during a sync",
                p.action.md_word()
            )));
        }
        if self.needs_resync() || self.engine.has_recovering_leg() {
            return Err(ArrayError::Busy(
                "a resync or recovery is owed (sync_action frozen?); let it run first \
                 (echo idle > md/sync_action, then mdfuse wait)"
                    .into(),
            ));
        }
        match (change, self.bitmap()) {
            (BitmapChange::Remove, None) => Ok("no bitmap: nothing to remove".into()),
            (BitmapChange::Remove, Some(old)) => self.remove_bitmap(old),
            (_, Some(old)) => Err(ArrayError::Busy(format!(
                "the array already has a bitmap ({}); remove it first (none), as md requires",
                if old.is_internal() {
                    "internal".to_string()
                } else {
                    format!("file {}", old.path().display())
                }
            ))),
            (BitmapChange::Internal(at), None) => self.add_internal(at),
            (BitmapChange::File(path), None) => self.add_file(&path),
        }
    }

    /// The chunk a bitmap added next gets (`bitmap/chunksize` written while
    /// the array has none, as md's chunksize_store); None for the default.
    pub(super) fn next_chunk(&self) -> Option<u64> {
        Some(self.next_chunk.load(Ordering::Acquire)).filter(|&c| c != 0)
    }

    fn remove_bitmap(&self, old: Arc<AttachedBitmap>) -> Result<String, ArrayError> {
        let what = if old.is_internal() {
            "internal bitmap".to_string()
        } else {
            format!("bitmap file {}", old.path().display())
        };
        let events = self.engine.with_writes_held(|| {
            // No write in flight: none started on this bitmap is left to end.
            let events = self.keeper.set_internal_bitmap(None)?;
            self.engine.set_intent(None);
            self.bitmap.store(None);
            Ok::<u64, ArrayError>(events)
        })?;
        old.service().stop_daemon();
        let released = old.release();
        drop(old);
        let msg = format!(
            "array {}: {what} removed (events {events}); an unclean stop now resyncs the whole array",
            self.name
        );
        log::info!("{msg}");
        released.map(|()| msg)
    }

    /// The new header's daemon_sleep: the mount's --delay, rounded up to
    /// whole seconds, or md's 5.
    /// The header of a new bitmap for the array `current` describes, with
    /// `chunk`-byte chunks at `events`; refused when it has more chunks than
    /// mdfuse keeps.
    fn new_header(
        &self,
        current: &crate::format::superblock::Superblock,
        chunk: u32,
        events: u64,
    ) -> Result<BitmapSuper, ArrayError> {
        let header = BitmapSuper::new_for_array(
            current.set_uuid,
            current.size,
            chunk,
            self.new_daemon_sleep(),
            events,
        );
        if header.chunks() > MAX_INTERNAL_CHUNKS {
            return Err(refused(
                format!(
                    "{} chunks of {chunk} bytes; mdfuse keeps at most {MAX_INTERNAL_CHUNKS}: \
                     a larger chunk (bitmap/chunksize)",
                    header.chunks()
                ),
                libc::EINVAL,
            ));
        }
        Ok(header)
    }

    fn new_daemon_sleep(&self) -> u32 {
        self.grow_opts
            .clear_delay
            .map(|d| {
                u32::try_from(d.as_secs_f64().ceil() as u64)
                    .unwrap_or(u32::MAX)
                    .max(1)
            })
            .unwrap_or(DEFAULT_DELAY_SECS)
    }

    fn bitmap_options(&self, sb: &BitmapSuper, events: u64) -> BitmapOptions {
        let mut o = BitmapOptions::for_super(sb);
        if let Some(d) = self.grow_opts.clear_delay {
            o.clear_delay = d;
        }
        o.array_events = Some(events);
        // Whatever bits it starts with are set anew under the barrier.
        o.loaded_bits_needed = true;
        o
    }

    fn add_internal(&self, at: Option<i64>) -> Result<String, ArrayError> {
        let current = self.keeper.current().ok_or(ArrayError::NoMemberLeft)?;
        let (offset, chunk) = current
            .grow_internal_bitmap(self.next_chunk())
            .map_err(|e| {
                refused(
                    format!("no internal bitmap fits this array: {e}"),
                    libc::ENOSPC,
                )
            })?;
        if let Some(want) = at {
            if want != i64::from(offset) {
                return Err(refused(
                    format!(
                        "mdfuse places this array's internal bitmap at {offset:+} sectors from \
                         the superblock (as mdadm would), not {want:+}: write {offset:+} or internal"
                    ),
                    libc::EINVAL,
                ));
            }
        }
        let events = self.keeper.events();
        let header = self.new_header(&current, chunk, events)?;
        let bytes = on_disk_bytes(&header);
        let mut targets = Vec::new();
        for (slot, s) in self.engine.slots().iter().enumerate() {
            let Some(io) = s.io() else { continue };
            if !matches!(s.state(), LegState::InSync | LegState::Recovering) {
                continue;
            }
            let Some(mut sb) = self.keeper.member_superblock(slot) else {
                continue;
            };
            sb.feature_map |= FEATURE_BITMAP_OFFSET;
            sb.bitmap_offset = offset;
            let leg = io.leg();
            let start = place_on_leg(leg.path(), &sb, leg.size(), bytes)?;
            if leg.mode() == IoMode::Direct && start % 4096 != 0 {
                return Err(refused(
                    format!(
                        "leg {}: the bitmap would start at byte {start}, not on a 4 KiB \
                         boundary, which direct I/O needs",
                        leg.path().display()
                    ),
                    libc::EINVAL,
                ));
            }
            targets.push(Target {
                slot,
                leg: leg.clone(),
                start,
            });
        }
        let store = Arc::new(LegPageStore::new(targets, bytes));
        let bits = all_set(header.chunks());
        let opts = self.bitmap_options(&header, events);
        let service = Arc::new(WriteIntentBitmap::new(header, &bits, store.clone(), opts)?);
        let new = AttachedBitmap::internal(service, Some(store));
        let clean = self.install(new, Some(offset))?;
        let msg = format!(
            "array {}: internal bitmap added at {offset:+} sectors from the superblock: {} chunks \
             of {chunk} bytes, {}",
            self.name,
            chunk_count(current.size, chunk),
            start_words(clean)
        );
        log::info!("{msg}");
        Ok(msg)
    }

    fn add_file(&self, path: &Path) -> Result<String, ArrayError> {
        let current = self.keeper.current().ok_or(ArrayError::NoMemberLeft)?;
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(ArrayError::BitmapFile {
                path: path.to_owned(),
                what: "it already exists; give the name of a new file (the bitmap is created \
                       for this array, as mdadm --grow --bitmap=FILE creates it)"
                    .into(),
            });
        }
        let chunk = match self.next_chunk() {
            Some(c) => u32::try_from(c).map_err(|_| refused("chunk too large", libc::EINVAL))?,
            None => default_chunk_size(current.size.saturating_mul(512)),
        };
        let events = self.keeper.events();
        let header = self.new_header(&current, chunk, events)?;
        crate::bitmap::stage_bitmap_file(path, &header, false)?.commit()?;
        // Ours from here: a refusal takes it away again.
        let made = MadeFile(Some(path.to_owned()));
        let facts = ArrayFacts {
            set_uuid: current.set_uuid,
            array_sectors: current.size,
            events,
            degraded: self.engine.has_absent_leg(),
            legs: self
                .engine
                .slots()
                .iter()
                .filter_map(|s| s.io().map(|io| io.leg().path().to_path_buf()))
                .collect(),
            loaded_bits_needed: true,
        };
        let attached = attach_to(
            &BitmapAttachOptions {
                path: path.to_owned(),
                io: if self.grow_opts.file_io {
                    BitmapIo::FileIo
                } else {
                    BitmapIo::Raw
                },
                clear_delay: self.grow_opts.clear_delay,
                read_only: false,
                trust_device: self.grow_opts.trust_device,
            },
            &facts,
        )?;
        let clean = self.install(attached, None)?;
        made.keep();
        let msg = format!(
            "array {}: bitmap file {} added: {} chunks of {chunk} bytes, {}; give it at the next \
             mount (--bitmap {})",
            self.name,
            path.display(),
            chunk_count(current.size, chunk),
            start_words(clean),
            path.display()
        );
        log::info!("{msg}");
        Ok(msg)
    }

    /// Puts `new` in place with every write held back: its first image
    /// (clean when every leg is in sync and the legs took a flush, else
    /// every bit set and kept until a resync), then the superblocks
    /// (`internal`: the bitmap's offset, None for a file), then the engine.
    /// Returns whether it started clean. A refusal takes `new` away.
    fn install(&self, new: AttachedBitmap, internal: Option<i32>) -> Result<bool, ArrayError> {
        bind_to_engine(&new, &self.engine);
        let new = Arc::new(new);
        let done: Result<bool, ArrayError> = self.engine.with_writes_held(|| {
            // No write in flight and none to come: once flushed, the legs
            // hold every write made so far.
            let clean = !self.engine.is_degraded()
                && !self.needs_resync()
                && matches!(self.engine.flush_background(), Ok(true));
            let service = new.service();
            if clean {
                service.set_all_clean()?;
            } else {
                service.set_all_dirty()?;
            }
            service.set_degraded(self.engine.has_absent_leg());
            service.set_recovering(self.engine.has_recovering_leg());
            self.bitmap.store(Some(new.clone()));
            if let Err(e) = self.keeper.set_internal_bitmap(internal) {
                self.bitmap.store(None);
                return Err(e);
            }
            self.engine
                .set_intent(Some(service.clone() as Arc<dyn crate::bitmap::WriteIntent>));
            Ok(clean)
        });
        if done.is_err() {
            new.service().stop_daemon();
            if let Err(e) = new.release() {
                log::error!("{e}");
            }
        }
        done
    }
}

/// Bits for `chunks` chunks, all set.
fn all_set(chunks: u64) -> Vec<u8> {
    let mut bits = vec![0u8; usize::try_from(chunks.div_ceil(8)).unwrap_or(0)];
    for c in 0..chunks {
        set_bit(&mut bits, c);
    }
    bits
}

fn start_words(clean: bool) -> &'static str {
    if clean {
        "clean (the legs were in sync and flushed)"
    } else {
        "every bit set, kept until the legs are in sync"
    }
}

/// A bitmap file this change created: removed again unless kept.
struct MadeFile(Option<PathBuf>);

impl MadeFile {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for MadeFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!(
                    "bitmap file {}: cannot remove it again: {e}",
                    path.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BitmapChange::{self, *};

    #[test]
    fn location_values_read_as_md_reads_them() {
        assert_eq!(BitmapChange::parse("none"), Ok(Remove));
        assert_eq!(BitmapChange::parse("nonesuch"), Ok(Remove));
        assert_eq!(BitmapChange::parse("+8"), Ok(Internal(Some(8))));
        assert_eq!(BitmapChange::parse("8"), Ok(Internal(Some(8))));
        assert_eq!(BitmapChange::parse("-72"), Ok(Internal(Some(-72))));
        assert_eq!(BitmapChange::parse("internal"), Ok(Internal(None)));
        assert_eq!(
            BitmapChange::parse("file:/var/b"),
            Ok(File("/var/b".into()))
        );
        for bad in [
            "",
            "+",
            "0",
            "+0",
            "x",
            "8 ",
            " 8",
            "file:rel",
            "file",
            "99999999999999999999",
        ] {
            assert!(BitmapChange::parse(bad).is_err(), "{bad:?}");
        }
    }
}
