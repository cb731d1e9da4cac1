//! Assembly: read every leg's superblock, check they form one array, decide
//! which legs are current, and open them for the engine.

use super::error::ArrayError;
use super::superblocks::{is_recovering, read_superblock};
use crate::format::superblock::{DevRole, Superblock, SuperblockError, LEVEL_RAID1};
use crate::io::leg::{IoMode, Leg};
use crate::report::uuid_string;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct AssembleOptions {
    pub io_mode: IoMode,
    pub read_only: bool,
    /// Start even when legs are missing or stale (mdadm's --run).
    pub run_degraded: bool,
    /// Legs whose histories diverged: keep this one's (a path as given);
    /// the others are left out and need a full recovery.
    pub force_from: Option<PathBuf>,
}

/// A leg that takes part in the running array.
pub struct Member {
    pub path: PathBuf,
    pub leg: Arc<Leg>,
    pub sb: Superblock,
    pub slot: u16,
}

/// A leg that was given but does not take part (stale: older events).
pub struct Left {
    pub path: PathBuf,
    pub reason: String,
}

pub struct Assembly {
    /// Current members, by slot.
    pub members: Vec<Member>,
    pub left_out: Vec<Left>,
    pub raid_disks: u32,
    pub array_sectors: u64,
    pub set_uuid: [u8; 16],
    pub name: String,
    pub events: u64,
    /// The superblocks said clean (no writes in flight when last stopped).
    pub was_clean: bool,
    /// Where a resync resumes (sectors; 0 when the array was active).
    pub resync_from_sectors: u64,
    pub io_mode: IoMode,
}

impl Assembly {
    pub fn uuid(&self) -> String {
        uuid_string(&self.set_uuid)
    }
    pub fn is_degraded(&self) -> bool {
        self.members.len() < self.raid_disks as usize
    }
}

/// Most slots (`raid_disks`) an array may have: the engine keeps its legs in
/// 64-bit masks. md allows 1920 (`(4096 - 256) / 2`, what the role table
/// holds); an array with more is refused by name. `mdfuse create` makes at
/// most [`super::create::MAX_LEGS`].
pub const MAX_RAID_DISKS: u32 = 64;

/// A leg given to assembly, as read from it: its path, its size in bytes,
/// what its superblock block held, and its handle (the open leg; the fuzz
/// target and the property tests pass `()`).
pub struct Candidate<L> {
    pub path: PathBuf,
    pub size: u64,
    pub sb: Result<Superblock, SuperblockError>,
    pub handle: L,
}

/// A leg chosen as a member, by [`plan`].
pub struct Planned<L> {
    pub path: PathBuf,
    pub handle: L,
    pub sb: Superblock,
    pub slot: u16,
}

/// What assembly decided from the legs' superblocks, before any I/O mode
/// is settled: [`plan`]'s answer.
pub struct Plan<L> {
    /// Current members, by slot.
    pub members: Vec<Planned<L>>,
    pub left_out: Vec<Left>,
    pub raid_disks: u32,
    pub array_sectors: u64,
    pub set_uuid: [u8; 16],
    pub name: String,
    pub events: u64,
    pub was_clean: bool,
    pub resync_from_sectors: u64,
    /// Every member's data and the array's size are 4 KiB aligned (direct
    /// I/O possible).
    pub aligned: bool,
}

pub fn assemble(paths: &[PathBuf], opts: &AssembleOptions) -> Result<Assembly, ArrayError> {
    check_leg_count(paths.len())?;
    super::create::check_distinct(paths)?;
    let mut candidates = Vec::with_capacity(paths.len());
    for p in paths {
        let leg = Leg::open(p, opts.io_mode, !opts.read_only, true)?;
        let sb = read_superblock(&leg)?;
        candidates.push(Candidate {
            path: p.clone(),
            size: leg.size(),
            sb,
            handle: leg,
        });
    }
    let plan = plan(candidates, opts)?;
    let mut members = plan.members;
    let io_mode = if opts.io_mode == IoMode::Direct && !plan.aligned {
        log::warn!(
            "array {}: data offset or size not 4 KiB aligned; using buffered I/O",
            plan.name
        );
        members = members
            .into_iter()
            .map(|m| {
                Ok(Planned {
                    handle: m.handle.reopen(IoMode::Buffered, !opts.read_only)?,
                    ..m
                })
            })
            .collect::<Result<_, ArrayError>>()?;
        IoMode::Buffered
    } else {
        opts.io_mode
    };
    Ok(Assembly {
        was_clean: plan.was_clean,
        resync_from_sectors: plan.resync_from_sectors,
        members: members
            .into_iter()
            .map(|m| Member {
                path: m.path,
                leg: Arc::new(m.handle),
                sb: m.sb,
                slot: m.slot,
            })
            .collect(),
        left_out: plan.left_out,
        raid_disks: plan.raid_disks,
        array_sectors: plan.array_sectors,
        set_uuid: plan.set_uuid,
        name: plan.name,
        events: plan.events,
        io_mode,
    })
}

fn check_leg_count(given: usize) -> Result<(), ArrayError> {
    if given == 0 {
        return Err(ArrayError::TooFewLegs(0));
    }
    if given > MAX_RAID_DISKS as usize {
        return Err(ArrayError::TooManyLegs {
            given,
            max: MAX_RAID_DISKS as usize,
        });
    }
    Ok(())
}

/// Decides, from what was read of each leg and nothing else (no I/O), which
/// legs form the array: every superblock is checked on its own leg
/// ([`Superblock::validate_on_leg`]) and against the others (same array,
/// the freshest superblock's roles, its size within every member's data),
/// following md's rules: a member one event behind the freshest is current
/// (md and mdadm allow that difference), a member whose superblock fails
/// its checksum is left out (its slot is then missing: `--run` starts the
/// rest), and anything impossible is refused with the leg and the field
/// named.
pub fn plan<L>(legs: Vec<Candidate<L>>, opts: &AssembleOptions) -> Result<Plan<L>, ArrayError> {
    check_leg_count(legs.len())?;
    let mut found: Vec<(PathBuf, L, Superblock)> = Vec::new();
    let mut left_out = Vec::new();
    let mut first_kicked = None;
    for c in legs {
        let path = c.path;
        let sb = match c.sb {
            Ok(sb) => sb,
            Err(source @ SuperblockError::BadChecksum { .. }) => {
                // md (super_1_load) does not import such a device and
                // assembles the others; mdfuse leaves it out the same way.
                log::warn!(
                    "leg {}: {source}; it is left out, as md leaves out such a member",
                    path.display()
                );
                left_out.push(Left {
                    path: path.clone(),
                    reason: format!("{source}; left out, as md does"),
                });
                first_kicked.get_or_insert(ArrayError::BadSuperblock { path, source });
                continue;
            }
            Err(source) => return Err(ArrayError::BadSuperblock { path, source }),
        };
        if sb.level != LEVEL_RAID1 {
            return Err(ArrayError::NotRaid1 {
                path,
                level: sb.level,
            });
        }
        if let Err(source) = sb.validate_on_leg(c.size, MAX_RAID_DISKS) {
            return Err(ArrayError::InvalidSuperblock { path, source });
        }
        if let Some((first, _, fsb)) = found.first() {
            if fsb.set_uuid != sb.set_uuid {
                return Err(ArrayError::ForeignLeg {
                    path,
                    found: uuid_string(&sb.set_uuid),
                    first: first.clone(),
                    expected: uuid_string(&fsb.set_uuid),
                });
            }
        }
        found.push((path, c.handle, sb));
    }
    if found.is_empty() {
        // Only legs whose checksum failed: nothing to assemble from.
        return Err(first_kicked.unwrap_or(ArrayError::TooFewLegs(0)));
    }
    let sbs: Vec<&Superblock> = found.iter().map(|f| &f.2).collect();
    let pairs = diverged_pairs(&sbs);
    if !pairs.is_empty() {
        let keep = match &opts.force_from {
            None => {
                let paths: Vec<PathBuf> = found.iter().map(|f| f.0.clone()).collect();
                return Err(ArrayError::Diverged {
                    histories: describe_histories(&paths, &sbs, &pairs),
                });
            }
            Some(keep) => found
                .iter()
                .position(|f| same_path(&f.0, keep))
                .ok_or_else(|| ArrayError::ForceFromNotGiven { path: keep.clone() })?,
        };
        let dropped: Vec<usize> = pairs
            .iter()
            .filter_map(|&(a, b)| match (a == keep, b == keep) {
                (true, _) => Some(b),
                (_, true) => Some(a),
                _ => None,
            })
            .collect();
        let kept_path = found[keep].0.display().to_string();
        let mut i = 0;
        found.retain(|f| {
            let drop = dropped.contains(&i);
            i += 1;
            if drop {
                log::warn!(
                    "leg {}: its history diverged from {kept_path}'s, which --force-from keeps; \
                     it is left out and needs a full recovery",
                    f.0.display()
                );
                left_out.push(Left {
                    path: f.0.clone(),
                    reason: format!(
                        "diverged from {kept_path} (kept by --force-from): it needs a full recovery"
                    ),
                });
            }
            !drop
        });
    }
    // md trusts the freshest superblock for the array's roles and geometry,
    // the freshest among the members (md's analyze_sbs ignores spares' events).
    let member = |sb: &Superblock| !matches!(sb.own_role(), DevRole::Spare);
    let pool: Vec<&(PathBuf, L, Superblock)> = match found.iter().any(|f| member(&f.2)) {
        true => found.iter().filter(|f| member(&f.2)).collect(),
        false => found.iter().collect(),
    };
    // Between legs of the same events, one that records another as gone
    // (faulty or removed) went on after that one: it is the fresher, in
    // whatever order the legs were given. (Each recording the other as gone
    // is a split brain, refused above.)
    let top = pool.iter().map(|f| f.2.events).max();
    let tied: Vec<&&(PathBuf, L, Superblock)> =
        pool.iter().filter(|f| Some(f.2.events) == top).collect();
    let dropped_by_a_peer = |sb: &Superblock| {
        tied.iter().any(|g| {
            g.2.dev_number != sb.dev_number
                && !matches!(g.2.role_of(sb.dev_number), DevRole::Active(_))
        })
    };
    let Some((freshest_path, freshest)) = tied
        .iter()
        .find(|f| !dropped_by_a_peer(&f.2))
        .or(tied.first())
        .map(|f| (f.0.clone(), f.2.clone()))
    else {
        return Err(first_kicked.unwrap_or(ArrayError::TooFewLegs(0)));
    };
    let events = freshest.events;
    let raid_disks = freshest.raid_disks;
    let mut members: Vec<Planned<L>> = Vec::new();
    for (path, handle, mut sb) in found {
        let slot = match sb.own_role() {
            DevRole::Active(slot) => slot,
            DevRole::Spare => {
                // As mdadm, a spare is no data member: it is left out (mdfuse
                // keeps no spares; `mdfuse manage --add` puts it to use).
                left_out.push(Left {
                    reason: "a spare by its own superblock; add it with `mdfuse manage --add`"
                        .into(),
                    path,
                });
                continue;
            }
            DevRole::Faulty => {
                return Err(ArrayError::NotActive {
                    path,
                    what: "marked faulty",
                })
            }
            DevRole::Journal | DevRole::Reserved(_) => {
                return Err(ArrayError::NotActive {
                    path,
                    what: "not a data member",
                })
            }
        };
        if u32::from(slot) >= raid_disks {
            return Err(ArrayError::SlotBeyondArray {
                path,
                slot,
                raid_disks,
                freshest: freshest_path,
            });
        }
        if let Some(other) = members.iter().find(|m| m.slot == slot) {
            return Err(ArrayError::DuplicateSlot {
                a: other.path.clone(),
                b: path,
                slot,
            });
        }
        // md (super_1_validate) and mdadm (Assemble.c, event_margin) take a
        // member one event behind the freshest as current: it was being
        // updated when the array stopped. Its role is the freshest one's.
        let behind = events.saturating_sub(sb.events);
        let current_role = freshest.role_of(sb.dev_number);
        if behind > 1 || current_role != DevRole::Active(slot) {
            left_out.push(Left {
                reason: format!(
                    "stale: events {} < {} (the array went on without it); it needs a recovery",
                    sb.events, events
                ),
                path,
            });
            continue;
        }
        if behind == 1 {
            log::warn!(
                "leg {}: events {} is one behind the freshest ({events}, {}): an update was \
                 cut short when the array stopped; it is taken as current, as md does, and \
                 its superblock is brought up to date at the next update",
                path.display(),
                sb.events,
                freshest_path.display()
            );
            // The bitmap is the array's: a bitmap added or removed while the
            // array ran (`bitmap/location`) whose update this member missed
            // is the freshest's. An added one's copies were all written
            // before the first superblock named them.
            let bit = crate::format::superblock::FEATURE_BITMAP_OFFSET;
            if sb.has_feature(bit) != freshest.has_feature(bit) {
                log::warn!(
                    "leg {}: its superblock {} an internal bitmap and the freshest's {}: the bitmap was changed as the array stopped; the freshest is followed",
                    path.display(),
                    if sb.has_feature(bit) { "names" } else { "has no" },
                    if freshest.has_feature(bit) { "does" } else { "does not" },
                );
                sb.feature_map = (sb.feature_map & !bit) | (freshest.feature_map & bit);
                sb.bitmap_offset = freshest.bitmap_offset;
            }
        }
        // The array's size (the freshest superblock's) must fit this
        // member's data area; validate_on_leg put that area inside the leg.
        if freshest.size > sb.data_size {
            return Err(ArrayError::DataSizeBelowArray {
                path,
                data_size: sb.data_size,
                size: freshest.size,
                freshest: freshest_path,
            });
        }
        members.push(Planned {
            path,
            handle,
            sb,
            slot,
        });
    }
    members.sort_by_key(|m| m.slot);
    // A member whose recovery was interrupted (MD_FEATURE_RECOVERY_OFFSET)
    // holds no complete copy: it is assembled recovering, never in sync,
    // and at least one in-sync member must be there to recover it from.
    if !members.is_empty() && members.iter().all(|m| is_recovering(&m.sb)) {
        return Err(ArrayError::OnlyRecovering {
            legs: members
                .iter()
                .map(|m| m.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    for m in members.iter().filter(|m| is_recovering(&m.sb)) {
        log::warn!(
            "leg {}: its recovery was interrupted at sector {}: it joins as recovering",
            m.path.display(),
            m.sb.recovery_offset
        );
    }
    let present: Vec<u16> = members.iter().map(|m| m.slot).collect();
    // As mdadm: without --run, every slot the newest superblock still calls
    // active must be here; an array that was already running degraded
    // starts degraded.
    let expected: Vec<u16> = (0..freshest.max_dev())
        .filter_map(|d| match freshest.role_of(d) {
            DevRole::Active(slot) if (slot as u32) < raid_disks => Some(slot),
            _ => None,
        })
        .collect();
    let wanted_missing = expected.iter().any(|s| !present.contains(s));
    if members.is_empty() || (wanted_missing && !opts.run_degraded) {
        let mut missing: Vec<String> = expected
            .iter()
            .copied()
            .filter(|s| !present.contains(s))
            .map(|s| format!("slot {s}"))
            .collect();
        for l in &left_out {
            missing.push(format!("{} ({})", l.path.display(), l.reason));
        }
        return Err(ArrayError::Incomplete {
            name: freshest.name(),
            missing: missing.join(", "),
            present,
            raid_disks,
        });
    }
    // Direct I/O needs 4 KiB alignment of the data (and of an internal
    // bitmap, written in whole pages) on every leg. The
    // products cannot overflow: validate_on_leg put every data area, and
    // the size within it, inside a leg whose length is a u64 of bytes.
    let aligned = freshest.size.is_multiple_of(8)
        && members.iter().all(|m| {
            m.sb.data_offset.is_multiple_of(8)
                && (!m
                    .sb
                    .has_feature(crate::format::superblock::FEATURE_BITMAP_OFFSET)
                    || (i128::from(m.sb.super_offset) + i128::from(m.sb.bitmap_offset)) % 8 == 0)
        });
    Ok(Plan {
        was_clean: members.iter().all(|m| m.sb.is_clean()),
        resync_from_sectors: members
            .iter()
            .map(|m| m.sb.resync_offset)
            .min()
            .filter(|&o| o < freshest.size)
            .unwrap_or(0),
        members,
        left_out,
        raid_disks,
        array_sectors: freshest.size,
        set_uuid: freshest.set_uuid,
        name: freshest.name(),
        events,
        aligned,
    })
}

/// The checks assembly makes of a member's superblock, for a former member
/// given back to a running array (`mdfuse manage --re-add`/`--add`): its
/// own fields on its leg ([`Superblock::validate_on_leg`]), and the array's
/// size (`current`, the freshest superblock) within its data area. A
/// re-added leg's data_offset is used for its I/O, so it is no more
/// trusted than at assembly.
pub fn check_former_member(
    path: &std::path::Path,
    leg_bytes: u64,
    sb: &Superblock,
    current: &Superblock,
) -> Result<(), ArrayError> {
    sb.validate_on_leg(leg_bytes, MAX_RAID_DISKS)
        .map_err(|source| ArrayError::InvalidSuperblock {
            path: path.to_owned(),
            source,
        })?;
    if current.size > sb.data_size {
        return Err(ArrayError::DataSizeBelowArray {
            path: path.to_owned(),
            data_size: sb.data_size,
            size: current.size,
            freshest: PathBuf::from("the running array's"),
        });
    }
    Ok(())
}

/// Whether two legs' histories diverged: each one's superblock records the
/// other as gone (faulty or removed) while calling itself active. Each was
/// then updated (written) while apart from the other, so neither is a
/// stale copy of the other; md would silently keep the freshest.
pub fn diverged(a: &Superblock, b: &Superblock) -> bool {
    let active = |sb: &Superblock| matches!(sb.own_role(), DevRole::Active(_));
    let dropped = |by: &Superblock, who: &Superblock| {
        by.dev_number != who.dev_number && !matches!(by.role_of(who.dev_number), DevRole::Active(_))
    };
    active(a) && active(b) && dropped(a, b) && dropped(b, a)
}

/// The pairs (by index) of legs whose histories diverged.
pub fn diverged_pairs(sbs: &[&Superblock]) -> Vec<(usize, usize)> {
    let mut pairs = Vec::new();
    for i in 0..sbs.len() {
        for j in i + 1..sbs.len() {
            if diverged(sbs[i], sbs[j]) {
                pairs.push((i, j));
            }
        }
    }
    pairs
}

/// Each leg's history, for the refusal: events, last update, and which
/// legs it records as gone.
fn describe_histories(paths: &[PathBuf], sbs: &[&Superblock], pairs: &[(usize, usize)]) -> String {
    let mut lines = Vec::new();
    for (i, sb) in sbs.iter().enumerate() {
        let gone: Vec<String> = pairs
            .iter()
            .filter_map(|&(a, b)| match (a == i, b == i) {
                (true, _) => Some(b),
                (_, true) => Some(a),
                _ => None,
            })
            .map(|o| paths[o].display().to_string())
            .collect();
        if gone.is_empty() {
            continue;
        }
        lines.push(format!(
            "{}: events {}, last updated {} UTC, records {} as gone",
            paths[i].display(),
            sb.events,
            crate::report::examine::ctime_utc(sb.utime.seconds()),
            gone.join(", ")
        ));
    }
    lines.join("; ")
}

fn same_path(a: &std::path::Path, b: &std::path::Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::array::test_support::member;
    use crate::format::superblock::Superblock;
    use std::path::Path;

    fn opts(run: bool) -> AssembleOptions {
        AssembleOptions {
            io_mode: IoMode::Buffered,
            read_only: false,
            run_degraded: run,
            force_from: None,
        }
    }

    const LEG: u64 = (1 << 16) * 512;

    fn cand(name: &str, sb: Result<Superblock, SuperblockError>) -> Candidate<()> {
        Candidate {
            path: PathBuf::from(name),
            size: LEG,
            sb,
            handle: (),
        }
    }

    fn slots(p: &Plan<()>) -> Vec<u16> {
        p.members.iter().map(|m| m.slot).collect()
    }

    #[test]
    fn a_member_one_event_behind_is_current_two_is_stale() {
        let a = member(0);
        let mut b = member(1);
        b.events -= 1;
        let p = plan(
            vec![cand("a", Ok(a.clone())), cand("b", Ok(b.clone()))],
            &opts(false),
        )
        .expect("one behind is current");
        assert_eq!(slots(&p), vec![0, 1]);
        assert_eq!(p.events, 10);
        b.events -= 1;
        let err = plan(
            vec![cand("a", Ok(a.clone())), cand("b", Ok(b.clone()))],
            &opts(false),
        )
        .err()
        .expect("two behind is stale");
        assert!(err.to_string().contains("stale"), "{err}");
        let p = plan(vec![cand("a", Ok(a)), cand("b", Ok(b))], &opts(true)).unwrap();
        assert_eq!(slots(&p), vec![0]);
    }

    #[test]
    fn a_member_whose_checksum_fails_is_left_out_and_needs_run() {
        let bad = || {
            Err(SuperblockError::BadChecksum {
                stored: 1,
                computed: 2,
            })
        };
        let err = plan(
            vec![cand("a", Ok(member(0))), cand("b", bad())],
            &opts(false),
        )
        .err()
        .expect("slot 1 is missing");
        let text = err.to_string();
        assert!(
            text.contains("b (superblock checksum is wrong") && text.contains("--run"),
            "{text}"
        );
        let p = plan(
            vec![cand("a", Ok(member(0))), cand("b", bad())],
            &opts(true),
        )
        .unwrap();
        assert_eq!(slots(&p), vec![0]);
        assert_eq!(p.left_out.len(), 1);
        // Only bad legs: the first one's error.
        let err = plan(vec![cand("a", bad()), cand("b", bad())], &opts(true))
            .err()
            .unwrap();
        assert!(
            matches!(err, ArrayError::BadSuperblock { ref path, .. } if path == Path::new("a"))
        );
        // Any other parse error refuses the leg, as before.
        let err = plan(
            vec![
                cand("a", Ok(member(0))),
                cand("b", Err(SuperblockError::BadMagic { found: 0 })),
            ],
            &opts(true),
        )
        .err()
        .unwrap();
        assert!(matches!(err, ArrayError::BadSuperblock { .. }), "{err}");
    }

    #[test]
    fn between_equal_events_the_leg_that_recorded_the_other_gone_is_freshest() {
        // b ran alone (recording a removed) up to the events a reached by an
        // update cut short: b's history is the later one, in either order.
        let a = member(0);
        let mut b = member(1);
        b.set_role(0, DevRole::Spare).unwrap();
        for legs in [
            vec![cand("a", Ok(a.clone())), cand("b", Ok(b.clone()))],
            vec![cand("b", Ok(b.clone())), cand("a", Ok(a.clone()))],
        ] {
            let p = plan(legs, &opts(true)).unwrap();
            assert_eq!(slots(&p), vec![1]);
            assert_eq!(p.left_out[0].path, PathBuf::from("a"));
        }
    }

    #[test]
    fn a_spare_never_gives_the_array_its_view() {
        let a = member(0);
        let b = member(1);
        let mut spare = member(1);
        spare.dev_number = 2;
        spare.set_role(2, DevRole::Spare).unwrap();
        spare.raid_disks = 1;
        spare.set_role(1, DevRole::Faulty).unwrap();
        spare.events = 100;
        let p = plan(
            vec![cand("s", Ok(spare)), cand("a", Ok(a)), cand("b", Ok(b))],
            &opts(false),
        )
        .unwrap();
        assert_eq!(slots(&p), vec![0, 1]);
        assert_eq!(p.raid_disks, 2);
    }

    #[test]
    fn a_slot_beyond_the_freshest_raid_disks_is_refused_by_name() {
        let mut a = member(0);
        a.raid_disks = 1;
        a.events = 11;
        let err = plan(
            vec![cand("a", Ok(a)), cand("b", Ok(member(1)))],
            &opts(true),
        )
        .err()
        .unwrap();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                ArrayError::SlotBeyondArray {
                    slot: 1,
                    raid_disks: 1,
                    ..
                }
            ),
            "{text}"
        );
        assert!(
            text.contains("leg b:") && text.contains("freshest superblock (a)"),
            "{text}"
        );
    }

    #[test]
    fn the_array_must_fit_every_members_data_area() {
        let a = member(0);
        let mut b = member(1);
        b.data_size = a.size - 8;
        b.size = b.data_size;
        let err = plan(vec![cand("a", Ok(a)), cand("b", Ok(b))], &opts(true))
            .err()
            .unwrap();
        assert!(
            matches!(err, ArrayError::DataSizeBelowArray { .. }),
            "{err}"
        );
    }

    #[test]
    fn more_legs_than_the_engine_holds_are_refused() {
        let legs: Vec<Candidate<()>> = (0..65)
            .map(|i| cand(&format!("l{i}"), Ok(member(0))))
            .collect();
        let err = plan(legs, &opts(true)).err().unwrap();
        assert!(
            matches!(err, ArrayError::TooManyLegs { given: 65, max: 64 }),
            "{err}"
        );
    }

    #[test]
    fn divergence_needs_each_leg_to_have_dropped_the_other() {
        let a = member(0);
        let b = member(1);
        assert!(!diverged(&a, &b), "both list each other active");
        // a failed b (normal degradation): b is merely stale.
        let mut a_alone = a.clone();
        a_alone.set_role(1, DevRole::Faulty).unwrap();
        a_alone.events = 12;
        assert!(!diverged(&a_alone, &b));
        // b also went on alone, recording a as removed: split brain.
        let mut b_alone = b.clone();
        b_alone.set_role(0, DevRole::Spare).unwrap();
        b_alone.events = 11;
        assert!(diverged(&a_alone, &b_alone));
        assert_eq!(diverged_pairs(&[&a_alone, &b_alone, &a]), vec![(0, 1)]);
        let text = describe_histories(
            &[PathBuf::from("/x/a"), PathBuf::from("/x/b")],
            &[&a_alone, &b_alone],
            &[(0, 1)],
        );
        assert!(
            text.contains("/x/a: events 12") && text.contains("records /x/b as gone"),
            "{text}"
        );
    }
}
