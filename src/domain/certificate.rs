//! A certificate: what a project asked for, its status and the rules that
//! move it, and what was issued.
//!
//! [`crate::store::certificates`] is the only writer of certificate
//! documents, and writes every status as a [`CertificateStatus`]. A
//! certificate in service never goes back to `pending`, `issuing` or
//! `failed`: it stays `issued` (or `revoked`) while it renews, so whatever
//! serves it keeps a valid status to look at.

/// Where a certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificateStatus {
    /// Declared (or failed and retrying) with nothing issued yet.
    Pending,
    /// An order for its first issue is under way.
    Issuing,
    /// A current certificate is in service (it stays so while it renews).
    Issued,
    /// Nothing issued, and the last issue job gave up.
    Failed,
    /// The current certificate was revoked.
    Revoked,
}

impl CertificateStatus {
    pub const ALL: [CertificateStatus; 5] = [
        CertificateStatus::Pending,
        CertificateStatus::Issuing,
        CertificateStatus::Issued,
        CertificateStatus::Failed,
        CertificateStatus::Revoked,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            CertificateStatus::Pending => "pending",
            CertificateStatus::Issuing => "issuing",
            CertificateStatus::Issued => "issued",
            CertificateStatus::Failed => "failed",
            CertificateStatus::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<CertificateStatus> {
        CertificateStatus::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The status after a failed issue attempt: a certificate in service
    /// keeps its status; one without a current certificate is `failed` once
    /// its job gives up, `pending` while it retries.
    pub fn after_failure(self, has_current: bool, last_attempt: bool) -> CertificateStatus {
        match (has_current, last_attempt) {
            (true, _) if self == CertificateStatus::Revoked => CertificateStatus::Revoked,
            (true, _) => CertificateStatus::Issued,
            (false, true) => CertificateStatus::Failed,
            (false, false) => CertificateStatus::Pending,
        }
    }
}

/// RFC 5280 reason codes by the names the API takes (`removeFromCRL` and
/// `certificateHold` are CRL mechanics, not reasons a subscriber gives).
pub const REVOCATION_REASONS: [&str; 7] = [
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
    "caCompromise",
];

/// The certificate in service, as stored under `current`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub serial: String,
    pub fingerprint_sha256: String,
    pub chain_pem: String,
    pub revoked: bool,
    /// The order that obtained it: its private key is that order's secret.
    pub order_id: String,
    pub not_after_ms: i64,
}

/// What the workers read of a certificate.
#[derive(Debug, Clone)]
pub struct Certificate {
    pub id: String,
    pub project_id: String,
    pub dns_names: Vec<String>,
    pub issuer_id: String,
    pub key_algorithm: String,
    pub renew_before_secs: Option<i64>,
    pub status: Option<CertificateStatus>,
    pub current: Option<Current>,
    pub consecutive_failures: i64,
    /// Whether the CA gave a renewal window (ARI) for the current certificate.
    pub has_ari_window: bool,
    /// The fingerprints of the last certificates issued (newest last).
    pub issued_fingerprints: Vec<String>,
    /// The distribution targets it goes to (ids, in its project).
    pub target_ids: Vec<String>,
    /// The binding MAC of `target_ids` ([`crate::crypto::binding`]).
    pub targets_mac: Option<String>,
}

impl Certificate {
    /// Where events about this certificate are filed in the audit log.
    pub fn audit_target(&self) -> String {
        format!("projects/{}/certificates/{}", self.project_id, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::CertificateStatus::*;
    use super::*;

    #[test]
    fn statuses_round_trip_by_name() {
        for s in CertificateStatus::ALL {
            assert_eq!(CertificateStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn a_certificate_in_service_keeps_its_status_while_a_renewal_fails() {
        for from in CertificateStatus::ALL {
            for last_attempt in [true, false] {
                let to = from.after_failure(true, last_attempt);
                assert!(matches!(to, Issued | Revoked), "{from:?} -> {to:?}");
            }
        }
        assert_eq!(Issued.after_failure(true, false), Issued);
        assert_eq!(Issued.after_failure(true, true), Issued);
        assert_eq!(Revoked.after_failure(true, true), Revoked);
        assert_eq!(Issuing.after_failure(false, false), Pending);
        assert_eq!(Issuing.after_failure(false, true), Failed);
    }
}
