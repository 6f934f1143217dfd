//! The vocabulary every pure state machine of the fleet speaks, apart from any messaging so
//! that machines (`fleet-tenants`, the deployer's rollout) depend on nothing that does I/O:
//!
//! - [`Versioned`]: a state and the KV revision it was read at;
//! - [`Decision`]: what a transition function decides — write a next state with its
//!   [`ProgressEvent`], or leave the state unchanged (an idempotent repeat).
//!
//! `fleet-runtime`'s `StateStore` carries decisions out by compare-and-set and appends each
//! event to `progress.<kind>.<id>`.

#![deny(missing_docs)]

use fleet_protocol::Timestamp;
use serde::{Deserialize, Serialize};

/// A value and the KV revision it was read at (or written as).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<S> {
    /// The state.
    pub state: S,
    /// Its revision.
    pub revision: u64,
}

/// One entry of the progress stream: a state transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressEvent {
    /// `tenant`, `deploy`, `app`.
    pub kind: String,
    /// The entity.
    pub id: String,
    /// The step (`create_database`, `migrating`, …) or transition name.
    pub step: String,
    /// The status after it.
    pub status: String,
    /// How long the step took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Error, when the step failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the transition happened (the machine's `now`).
    pub at: Timestamp,
    /// The KV revision that recorded it (filled in on write).
    #[serde(default)]
    pub revision: u64,
}

/// What a transition function decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<S> {
    /// Write this state and record this step.
    Write {
        /// The next state.
        next: S,
        /// The progress entry (its `revision` is filled in on write).
        event: ProgressEvent,
    },
    /// The state already is what the caller wants (an idempotent repeat): write nothing.
    Unchanged,
}
