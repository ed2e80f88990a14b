//! What an idle remote host or server gives back to the system.
//!
//! A host idles far more than it runs, so what it holds between runs is
//! what a machine full of them pays for. Two kinds of pages stay resident
//! after a burst: heap that glibc keeps once freed (anonymous), and the
//! binary's code and read-only data that the runs touched (file-backed:
//! clean copies of the executable that the page cache holds anyway). Both
//! come back on demand: the heap on the next allocation, the code as minor
//! faults from the page cache (the kernel maps 64 KiB around each fault,
//! so a run touching ~20 MB of code takes a few hundred faults, well under
//! a millisecond, once per idle spell).

/// glibc gives each thread that allocates under contention an arena of its
/// own (up to 8 per core) and keeps every arena's freed pages: a host whose
/// runs went through tokio's blocking threads idled with three arenas of
/// 5-13 MB each. Two arenas serve two cores.
///
/// Blocks of 128 KiB and more are mapped on their own and unmapped when
/// freed. That is glibc's default too, but it raises the bound each time
/// such a block is freed (up to 32 MB), after which a run's big buffers
/// land in the heap and leave it fragmented: after its first runs an idle
/// host kept 7-10 MB of heap resident for 2-3 MB in use, which
/// `malloc_trim` could not give back; with the bound fixed its idle RSS fell
/// from 17-17.5 to 14.1-14.5 MB, with runs as fast.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(super) fn cap_malloc_arenas() {
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // the runtime starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(super) fn cap_malloc_arenas() {}

/// Returns the heap freed by finished runs to the system (glibc keeps it
/// otherwise: after its first runs a host's anonymous memory went from
/// 35 MB to 23 MB, 41 to 18 MB with two arenas), and unmaps the binary's
/// clean pages from this process (they stay in the page cache).
pub(crate) fn give_back_freed_memory() {
    trim_heap();
    let dropped_kb = drop_clean_binary_pages();
    tracing::debug!(
        "idle: gave freed memory back to the system ({dropped_kb} KiB of the binary's code unmapped)"
    );
}

/// Returns the heap glibc holds free to the system: the top of each arena
/// and the free pages inside it (compiling a component leaves arenas of
/// 13 MB mostly free).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages the allocator holds.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops from this process's page tables the resident pages of the
/// executable's read-only mappings (its code and constants) that hold no
/// private copy. Returns how many KiB were resident in them.
#[cfg(target_os = "linux")]
fn drop_clean_binary_pages() -> u64 {
    let Ok(exe) = std::env::current_exe() else {
        return 0;
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut dropped_kb = 0;
    for region in clean_read_only_regions(&smaps, &exe.to_string_lossy()) {
        // SAFETY: the region is a private, non-writable mapping of the
        // executable with no anonymous (copied-on-write) page: every page
        // in it equals the file's. MADV_DONTNEED on such a mapping only
        // removes page-table entries; the next access maps the same bytes
        // again from the page cache. Pages that hold private changes (the
        // relocated RELRO data, a debugger's breakpoint) are in regions
        // with anonymous pages, which are skipped.
        let done = unsafe {
            libc::madvise(
                region.start as *mut libc::c_void,
                region.len,
                libc::MADV_DONTNEED,
            )
        };
        if done == 0 {
            dropped_kb += region.resident_kb;
        }
    }
    dropped_kb
}

#[cfg(not(target_os = "linux"))]
fn drop_clean_binary_pages() -> u64 {
    0
}

/// One mapping from `/proc/self/smaps`.
#[derive(Debug, PartialEq, Eq)]
struct Region {
    start: usize,
    len: usize,
    resident_kb: u64,
}

/// The mappings of `exe` in `smaps` that are read-only, private, resident
/// and hold no anonymous page.
fn clean_read_only_regions(smaps: &str, exe: &str) -> Vec<Region> {
    let mut found = Vec::new();
    // (region, read-only private mapping of exe, resident kB, anonymous kB)
    let mut current: Option<(Region, bool, u64, Option<u64>)> = None;
    let mut finish = |current: Option<(Region, bool, u64, Option<u64>)>| {
        if let Some((mut region, ours, resident, Some(0))) = current
            && ours
            && resident > 0
        {
            region.resident_kb = resident;
            found.push(region);
        }
    };
    for line in smaps.lines() {
        if let Some(header) = mapping_header(line) {
            finish(current.take());
            let (start, end, perms, path) = header;
            let ours = path == exe && (perms == "r-xp" || perms == "r--p");
            let region = Region {
                start,
                len: end - start,
                resident_kb: 0,
            };
            current = Some((region, ours, 0, None));
        } else if let Some((_, _, resident, anonymous)) = current.as_mut() {
            let kb = |rest: &str| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            };
            if let Some(rest) = line.strip_prefix("Rss:") {
                *resident = kb(rest).unwrap_or(0);
            } else if let Some(rest) = line.strip_prefix("Anonymous:") {
                *anonymous = kb(rest);
            }
        }
    }
    finish(current);
    found
}

/// `START-END PERMS OFFSET DEV INODE PATH` → (start, end, perms, path).
fn mapping_header(line: &str) -> Option<(usize, usize, &str, &str)> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let _device = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim();
    Some((start, end, perms, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0800000 r--p 00000000 fd:01 123 /opt/weir/host
Size:               8192 kB
Rss:                3000 kB
Anonymous:             0 kB
55d0c0800000-55d0c2000000 r-xp 00800000 fd:01 123 /opt/weir/host
Size:              24576 kB
Rss:               20000 kB
Anonymous:             0 kB
55d0c2000000-55d0c2400000 r--p 02000000 fd:01 123 /opt/weir/host
Size:               4096 kB
Rss:                4000 kB
Anonymous:          4000 kB
55d0c2400000-55d0c2410000 rw-p 02400000 fd:01 123 /opt/weir/host
Size:                 64 kB
Rss:                  64 kB
Anonymous:            64 kB
55d0c2410000-55d0c2420000 r-xp 00000000 fd:01 124 /opt/weir/host-old
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
55d0c2420000-55d0c2430000 r-xp 00000000 fd:01 125 /opt/weir/host
Size:                 64 kB
Rss:                   0 kB
Anonymous:             0 kB
7f0000000000-7f0000100000 r-xp 00000000 00:00 0
Size:               1024 kB
Rss:                1024 kB
Anonymous:          1024 kB
7f0000100000-7f0000200000 r-xp 00000000 fd:01 200 /usr/lib/libc.so.6
Size:               1024 kB
Rss:                1024 kB
Anonymous:             0 kB
";

    /// Only the executable's own read-only mappings without a private page
    /// are dropped: not its relocated data (anonymous pages), not its
    /// writable data, not another file, not anonymous code (a compiled
    /// component), not what is not resident.
    #[test]
    fn only_clean_read_only_mappings_of_the_executable_are_dropped() {
        let regions = clean_read_only_regions(SMAPS, "/opt/weir/host");
        assert_eq!(
            regions,
            [
                Region {
                    start: 0x55d0c0000000,
                    len: 0x800000,
                    resident_kb: 3000
                },
                Region {
                    start: 0x55d0c0800000,
                    len: 0x1800000,
                    resident_kb: 20000
                },
            ]
        );
    }

    /// A mapping whose anonymous count is missing (an older kernel's smaps)
    /// is not known to be clean, so it is kept.
    #[test]
    fn a_mapping_without_an_anonymous_count_is_kept() {
        let smaps =
            "55d0c0800000-55d0c2000000 r-xp 00800000 fd:01 123 /opt/weir/host\nRss: 20000 kB\n";
        assert!(clean_read_only_regions(smaps, "/opt/weir/host").is_empty());
    }

    /// The process's own code survives losing its page-table entries: the
    /// test runs on after the drop and calls into what was dropped.
    #[cfg(target_os = "linux")]
    #[test]
    fn dropping_this_process_code_pages_keeps_it_running() {
        let dropped = drop_clean_binary_pages();
        assert!(dropped > 0, "the test binary's code was resident");
        let regions = clean_read_only_regions(
            &std::fs::read_to_string("/proc/self/smaps").unwrap(),
            &std::env::current_exe().unwrap().to_string_lossy(),
        );
        assert!(!regions.is_empty());
    }
}
