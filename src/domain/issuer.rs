//! An issuer: the ACME CA a project issues from, its account settings and
//! its challenge (HTTP-01, or DNS-01 through RFC 2136).
//!
//! [`crate::store::issuers`] parses the stored document into this, in one
//! place, for the workers and the API alike.

use std::time::Duration;

/// Default TTL of a DNS-01 challenge record, in seconds: short, so a record
/// left behind by a failed clean-up does not linger in caches.
pub const DEFAULT_TTL: u32 = 60;
/// Default time allowed for every authoritative server to answer.
pub const DEFAULT_PROPAGATION_TIMEOUT_SECS: i64 = 120;

#[derive(Debug, Clone)]
pub struct Issuer {
    pub id: String,
    /// The project the issuer belongs to (its secrets are sealed for it).
    pub project_id: String,
    pub directory_url: String,
    pub contact: String,
    /// Extra CA certificates to trust for the directory (private ACME CAs).
    pub ca_bundle_pem: Option<String>,
    /// The EAB key id; its HMAC key is the secret [`eab_secret_id`].
    pub eab_kid: Option<String>,
    /// DNS-01 through RFC 2136, when the issuer uses that challenge.
    pub dns: Option<DnsSettings>,
}

impl Issuer {
    /// Wildcard names can only be validated over DNS-01.
    pub fn allows_wildcards(&self) -> bool {
        self.dns.is_some()
    }
}

/// The secret holding an issuer's EAB HMAC key.
pub fn eab_secret_id(issuer_id: &str) -> String {
    format!("issuer-eab/{issuer_id}")
}

/// The secret holding an issuer's TSIG key.
pub fn tsig_secret_id(issuer_id: &str) -> String {
    format!("issuer-tsig/{issuer_id}")
}

/// An issuer's DNS-01 settings.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha512,
}

impl TsigAlgorithm {
    pub const NAMES: [&'static str; 2] = ["hmac-sha256", "hmac-sha512"];

    pub fn parse(name: &str) -> Option<TsigAlgorithm> {
        match name {
            "hmac-sha256" => Some(TsigAlgorithm::HmacSha256),
            "hmac-sha512" => Some(TsigAlgorithm::HmacSha512),
            _ => None,
        }
    }

    /// The algorithm's name, in the API and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
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
