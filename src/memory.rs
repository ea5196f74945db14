//! Giving memory back between syncs. A sync of thousands of objects allocates tens of MiB for a
//! moment (the inventory, parsed manifests); glibc keeps what is freed in per-thread arenas, so a
//! controller's resident memory would settle near its largest sync instead of near what it holds.
//! Fewer arenas and a trim after each sync keep it close to what it needs (docs/performance.md).

/// Limits glibc to `arenas` malloc arenas (the default is eight per core). Call once, early.
pub fn limit_arenas(arenas: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; M_ARENA_MAX takes any positive count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
}

/// Returns freed memory of every arena to the system.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
