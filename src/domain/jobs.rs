//! Every job kind: its name, its typed payload, and the one function per
//! kind of enqueue that builds its idempotency key (DESIGN.md invariant 6).
//!
//! The payloads serialize to the documents stored in `jobs.payload`; their
//! field names are the stored ones, so changing one is a migration.

use serde::{Deserialize, Serialize};

/// The kinds of work a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// Obtain a certificate: first issue, re-issue, renewal or replacement.
    IssueCertificate,
    /// RFC 8555 `revokeCert` for one serial.
    RevokeCertificate,
    /// Fetch the CA's renewal window again (RFC 9773).
    RefreshAri,
    /// TLS-connect to a certificate's endpoints and record what they serve.
    ScanDrift,
    /// Re-wrap data keys onto the current KEK version.
    KekRewrap,
    /// Audit checkpoint, retention of jobs, presence and challenges.
    Housekeeping,
    /// A diagnostic job of known length (operators and crash tests).
    Probe,
    /// Put one serial of a certificate on one distribution target.
    Distribute,
    /// Send one notification of the outbox to its channel.
    Notify,
}

impl JobKind {
    pub const ALL: [JobKind; 9] = [
        JobKind::IssueCertificate,
        JobKind::RevokeCertificate,
        JobKind::RefreshAri,
        JobKind::ScanDrift,
        JobKind::KekRewrap,
        JobKind::Housekeeping,
        JobKind::Probe,
        JobKind::Distribute,
        JobKind::Notify,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            JobKind::IssueCertificate => "issue-certificate",
            JobKind::RevokeCertificate => "revoke-certificate",
            JobKind::RefreshAri => "refresh-ari",
            JobKind::ScanDrift => "scan-drift",
            JobKind::KekRewrap => "kek-rewrap",
            JobKind::Housekeeping => "housekeeping",
            JobKind::Probe => "probe",
            JobKind::Distribute => "distribute",
            JobKind::Notify => "notify",
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job to enqueue: its kind, its idempotency key and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec<P> {
    pub kind: JobKind,
    pub key: String,
    pub payload: P,
}

/// `issue-certificate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuePayload {
    pub certificate_id: String,
    /// The serial a renewal replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renews: Option<String>,
    /// The revoked serial a replacement stands in for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces_revoked: Option<String>,
}

impl IssuePayload {
    pub fn is_renewal(&self) -> bool {
        self.renews.is_some()
    }
}

/// Issue request number `generation` of a certificate (its creation is the
/// first; each `POST …/issue` adds one): one job per request.
pub fn issue_requested(certificate_id: &str, generation: i64) -> JobSpec<IssuePayload> {
    JobSpec {
        kind: JobKind::IssueCertificate,
        key: format!("issue-certificate:{certificate_id}:{generation}"),
        payload: IssuePayload {
            certificate_id: certificate_id.into(),
            renews: None,
            replaces_revoked: None,
        },
    }
}

/// The renewal of `serial`: one per certificate, serial replaced and failure
/// count, so a renewal that died is enqueued afresh once, and never twice for
/// the same state.
pub fn renewal(certificate_id: &str, serial: &str, failures: i64) -> JobSpec<IssuePayload> {
    JobSpec {
        kind: JobKind::IssueCertificate,
        key: format!("renew:{certificate_id}:{serial}:{failures}"),
        payload: IssuePayload {
            certificate_id: certificate_id.into(),
            renews: Some(serial.into()),
            replaces_revoked: None,
        },
    }
}

/// The replacement of revoked `serial`: one per serial.
pub fn replacement(certificate_id: &str, revoked_serial: &str) -> JobSpec<IssuePayload> {
    JobSpec {
        kind: JobKind::IssueCertificate,
        key: format!("replace:{certificate_id}:{revoked_serial}"),
        payload: IssuePayload {
            certificate_id: certificate_id.into(),
            renews: None,
            replaces_revoked: Some(revoked_serial.into()),
        },
    }
}

/// `revoke-certificate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokePayload {
    pub certificate_id: String,
    pub serial: String,
    /// An RFC 5280 reason name ([`crate::domain::certificate::REVOCATION_REASONS`]).
    #[serde(default = "unspecified")]
    pub reason: String,
    /// Enqueue the replacement once revoked.
    #[serde(default)]
    pub replace: bool,
}

fn unspecified() -> String {
    "unspecified".into()
}

/// The revocation of `serial`: one per serial, however often it is asked for.
pub fn revocation(
    certificate_id: &str,
    serial: &str,
    reason: &str,
    replace: bool,
) -> JobSpec<RevokePayload> {
    JobSpec {
        kind: JobKind::RevokeCertificate,
        key: format!("revoke:{certificate_id}:{serial}"),
        payload: RevokePayload {
            certificate_id: certificate_id.into(),
            serial: serial.into(),
            reason: reason.into(),
            replace,
        },
    }
}

/// Periodic work on one certificate (`scan-drift`, `refresh-ari`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificatePayload {
    pub certificate_id: String,
}

/// The drift scan of a certificate due at `due_ms`: one per due time.
pub fn drift_scan(certificate_id: &str, due_ms: i64) -> JobSpec<CertificatePayload> {
    periodic(JobKind::ScanDrift, "drift", certificate_id, due_ms)
}

/// The ARI refresh of a certificate due at `due_ms`: one per due time.
pub fn ari_refresh(certificate_id: &str, due_ms: i64) -> JobSpec<CertificatePayload> {
    periodic(JobKind::RefreshAri, "ari", certificate_id, due_ms)
}

fn periodic(
    kind: JobKind,
    prefix: &str,
    certificate_id: &str,
    due_ms: i64,
) -> JobSpec<CertificatePayload> {
    JobSpec {
        kind,
        key: format!("{prefix}:{certificate_id}:{due_ms}"),
        payload: CertificatePayload {
            certificate_id: certificate_id.into(),
        },
    }
}

/// `housekeeping`, enqueued by the leader of `term`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermPayload {
    pub term: i64,
}

/// Housekeeping for time bucket `bucket` (the leader's clock divided by the
/// interval): one per bucket, whichever leader gets there.
pub fn housekeeping(bucket: i64, term: i64) -> JobSpec<TermPayload> {
    JobSpec {
        kind: JobKind::Housekeeping,
        key: format!("housekeeping:{bucket}"),
        payload: TermPayload { term },
    }
}

/// `kek-rewrap`: move data keys onto KEK version `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewrapPayload {
    pub target: i64,
    pub term: i64,
}

/// A re-wrap pass onto `target` for time bucket `bucket`: one per bucket.
pub fn kek_rewrap(target: u32, bucket: i64, term: i64) -> JobSpec<RewrapPayload> {
    JobSpec {
        kind: JobKind::KekRewrap,
        key: format!("kek-rewrap:v{target}:{bucket}"),
        payload: RewrapPayload {
            target: target as i64,
            term,
        },
    }
}

/// `distribute`: one serial of a certificate to one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistributePayload {
    pub certificate_id: String,
    pub serial: String,
    pub target_id: String,
}

/// The delivery of `serial` to `target_id`: one per certificate, serial and
/// target ([`crate::domain::distribution::job_key`]).
pub fn distribution(
    certificate_id: &str,
    serial: &str,
    target_id: &str,
) -> JobSpec<DistributePayload> {
    JobSpec {
        kind: JobKind::Distribute,
        key: crate::domain::distribution::job_key(certificate_id, serial, target_id),
        payload: DistributePayload {
            certificate_id: certificate_id.into(),
            serial: serial.into(),
            target_id: target_id.into(),
        },
    }
}

/// `notify`: one record of the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyPayload {
    pub notification_id: String,
}

/// The sending of outbox record `notification_id` (a channel and a
/// deduplication key): one job per record.
pub fn notification(notification_id: &str) -> JobSpec<NotifyPayload> {
    JobSpec {
        kind: JobKind::Notify,
        key: format!("notify:{notification_id}"),
        payload: NotifyPayload {
            notification_id: notification_id.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_distinct_names() {
        let names: std::collections::HashSet<&str> =
            JobKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), JobKind::ALL.len());
    }

    #[test]
    fn keys_are_the_stored_ones() {
        // Keys already in `jobs` must keep matching (no migration).
        assert_eq!(issue_requested("c", 2).key, "issue-certificate:c:2");
        assert_eq!(renewal("c", "s", 1).key, "renew:c:s:1");
        assert_eq!(replacement("c", "s").key, "replace:c:s");
        assert_eq!(revocation("c", "s", "unspecified", false).key, "revoke:c:s");
        assert_eq!(drift_scan("c", 5).key, "drift:c:5");
        assert_eq!(ari_refresh("c", 5).key, "ari:c:5");
        assert_eq!(housekeeping(7, 1).key, "housekeeping:7");
        assert_eq!(kek_rewrap(3, 7, 1).key, "kek-rewrap:v3:7");
        assert_eq!(distribution("c", "s", "t").key, "distribute:c:s:t");
        assert_eq!(notification("ch:k").key, "notify:ch:k");
    }

    #[test]
    fn renewal_keys_differ_by_serial_and_failures_only() {
        assert_eq!(renewal("c", "s", 0).key, renewal("c", "s", 0).key);
        assert_ne!(renewal("c", "s", 0).key, renewal("c", "t", 0).key);
        assert_ne!(renewal("c", "s", 0).key, renewal("c", "s", 1).key);
    }

    #[test]
    fn payloads_keep_their_stored_shape() {
        let first = serde_json::to_value(issue_requested("c", 1).payload).unwrap();
        assert_eq!(first, serde_json::json!({ "certificate_id": "c" }));
        let renew = serde_json::to_value(renewal("c", "s", 0).payload).unwrap();
        assert_eq!(
            renew,
            serde_json::json!({ "certificate_id": "c", "renews": "s" })
        );
        let revoke: RevokePayload =
            serde_json::from_value(serde_json::json!({ "certificate_id": "c", "serial": "s" }))
                .unwrap();
        assert_eq!(revoke.reason, "unspecified");
        assert!(!revoke.replace);
    }
}
