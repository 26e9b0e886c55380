//! The global allocator: mimalloc, asked for a plain `mi_malloc` whenever the alignment asked for
//! is one that every mimalloc block has anyway.
//!
//! The `mimalloc` crate's allocator passes every allocation to `mi_malloc_aligned`. mimalloc
//! serves that from its fast path only for blocks up to 1 KiB; larger ones — a request's future,
//! header maps, read buffers, five or six per proxied request — take a generic path that
//! over-allocates and realigns, several times the cost of `mi_malloc` (docs/performance.md).
//! mimalloc rounds every block to whole machine words, so alignment up to a word needs nothing
//! special; anything stricter still goes through the aligned calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block has.
const WORD: usize = std::mem::size_of::<usize>();

pub struct Allocator;

// SAFETY: each call forwards to mimalloc, which returns blocks of at least `size` bytes aligned to
// a word (the plain calls, used only when the layout asks for no more) or to `align` (the aligned
// calls), or null on failure; `dealloc` and `realloc` receive only blocks mimalloc returned.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size class from a word to past mimalloc's small and medium limits, at every
    /// alignment up to a page: the block is aligned, writable over its whole size, survives a
    /// reallocation with its contents, and is freed.
    #[test]
    fn blocks_are_aligned_writable_and_keep_their_contents_when_grown() {
        let a = Allocator;
        let sizes = (1..=64)
            .map(|w| w * 8)
            .chain([1000, 1024, 1025, 1500, 4096, 70_000, 1 << 20]);
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a layout of non-zero size; the block is used within its size and
                // freed with the layout it was allocated (or reallocated) with.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    std::ptr::write_bytes(p, 0xa5, size);
                    let grown = a.realloc(p, layout, size * 2 + 8);
                    assert!(!grown.is_null());
                    assert_eq!(
                        grown as usize % align,
                        0,
                        "grown: size {size} align {align}"
                    );
                    assert!((0..size).all(|i| *grown.add(i) == 0xa5));
                    a.dealloc(grown, Layout::from_size_align(size * 2 + 8, align).unwrap());

                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
