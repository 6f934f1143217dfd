//! Work due later, as JetStream message schedules (ADR-51, nats-server ≥ 2.12).
//!
//! A worker that must do something at a later time (a tenant's deletion after its grace
//! period) never holds the delivery for it — a nak with a long delay keeps the message
//! ack-pending and, once `max_ack_pending` of them wait, stops every other message on the
//! consumer. Instead it acknowledges the command and publishes a *schedule*: a message on
//! `<area>.schedule.<id>` carrying `Nats-Schedule: @at <time>` and `Nats-Schedule-Target`. The
//! server keeps it in the work stream (durably, across restarts of the server and of every
//! worker) and, when due, publishes its payload to the target subject inside the same stream,
//! where the worker's consumer picks it up like any command. The consumer's filter excludes
//! the schedule subjects: acknowledging a schedule would cancel it.
//!
//! One schedule per subject: publishing again to the same schedule subject replaces it, so a
//! retried or repeated scheduling leaves one. A time in the past fires at once.

use async_nats::HeaderMap;
use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;

use crate::Subjects;
use crate::publish::{PublishError, Published, Publisher};

/// The header naming when a schedule fires.
pub const SCHEDULE_HEADER: &str = "Nats-Schedule";
/// The header naming the subject a schedule publishes to.
pub const TARGET_HEADER: &str = "Nats-Schedule-Target";
/// The header the server puts on a fired message: the schedule subject it came from.
pub const SCHEDULER_HEADER: &str = "Nats-Scheduler";

/// Publishes schedules under the topology's subject prefix.
#[derive(Debug, Clone)]
pub struct Scheduler {
    publisher: Publisher,
    subjects: Subjects,
}

/// The `Nats-Schedule` value for `at`: `@at` and the time in RFC 3339 UTC, rounded up to the
/// second (so it never fires early).
pub fn at_expression(at: DateTime<Utc>) -> String {
    let whole = at.trunc_subsecs(0);
    let due = if whole < at {
        whole + chrono::Duration::seconds(1)
    } else {
        whole
    };
    format!("@at {}", due.format("%Y-%m-%dT%H:%M:%SZ"))
}

impl Scheduler {
    /// A scheduler publishing through `publisher`, under `subjects`' prefix.
    pub fn new(publisher: Publisher, subjects: Subjects) -> Self {
        Self {
            publisher,
            subjects,
        }
    }

    /// Schedules `payload` to be published to `target` at `at`. The schedule lives at
    /// `schedule_subject` (e.g. `tenant.schedule.acme`; both unprefixed, both in the same work
    /// stream), replacing any earlier schedule there; `message_id` deduplicates retries.
    pub async fn schedule_at<T: Serialize>(
        &self,
        schedule_subject: &str,
        target: &str,
        at: DateTime<Utc>,
        message_id: &str,
        payload: &T,
    ) -> Result<Published, PublishError> {
        let mut headers = HeaderMap::new();
        headers.insert(SCHEDULE_HEADER, at_expression(at).as_str());
        headers.insert(TARGET_HEADER, self.subjects.full(target).as_str());
        self.publisher
            .publish_json(
                &self.subjects.full(schedule_subject),
                message_id,
                payload,
                headers,
            )
            .await
    }

    /// Publishes `payload` to `subject` (unprefixed) now — work due at once, e.g. another
    /// worker's job a transition calls for; `message_id` deduplicates retries.
    pub async fn publish_now<T: Serialize>(
        &self,
        subject: &str,
        message_id: &str,
        payload: &T,
    ) -> Result<Published, PublishError> {
        self.publisher
            .publish_json(
                &self.subjects.full(subject),
                message_id,
                payload,
                HeaderMap::new(),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_round_up_to_the_second_and_never_fire_early() {
        let at = DateTime::parse_from_rfc3339("2026-11-29T10:00:00.250Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(at_expression(at), "@at 2026-11-29T10:00:01Z");
        let whole = DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(at_expression(whole), "@at 2026-11-29T10:00:00Z");
    }
}
