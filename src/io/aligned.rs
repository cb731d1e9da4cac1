//! Buffers aligned for O_DIRECT, and a per-thread cache of them so the hot
//! path allocates nothing per request.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;

/// Alignment of every buffer: covers 512-byte and 4 KiB logical blocks and
/// the page size.
pub const BUF_ALIGN: usize = 4096;

/// A heap buffer whose start and capacity are multiples of [`BUF_ALIGN`].
pub struct AlignedBuf {
    ptr: *mut u8,
    cap: usize,
}

// The buffer is plain memory owned by one AlignedBuf.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of at least `len` bytes (rounded up to the alignment).
    pub fn new(len: usize) -> Self {
        let cap = round_up(len.max(1), BUF_ALIGN);
        let layout = Layout::from_size_align(cap, BUF_ALIGN).expect("valid layout");
        // SAFETY: the layout has non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, cap }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap bytes for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.cap) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.cap) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, BUF_ALIGN).expect("valid layout");
        // SAFETY: allocated in new() with this layout.
        unsafe { dealloc(self.ptr, layout) };
    }
}

pub fn round_up(v: usize, align: usize) -> usize {
    v.div_ceil(align) * align
}

thread_local! {
    static SCRATCH: RefCell<Option<AlignedBuf>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's scratch buffer, grown to at least `len` bytes.
/// The buffer lives as long as the thread, so request handlers reuse it.
/// Not re-entrant: `f` must not call `with_scratch` again.
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut AlignedBuf) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|b| b.capacity() < len) {
            *slot = Some(AlignedBuf::new(len));
        }
        f(slot.as_mut().expect("scratch buffer just ensured"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_sized() {
        let b = AlignedBuf::new(5000);
        assert_eq!(b.capacity(), 8192);
        assert_eq!(b.as_slice().as_ptr() as usize % BUF_ALIGN, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
    }

    #[test]
    fn scratch_is_reused_and_grows() {
        let p1 = with_scratch(4096, |b| b.as_slice().as_ptr() as usize);
        let p2 = with_scratch(100, |b| b.as_slice().as_ptr() as usize);
        assert_eq!(p1, p2);
        let cap = with_scratch(1 << 20, |b| b.capacity());
        assert!(cap >= 1 << 20);
    }
}
