//! DNS-01 (RFC 8555 §8.4) through RFC 2136: the TXT records go to the
//! zone's primary in one TSIG-signed update; the CA is told to validate only
//! once every authoritative server answers them; they are deleted once the
//! CA has decided.
//!
//! An issuer with `"challenge": "dns-01"` carries its `dns` settings; the
//! TSIG secret is a secret of its own (`issuer-tsig/<issuer>`), never stored
//! in the clear.

use std::time::{Duration, Instant};

use base64::Engine;

use super::dns::{self, Change, DnsError, TsigKey};
use super::AcmeError;
use crate::crypto::secrets::{SecretRef, Secrets};
use crate::domain::issuer::{DnsSettings, Issuer};
use crate::domain::order::TxtRecord;
use crate::net::egress::EgressPolicy;

const PROPAGATION_POLL: Duration = Duration::from_secs(2);

/// DNS-01 for one issuer, with its key unsealed.
pub struct Dns01 {
    settings: DnsSettings,
    key: TsigKey,
    egress: EgressPolicy,
}

impl Dns01 {
    pub async fn load(
        issuer: &Issuer,
        settings: DnsSettings,
        secrets: &Secrets,
        egress: EgressPolicy,
    ) -> Result<Dns01, AcmeError> {
        let encoded = secrets
            .get(&SecretRef::tsig_key(&issuer.project_id, &issuer.id))
            .await
            .map_err(|e| AcmeError::Transient(format!("the issuer's TSIG key: {e}")))?;
        let secret = base64::engine::general_purpose::STANDARD
            .decode(&*encoded)
            .map_err(|_| AcmeError::Permanent("the issuer's TSIG secret is not base64".into()))?;
        let key = TsigKey {
            name: settings.tsig_name.clone(),
            algorithm: settings.tsig_algorithm,
            secret: zeroize::Zeroizing::new(secret),
        };
        Ok(Dns01 {
            settings,
            key,
            egress,
        })
    }

    /// Adds every record in one update (adding one already there is a no-op,
    /// so a resumed order can publish again).
    pub async fn publish(&self, records: &[TxtRecord]) -> Result<(), AcmeError> {
        let changes: Vec<Change> = records
            .iter()
            .map(|r| Change::AddTxt {
                name: r.name.clone(),
                value: r.value.clone(),
                ttl: self.settings.ttl,
            })
            .collect();
        dns::update(
            &self.egress,
            &self.settings.primary,
            &self.settings.zone,
            &self.key,
            &changes,
        )
        .await
        .map_err(dns_failure)
    }

    /// Waits until every authoritative server answers every record.
    pub async fn wait_visible(&self, records: &[TxtRecord]) -> Result<(), AcmeError> {
        let servers = if self.settings.nameservers.is_empty() {
            dns::authoritative_servers(&self.egress, &self.settings.primary, &self.settings.zone)
                .await
                .map_err(dns_failure)?
        } else {
            self.settings.nameservers.clone()
        };
        let deadline = Instant::now() + self.settings.propagation_timeout;
        loop {
            let missing = self.first_missing(&servers, records).await;
            let Some((server, record, seen)) = missing else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(AcmeError::Transient(format!(
                    "DNS-01: {server} does not answer TXT {} with the challenge after {}s (it answers {seen})",
                    record.name,
                    self.settings.propagation_timeout.as_secs()
                )));
            }
            tokio::time::sleep(PROPAGATION_POLL).await;
        }
    }

    async fn first_missing<'a>(
        &self,
        servers: &[String],
        records: &'a [TxtRecord],
    ) -> Option<(String, &'a TxtRecord, String)> {
        for server in servers {
            for record in records {
                match dns::txt(&self.egress, server, &record.name).await {
                    Ok(values) if values.contains(&record.value) => {}
                    Ok(values) => return Some((server.clone(), record, format!("{values:?}"))),
                    Err(e) => return Some((server.clone(), record, e.to_string())),
                }
            }
        }
        None
    }

    /// Deletes the records (each one only: other challenges' values for the
    /// same name stay). Failure is logged, not fatal: the records are
    /// harmless once the CA has decided, and short-lived in caches.
    pub async fn clean_up(&self, records: &[TxtRecord]) {
        let changes: Vec<Change> = records
            .iter()
            .map(|r| Change::DeleteTxt {
                name: r.name.clone(),
                value: r.value.clone(),
            })
            .collect();
        match dns::update(
            &self.egress,
            &self.settings.primary,
            &self.settings.zone,
            &self.key,
            &changes,
        )
        .await
        {
            Ok(()) => {
                tracing::info!(records = records.len(), zone = %self.settings.zone, "DNS-01 records removed")
            }
            Err(e) => {
                tracing::warn!(error = %e, zone = %self.settings.zone, "DNS-01 records not removed")
            }
        }
    }
}

/// A DNS failure is retried with back-off (a refused update may be a server
/// being reconfigured), and the certificate's `last_error` says why.
fn dns_failure(e: DnsError) -> AcmeError {
    AcmeError::Transient(format!("DNS-01: {e}"))
}
