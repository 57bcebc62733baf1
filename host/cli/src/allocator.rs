//! The process allocator: mimalloc, tuned to give memory back.
//!
//! mimalloc instead of the system allocator: under load, glibc malloc was
//! a tenth of the server's CPU time (see BENCHMARKS.md). Its defaults keep
//! what it once took: compiling the plugins at a first start (cranelift's
//! buffers) left ~65 MB resident in an idle server. Arenas committed on
//! demand (so that freed memory can be decommitted) and one collection
//! once start-up is over bring idle RSS back to what the server holds.

use libmimalloc_sys::{mi_collect, mi_option_set, mi_option_t};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc 3's option enum.
const ARENA_EAGER_COMMIT: mi_option_t = 4;

/// Sets the options before the first allocation: mimalloc reserves its
/// first arena then, so `main` is too late. An ELF constructor runs before
/// Rust's runtime allocates anything.
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_BEFORE_MAIN: extern "C" fn() = tune;

extern "C" fn tune() {
    // SAFETY: plain option setters of the linked mimalloc.
    unsafe {
        mi_option_set(ARENA_EAGER_COMMIT, 0);
    }
}

/// Returns freed memory to the OS (after start-up's compilations).
pub fn release_unused() {
    // SAFETY: mi_collect may be called from any thread at any time.
    unsafe { mi_collect(true) }
}
