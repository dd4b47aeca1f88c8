//! Giving memory back after a deploy, so that an idle daemon holds what polling needs, not what
//! the last download, unpack and restart needed:
//!
//! - the heap its buffers and the unpacking threads grew (`malloc_trim`);
//! - the pages of drover's own code and read-only data it mapped on the way. A deploy runs code
//!   all over the binary, and the kernel maps a file page fault 64 KiB at a time (fault-around),
//!   so after one nearly the whole image stays mapped. These are clean pages of the binary's
//!   file: `MADV_DONTNEED` unmaps them from this process and leaves them in the page cache, and
//!   the next poll maps back the ones it runs (a minor fault each, no I/O). Only segments
//!   without write permission are touched: whatever was relocated or written at run time lives
//!   in writable segments, which keep their contents.

/// Returns the heap's free pages and unmaps the executable's read-only segments.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        trim_heap();
        unmap_read_only_image();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointers; it only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// ELF program header values (the ELF specification's, the same on every architecture).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const PT_LOAD: u32 = 1;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const PF_W: u32 = 2;

/// Page-aligned `(start, length)` of each loaded segment of the executable without write
/// permission: code, read-only data, the relocation tables.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn read_only_segments() -> Vec<(usize, usize)> {
    use std::ffi::c_void;

    extern "C" fn first_object(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        out: *mut c_void,
    ) -> libc::c_int {
        #[allow(unsafe_code)]
        // SAFETY: dl_iterate_phdr hands a valid info for the duration of the call, whose
        // dlpi_phdr points at dlpi_phnum program headers; `out` is the Vec passed below.
        unsafe {
            let info = &*info;
            let out = &mut *(out as *mut Vec<(usize, usize)>);
            let page = page_size();
            let headers = std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum));
            for h in headers {
                if h.p_type != PT_LOAD || h.p_flags & PF_W != 0 {
                    continue;
                }
                let start = info.dlpi_addr as usize + h.p_vaddr as usize;
                let end = start + h.p_memsz as usize;
                // Whole pages only, inside the segment: a page shared with a writable segment
                // is left alone.
                let (first, last) = (start.next_multiple_of(page), end / page * page);
                if last > first {
                    out.push((first, last - first));
                }
            }
        }
        // The first object is the executable: stop there.
        1
    }

    let mut segments: Vec<(usize, usize)> = Vec::new();
    #[allow(unsafe_code)]
    // SAFETY: the callback only reads the headers it is given and writes into `segments`,
    // which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(
            Some(first_object),
            &mut segments as *mut Vec<(usize, usize)> as *mut c_void,
        );
    }
    segments
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn page_size() -> usize {
    #[allow(unsafe_code)]
    // SAFETY: sysconf takes no pointers.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn unmap_read_only_image() {
    for (start, len) in read_only_segments() {
        #[allow(unsafe_code)]
        // SAFETY: the range is whole pages of a loaded, non-writable segment of this
        // executable: file-backed pages never written, so dropping them from this process
        // loses nothing; the next access maps them again from the page cache.
        let done = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if done != 0 {
            tracing::debug!(target: "drover", event = crate::events::Event::Trace.as_str(), start, len,
                "madvise(MADV_DONTNEED) of a read-only segment failed: {}",
                std::io::Error::last_os_error());
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// The code and read-only data are found, and unmapping them leaves the process working:
    /// what it runs next is mapped back.
    #[test]
    fn the_read_only_image_is_found_and_can_be_given_back() {
        let segments = read_only_segments();
        assert!(!segments.is_empty());
        let here = the_read_only_image_is_found_and_can_be_given_back as *const () as usize;
        assert!(
            segments.iter().any(|&(s, l)| (s..s + l).contains(&here)),
            "this function's code is in none of {segments:x?}"
        );
        static TABLE: [u64; 4] = [1, 2, 3, 4];
        give_back();
        assert_eq!(TABLE.iter().sum::<u64>(), 10);
        give_back();
        assert_eq!(format!("{}", 6 * 7), "42");
    }
}
