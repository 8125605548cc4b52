//! Notifications: the events operators act on, how severe each is, which
//! routes take it, when quiet hours hold it back, and the deduplication key
//! every message carries (docs/distribution.md, "Notifications").

use serde::{Deserialize, Serialize};

/// How urgently an event wants a person. Ordered: a route with a minimum
/// severity takes that one and every higher.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    #[default]
    Info,
    Warning,
    /// Never held back by quiet hours.
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];

    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Days before `not_after` at which an expiry notice goes, each once per
/// certificate and serial.
pub const EXPIRY_NOTICE_DAYS: [u32; 5] = [30, 14, 7, 3, 1];

const DAY_MS: i64 = 86_400_000;

/// An event, with what its message and its deduplication key need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    CertificateIssued {
        certificate_id: String,
        serial: String,
    },
    /// `consecutive`: failures in a row, this one included.
    RenewalFailed {
        certificate_id: String,
        serial: String,
        consecutive: i64,
    },
    /// Every attempt of the renewal of `serial` is spent.
    RenewalStalled {
        certificate_id: String,
        serial: String,
    },
    Expiring {
        certificate_id: String,
        serial: String,
        days: u32,
    },
    Expired {
        certificate_id: String,
        serial: String,
    },
    Revoked {
        certificate_id: String,
        serial: String,
    },
    DistributionFailed {
        certificate_id: String,
        serial: String,
        target_id: String,
    },
    /// Drift moved to `foreign` or `stale` (`to`).
    DriftChanged {
        certificate_id: String,
        endpoint: String,
        to: String,
        at_ms: i64,
    },
    /// The periodic verify found the chain broken at `seq`.
    AuditChainBroken {
        seq: i64,
    },
    KekRotationFinished {
        version: u32,
    },
}

/// Every event kind, as routes name them.
pub const EVENT_KINDS: [&str; 10] = [
    "certificate.issued",
    "renewal.failed",
    "renewal.stalled",
    "certificate.expiring",
    "certificate.expired",
    "certificate.revoked",
    "distribution.failed",
    "drift.changed",
    "audit.chain_broken",
    "kek.rotation_finished",
];

impl Event {
    /// The name routes select by, and that messages carry.
    pub const fn kind(&self) -> &'static str {
        match self {
            Event::CertificateIssued { .. } => "certificate.issued",
            Event::RenewalFailed { .. } => "renewal.failed",
            Event::RenewalStalled { .. } => "renewal.stalled",
            Event::Expiring { .. } => "certificate.expiring",
            Event::Expired { .. } => "certificate.expired",
            Event::Revoked { .. } => "certificate.revoked",
            Event::DistributionFailed { .. } => "distribution.failed",
            Event::DriftChanged { .. } => "drift.changed",
            Event::AuditChainBroken { .. } => "audit.chain_broken",
            Event::KekRotationFinished { .. } => "kek.rotation_finished",
        }
    }

    pub fn severity(&self) -> Severity {
        match self {
            Event::CertificateIssued { .. } | Event::KekRotationFinished { .. } => Severity::Info,
            Event::Expiring { days, .. } if *days > 7 => Severity::Info,
            Event::Expiring { days, .. } if *days > 3 => Severity::Warning,
            Event::Expiring { .. } => Severity::Critical,
            Event::RenewalFailed { .. }
            | Event::Revoked { .. }
            | Event::DistributionFailed { .. }
            | Event::DriftChanged { .. } => Severity::Warning,
            Event::RenewalStalled { .. }
            | Event::Expired { .. }
            | Event::AuditChainBroken { .. } => Severity::Critical,
        }
    }

    /// The same event found twice (two leaders, a retried scan) has the same
    /// key, so a channel sends it once; receivers get it in every message to
    /// drop the duplicates at-least-once delivery can still make.
    pub fn dedup_key(&self) -> String {
        let kind = self.kind();
        match self {
            Event::CertificateIssued {
                certificate_id,
                serial,
            }
            | Event::RenewalStalled {
                certificate_id,
                serial,
            }
            | Event::Expired {
                certificate_id,
                serial,
            }
            | Event::Revoked {
                certificate_id,
                serial,
            } => {
                format!("{kind}:{certificate_id}:{serial}")
            }
            Event::RenewalFailed {
                certificate_id,
                serial,
                consecutive,
            } => {
                format!("{kind}:{certificate_id}:{serial}:{consecutive}")
            }
            Event::Expiring {
                certificate_id,
                serial,
                days,
            } => {
                format!("{kind}:{certificate_id}:{serial}:{days}d")
            }
            Event::DistributionFailed {
                certificate_id,
                serial,
                target_id,
            } => {
                format!("{kind}:{certificate_id}:{serial}:{target_id}")
            }
            Event::DriftChanged {
                certificate_id,
                endpoint,
                to,
                at_ms,
            } => {
                format!("{kind}:{certificate_id}:{endpoint}:{to}:{at_ms}")
            }
            Event::AuditChainBroken { seq } => format!("{kind}:{seq}"),
            Event::KekRotationFinished { version } => format!("{kind}:v{version}"),
        }
    }
}

/// The expiry notice due for a certificate valid until `not_after_ms`, at
/// `now_ms`: the nearest threshold already reached, so a certificate first
/// seen five days before its end gets the 7-day notice, not all three of
/// 30, 14 and 7. `None` before 30 days, and once expired (that is
/// [`Event::Expired`]).
pub fn expiry_notice_due(now_ms: i64, not_after_ms: i64) -> Option<u32> {
    let left = not_after_ms - now_ms;
    if left <= 0 {
        return None;
    }
    EXPIRY_NOTICE_DAYS
        .into_iter()
        .rev()
        .find(|days| left <= *days as i64 * DAY_MS)
}

/// Which events a route sends to its channel; an empty list takes all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default)]
    pub projects: Vec<String>,
    #[serde(default)]
    pub min_severity: Severity,
}

impl Route {
    /// `project`: the event's project, `None` for installation-wide events
    /// (audit chain, KEK rotation), which only a route without a project
    /// filter takes. (Only installation channels have such events at all:
    /// a project's channels never see them.)
    pub fn takes(&self, event: &Event, project: Option<&str>) -> bool {
        let kind_ok = self.kinds.is_empty() || self.kinds.iter().any(|k| k == event.kind());
        let project_ok = match project {
            Some(p) => self.projects.is_empty() || self.projects.iter().any(|q| q == p),
            None => self.projects.is_empty(),
        };
        kind_ok && project_ok && event.severity() >= self.min_severity
    }
}

/// A daily window, in minutes after midnight UTC, when only critical events
/// go. `start > end` wraps midnight (22:00–07:00); `start == end` is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "QuietHoursFields")]
pub struct QuietHours {
    start_minute: u32,
    end_minute: u32,
}

#[derive(Deserialize)]
struct QuietHoursFields {
    start_minute: u32,
    end_minute: u32,
}

impl TryFrom<QuietHoursFields> for QuietHours {
    type Error = String;

    fn try_from(f: QuietHoursFields) -> Result<Self, String> {
        QuietHours::new(f.start_minute, f.end_minute)
    }
}

impl QuietHours {
    /// Minutes after midnight, each below 1440: a window ending at 1440
    /// would hold messages for ever (its end, midnight, is quiet again).
    pub fn new(start_minute: u32, end_minute: u32) -> Result<QuietHours, String> {
        if start_minute >= 1440 || end_minute >= 1440 {
            return Err(format!(
                "quiet hours {start_minute}-{end_minute}: minutes after midnight are 0 to 1439"
            ));
        }
        Ok(QuietHours {
            start_minute,
            end_minute,
        })
    }

    /// When a message of `severity` found at `now_ms` may go: `now_ms`
    /// itself, or the end of the quiet window it falls in.
    pub fn release_at(&self, severity: Severity, now_ms: i64) -> i64 {
        if severity == Severity::Critical || self.start_minute == self.end_minute {
            return now_ms;
        }
        let minute_ms = 60_000;
        let day_start = now_ms.div_euclid(DAY_MS) * DAY_MS;
        let minute = (now_ms - day_start) / minute_ms;
        let (start, end) = (self.start_minute as i64, self.end_minute as i64);
        let quiet = if start < end {
            (start..end).contains(&minute)
        } else {
            minute >= start || minute < end
        };
        if !quiet {
            return now_ms;
        }
        let end_today = day_start + end * minute_ms;
        if end_today > now_ms {
            end_today
        } else {
            end_today + DAY_MS
        }
    }
}

/// A notification channel: where messages go, which events it takes, and
/// when it keeps quiet. Credentials (a webhook's secret, a Slack URL, an
/// SMTP password) are sealed secrets, not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub id: String,
    /// `None`: an installation channel (a global admin's), the only kind
    /// that receives installation-wide events.
    pub project_id: Option<String>,
    pub name: String,
    pub delivery: ChannelDelivery,
    /// No routes: every event.
    pub routes: Vec<Route>,
    pub quiet_hours: Option<QuietHours>,
}

impl Channel {
    /// Whether the channel sends `event` of `project` (`None`: an
    /// installation-wide event).
    pub fn takes(&self, event: &Event, project: Option<&str>) -> bool {
        self.routes.is_empty() || self.routes.iter().any(|r| r.takes(event, project))
    }

    /// When a message of `severity` found at `now_ms` may go.
    pub fn release_at(&self, severity: Severity, now_ms: i64) -> i64 {
        self.quiet_hours
            .map_or(now_ms, |q| q.release_at(severity, now_ms))
    }
}

/// How a channel delivers. Serialized, it is part of the text the
/// channel's binding MAC covers ([`crate::crypto::binding`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelDelivery {
    /// A signed POST of the JSON message (the secret is sealed).
    Webhook {
        /// As parsed from the store, only the origin: the whole URL is
        /// sealed under [`crate::crypto::secrets::SecretRef::channel_url`].
        url: String,
    },
    /// A Slack-compatible incoming webhook (its URL is the sealed secret).
    Slack,
    Email(EmailSettings),
}

impl ChannelDelivery {
    pub const fn kind(&self) -> &'static str {
        match self {
            ChannelDelivery::Webhook { .. } => "webhook",
            ChannelDelivery::Slack => "slack",
            ChannelDelivery::Email(_) => "email",
        }
    }
}

/// Where and as whom an email channel sends (the password is sealed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmailSettings {
    pub host: String,
    pub port: u16,
    /// `starttls` (the default), `implicit` (465) or `none`.
    pub tls: String,
    pub user: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    pub ca_bundle_pem: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_event(kind: &str) -> Event {
        let (certificate_id, serial) = ("c".to_string(), "s".to_string());
        match kind {
            "issued" => Event::CertificateIssued {
                certificate_id,
                serial,
            },
            "stalled" => Event::RenewalStalled {
                certificate_id,
                serial,
            },
            _ => Event::Revoked {
                certificate_id,
                serial,
            },
        }
    }

    #[test]
    fn each_expiry_threshold_goes_once_and_the_nearest_first() {
        let end = 100 * DAY_MS;
        assert_eq!(expiry_notice_due(end - 31 * DAY_MS, end), None);
        assert_eq!(expiry_notice_due(end - 30 * DAY_MS, end), Some(30));
        assert_eq!(expiry_notice_due(end - 15 * DAY_MS, end), Some(30));
        assert_eq!(expiry_notice_due(end - 5 * DAY_MS, end), Some(7));
        assert_eq!(expiry_notice_due(end - DAY_MS, end), Some(1));
        assert_eq!(expiry_notice_due(end - 1, end), Some(1));
        assert_eq!(
            expiry_notice_due(end, end),
            None,
            "expired is its own event"
        );
        let keys: std::collections::HashSet<String> = EXPIRY_NOTICE_DAYS
            .into_iter()
            .map(|days| {
                Event::Expiring {
                    certificate_id: "c".into(),
                    serial: "s".into(),
                    days,
                }
                .dedup_key()
            })
            .collect();
        assert_eq!(keys.len(), 5);
    }

    #[test]
    fn near_expiry_becomes_critical() {
        let expiring = |days| Event::Expiring {
            certificate_id: "c".into(),
            serial: "s".into(),
            days,
        };
        assert_eq!(expiring(30).severity(), Severity::Info);
        assert_eq!(expiring(7).severity(), Severity::Warning);
        assert_eq!(expiring(3).severity(), Severity::Critical);
        assert_eq!(expiring(1).severity(), Severity::Critical);
    }

    #[test]
    fn routes_select_by_kind_project_and_severity() {
        let all = Route::default();
        assert!(all.takes(&cert_event("issued"), Some("p")));
        let pages = Route {
            min_severity: Severity::Critical,
            ..Route::default()
        };
        assert!(!pages.takes(&cert_event("issued"), Some("p")));
        assert!(pages.takes(&cert_event("stalled"), Some("p")));
        let team = Route {
            projects: vec!["p".into()],
            ..Route::default()
        };
        assert!(team.takes(&cert_event("issued"), Some("p")));
        assert!(!team.takes(&cert_event("issued"), Some("q")));
        assert!(!team.takes(&Event::AuditChainBroken { seq: 3 }, None));
        assert!(all.takes(&Event::AuditChainBroken { seq: 3 }, None));
        let issued = Route {
            kinds: vec!["certificate.issued".into()],
            ..Route::default()
        };
        assert!(issued.takes(&cert_event("issued"), Some("p")));
        assert!(!issued.takes(&cert_event("revoked"), Some("p")));
    }

    #[test]
    fn quiet_hours_hold_back_all_but_critical_events() {
        let at = |h: i64, m: i64| 10 * DAY_MS + (h * 60 + m) * 60_000;
        let night = QuietHours::new(22 * 60, 7 * 60).unwrap();
        assert_eq!(night.release_at(Severity::Warning, at(12, 0)), at(12, 0));
        assert_eq!(night.release_at(Severity::Warning, at(23, 30)), at(31, 0));
        assert_eq!(night.release_at(Severity::Info, at(3, 0)), at(7, 0));
        assert_eq!(night.release_at(Severity::Info, at(7, 0)), at(7, 0));
        assert_eq!(night.release_at(Severity::Critical, at(23, 30)), at(23, 30));
        let lunch = QuietHours::new(12 * 60, 13 * 60).unwrap();
        assert_eq!(lunch.release_at(Severity::Info, at(12, 59)), at(13, 0));
        assert_eq!(lunch.release_at(Severity::Info, at(13, 0)), at(13, 0));
        let none = QuietHours::new(60, 60).unwrap();
        assert_eq!(none.release_at(Severity::Info, at(1, 0)), at(1, 0));
    }

    #[test]
    fn quiet_hours_past_midnight_are_refused_not_held_for_ever() {
        assert!(QuietHours::new(0, 1440).is_err());
        assert!(QuietHours::new(1440, 60).is_err());
        assert!(
            serde_json::from_str::<QuietHours>(r#"{"start_minute":0,"end_minute":1440}"#).is_err()
        );
        let read: QuietHours =
            serde_json::from_str(r#"{"start_minute":1320,"end_minute":420}"#).unwrap();
        assert_eq!(read, QuietHours::new(1320, 420).unwrap());
    }

    #[test]
    fn the_same_event_has_the_same_key_and_different_ones_differ() {
        assert_eq!(
            cert_event("issued").dedup_key(),
            cert_event("issued").dedup_key()
        );
        assert_ne!(
            cert_event("issued").dedup_key(),
            cert_event("revoked").dedup_key()
        );
        let failed = |n| Event::RenewalFailed {
            certificate_id: "c".into(),
            serial: "s".into(),
            consecutive: n,
        };
        assert_ne!(failed(1).dedup_key(), failed(2).dedup_key());
    }
}
