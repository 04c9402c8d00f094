//! Giving memory back to the system once an update is applied.
//!
//! Applying a full snapshot allocates far more than it keeps: the decoded
//! configuration and the decoder's temporaries are tens of MB at 100,000
//! routes, and are freed once the runtime is compiled. mimalloc keeps freed
//! pages resident and returns them only after a delay, and only when a
//! later allocation or free passes by; a data plane whose traffic runs on
//! other threads (or that is idle) would keep them. [`release_freed`] asks
//! for them back at once, on the thread that applied the update.

/// Returns the calling thread's empty pages and every page freed so far to
/// the system. Costs a walk over this thread's pages: call it after an
/// update, never on the request path.
pub fn release_freed() {
    // SAFETY: `mi_collect` has no preconditions: any thread may call it at
    // any time. Where mimalloc is not the global allocator (the library's
    // tests) it tidies mimalloc's own, unused, heap.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true)
    }
}
