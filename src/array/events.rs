//! md's events for a running array, in `mdadm --monitor`'s words, told at
//! the moment they happen (a leg's failure in the engine, a sync's start in
//! the sync machinery, its end and a recovered leg's join in the sync's
//! sink): a listener (the daemon's event log) misses none, however quickly
//! they follow each other, and hears each once.

use parking_lot::Mutex;
use std::sync::Arc;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MdEvent {
    /// An in-sync leg failed.
    Fail { leg: String },
    /// A leg being recovered failed.
    FailSpare { leg: String },
    /// A recovered leg joined the array in sync.
    SpareActive { leg: String },
    /// A resync, recovery, check or repair started.
    RebuildStarted,
    /// It ended: completed, stopped or failed.
    RebuildFinished,
}

impl MdEvent {
    /// mdadm's name for the event.
    pub fn name(&self) -> &'static str {
        match self {
            MdEvent::Fail { .. } => "Fail",
            MdEvent::FailSpare { .. } => "FailSpare",
            MdEvent::SpareActive { .. } => "SpareActive",
            MdEvent::RebuildStarted => "RebuildStarted",
            MdEvent::RebuildFinished => "RebuildFinished",
        }
    }

    /// The leg it concerns (its short name), if any.
    pub fn leg(&self) -> Option<&str> {
        match self {
            MdEvent::Fail { leg } | MdEvent::FailSpare { leg } | MdEvent::SpareActive { leg } => {
                Some(leg)
            }
            MdEvent::RebuildStarted | MdEvent::RebuildFinished => None,
        }
    }
}

/// Who is told of the events: called on the thread where the event
/// happened, sometimes under the engine's locks, so it must be quick (send
/// it on a channel).
pub type Listener = Arc<dyn Fn(&MdEvent) + Send + Sync>;

/// The running array's listener, shared with the parts that tell events.
#[derive(Default)]
pub(super) struct Listeners(Mutex<Option<Listener>>);

impl Listeners {
    pub(super) fn set(&self, listener: Option<Listener>) {
        *self.0.lock() = listener;
    }

    pub(super) fn tell(&self, event: MdEvent) {
        let listener = self.0.lock().clone();
        if let Some(l) = listener {
            l(&event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_hears_each_event_once_in_order() {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let l = Listeners::default();
        l.tell(MdEvent::RebuildStarted);
        let h = heard.clone();
        l.set(Some(Arc::new(move |e: &MdEvent| h.lock().push(e.clone()))));
        l.tell(MdEvent::Fail { leg: "a".into() });
        l.tell(MdEvent::RebuildFinished);
        assert_eq!(
            *heard.lock(),
            [MdEvent::Fail { leg: "a".into() }, MdEvent::RebuildFinished]
        );
        assert_eq!(heard.lock()[0].leg(), Some("a"));
        assert_eq!(heard.lock()[1].name(), "RebuildFinished");
    }
}
