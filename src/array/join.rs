//! md's rules for a leg offered to a running array (`--add`, `--re-add`,
//! `new_dev`): is it a former member that may go back into its slot, and is
//! its recovery guided by the bitmap, or is it a new leg that gets a spare's
//! superblock and a full recovery. Decided here from what the leg and the
//! array say; the running array carries the plan out.

use super::error::ArrayError;
use crate::format::superblock::{
    mdadm_layout, DevRole, MetadataVersion, Superblock, SuperblockError, FEATURE_RECOVERY_BITMAP,
};
use crate::io::leg::Leg;
use crate::raid1::LegState;
use crate::report::uuid_string;
use std::path::Path;

/// What the array is, as far as a joining leg is concerned.
pub(super) struct ArrayView<'a> {
    /// The array's current superblock (of an in-sync member).
    pub current: &'a Superblock,
    /// Each slot's state.
    pub slots: &'a [LegState],
    /// The bitmap's events_cleared, when the array has a bitmap.
    pub bitmap_events_cleared: Option<u64>,
}

/// How a leg joins.
#[derive(Debug)]
pub(super) enum JoinPlan {
    /// A former member goes back into its slot with its own superblock.
    Former {
        slot: usize,
        sb: Box<Superblock>,
        /// Only the bitmap's dirty chunks are copied.
        bitmap_guided: bool,
        how: &'static str,
    },
    /// A new leg: into the first empty slot, recovered in full; its
    /// superblock is made by [`spare_superblock`].
    New { slot: usize },
}

/// Decides how the leg at `path` (holding `found`, its superblock or why it
/// has none) joins the array. `re_add_only` refuses a leg that is not a
/// former member.
pub(super) fn plan(
    path: &Path,
    leg_size: u64,
    found: &Result<Superblock, SuperblockError>,
    array: &ArrayView,
    re_add_only: bool,
) -> Result<JoinPlan, ArrayError> {
    let current = array.current;
    let former = match found {
        Ok(sb) if sb.set_uuid == current.set_uuid => match sb.own_role() {
            DevRole::Active(slot) if array.slots.get(slot as usize) == Some(&LegState::Missing) => {
                Some((slot as usize, sb))
            }
            _ => None,
        },
        Ok(sb) => {
            return Err(ArrayError::HasSuperblock {
                path: path.to_owned(),
                uuid: uuid_string(&sb.set_uuid),
                name: sb.name(),
            })
        }
        Err(_) => None,
    };
    let Some((slot, sb)) = former else {
        if re_add_only {
            return Err(ArrayError::NotAMember {
                path: path.to_owned(),
                why: "not a former member of this array that can go back into an empty slot; \
                      use add for a new leg"
                    .into(),
            });
        }
        let slot = array
            .slots
            .iter()
            .position(|s| *s == LegState::Missing)
            .ok_or_else(|| {
                ArrayError::Busy(format!(
                    "no empty slot: all {} slots hold a leg; remove a faulty one first",
                    array.slots.len()
                ))
            })?;
        return Ok(JoinPlan::New { slot });
    };
    super::assemble::check_former_member(path, leg_size, sb, current)?;
    if sb.events > current.events {
        return Err(ArrayError::Busy(format!(
            "{} has newer events ({}) than the array ({}): it was written apart from it; \
             refusing to overwrite it",
            path.display(),
            sb.events,
            current.events
        )));
    }
    // md's rule; a leg whose own earlier recovery was a full one (no
    // MD_FEATURE_RECOVERY_BITMAP) is not guided by the bitmap. A leg that
    // went on apart from the array (each records the other gone) shares no
    // history the bitmap describes.
    let apart = super::assemble::diverged(sb, current);
    let bitmap_guided = !apart
        && array.bitmap_events_cleared.is_some_and(|cleared| {
            sb.events >= cleared
                && (!super::superblocks::is_recovering(sb)
                    || sb.has_feature(FEATURE_RECOVERY_BITMAP))
        });
    let how = if bitmap_guided {
        "re-added: bitmap-guided recovery"
    } else if apart {
        "re-added: full recovery (its history diverged from the array's)"
    } else {
        "re-added: full recovery (its events are older than the bitmap's events_cleared, or no bitmap)"
    };
    Ok(JoinPlan::Former {
        slot,
        sb: Box::new(sb.clone()),
        bitmap_guided,
        how,
    })
}

/// The superblock a new leg carries while it is recovered: the array's,
/// as a spare with its own device number and UUID, laid out on this leg as
/// mdadm --add lays it out for the array's metadata version (1.0: the
/// superblock at this leg's end).
pub(super) fn spare_superblock(
    path: &Path,
    leg: &Leg,
    current: &Superblock,
    dev_number: u32,
) -> Result<Superblock, ArrayError> {
    let mut sb = current.clone();
    sb.dev_number = dev_number;
    sb.device_uuid = super::create::random_uuid()?;
    let needed = sb
        .data_offset
        .checked_add(sb.size)
        .and_then(|s| s.checked_mul(512))
        .unwrap_or(u64::MAX);
    let too_small = || ArrayError::LegTooSmall {
        path: path.to_owned(),
        size: leg.size(),
        needed,
    };
    let version = MetadataVersion::of_super_offset(current.super_offset);
    let layout =
        mdadm_layout(version, leg.size() / 512, sb.size, sb.data_offset).ok_or_else(too_small)?;
    sb.super_offset = layout.super_offset;
    sb.data_size = layout.data_size;
    sb.bblog_size = layout.bblog_size;
    sb.bblog_offset = layout.bblog_offset;
    let _ = sb.set_role(sb.dev_number, DevRole::Spare);
    if sb.data_size < sb.size {
        return Err(too_small());
    }
    Ok(sb)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEG: u64 = (1 << 16) * 512;

    fn member(dev_number: u32, events: u64) -> Superblock {
        let mut sb = crate::array::test_support::member(dev_number);
        sb.events = events;
        sb
    }

    fn view<'a>(
        current: &'a Superblock,
        slots: &'a [LegState],
        cleared: Option<u64>,
    ) -> ArrayView<'a> {
        ArrayView {
            current,
            slots,
            bitmap_events_cleared: cleared,
        }
    }

    const SLOT1_EMPTY: [LegState; 2] = [LegState::InSync, LegState::Missing];

    #[test]
    fn a_former_member_recent_enough_is_re_added_by_the_bitmap() {
        let current = member(0, 20);
        let v = view(&current, &SLOT1_EMPTY, Some(12));
        let p = plan(Path::new("b"), LEG, &Ok(member(1, 15)), &v, true).expect("plan");
        assert!(matches!(
            p,
            JoinPlan::Former {
                slot: 1,
                bitmap_guided: true,
                ..
            }
        ));
        // Older than the bitmap's events_cleared, or no bitmap: in full.
        let p = plan(Path::new("b"), LEG, &Ok(member(1, 11)), &v, true).expect("plan");
        assert!(matches!(
            p,
            JoinPlan::Former {
                bitmap_guided: false,
                ..
            }
        ));
        let v = view(&current, &SLOT1_EMPTY, None);
        let p = plan(Path::new("b"), LEG, &Ok(member(1, 15)), &v, true).expect("plan");
        assert!(matches!(
            p,
            JoinPlan::Former {
                bitmap_guided: false,
                ..
            }
        ));
    }

    #[test]
    fn a_leg_written_apart_from_the_array_is_refused() {
        let current = member(0, 20);
        let v = view(&current, &SLOT1_EMPTY, Some(12));
        let e = plan(Path::new("b"), LEG, &Ok(member(1, 21)), &v, false).unwrap_err();
        assert!(e.to_string().contains("newer events"), "{e}");
    }

    #[test]
    fn another_arrays_leg_is_refused_and_a_blank_one_is_new() {
        let current = member(0, 20);
        let v = view(&current, &SLOT1_EMPTY, None);
        let mut other = member(1, 3);
        other.set_uuid = [9; 16];
        let e = plan(Path::new("b"), LEG, &Ok(other), &v, false).unwrap_err();
        assert!(matches!(e, ArrayError::HasSuperblock { .. }), "{e}");
        let blank = Err(SuperblockError::BadMagic { found: 0 });
        assert!(matches!(
            plan(Path::new("b"), LEG, &blank, &v, false),
            Ok(JoinPlan::New { slot: 1 })
        ));
        // re-add takes only a former member.
        let e = plan(Path::new("b"), LEG, &blank, &v, true).unwrap_err();
        assert!(matches!(e, ArrayError::NotAMember { .. }), "{e}");
        // No empty slot: busy.
        let full = [LegState::InSync, LegState::Faulty];
        let v = view(&current, &full, None);
        let e = plan(Path::new("b"), LEG, &blank, &v, false).unwrap_err();
        assert!(e.to_string().contains("no empty slot"), "{e}");
    }
}
