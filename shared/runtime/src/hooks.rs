//! Lifecycle hooks as CloudEvents 1.0 in structured JSON mode, published on `hooks.*`.
//!
//! An event's id is derived from the transition it reports (kind, entity, transition, revision),
//! and is also its `Nats-Msg-Id`: a transition retried after a crash publishes the same id, which
//! the duplicate window drops — one transition, one hook. The event `type` carries the payload
//! version (`io.objectos.fleet.tenant.created.v1`), so consumers can be upgraded independently.

use async_nats::HeaderMap;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::publish::{PublishError, Published, Publisher};

/// A CloudEvent 1.0 (structured JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// Unique per source; derived from the transition.
    pub id: String,
    /// The producing worker (`/objectos-fleet/provisioner`).
    pub source: String,
    /// `io.objectos.fleet.<kind>.<event>.v<version>`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The entity (the tenant id for tenant events).
    pub subject: String,
    /// When the transition happened (RFC 3339).
    pub time: String,
    /// `application/json`.
    pub datacontenttype: String,
    /// The payload.
    pub data: Value,
}

/// One hook to publish.
#[derive(Debug, Clone)]
pub struct Hook {
    /// Hook subject without prefix, e.g. `hooks.tenant.created`.
    pub subject: String,
    /// Kind and event, e.g. `tenant.created`.
    pub event: String,
    /// Payload version.
    pub version: u32,
    /// The entity id.
    pub entity: String,
    /// What identifies the transition (e.g. the KV revision that recorded it).
    pub transition: String,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The payload.
    pub data: Value,
}

impl Hook {
    /// The event id: a digest of (event, entity, transition) — equal for a retried transition.
    pub fn event_id(&self) -> String {
        let digest = Sha256::digest(format!(
            "{}\n{}\n{}",
            self.event, self.entity, self.transition
        ));
        hex::encode(&digest[..16])
    }

    /// The CloudEvent for this hook, from `source`.
    pub fn to_event(&self, source: &str) -> CloudEvent {
        CloudEvent {
            specversion: "1.0".to_owned(),
            id: self.event_id(),
            source: source.to_owned(),
            event_type: format!("io.objectos.fleet.{}.v{}", self.event, self.version),
            subject: self.entity.clone(),
            time: self.at.to_rfc3339_opts(SecondsFormat::Millis, true),
            datacontenttype: "application/json".to_owned(),
            data: self.data.clone(),
        }
    }
}

/// Publishes hooks.
#[derive(Debug, Clone)]
pub struct Hooks {
    publisher: Publisher,
    source: String,
    subjects: crate::Subjects,
}

impl Hooks {
    /// Hooks from `source` (e.g. `/objectos-fleet/provisioner`), under `subjects`' prefix.
    pub fn new(publisher: Publisher, source: impl Into<String>, subjects: crate::Subjects) -> Self {
        Self {
            publisher,
            source: source.into(),
            subjects,
        }
    }

    /// Publishes `hook` once (a repeat within the duplicate window is dropped by the server).
    pub async fn publish(&self, hook: &Hook) -> Result<Published, PublishError> {
        let event = hook.to_event(&self.source);
        let subject = self.subjects.full(&hook.subject);
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", "application/cloudevents+json");
        self.publisher
            .publish_json(&subject, &event.id, &event, headers)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_transition_gives_the_same_event_id() {
        let hook = |transition: &str| Hook {
            subject: "hooks.tenant.created".into(),
            event: "tenant.created".into(),
            version: 1,
            entity: "acme".into(),
            transition: transition.into(),
            at: Utc::now(),
            data: serde_json::json!({}),
        };
        assert_eq!(hook("rev-7").event_id(), hook("rev-7").event_id());
        assert_ne!(hook("rev-7").event_id(), hook("rev-8").event_id());
        let event = hook("rev-7").to_event("/objectos-fleet/provisioner");
        assert_eq!(
            (event.specversion.as_str(), event.event_type.as_str()),
            ("1.0", "io.objectos.fleet.tenant.created.v1")
        );
    }
}
