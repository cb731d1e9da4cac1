//! The page store of the raw path: bitmap pages go through the verified
//! block map straight to the block device (O_DIRECT|O_DSYNC), never through
//! the filesystem.

use super::{BitmapError, PageStore};
use crate::blockmap::{BlockMap, HaltGate, RawWriter, PAGE_SIZE};
use crate::io::completion::{Completion, OpFailure};
use parking_lot::Mutex;
use std::sync::Arc;

pub struct RawPageStore {
    /// Taken out at release, so the writer's threads end before the file's
    /// protection is lifted.
    writer: Mutex<Option<RawWriter>>,
    name: String,
}

impl RawPageStore {
    pub fn new(writer: RawWriter) -> Self {
        let name = format!(
            "bitmap {} (raw writes to {})",
            writer.map().file().display(),
            writer.map().device().display()
        );
        RawPageStore {
            writer: Mutex::new(Some(writer)),
            name,
        }
    }

    /// Ends the writer (joining its threads). Later submits fail.
    pub fn close(&self) {
        self.writer.lock().take();
    }

    /// The verified map pages are written through (None once closed).
    pub fn map(&self) -> Option<BlockMap> {
        self.writer.lock().as_ref().map(|w| w.map().clone())
    }

    /// Kicks the bitmap file, as md kicks a failed one, when its map is no
    /// longer trusted: raw writes stop at once (none starts after this),
    /// then `record_stale` runs (it marks the file stale through its
    /// filesystem, so the next assembly resyncs everything). Every page
    /// write, queued or later, waits for that and then completes with its
    /// outcome: `Ok`, nothing written (the array goes on without a bitmap
    /// on disk), or the error (the bitmap turns faulty and writes fail).
    /// Returns that outcome, or None when already kicked or closed.
    pub fn kick(
        &self,
        record_stale: impl FnOnce() -> Result<(), String>,
    ) -> Option<Result<(), String>> {
        let gate = HaltGate::new();
        let halted = match self.writer.lock().as_ref() {
            Some(w) => w.halt(gate.clone()),
            None => false,
        };
        if !halted {
            return None;
        }
        let outcome = record_stale();
        gate.decide(outcome.clone());
        Some(outcome)
    }
}

impl PageStore for RawPageStore {
    fn submit_page(&self, page_index: usize, bytes: &[u8]) -> Arc<Completion> {
        match self.writer.lock().as_ref() {
            Some(w) => w.submit(page_index as u64 * PAGE_SIZE, bytes),
            None => {
                let done = Completion::new(1);
                done.finish(Err(OpFailure {
                    target: page_index,
                    what: format!("{}: page {page_index} written after release", self.name),
                    errno: libc::ESHUTDOWN,
                }));
                done
            }
        }
    }

    fn flush_device(&self) -> Result<(), BitmapError> {
        // Every raw write is O_DSYNC: complete means on stable media.
        Ok(())
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}
