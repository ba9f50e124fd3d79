//! The allocation probe: the test binary's global allocator, which records the largest
//! single allocation made on each thread, and the bound a reader's allocations must
//! stay within.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use telehub::ws::Config;

/// Records the largest single allocation made on each thread. Forwards everything to
/// the system allocator unchanged.
struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    // A const-initialised Cell needs no destructor and never allocates; `try_with` only
    // guards against use during thread teardown.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every method forwards to `System` with the caller's arguments; the only extra
// work is `record`, which neither allocates nor touches the memory handed out.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// `f`'s result and the largest allocation it made on this thread.
pub(crate) fn with_largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// What a reader may allocate at once: its buffers hold at most a frame and a message
/// (plus a read chunk), and vector growth may double each; zlib's state and window are
/// a fixed cost independent of the limits. Anything that inflates a bomb before checking
/// its size blows far past this.
pub(crate) fn allocation_bound(config: &Config) -> usize {
    4 * (config.max_frame_size + config.max_message_size + (8 << 10)) + (256 << 10)
}
