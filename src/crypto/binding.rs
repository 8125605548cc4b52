//! What steers a key or a credential, bound to its owner (DESIGN.md
//! invariant 14): a distribution target's settings, a notification
//! channel's settings and a certificate's list of targets each carry a MAC
//! (`binding_mac`) under a key derived from the API token key, which only
//! KEK holders can read. Someone who can write MongoDB but holds no KEK can
//! still edit those records, but cannot make the MAC match: a worker
//! refuses the record, names it, and counts it
//! (`certautopilot_binding_refusals_total`), instead of sending a key, a
//! password or a signed request where the edit points.
//!
//! Each MAC is over a fixed text of the record as the worker reads it (the
//! parsed [`Target`] or [`Channel`], not the stored document), so any field
//! a worker uses is covered, and a field it ignores cannot matter. The
//! owner (project, record id) is part of the text, so a MAC copied from
//! another record does not verify.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::api_tokens::TokenKey;
use super::secrets::SecretError;
use crate::domain::distribution::Target;
use crate::domain::notifications::{Channel, ChannelDelivery};
use crate::observe::metrics::Metrics;

/// The kinds of record bound, as the refusal metric labels them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Target,
    Channel,
    CertificateTargets,
}

impl Bound {
    /// As the refusal metric labels it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Bound::Target => "target",
            Bound::Channel => "channel",
            Bound::CertificateTargets => "certificate_targets",
        }
    }

    /// As an error names it.
    const fn describe(self) -> &'static str {
        match self {
            Bound::Target => "target",
            Bound::Channel => "channel",
            Bound::CertificateTargets => "the target list of certificate",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// The key cannot be read now (the KEK or the database away).
    #[error(transparent)]
    Key(#[from] SecretError),
    /// The record was changed without the KEK (or never bound).
    #[error("{} {id} does not verify: it was changed in the database without the KEK (or never bound: see `certautopilot migrate`); refused", .record.describe())]
    Forged { record: Bound, id: String },
}

impl BindingError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BindingError::Key(e) if e.is_transient())
    }

    /// Logs a refused record and counts it
    /// (`certautopilot_binding_refusals_total{record}`); a key that cannot
    /// be read now is neither.
    pub fn report(&self, metrics: &Metrics) {
        if let BindingError::Forged { record, id } = self {
            metrics
                .binding_refusals_total
                .with_label_values(&[record.as_str()])
                .inc();
            tracing::error!(record = record.as_str(), id = %id, "a stored record does not verify; refused");
        }
    }
}

/// The binding key, derived once per process from the token key.
#[derive(Clone)]
pub struct BindingKey {
    tokens: TokenKey,
    key: Arc<OnceCell<Zeroizing<Vec<u8>>>>,
}

impl BindingKey {
    pub fn new(tokens: TokenKey) -> BindingKey {
        BindingKey {
            tokens,
            key: Default::default(),
        }
    }

    async fn key(&self) -> Result<&[u8], SecretError> {
        let key = self
            .key
            .get_or_try_init(|| self.tokens.derived_key(b"certautopilot bindings v1"))
            .await?;
        Ok(key.as_slice())
    }

    /// The MAC of `target` as a worker reads it.
    pub async fn target_mac(&self, target: &Target) -> Result<String, SecretError> {
        self.mac("target", target).await
    }

    /// The MAC of `channel`'s owner and where it sends.
    pub async fn channel_mac(&self, channel: &Channel) -> Result<String, SecretError> {
        self.mac("channel", &ChannelBinding::of(channel)).await
    }

    /// The MAC of the list of targets of certificate `certificate_id`.
    pub async fn certificate_targets_mac(
        &self,
        project_id: &str,
        certificate_id: &str,
        target_ids: &[String],
    ) -> Result<String, SecretError> {
        let mut ids = target_ids.to_vec();
        ids.sort();
        ids.dedup();
        self.mac(
            "certificate targets",
            &CertificateTargets {
                project_id,
                certificate_id,
                target_ids: ids,
            },
        )
        .await
    }

    /// Passes when `stored` is `target`'s MAC.
    pub async fn verify_target(
        &self,
        target: &Target,
        stored: Option<&str>,
    ) -> Result<(), BindingError> {
        self.verify(Bound::Target, &target.id, "target", target, stored)
            .await
    }

    /// Passes when `stored` is `channel`'s MAC.
    pub async fn verify_channel(
        &self,
        channel: &Channel,
        stored: Option<&str>,
    ) -> Result<(), BindingError> {
        self.verify(
            Bound::Channel,
            &channel.id,
            "channel",
            &ChannelBinding::of(channel),
            stored,
        )
        .await
    }

    /// Passes when `stored` is the MAC of certificate `certificate_id`'s
    /// `target_ids`.
    pub async fn verify_certificate_targets(
        &self,
        project_id: &str,
        certificate_id: &str,
        target_ids: &[String],
        stored: Option<&str>,
    ) -> Result<(), BindingError> {
        let expected = self
            .certificate_targets_mac(project_id, certificate_id, target_ids)
            .await?;
        if stored.is_some_and(|s| equal(s, &expected)) {
            Ok(())
        } else {
            Err(BindingError::Forged {
                record: Bound::CertificateTargets,
                id: certificate_id.to_string(),
            })
        }
    }

    async fn verify(
        &self,
        bound: Bound,
        id: &str,
        domain: &str,
        value: &impl Serialize,
        stored: Option<&str>,
    ) -> Result<(), BindingError> {
        let expected = self.mac(domain, value).await?;
        if stored.is_some_and(|s| equal(s, &expected)) {
            Ok(())
        } else {
            Err(BindingError::Forged {
                record: bound,
                id: id.to_string(),
            })
        }
    }

    async fn mac(&self, domain: &str, value: &impl Serialize) -> Result<String, SecretError> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.key().await?).expect("HMAC takes any key length");
        mac.update(format!("certautopilot {domain} binding v1\n").as_bytes());
        mac.update(&serde_json::to_vec(value).expect("a record serializes"));
        Ok(mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }
}

/// Compares two MACs in time that does not depend on where they differ.
fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

/// What a channel's MAC covers: its owner and where (and how) it sends.
/// Its routes and quiet hours decide only when and what, not where.
#[derive(Serialize)]
struct ChannelBinding<'a> {
    id: &'a str,
    project_id: Option<&'a str>,
    delivery: &'a ChannelDelivery,
}

impl<'a> ChannelBinding<'a> {
    fn of(channel: &'a Channel) -> Self {
        ChannelBinding {
            id: &channel.id,
            project_id: channel.project_id.as_deref(),
            delivery: &channel.delivery,
        }
    }
}

#[derive(Serialize)]
struct CertificateTargets<'a> {
    project_id: &'a str,
    certificate_id: &'a str,
    target_ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_compare_whole() {
        assert!(equal("abcd", "abcd"));
        assert!(!equal("abcd", "abce"));
        assert!(!equal("abcd", "abc"));
    }
}
