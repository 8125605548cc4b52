//! One notification as every channel sends it: a one-line summary for
//! people (mail subject, Slack text), and a JSON document for programs (the
//! webhook channel), both carrying the deduplication key.

use serde_json::{json, Value};

use crate::domain::notifications::{Event, Severity};

/// A rendered notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub kind: String,
    pub severity: Severity,
    pub dedup_key: String,
    pub summary: String,
    /// `None` for installation-wide events (audit chain, KEK rotation).
    pub project_id: Option<String>,
}

impl Notification {
    pub fn new(event: &Event, project_id: Option<&str>) -> Notification {
        Notification {
            kind: event.kind().to_string(),
            severity: event.severity(),
            dedup_key: event.dedup_key(),
            summary: summary(event),
            project_id: project_id.map(str::to_string),
        }
    }

    /// The webhook channel's body.
    pub fn to_json(&self) -> Value {
        json!({
            "kind": self.kind,
            "severity": self.severity,
            "dedup_key": self.dedup_key,
            "project_id": self.project_id,
            "summary": self.summary,
        })
    }

    /// A Slack-compatible incoming webhook's body.
    pub fn to_slack(&self) -> Value {
        let marker = match self.severity {
            Severity::Info => "ℹ️",
            Severity::Warning => "⚠️",
            Severity::Critical => "🚨",
        };
        json!({
            "text": format!("{marker} {}", self.summary),
            "blocks": [
                { "type": "section", "text": { "type": "mrkdwn", "text": format!("{marker} *{}*", self.summary) } },
                { "type": "context", "elements": [
                    { "type": "mrkdwn", "text": format!("`{}` · {} · dedup `{}`", self.kind, self.severity.as_str(), self.dedup_key) }
                ] },
            ],
        })
    }
}

/// The line a person reads first.
pub fn summary(event: &Event) -> String {
    match event {
        Event::CertificateIssued { certificate_id, serial } => {
            format!("Certificate {certificate_id} issued (serial {serial})")
        }
        Event::RenewalFailed { certificate_id, serial, consecutive } => format!(
            "Renewal of certificate {certificate_id} (serial {serial}) failed, {consecutive} time{} in a row",
            if *consecutive == 1 { "" } else { "s" }
        ),
        Event::RenewalStalled { certificate_id, serial } => format!(
            "Renewal of certificate {certificate_id} (serial {serial}) stalled: every attempt is spent"
        ),
        Event::Expiring { certificate_id, serial, days } => format!(
            "Certificate {certificate_id} (serial {serial}) expires in {days} day{}",
            if *days == 1 { "" } else { "s" }
        ),
        Event::Expired { certificate_id, serial } => {
            format!("Certificate {certificate_id} (serial {serial}) has expired")
        }
        Event::Revoked { certificate_id, serial } => {
            format!("Certificate {certificate_id} (serial {serial}) was revoked")
        }
        Event::DistributionFailed { certificate_id, serial, target_id } => format!(
            "Distribution of certificate {certificate_id} (serial {serial}) to target {target_id} failed"
        ),
        Event::DriftChanged { certificate_id, endpoint, to, .. } => {
            format!("Endpoint {endpoint} of certificate {certificate_id} is now {to}")
        }
        Event::AuditChainBroken { seq } => {
            format!("The audit chain is broken at record {seq}: run `certautopilot audit verify`")
        }
        Event::KekRotationFinished { version } => {
            format!("KEK rotation to version {version} finished")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_channel_carries_the_deduplication_key() {
        let event = Event::Expiring {
            certificate_id: "crt_1".into(),
            serial: "0a".into(),
            days: 1,
        };
        let n = Notification::new(&event, Some("prj_1"));
        assert_eq!(n.summary, "Certificate crt_1 (serial 0a) expires in 1 day");
        assert_eq!(n.severity, Severity::Critical);
        let body = n.to_json();
        assert_eq!(body["dedup_key"], "certificate.expiring:crt_1:0a:1d");
        assert_eq!(body["severity"], "critical");
        assert_eq!(body["project_id"], "prj_1");
        let slack = n.to_slack().to_string();
        assert!(
            slack.contains("certificate.expiring:crt_1:0a:1d"),
            "{slack}"
        );
        assert!(slack.contains("expires in 1 day"), "{slack}");
    }

    #[test]
    fn installation_wide_events_have_no_project() {
        let n = Notification::new(&Event::AuditChainBroken { seq: 41 }, None);
        assert_eq!(n.to_json()["project_id"], Value::Null);
        assert!(n.summary.contains("record 41"));
    }
}
