//! Small serde helpers for upstream's wire conventions (defaults, present-but-null values).

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Serde default for booleans whose upstream default is `true`.
pub(crate) fn default_true() -> bool {
    true
}

/// Deserializes an optional `unknown` value so that an explicit `null` stays `Some(Null)`,
/// as upstream's `z.unknown().optional()` keeps it.
pub(crate) fn present<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}
