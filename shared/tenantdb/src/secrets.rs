//! Connection secrets at rest: AEAD (ChaCha20-Poly1305) under a key ring with key ids.
//!
//! A sealed secret reads `v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`. New secrets are
//! sealed with the ring's *active* key; any key still in the ring opens what it sealed, so keys
//! rotate without re-encrypting everything at once ([`KeyRing::needs_reseal`] finds what to
//! re-seal). The tenant id is bound in as associated data: a sealed token copied onto another
//! tenant's record does not open.
//!
//! Plaintext secrets are [`SecretString`]s: `Debug` prints `[REDACTED]`, and nothing here logs
//! them.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use fleet_protocol::{TenantConnectionConfig, TenantId};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;

/// Why a secret could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The key configuration is unusable.
    #[error("secrets key ring: {0}")]
    Config(String),
    /// The sealed text was written with a key the ring no longer has.
    #[error("sealed with key {0:?}, which is not in the key ring")]
    UnknownKey(String),
    /// The sealed text is not in the `v1.<key>.<data>` form.
    #[error("sealed secret is malformed")]
    Malformed,
    /// Authentication failed: the ciphertext was altered, or belongs to another tenant.
    #[error("sealed secret failed authentication (tampered, or not this tenant's)")]
    Tampered,
}

/// The AEAD keys, by id, and which one seals new secrets.
#[derive(Clone)]
pub struct KeyRing {
    active: String,
    keys: BTreeMap<String, ChaCha20Poly1305>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.active)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// A ring from base64-encoded 32-byte keys; `active` must be one of them.
    pub fn new<'a>(
        active: &str,
        keys: impl IntoIterator<Item = (&'a str, &'a SecretString)>,
    ) -> Result<Self, SecretError> {
        let mut ring = BTreeMap::new();
        for (id, encoded) in keys {
            let bytes =
                fleet_config::decode_key(id, encoded.expose_secret()).map_err(|problem| {
                    SecretError::Config(match problem {
                        fleet_config::KeyProblem::Id => {
                            format!("key id {id:?} must be 1-32 of [A-Za-z0-9_-]")
                        }
                        fleet_config::KeyProblem::NotBase64 => format!("key {id:?} is not base64"),
                        fleet_config::KeyProblem::Length(len) => {
                            format!("key {id:?} must be 32 bytes, has {len}")
                        }
                    })
                })?;
            ring.insert(
                id.to_owned(),
                ChaCha20Poly1305::new(Key::from_slice(&bytes)),
            );
        }
        if !ring.contains_key(active) {
            return Err(SecretError::Config(format!(
                "active key {active:?} is not among the configured keys"
            )));
        }
        Ok(Self {
            active: active.to_owned(),
            keys: ring,
        })
    }

    /// A fresh random key, base64-encoded (for `fleetctl`-style key generation and tests).
    pub fn generate_key() -> SecretString {
        let key = ChaCha20Poly1305::generate_key(&mut OsRng);
        SecretString::from(STANDARD.encode(key))
    }

    /// The id of the key that seals new secrets.
    pub fn active_key(&self) -> &str {
        &self.active
    }

    /// Seals `secret`, bound to `context` (the tenant id).
    pub fn seal(&self, secret: &SecretString, context: &str) -> String {
        let cipher = &self.keys[&self.active];
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.expose_secret().as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut data = nonce.to_vec();
        data.extend_from_slice(&ciphertext);
        format!("{VERSION}.{}.{}", self.active, URL_SAFE_NO_PAD.encode(data))
    }

    /// Opens a sealed secret for `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<SecretString, SecretError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(VERSION), Some(key_id), Some(data)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SecretError::Malformed);
        };
        let cipher = self
            .keys
            .get(key_id)
            .ok_or_else(|| SecretError::UnknownKey(key_id.to_owned()))?;
        let data = URL_SAFE_NO_PAD
            .decode(data)
            .map_err(|_| SecretError::Malformed)?;
        if data.len() < NONCE_LEN + 16 {
            return Err(SecretError::Malformed);
        }
        let (nonce, ciphertext) = data.split_at(NONCE_LEN);
        let plaintext = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Tampered)?;
        String::from_utf8(plaintext)
            .map(SecretString::from)
            .map_err(|_| SecretError::Tampered)
    }

    /// Whether `sealed` was written with a key other than the active one.
    pub fn needs_reseal(&self, sealed: &str) -> bool {
        sealed.split('.').nth(1) != Some(self.active.as_str())
    }
}

/// A tenant's connection config as stored (in KV, on disk): the auth token sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredConnectionConfig {
    /// Connection URL.
    pub url: String,
    /// Turso group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The auth token, sealed by the [`KeyRing`] and bound to the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_auth_token: Option<String>,
}

impl StoredConnectionConfig {
    /// Seals `config`'s token for `tenant`.
    pub fn seal(config: &TenantConnectionConfig, tenant: &TenantId, keys: &KeyRing) -> Self {
        Self {
            url: config.url.clone(),
            group: config.group.clone(),
            sealed_auth_token: config
                .auth_token
                .as_ref()
                .map(|token| keys.seal(&SecretString::from(token.clone()), tenant.as_str())),
        }
    }

    /// The token, opened for `tenant`.
    pub fn auth_token(
        &self,
        tenant: &TenantId,
        keys: &KeyRing,
    ) -> Result<Option<SecretString>, SecretError> {
        self.sealed_auth_token
            .as_deref()
            .map(|sealed| keys.open(sealed, tenant.as_str()))
            .transpose()
    }

    /// The config re-sealed under the active key, when it was sealed with an older one.
    pub fn resealed(&self, tenant: &TenantId, keys: &KeyRing) -> Result<Option<Self>, SecretError> {
        match &self.sealed_auth_token {
            Some(sealed) if keys.needs_reseal(sealed) => {
                let token = keys.open(sealed, tenant.as_str())?;
                Ok(Some(Self {
                    sealed_auth_token: Some(keys.seal(&token, tenant.as_str())),
                    ..self.clone()
                }))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(active: &str, keys: &[(&str, &SecretString)]) -> KeyRing {
        KeyRing::new(active, keys.iter().map(|(id, k)| (*id, *k))).unwrap()
    }

    #[test]
    fn round_trip_is_bound_to_the_tenant() {
        let k1 = KeyRing::generate_key();
        let keys = ring("k1", &[("k1", &k1)]);
        let sealed = keys.seal(&SecretString::from("jwt-secret"), "acme");
        assert!(sealed.starts_with("v1.k1.") && !sealed.contains("jwt-secret"));
        assert_eq!(
            keys.open(&sealed, "acme").unwrap().expose_secret(),
            "jwt-secret"
        );
        assert_eq!(
            keys.open(&sealed, "globex").unwrap_err(),
            SecretError::Tampered
        );
    }

    #[test]
    fn rotation_keeps_old_ciphertexts_readable_and_reseals_with_the_new_key() {
        let (k1, k2) = (KeyRing::generate_key(), KeyRing::generate_key());
        let old = ring("k1", &[("k1", &k1)]);
        let sealed = old.seal(&SecretString::from("t"), "acme");
        let rotated = ring("k2", &[("k1", &k1), ("k2", &k2)]);
        assert_eq!(rotated.open(&sealed, "acme").unwrap().expose_secret(), "t");
        assert!(rotated.needs_reseal(&sealed));
        assert!(
            rotated
                .seal(&SecretString::from("t"), "acme")
                .starts_with("v1.k2.")
        );
        let retired = ring("k2", &[("k2", &k2)]);
        assert_eq!(
            retired.open(&sealed, "acme").unwrap_err(),
            SecretError::UnknownKey("k1".into())
        );
    }

    #[test]
    fn tampered_or_malformed_ciphertexts_are_rejected() {
        let k1 = KeyRing::generate_key();
        let keys = ring("k1", &[("k1", &k1)]);
        let sealed = keys.seal(&SecretString::from("token"), "acme");
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            keys.open(&String::from_utf8(bytes).unwrap(), "acme")
                .unwrap_err(),
            SecretError::Tampered
        );
        for bad in ["", "v1.k1", "v2.k1.AAAA", "v1.k1.!!!", "v1.k1.AAAA"] {
            assert_eq!(
                keys.open(bad, "acme").unwrap_err(),
                SecretError::Malformed,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_key_configuration_is_refused() {
        let short = SecretString::from(STANDARD.encode([0u8; 16]));
        assert!(KeyRing::new("k1", [("k1", &short)]).is_err());
        let good = KeyRing::generate_key();
        assert!(KeyRing::new("k9", [("k1", &good)]).is_err());
        assert!(KeyRing::new("bad id", [("bad id", &good)]).is_err());
        assert!(
            !format!("{:?}", KeyRing::new("k1", [("k1", &good)]).unwrap())
                .contains(good.expose_secret())
        );
    }
}
