//! Page stores: ordinary file I/O (container fallback) and memory (tests).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{BitmapError, PageStore};
use crate::format::bitmap::BITMAP_PAGE_SIZE;
use crate::io::completion::{Completion, OpFailure};

/// Writes pages with pwrite + fdatasync through the filesystem. Used only when
/// raw device writes are impossible (containers, `--bitmap-file-io`).
pub struct FilePageStore {
    file: File,
    path: PathBuf,
}

impl FilePageStore {
    pub fn open(path: &Path) -> Result<Self, BitmapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| {
                BitmapError::io(
                    format!("bitmap FILE {}: cannot open for writing", path.display()),
                    e,
                )
            })?;
        log::warn!(
            "bitmap FILE {}: using ordinary file I/O (--bitmap-file-io), not raw device writes",
            path.display()
        );
        Ok(FilePageStore::from_file(file, path))
    }

    /// Over a descriptor the caller opened (read-write) and checked.
    pub fn from_file(file: File, path: &Path) -> Self {
        FilePageStore {
            file,
            path: path.to_path_buf(),
        }
    }
}

impl PageStore for FilePageStore {
    fn submit_page(&self, page_index: usize, bytes: &[u8]) -> Arc<Completion> {
        let done = Completion::new(1);
        let offset = (page_index * BITMAP_PAGE_SIZE) as u64;
        let result = self
            .file
            .write_all_at(bytes, offset)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| OpFailure {
                target: page_index,
                what: format!(
                    "bitmap FILE {} page {} (offset {}, {} bytes)",
                    self.path.display(),
                    page_index,
                    offset,
                    bytes.len()
                ),
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            });
        done.finish(result);
        done
    }

    fn flush_device(&self) -> Result<(), BitmapError> {
        self.file.sync_data().map_err(|e| {
            BitmapError::io(format!("bitmap FILE {}: fdatasync", self.path.display()), e)
        })
    }

    fn describe(&self) -> String {
        format!("bitmap FILE {} (ordinary file I/O)", self.path.display())
    }
}

type CompletionHook = Box<dyn Fn(usize, &[u8]) + Send + Sync>;

/// An in-memory store for tests: keeps the durable file image, counts
/// submits, and can delay or fail writes.
pub struct MemPageStore {
    image: Mutex<Vec<u8>>,
    submits: AtomicUsize,
    delay: Mutex<Duration>,
    failures_left: Mutex<(usize, i32)>,
    on_complete: Mutex<Option<CompletionHook>>,
}

impl MemPageStore {
    /// A store whose durable content starts as `image` (the whole file).
    pub fn new(image: Vec<u8>) -> Arc<Self> {
        Arc::new(MemPageStore {
            image: Mutex::new(image),
            submits: AtomicUsize::new(0),
            delay: Mutex::new(Duration::ZERO),
            failures_left: Mutex::new((0, 0)),
            on_complete: Mutex::new(None),
        })
    }

    /// The durable file image.
    pub fn image(&self) -> Vec<u8> {
        self.image.lock().clone()
    }

    /// Pages submitted so far.
    pub fn submits(&self) -> usize {
        self.submits.load(Ordering::SeqCst)
    }

    /// Every later write takes this long before it lands.
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock() = delay;
    }

    /// The next `count` writes fail with `errno` and change nothing.
    pub fn fail_next(&self, count: usize, errno: i32) {
        *self.failures_left.lock() = (count, errno);
    }

    /// Called with (page, whole durable image) each time a write lands, just
    /// before its completion finishes.
    pub fn set_on_complete(&self, hook: impl Fn(usize, &[u8]) + Send + Sync + 'static) {
        *self.on_complete.lock() = Some(Box::new(hook));
    }
}

impl PageStore for MemPageStore {
    fn submit_page(&self, page_index: usize, bytes: &[u8]) -> Arc<Completion> {
        self.submits.fetch_add(1, Ordering::SeqCst);
        let done = Completion::new(1);
        let delay = *self.delay.lock();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let fail_errno = {
            let mut f = self.failures_left.lock();
            if f.0 > 0 {
                f.0 -= 1;
                Some(f.1)
            } else {
                None
            }
        };
        if let Some(errno) = fail_errno {
            done.finish(Err(OpFailure {
                target: page_index,
                what: format!("memory bitmap page {page_index}"),
                errno,
            }));
            return done;
        }
        {
            let mut image = self.image.lock();
            let start = page_index * BITMAP_PAGE_SIZE;
            if image.len() < start + bytes.len() {
                image.resize(start + bytes.len(), 0);
            }
            image[start..start + bytes.len()].copy_from_slice(bytes);
            if let Some(hook) = self.on_complete.lock().as_ref() {
                hook(page_index, &image);
            }
        }
        done.finish(Ok(()));
        done
    }

    fn flush_device(&self) -> Result<(), BitmapError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "memory bitmap store".to_string()
    }
}
