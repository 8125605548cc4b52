//! Drift: what an endpoint serves compared with what we issued.
//!
//! A certificate may list `endpoints` (`host`, `port`, optional `sni`); a
//! drift scan ([`crate::work::scan_drift`]) classifies the leaf each one
//! presents as `in_sync` (the current certificate), `stale` (one we issued
//! before), `foreign` (anybody else's) or `unreachable`, and a certificate
//! is as drifted as its worst endpoint.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Endpoints a certificate may declare at most.
pub const MAX_ENDPOINTS: usize = 20;

/// An endpoint serving a certificate, as declared on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// A DNS name or an IP address.
    pub host: String,
    #[serde(deserialize_with = "super::whole_number::deserialize")]
    pub port: u16,
    /// The name sent in the TLS handshake [default: `host` when it is a DNS
    /// name; none for an IP address].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

/// What an endpoint serves, compared with ours. Ordered from best to worst:
/// a certificate's summary is its worst endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DriftState {
    InSync,
    Unreachable,
    Stale,
    Foreign,
}

impl DriftState {
    pub const ALL: [DriftState; 4] = [
        DriftState::InSync,
        DriftState::Unreachable,
        DriftState::Stale,
        DriftState::Foreign,
    ];

    pub fn parse(s: &str) -> Option<DriftState> {
        DriftState::ALL.into_iter().find(|d| d.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DriftState::InSync => "in_sync",
            DriftState::Unreachable => "unreachable",
            DriftState::Stale => "stale",
            DriftState::Foreign => "foreign",
        }
    }
}

/// Classifies a served leaf by its SHA-256 fingerprint.
pub fn classify(served: &str, current: Option<&str>, issued_before: &[String]) -> DriftState {
    if current == Some(served) {
        DriftState::InSync
    } else if issued_before.iter().any(|f| f == served) {
        DriftState::Stale
    } else {
        DriftState::Foreign
    }
}

/// Why `endpoints` cannot be declared, field by field (`endpoints[i].host`…).
pub fn endpoint_problems(endpoints: &[Endpoint]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if endpoints.len() > MAX_ENDPOINTS {
        problems.push((
            "endpoints".to_string(),
            format!(
                "lists {} endpoints; at most {MAX_ENDPOINTS}",
                endpoints.len()
            ),
        ));
        return problems;
    }
    for (i, e) in endpoints.iter().enumerate() {
        let is_ip = e.host.parse::<IpAddr>().is_ok();
        if !is_ip {
            if let Some(p) = host_name_problem(&e.host) {
                problems.push((format!("endpoints[{i}].host"), format!("{:?} {p}", e.host)));
            }
        }
        if e.port == 0 {
            problems.push((format!("endpoints[{i}].port"), "must be 1 to 65535".into()));
        }
        if let Some(sni) = &e.sni {
            if let Some(p) = host_name_problem(sni) {
                problems.push((format!("endpoints[{i}].sni"), format!("{sni:?} {p}")));
            }
        }
        if endpoints[..i].contains(e) {
            problems.push((format!("endpoints[{i}]"), "is listed twice".into()));
        }
    }
    problems
}

/// A host name to connect to or send as SNI: lower-case letters, digits,
/// '-' and '.', one label allowed (`localhost`).
fn host_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".into());
    }
    if name.len() > 253 {
        return Some("is longer than 253 characters".into());
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if !name.split('.').all(ok_label) {
        return Some("is not a host name (lower-case labels of a-z, 0-9 and '-')".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_served_leaf_is_ours_now_ours_before_or_someone_elses() {
        let before = vec!["aa".to_string(), "bb".to_string()];
        assert_eq!(classify("bb", Some("bb"), &before), DriftState::InSync);
        assert_eq!(classify("aa", Some("bb"), &before), DriftState::Stale);
        assert_eq!(classify("cc", Some("bb"), &before), DriftState::Foreign);
        assert_eq!(classify("cc", None, &[]), DriftState::Foreign);
    }

    #[test]
    fn a_certificate_is_as_drifted_as_its_worst_endpoint() {
        let worst = [DriftState::InSync, DriftState::Foreign, DriftState::Stale]
            .into_iter()
            .max();
        assert_eq!(worst, Some(DriftState::Foreign));
        assert!(DriftState::Unreachable > DriftState::InSync);
        assert!(DriftState::Stale > DriftState::Unreachable);
    }

    #[test]
    fn endpoints_are_validated_with_a_reason_each() {
        let e = |host: &str, port: u16, sni: Option<&str>| Endpoint {
            host: host.into(),
            port,
            sni: sni.map(str::to_string),
        };
        assert!(endpoint_problems(&[
            e("localhost", 443, None),
            e("127.0.0.1", 8443, Some("www.example.com"))
        ])
        .is_empty());
        let problems = endpoint_problems(&[
            e("bad host", 443, None),
            e("ok.example", 0, None),
            e("ok.example", 443, Some("*.example.com")),
            e("localhost", 443, None),
            e("localhost", 443, None),
        ]);
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "endpoints[0].host",
                "endpoints[1].port",
                "endpoints[2].sni",
                "endpoints[4]"
            ]
        );
        let many: Vec<Endpoint> = (1..=21).map(|p| e("localhost", p, None)).collect();
        assert_eq!(endpoint_problems(&many)[0].0, "endpoints");
    }
}
