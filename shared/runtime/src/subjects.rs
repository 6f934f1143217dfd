//! Subjects under the fleet's configurable prefix, in one place.
//!
//! Every subject the fleet uses is written without the prefix (`tenant.created`,
//! `hooks.deploy.completed`); [`Subjects`] puts `nats.subject_prefix` in front of it on the way
//! out and takes it off on the way in. Stream and bucket names get the prefix too, upper- or
//! lower-cased with `.` and `-` turned into `_` (`staging.eu` → `STAGING_EU_FLEET_…`).

/// The subject prefix of a fleet (empty for none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (dot-separated tokens; empty for none).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `subject` as published: `<prefix>.<subject>`, or `subject` without a prefix.
    pub fn full(&self, subject: &str) -> String {
        if self.prefix.is_empty() {
            subject.to_owned()
        } else {
            format!("{}.{subject}", self.prefix)
        }
    }

    /// `subject` as the fleet names it: the prefix taken off (a subject without it is kept).
    pub fn strip<'a>(&self, subject: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            return subject;
        }
        subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or(subject)
    }

    /// A stream name under the prefix (`FLEET_PROGRESS` → `STAGING_FLEET_PROGRESS`).
    pub fn stream(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!(
                "{}_{name}",
                self.prefix.to_ascii_uppercase().replace(['.', '-'], "_")
            )
        }
    }

    /// A KV bucket or object store name under the prefix (lower case).
    pub fn bucket(&self, name: &str) -> String {
        self.stream(name).to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_goes_on_and_comes_off() {
        let none = Subjects::default();
        assert_eq!(none.full("tenant.created"), "tenant.created");
        assert_eq!(none.strip("tenant.created"), "tenant.created");
        let staging = Subjects::new("staging.eu");
        assert_eq!(staging.full("tenant.created"), "staging.eu.tenant.created");
        assert_eq!(staging.strip("staging.eu.tenant.created"), "tenant.created");
        assert_eq!(staging.strip("staging.eutenant.x"), "staging.eutenant.x");
        assert_eq!(staging.stream("FLEET_HOOKS"), "STAGING_EU_FLEET_HOOKS");
        assert_eq!(staging.bucket("fleet_tenants"), "staging_eu_fleet_tenants");
    }
}
