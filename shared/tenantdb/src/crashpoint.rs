//! Named crash points, for crash-consistency tests of the real binaries.
//!
//! Every file-system step of the local backend that a crash could interrupt calls
//! [`reached`] with its name (`create_database.record_synced`, `issue_token.record_replaced`, …;
//! the full list is [`LOCAL_POINTS`]). When the process was started with
//! `FLEET_CRASH_POINT=<that name>`, it aborts right there — no destructors, no flushing, the same
//! as a `SIGKILL` at that instant — after one line on stderr saying which point fired, so a test
//! can tell "crashed at the point" from "crashed for another reason". Unset (production), a call
//! costs one comparison against a value read once.

use std::sync::LazyLock;

/// The environment variable that arms one crash point.
pub const ENV: &str = "FLEET_CRASH_POINT";

/// The armed point, read once.
static ARMED: LazyLock<Option<String>> =
    LazyLock::new(|| std::env::var(ENV).ok().filter(|p| !p.is_empty()));

/// Every crash point of the local backend, in the order a provisioning passes them:
/// `create_database` (the record created under its own name — exclusively — and written, then
/// synced; the database file written from the empty WAL-mode image, then synced; the directory
/// synced) then `issue_token` (the new record in a temp file, synced, renamed over the old one,
/// the directory synced). `rotate_tokens` has the same four record points under its own name.
pub const LOCAL_POINTS: &[&str] = &[
    "create_database.record_written",
    "create_database.record_synced",
    "create_database.database_written",
    "create_database.database_created",
    "create_database.directory_synced",
    "issue_token.temp_written",
    "issue_token.temp_synced",
    "issue_token.record_replaced",
    "issue_token.directory_synced",
];

/// Aborts the process when `point` is the armed crash point.
pub fn reached(point: &str) {
    if ARMED.as_deref() == Some(point) {
        eprintln!("crash point {point} reached: aborting ({ENV})");
        std::process::abort();
    }
}

/// Aborts the process when the armed crash point is `<point>:<entity>` (a crash at one
/// tenant's step: `deploy.tenant:acme`), with no allocation when it is not.
pub fn reached_for(point: &str, entity: &str) {
    let Some(armed) = ARMED.as_deref() else {
        return;
    };
    if armed
        .strip_prefix(point)
        .and_then(|rest| rest.strip_prefix(':'))
        == Some(entity)
    {
        eprintln!("crash point {armed} reached: aborting ({ENV})");
        std::process::abort();
    }
}
