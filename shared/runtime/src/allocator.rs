//! The memory allocator of every fleet process: [mimalloc](https://github.com/microsoft/mimalloc)
//! (the `mimalloc` crate, v3), declared by each binary as its global allocator:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: fleet_runtime::allocator::Allocator = fleet_runtime::allocator::Allocator;
//! ```
//!
//! Built with `override`, it also serves the C code linked into the binary — libSQL's SQLite,
//! whose `malloc`/`free` are most of a tenant step's allocations — and libc's own, so one
//! allocator owns the whole heap (memory from one is never freed by the other). Built with
//! `no_thp`, the process asks the kernel for no transparent huge pages (`PR_SET_THP_DISABLE`):
//! with them, each thread's heap holds 2 MiB pages and an idle worker's resident set grows from
//! ~16 MiB to ~25 MiB.
//!
//! Why: with glibc's allocator, `malloc`/`free` (arena locks, `malloc_consolidate`) were ~18 %
//! of the provisioner's CPU. With this one, measured by `just bench` on tmpfs with alternating
//! binaries: CPU per tenant −13 to −18 % provisioning, −7 to −9 % deploy v1, −9 to −16 % deploy
//! v2; an idle worker's resident set within ~1 MiB of glibc's, its peak a few MiB above
//! (`bench/README.md`). The bench's raw floors run on the same allocator, so a ratio compares
//! the same SQLite work.

/// The global allocator type (`mimalloc::MiMalloc`, a unit struct: the type and its value).
pub use mimalloc::MiMalloc as Allocator;
