//! Identifier newtypes, parsed once at the boundary.
//!
//! Every identifier that names something on the wire or in a database is a newtype that can only
//! be built through [`FromStr`]/`TryFrom<String>` (and therefore through serde), so code past the
//! boundary never re-checks it. The patterns:
//!
//! | type | pattern | source |
//! |---|---|---|
//! | [`ObjectName`], [`FieldName`], [`AppName`] | `^[a-z_][a-z0-9_]*$` | upstream (`ObjectSchema.name`, field keys, `AppManifest.name`) |
//! | [`TenantId`] | `^[a-z0-9](?:[a-z0-9-]{0,46}[a-z0-9])?$` | fleet rule, stricter than upstream's `min(1)` |
//! | [`DatabaseName`] | `^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$` | Turso database names (lowercase, digits, dashes, ≤ 64) |
//!
//! Upstream only requires a tenant id to be non-empty. Ours becomes a NATS subject token, a file
//! name under the data dir and part of a Turso database name, so the fleet accepts the subset that
//! is safe in all three: lowercase ASCII letters, digits and inner dashes, at most 48 characters.
//! A document whose tenant id upstream accepts but the fleet does not is rejected with a clear
//! message naming this rule (code `invalid_format`).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The upstream machine-name pattern (`snake_case`), shared by objects, fields and apps.
pub const MACHINE_NAME_PATTERN: &str = "^[a-z_][a-z0-9_]*$";
/// The fleet's tenant id pattern (see the module docs for why it is stricter than upstream).
pub const TENANT_ID_PATTERN: &str = "^[a-z0-9](?:[a-z0-9-]{0,46}[a-z0-9])?$";
/// Turso's database name pattern.
pub const DATABASE_NAME_PATTERN: &str = "^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$";

/// Why a string is not a valid identifier of some kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {kind}: {rule}")]
pub struct InvalidIdentifier {
    /// Which identifier kind was being parsed (`tenant id`, `object name`, …).
    pub kind: &'static str,
    /// The rejected input.
    pub value: String,
    /// The rule it broke, in words.
    pub rule: &'static str,
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $pattern:expr, $rule:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Parses `value`, checking it against the pattern in the module docs.
            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidIdentifier> {
                static PATTERN: LazyLock<Regex> =
                    LazyLock::new(|| Regex::new($pattern).expect("identifier pattern compiles"));
                let value = value.into();
                if value.len() <= $max && PATTERN.is_match(&value) {
                    Ok(Self(value))
                } else {
                    Err(InvalidIdentifier { kind: $kind, value, rule: $rule })
                }
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The identifier as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidIdentifier;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidIdentifier;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "description": $rule,
                })
            }
        }
    };
}

identifier!(
    /// A tenant id: the key of a tenant everywhere in the fleet (KV keys, subjects, file names).
    TenantId,
    "tenant id",
    TENANT_ID_PATTERN,
    "fleet tenant id: 1-48 lowercase letters, digits or inner dashes, starting and ending with a letter or digit",
    48
);
identifier!(
    /// An ObjectStack object's machine name (`snake_case`); also its default table name.
    ObjectName,
    "object name",
    MACHINE_NAME_PATTERN,
    "machine name: snake_case, matching ^[a-z_][a-z0-9_]*$",
    usize::MAX
);
identifier!(
    /// A field's machine name (`snake_case`); also its default column name.
    FieldName,
    "field name",
    MACHINE_NAME_PATTERN,
    "field name: snake_case, matching ^[a-z_][a-z0-9_]*$",
    usize::MAX
);
identifier!(
    /// A marketplace app's identifier (`snake_case`).
    AppName,
    "app name",
    MACHINE_NAME_PATTERN,
    "app name: snake_case, matching ^[a-z_][a-z0-9_]*$",
    usize::MAX
);
identifier!(
    /// A tenant database's name at its backend (Turso: lowercase letters, digits, dashes).
    DatabaseName,
    "database name",
    DATABASE_NAME_PATTERN,
    "database name: 1-64 lowercase letters, digits or inner dashes",
    64
);

identifier!(
    /// A deployment's id (also a subject token: `deploy.tenant.<id>`).
    DeploymentId,
    "deployment id",
    DATABASE_NAME_PATTERN,
    "deployment id: 1-64 lowercase letters, digits or inner dashes",
    64
);

impl DatabaseName {
    /// The database name of a tenant: `{prefix}{tenant_id}` (the prefix may be empty).
    pub fn for_tenant(prefix: &str, tenant: &TenantId) -> Result<Self, InvalidIdentifier> {
        Self::parse(format!("{prefix}{tenant}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_accept_the_safe_subset_only() {
        for ok in ["acme", "a", "t-001", "0abc", &"a".repeat(48)] {
            TenantId::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "Acme",
            "acme corp",
            "-acme",
            "acme-",
            "a/b",
            "a.b",
            "a_b",
            "ac\u{0435}me",
            &"a".repeat(49),
            "acme\n",
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn machine_names_follow_the_upstream_pattern() {
        for ok in ["account", "_x", "project_task", "a1"] {
            ObjectName::parse(ok).unwrap();
            FieldName::parse(ok).unwrap();
        }
        for bad in ["Account", "1abc", "a-b", "a b", "", "a\"b", "a;drop"] {
            assert!(FieldName::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn identifiers_round_trip_through_serde_and_reject_invalid_input() {
        let id: TenantId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"acme\"");
        assert!(serde_json::from_str::<TenantId>("\"ACME\"").is_err());
    }

    #[test]
    fn database_name_for_tenant_adds_the_prefix() {
        let t = TenantId::parse("acme").unwrap();
        assert_eq!(
            DatabaseName::for_tenant("fleet-", &t).unwrap().as_str(),
            "fleet-acme"
        );
    }
}
