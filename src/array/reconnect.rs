//! Remote legs come back by themselves. A faulty leg on an NBD server
//! (failed at once on a timeout, EOF or error, while another in-sync leg
//! remained: the engine's usual path) is reconnected in the background,
//! on the array's thread: a probe thread connects and reads the leg's
//! superblock, tries spaced by exponential backoff with jitter (1 s
//! doubling to 60 s, each wait drawn from its upper half), never a loop at
//! full speed. Once the server answers, the leg goes back through the
//! array's own re-add (`dev-*/state` = `re-add`): its superblock must name
//! this array and this slot with no newer events, and its recovery copies
//! only the chunks the bitmap holds dirty where md's rule allows. A leg
//! whose superblock no longer belongs (another array, another slot, a
//! diverged history) is not re-added; the log says why, once per reason,
//! and tries go on at the longest spacing (the operator may restart the
//! server on the right image, or remove the leg: a removed leg is no
//! longer tried).
//!
//! An in-sync remote leg whose connection died with no I/O under way (the
//! connection's keepalive probe went unanswered) is failed here, as an I/O
//! error would fail it, so an idle array notices a lost server too.
//!
//! What an operator sees of a remote leg, under `md/dev-NAME/remote/`
//! ([`REMOTE_FILES`]) and in `mdfuse detail`: its URI, the link's state
//! (`connected`, `lost`, `reconnecting`, `refused`), the reason, the tries
//! since it was lost, the round trip, the time since the last flush.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::running::RunningArray;
use crate::raid1::LegState;

/// The first wait, and the longest.
const FIRST: Duration = Duration::from_secs(1);
const LONGEST: Duration = Duration::from_secs(60);

/// One faulty remote leg being reconnected.
#[derive(Debug)]
struct Pending {
    /// The leg's name (its URI), to notice a different leg in the slot.
    path: std::path::PathBuf,
    attempts: u32,
    next: Instant,
    /// A probe under way: Ok once the server answered with a superblock.
    probe: Option<JoinHandle<Result<(), String>>>,
    /// The last refusal logged (logged again only when it changes).
    refused: Option<String>,
    /// Why the last try failed.
    last_failure: Option<String>,
}

/// The reconnect state of an array's slots (the array's thread changes it;
/// the control files read it).
#[derive(Debug, Default)]
pub struct Reconnects {
    slots: Vec<Option<Pending>>,
}

/// The wait before try `attempts + 1`: FIRST doubled per try, at most
/// LONGEST, drawn uniformly from its upper half (`jitter` in 0..=1).
pub fn backoff(attempts: u32, jitter: f64) -> Duration {
    let full = FIRST
        .checked_mul(1u32.checked_shl(attempts.min(16)).unwrap_or(u32::MAX))
        .unwrap_or(LONGEST)
        .min(LONGEST);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

fn jitter() -> f64 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, libc::GRND_NONBLOCK) };
    if n != 4 {
        return 0.5;
    }
    f64::from(u32::from_ne_bytes(b)) / f64::from(u32::MAX)
}

impl RunningArray {
    /// One look at the array's remote legs (from the array's thread):
    /// starts, follows and ends their reconnects.
    pub(super) fn reconnect_remote_legs(&self, now: Instant) {
        let mut r = self.reconnects.lock();
        let slots = self.engine().slots();
        if r.slots.len() < slots.len() {
            r.slots.resize_with(slots.len(), || None);
        }
        for (i, s) in slots.iter().enumerate() {
            // A connection found dead while idle (its keepalive probe went
            // unanswered) fails its leg as an I/O error would.
            if matches!(s.state(), LegState::InSync | LegState::Recovering) {
                let dead = s
                    .io()
                    .and_then(|io| io.leg().link_status())
                    .and_then(|l| l.dead);
                if let Some(why) = dead {
                    // The last in-sync leg stays (md's rule); its next I/O
                    // error goes to the user.
                    let _ = self
                        .engine()
                        .fail_leg(i, &format!("its connection is lost ({why})"));
                }
            }
            let remote_faulty = s.state() == LegState::Faulty
                && s.io().is_some_and(|io| io.leg().locator().is_remote());
            if !remote_faulty || super::served::ServedArray::read_only(self) {
                r.slots[i] = None;
                continue;
            }
            let Some(path) = s.io().map(|io| io.leg().path().to_path_buf()) else {
                continue;
            };
            let p = match &mut r.slots[i] {
                Some(p) if p.path == path => p,
                other => {
                    let wait = backoff(0, jitter());
                    log::warn!(
                        "leg {} is faulty: reconnecting in the background (first try in {:.1} s)",
                        path.display(),
                        wait.as_secs_f64()
                    );
                    other.insert(Pending {
                        path,
                        attempts: 0,
                        next: now + wait,
                        probe: None,
                        refused: None,
                        last_failure: None,
                    })
                }
            };
            self.follow(i, p, now);
            if self.engine().slots()[i].state() != LegState::Faulty {
                r.slots[i] = None;
            }
        }
    }

    fn follow(&self, slot: usize, p: &mut Pending, now: Instant) {
        if let Some(probe) = &p.probe {
            if !probe.is_finished() {
                return;
            }
            let answered = p.probe.take().map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("the probe panicked".into()))
            });
            p.attempts = p.attempts.saturating_add(1);
            match answered {
                Some(Ok(())) => self.try_re_add(slot, p, now),
                Some(Err(why)) => {
                    p.last_failure = Some(why.clone());
                    let wait = backoff(p.attempts, jitter());
                    log::info!(
                        "leg {}: reconnect try {} failed: {why}; next in {:.1} s",
                        p.path.display(),
                        p.attempts,
                        wait.as_secs_f64()
                    );
                    p.next = now + wait;
                }
                None => {}
            }
            return;
        }
        if now < p.next {
            return;
        }
        if self.sync_progress().is_some() {
            // A sync runs (over other legs): wait for it.
            p.next = now + FIRST;
            return;
        }
        let path = p.path.clone();
        let mode = self.engine().slots()[slot]
            .io()
            .map(|io| io.leg().mode())
            .unwrap_or(crate::io::leg::IoMode::Direct);
        let spawned = std::thread::Builder::new()
            .name("nbd-reconnect".into())
            .spawn(move || {
                let leg = crate::io::leg::Leg::open(&path, mode, false, false)
                    .map_err(|e| e.to_string())?;
                super::superblocks::read_superblock_block(&leg)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        match spawned {
            Ok(h) => p.probe = Some(h),
            Err(e) => {
                log::warn!("leg {}: cannot start a reconnect: {e}", p.path.display());
                p.next = now + LONGEST;
            }
        }
    }

    /// The server answered: the leg goes back through re-add, or is
    /// refused with the reason.
    fn try_re_add(&self, slot: usize, p: &mut Pending, now: Instant) {
        let result = self.check_re_add(slot).and_then(|path| {
            self.remove(slot)?;
            self.add_leg(&path, true)
        });
        match result {
            Ok(_) => log::warn!(
                "leg {}: the server is back after {} tries; re-added",
                p.path.display(),
                p.attempts
            ),
            Err(e) => {
                let why = e.to_string();
                if p.refused.as_deref() != Some(why.as_str()) {
                    log::error!(
                        "leg {}: the server answers, but the leg is not re-added: {why}",
                        p.path.display()
                    );
                    p.refused = Some(why);
                }
                p.next = now + backoff(u32::MAX, jitter());
            }
        }
    }
}

/// The files under `md/dev-NAME/remote/` of a remote leg.
pub const REMOTE_FILES: &[&str] = &[
    "uri",
    "link",
    "reason",
    "reconnect_attempts",
    "next_try_ms",
    "rtt_us",
    "last_flush_ms",
    "in_flight",
];

/// A duration in whole milliseconds, or `none`.
fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "none".into(), |d| d.as_millis().to_string())
}

impl RunningArray {
    /// The value of `md/dev-NAME/remote/ATTR` for the leg in `slot`; None
    /// for a local leg or an unknown name.
    pub(super) fn remote_value(&self, slot: usize, attr: &str) -> Option<String> {
        let s = self.engine().slots().get(slot)?;
        let io = s.io()?;
        if !io.leg().locator().is_remote() {
            return None;
        }
        let link = io.leg().link_status()?;
        let r = self.reconnects.lock();
        let pending = r.slots.get(slot).and_then(Option::as_ref);
        let now = Instant::now();
        let up = matches!(s.state(), LegState::InSync | LegState::Recovering);
        Some(match attr {
            "uri" => io.leg().path().display().to_string(),
            "link" => match (up, &link.dead, pending) {
                (true, None, _) => "connected",
                (_, _, Some(p)) if p.refused.is_some() => "refused",
                (false, _, Some(_)) => "reconnecting",
                _ => "lost",
            }
            .into(),
            "reason" => pending
                .and_then(|p| p.refused.clone().or_else(|| p.last_failure.clone()))
                .or(link.dead)
                .unwrap_or_default(),
            "reconnect_attempts" => pending.map_or(0, |p| p.attempts).to_string(),
            "next_try_ms" => ms(pending
                .filter(|p| p.probe.is_none())
                .map(|p| p.next.saturating_duration_since(now))),
            "rtt_us" => link
                .rtt
                .map_or_else(|| "none".into(), |d| d.as_micros().to_string()),
            "last_flush_ms" => ms(link.since_flush),
            "in_flight" => link.in_flight.to_string(),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_ceiling_with_jitter_in_the_upper_half() {
        assert_eq!(backoff(0, 1.0), FIRST);
        assert_eq!(backoff(0, 0.0), FIRST / 2);
        assert_eq!(backoff(3, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(6, 1.0), LONGEST);
        assert_eq!(backoff(u32::MAX, 1.0), LONGEST);
        assert_eq!(backoff(u32::MAX, 0.0), LONGEST / 2);
        for a in 0..40 {
            let j = jitter();
            assert!((0.0..=1.0).contains(&j));
            let d = backoff(a, j);
            assert!(d >= FIRST / 2 && d <= LONGEST, "{a}: {d:?}");
        }
    }
}
