//! The memory allocator of the fleet's worker binaries and the bench: [mimalloc](https://github.com/microsoft/mimalloc)
//! (the `mimalloc` crate, v3). A binary declares it and calls [`init`] first thing in `main`:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: fleet_allocator::Allocator = fleet_allocator::Allocator;
//!
//! fn main() -> std::process::ExitCode {
//!     fleet_allocator::init();
//!     fleet_runtime::worker::main::<MyWorker>()
//! }
//! ```
//!
//! Only those binaries depend on this crate (fleetctl, the examples and the test binaries stay on
//! libc's allocator): built with `override`, mimalloc replaces `malloc` and
//! `free` for the whole process — the C code linked into it (libSQL's SQLite, whose
//! allocations are most of a tenant step's) and libc's own — so one allocator owns the whole
//! heap, and a library (`fleet-client`, which other services embed) must not impose that on
//! its callers.
//!
//! Transparent huge pages are off for the process ([`init`]): with them, each thread's heap
//! holds 2 MiB pages and an idle worker's resident set grows by ~9 MiB. `no_thp` keeps
//! mimalloc from asking for them (`madvise(MADV_HUGEPAGE)`, what a host with THP set to
//! `madvise` needs); a host set to `always` gives them unasked, which [`init`] turns off.
//!
//! Why mimalloc: with glibc's allocator, `malloc`/`free` (arena locks, `malloc_consolidate`)
//! were ~18 % of the provisioner's CPU. With this one, measured by `just bench` on tmpfs with
//! alternating binaries: CPU per tenant −13 to −18 % provisioning, −7 to −9 % deploy v1, −9 to
//! −16 % deploy v2; an idle worker's resident set within ~1 MiB of glibc's, its peak a few
//! MiB above (`bench/README.md`). The bench's raw floors run on the same allocator, so a ratio
//! compares the same SQLite work.

/// The global allocator type (`mimalloc::MiMalloc`, a unit struct: the type and its value).
pub use mimalloc::MiMalloc as Allocator;

/// Sets the process up for its allocator: transparent huge pages off (`prctl(PR_SET_THP_DISABLE)`,
/// Linux; the kernel applies it to the whole process and its children). A failure (a kernel
/// without the call) leaves the host's setting and is not an error: the process runs the same,
/// with a larger resident set on a host whose THP setting is `always`. Memory the allocator
/// touched before `main` (its first pages, a few MiB at most) may already be in huge pages on
/// such a host, and stays so.
pub fn init() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}
