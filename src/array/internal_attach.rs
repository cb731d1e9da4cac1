//! Attaching md's internal bitmap at assembly: which legs carry one, the
//! copy to trust (md's `md_bitmap_read_sb`), and the service over a
//! [`LegPageStore`] that keeps every in-sync leg's copy. The bitmap's
//! layout on a leg and the store are in `internal_bitmap.rs`.

use super::assemble::Assembly;
use super::bitmap_attach::{AttachedBitmap, ReadOnlyStore};
use super::error::ArrayError;
use super::internal_bitmap::{
    on_disk_bytes, place_on_leg, read_from_leg, refuse, LegPageStore, Target,
};
use crate::bitmap::{BitmapOptions, PageStore, WriteIntentBitmap};
use crate::format::bitmap::BitmapSuper;
use crate::format::superblock::FEATURE_BITMAP_OFFSET;
use std::sync::Arc;
use std::time::Duration;

/// Options for an internal bitmap at assembly.
#[derive(Debug, Clone, Default)]
pub struct InternalBitmapOptions {
    /// Overrides the header's daemon_sleep as the idle time before a bit is cleared.
    pub clear_delay: Option<Duration>,
    /// Read, never written.
    pub read_only: bool,
}

/// Whether the assembled legs carry an internal bitmap; refuses members
/// that disagree.
pub fn has_internal_bitmap(asm: &Assembly) -> Result<bool, ArrayError> {
    let with: Vec<&super::assemble::Member> = asm
        .members
        .iter()
        .filter(|m| m.sb.has_feature(FEATURE_BITMAP_OFFSET))
        .collect();
    if with.is_empty() {
        return Ok(false);
    }
    if let Some(m) = asm
        .members
        .iter()
        .find(|m| !m.sb.has_feature(FEATURE_BITMAP_OFFSET))
    {
        return Err(refuse(
            &m.path,
            format!(
                "its superblock has no internal bitmap while {}'s has one (feature_map \
                 bit MD_FEATURE_BITMAP_OFFSET); md would not assemble them together either",
                with[0].path.display()
            ),
        ));
    }
    Ok(true)
}

/// Reads the internal bitmap as md does (the first in-sync member's copy
/// that reads) and starts the service over [`LegPageStore`]. Every member's
/// place is checked before anything is written.
pub fn attach_internal(
    asm: &Assembly,
    opts: &InternalBitmapOptions,
) -> Result<AttachedBitmap, ArrayError> {
    let in_sync: Vec<&super::assemble::Member> = asm
        .members
        .iter()
        .filter(|m| !super::superblocks::is_recovering(&m.sb))
        .collect();
    let mut first_err = None;
    let mut found: Option<(BitmapSuper, Vec<u8>)> = None;
    let expect = Some((asm.set_uuid, asm.array_sectors));
    for m in &in_sync {
        match (&mut found, read_from_leg(&m.leg, &m.sb, expect)) {
            (None, Ok(r)) => found = Some(r),
            // Another in-sync leg's copy: its bits are added (a superset
            // is always safe). md reads the first copy only; the others
            // may hold bits the first missed when a leg failed to take a
            // page and the array stopped before that leg was failed.
            (Some((sb, bits)), Ok((other, more))) => {
                if other.chunksize == sb.chunksize && more.len() == bits.len() {
                    for (b, o) in bits.iter_mut().zip(&more) {
                        *b |= o;
                    }
                } else {
                    log::warn!(
                        "leg {}: its internal bitmap copy differs from the first's; ignored",
                        m.path.display()
                    );
                }
            }
            // A read error: md tries the next leg.
            (_, Err(ArrayError::Leg(e))) => {
                log::warn!("leg {}: internal bitmap unreadable: {e}", m.path.display());
                first_err.get_or_insert(ArrayError::Leg(e));
            }
            (None, Err(e)) => return Err(e),
            (Some(_), Err(e)) => {
                log::warn!("{e}; that copy is ignored (md reads the first leg's only)");
            }
        }
    }
    let Some((sb, bits)) = found else {
        return Err(first_err.unwrap_or(ArrayError::NoMemberLeft));
    };
    let bytes = on_disk_bytes(&sb);
    let mut targets = Vec::new();
    for m in &asm.members {
        let start = place_on_leg(&m.path, &m.sb, m.leg.size(), bytes)?;
        targets.push(Target {
            slot: m.slot as usize,
            leg: m.leg.clone(),
            start,
        });
    }
    let (store, legs): (Arc<dyn PageStore>, Option<Arc<LegPageStore>>) = if opts.read_only {
        (
            Arc::new(ReadOnlyStore::new(
                "internal bitmap (read-only array)".to_string(),
            )),
            None,
        )
    } else {
        let s = Arc::new(LegPageStore::new(targets, bytes));
        (s.clone(), Some(s))
    };
    log::info!(
        "array {}: internal bitmap: {} chunks of {} bytes, events {} cleared {}",
        asm.name,
        sb.chunks(),
        sb.chunksize,
        sb.events,
        sb.events_cleared
    );
    let mut bopts = BitmapOptions::for_super(&sb);
    if let Some(d) = opts.clear_delay {
        bopts.clear_delay = d;
    }
    bopts.array_events = Some(asm.events);
    let service = Arc::new(WriteIntentBitmap::new(sb, &bits, store, bopts)?);
    if asm.is_degraded() {
        service.set_degraded(true);
    }
    Ok(AttachedBitmap::internal(service, legs))
}
