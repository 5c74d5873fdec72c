//! The library's allocator. A record is built from a few dozen small allocations (header names
//! and values, ids); glibc's malloc and free cost ~220 instructions a pair in Envoy's process,
//! mimalloc's thread-local free lists a fraction of that (make profile, docs/performance.md).
//! Only this library's own allocations use it; Envoy keeps its allocator.

use libmimalloc_sys::{mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned};
use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// Every block mimalloc hands out is aligned to a word (its size classes are multiples of
/// one); a layout that asks no more takes the plain entry points, which skip the aligned ones'
/// checks.
const WORD: usize = std::mem::size_of::<usize>();

pub struct Mimalloc;

// SAFETY: mimalloc returns null or a block of at least the size asked, aligned as asked (the
// plain entry points only where the layout's alignment is at most a word, which every block
// has); `mi_free` and `mi_realloc*` take any block mimalloc returned.
unsafe impl GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's contract).
        unsafe {
            if layout.align() <= WORD {
                mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}
