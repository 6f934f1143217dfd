//! RFC 3339 timestamps exactly as upstream accepts them.
//!
//! Upstream's runtime (`z.string().datetime()`) accepts only the UTC `Z` form — no offsets —
//! with optional seconds and an optional fraction. [`Timestamp`] parses that form, keeps the
//! original text (so a document round-trips unchanged) and exposes the instant as a
//! [`chrono::DateTime<Utc>`].

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, SubsecRound, Utc};
use regex::Regex;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The upstream date-time pattern (copied from the 4.0.1 JSON Schemas).
pub const DATE_TIME_PATTERN: &str = r"^(?:(?:\d\d[2468][048]|\d\d[13579][26]|\d\d0[48]|[02468][048]00|[13579][26]00)-02-29|\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)|(?:02)-(?:0[1-9]|1\d|2[0-8])))T(?:(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?(?:Z))$";

/// A point in time in upstream's `…Z` form.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    instant: DateTime<Utc>,
    text: String,
}

/// Why a string is not an upstream timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 UTC timestamp of the form YYYY-MM-DDTHH:MM[:SS[.fff]]Z")]
pub struct InvalidTimestamp(pub String);

impl Timestamp {
    /// The current time, with millisecond precision.
    pub fn now() -> Self {
        Self::from(Utc::now())
    }

    /// Parses upstream's `Z` form.
    pub fn parse(text: impl Into<String>) -> Result<Self, InvalidTimestamp> {
        static PATTERN: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(DATE_TIME_PATTERN).expect("date-time pattern compiles"));
        let text = text.into();
        if !PATTERN.is_match(&text) {
            return Err(InvalidTimestamp(text));
        }
        let body = &text[..text.len() - 1];
        let naive = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
            .iter()
            .find_map(|format| NaiveDateTime::parse_from_str(body, format).ok())
            .ok_or_else(|| InvalidTimestamp(text.clone()))?;
        Ok(Self {
            instant: naive.and_utc(),
            text,
        })
    }

    /// The instant.
    pub fn instant(&self) -> DateTime<Utc> {
        self.instant
    }

    /// The text as it was parsed or formatted.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(instant: DateTime<Utc>) -> Self {
        let instant = instant.trunc_subsecs(3);
        let text = instant.to_rfc3339_opts(SecondsFormat::Millis, true);
        Self { instant, text }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.text)
    }
}

impl FromStr for Timestamp {
    type Err = InvalidTimestamp;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Timestamp")
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "date-time",
            "pattern": DATE_TIME_PATTERN,
            "description": "RFC 3339 timestamp in UTC (Z form)",
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_z_form_with_optional_seconds_and_fraction() {
        for ok in [
            "2026-11-28T12:00Z",
            "2026-11-28T12:00:01Z",
            "2026-11-28T12:00:01.123456Z",
            "2024-02-29T00:00:00Z",
        ] {
            let t = Timestamp::parse(ok).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(t.as_str(), ok, "text is kept");
        }
    }

    #[test]
    fn rejects_offsets_dates_and_impossible_days() {
        for bad in [
            "2026-11-28T12:00:00+01:00",
            "2026-11-28",
            "2026-11-28 12:00:00Z",
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_new_timestamps_in_milliseconds_z() {
        let t = Timestamp::now();
        assert!(t.as_str().ends_with('Z'));
        assert_eq!(Timestamp::parse(t.as_str()).unwrap().instant(), t.instant());
    }
}
