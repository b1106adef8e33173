//! Page advice for a map's fresh output buffer.

use crate::shm::layout::PAGE;
use crate::sys::vm::{advise, Advice};

/// The whole pages inside `[ptr, ptr + bytes)`.
fn whole_pages(ptr: *mut u8, bytes: usize) -> (usize, usize) {
    let start = (ptr as usize).next_multiple_of(PAGE);
    let end = ((ptr as usize + bytes) / PAGE * PAGE).max(start);
    (start, end)
}

/// Below this, a fresh output buffer is left to fault page by page.
const PREFAULT_BYTES: usize = 4 << 20;

/// Faults in a large, fresh output buffer in one call instead of one page
/// fault per 4 KiB as the results are copied in (~1.1 µs each here, more than
/// the copy itself), and asks for huge pages where the kernel allows them.
/// Only advice: if the kernel refuses, the copy faults pages as usual.
pub(crate) fn prefault(ptr: *mut u8, bytes: usize) {
    if bytes < PREFAULT_BYTES {
        return;
    }
    let (start, end) = whole_pages(ptr, bytes);
    for advice in [Advice::HugePages, Advice::PopulateWrite] {
        // [start, end) lies inside the caller's allocation.
        advise(start, end - start, advice);
    }
}
