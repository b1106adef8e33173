//! Where the executable's own code lies: the one range of addresses whose
//! functions exist, at the same offsets, in every process of this program
//! (a re-executed worker maps the same file).

// Unsafe code: the loader's program headers, through dl_iterate_phdr.
#![allow(unsafe_code)]

use std::sync::OnceLock;

/// The address range of the main executable's code, from its program headers.
pub(crate) fn text() -> (usize, usize) {
    static TEXT: OnceLock<(usize, usize)> = OnceLock::new();
    *TEXT.get_or_init(|| {
        unsafe extern "C" fn visit(
            info: *mut libc::dl_phdr_info,
            _size: libc::size_t,
            data: *mut libc::c_void,
        ) -> libc::c_int {
            // SAFETY: what the loader hands a callback is valid for the call:
            // the info, and in it `dlpi_phdr`, `dlpi_phnum` program headers;
            // `data` is our `(usize, usize)`.
            let (info, headers, range) = unsafe {
                let info = &*info;
                let headers = match info.dlpi_phnum {
                    0 => &[][..],
                    n => std::slice::from_raw_parts(info.dlpi_phdr, n as usize),
                };
                (info, headers, &mut *data.cast::<(usize, usize)>())
            };
            for ph in headers {
                if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
                    let start = info.dlpi_addr as usize + ph.p_vaddr as usize;
                    range.0 = range.0.min(start);
                    range.1 = range.1.max(start + ph.p_memsz as usize);
                }
            }
            1 // the first object is the main executable: stop there
        }
        let mut range = (usize::MAX, 0usize);
        // SAFETY: `visit` matches the callback signature and only writes `range`.
        unsafe { libc::dl_iterate_phdr(Some(visit), (&mut range as *mut (usize, usize)).cast()) };
        range
    })
}
