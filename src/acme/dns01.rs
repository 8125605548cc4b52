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
use mongodb::bson::{doc, Document};

use crate::dns::{self, Change, DnsError, TsigAlgorithm, TsigKey};
use crate::handlers::HandlerError;
use crate::secrets::Secrets;

/// Default TTL of a challenge record, in seconds: short, so a record left
/// behind by a failed clean-up does not linger in caches.
pub const DEFAULT_TTL: u32 = 60;
/// Default time allowed for every authoritative server to answer.
pub const DEFAULT_PROPAGATION_TIMEOUT_SECS: i64 = 120;
const PROPAGATION_POLL: Duration = Duration::from_secs(2);

/// The secret holding an issuer's TSIG key.
pub fn tsig_secret_id(issuer_id: &str) -> String {
    format!("issuer-tsig/{issuer_id}")
}

/// An issuer's DNS settings, as stored under `dns`.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    pub primary: String,
    pub zone: String,
    pub tsig_name: String,
    pub tsig_algorithm: TsigAlgorithm,
    /// Servers to check instead of the zone's NS records.
    pub nameservers: Vec<String>,
    pub propagation_timeout: Duration,
    pub ttl: u32,
}

impl DnsSettings {
    pub fn from_document(d: &Document) -> Result<DnsSettings, String> {
        let s = |f: &str| {
            d.get_str(f)
                .map(str::to_string)
                .map_err(|_| format!("the issuer's dns settings lack {f}"))
        };
        Ok(DnsSettings {
            primary: s("primary")?,
            zone: s("zone")?,
            tsig_name: s("tsig_key_name")?,
            tsig_algorithm: TsigAlgorithm::parse(&s("tsig_algorithm")?)
                .ok_or("unknown TSIG algorithm")?,
            nameservers: d
                .get_array("nameservers")
                .map(|a| {
                    a.iter()
                        .filter_map(|b| b.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            propagation_timeout: Duration::from_secs(
                d.get_i64("propagation_timeout_secs")
                    .unwrap_or(DEFAULT_PROPAGATION_TIMEOUT_SECS)
                    .max(1) as u64,
            ),
            ttl: d.get_i64("ttl").map(|t| t as u32).unwrap_or(DEFAULT_TTL),
        })
    }
}

/// The record name that answers the challenge for `identifier` (a wildcard
/// is validated at its base name).
pub fn record_name(identifier: &str) -> String {
    format!("_acme-challenge.{}", identifier.trim_start_matches("*."))
}

/// Whether `name` (a certificate's DNS name) lies inside `zone`.
pub fn in_zone(name: &str, zone: &str) -> bool {
    let name = name.trim_start_matches("*.").trim_end_matches('.');
    let zone = zone.trim_end_matches('.');
    name == zone || name.ends_with(&format!(".{zone}"))
}

/// One published challenge record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtRecord {
    pub name: String,
    pub value: String,
}

/// DNS-01 for one issuer, with its key unsealed.
pub struct Dns01 {
    settings: DnsSettings,
    key: TsigKey,
}

impl Dns01 {
    pub async fn load(
        issuer_id: &str,
        settings: DnsSettings,
        secrets: &Secrets,
    ) -> Result<Dns01, HandlerError> {
        let encoded = secrets
            .get(&tsig_secret_id(issuer_id))
            .await
            .map_err(|e| HandlerError::Retryable(format!("the issuer's TSIG key: {e}")))?;
        let secret = base64::engine::general_purpose::STANDARD
            .decode(&*encoded)
            .map_err(|_| {
                HandlerError::Permanent("the issuer's TSIG secret is not base64".into())
            })?;
        let key = TsigKey {
            name: settings.tsig_name.clone(),
            algorithm: settings.tsig_algorithm,
            secret: zeroize::Zeroizing::new(secret),
        };
        Ok(Dns01 { settings, key })
    }

    /// Adds every record in one update (adding one already there is a no-op,
    /// so a resumed order can publish again).
    pub async fn publish(&self, records: &[TxtRecord]) -> Result<(), HandlerError> {
        let changes: Vec<Change> = records
            .iter()
            .map(|r| Change::AddTxt {
                name: r.name.clone(),
                value: r.value.clone(),
                ttl: self.settings.ttl,
            })
            .collect();
        dns::update(
            &self.settings.primary,
            &self.settings.zone,
            &self.key,
            &changes,
        )
        .await
        .map_err(dns_failure)
    }

    /// Waits until every authoritative server answers every record.
    pub async fn wait_visible(&self, records: &[TxtRecord]) -> Result<(), HandlerError> {
        let servers = if self.settings.nameservers.is_empty() {
            dns::authoritative_servers(&self.settings.primary, &self.settings.zone)
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
                return Err(HandlerError::Retryable(format!(
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
                match dns::txt(server, &record.name).await {
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

/// A DNS failure as a job outcome: the back-off retries it (a refused
/// update may be a server being reconfigured), and the certificate's
/// `last_error` says why.
fn dns_failure(e: DnsError) -> HandlerError {
    HandlerError::Retryable(format!("DNS-01: {e}"))
}

/// The records an order published, from its `authorizations`.
pub fn published_records(authorizations: &[Document]) -> Vec<TxtRecord> {
    authorizations
        .iter()
        .filter_map(|a| {
            Some(TxtRecord {
                name: a.get_str("txt_name").ok()?.to_string(),
                value: a.get_str("txt_value").ok()?.to_string(),
            })
        })
        .collect()
}

pub fn record_document(r: &TxtRecord) -> Document {
    doc! { "txt_name": &r.name, "txt_value": &r.value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_is_validated_at_its_base_name() {
        assert_eq!(record_name("*.example.com"), "_acme-challenge.example.com");
        assert_eq!(
            record_name("www.example.com"),
            "_acme-challenge.www.example.com"
        );
    }

    #[test]
    fn names_inside_the_zone_only() {
        assert!(in_zone("example.com", "example.com."));
        assert!(in_zone("*.example.com", "example.com"));
        assert!(in_zone("a.b.example.com", "example.com"));
        assert!(!in_zone("badexample.com", "example.com"));
        assert!(!in_zone("example.org", "example.com"));
    }
}
