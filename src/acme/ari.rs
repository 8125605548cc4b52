//! ACME Renewal Information (RFC 9773): the CA's suggested renewal window,
//! and the `replaces` field naming the certificate a new order renews.
//!
//! The same conversion serves recorded responses in the tests and the live
//! answer of [`instant_acme::Account::renewal_info`]. The window is fetched
//! at issuance and refreshed by `refresh-ari` jobs ([`crate::work::refresh_ari`]).

use std::time::Duration;

use instant_acme::{CertificateIdentifier, Identifier, NewOrder, RenewalInfo};
use rustls_pki_types::CertificateDer;

use crate::domain::renewal::{AriWindow, MAX_REFRESH, MIN_REFRESH};

/// The window of a `renewalInfo` answer with its `Retry-After`. A window
/// that ends before it starts is the CA's error: refused, so the default
/// window stays in force.
pub fn window_of(info: &RenewalInfo, retry_after: Duration) -> Result<AriWindow, String> {
    let start_ms = (info.suggested_window.start.unix_timestamp_nanos() / 1_000_000) as i64;
    let end_ms = (info.suggested_window.end.unix_timestamp_nanos() / 1_000_000) as i64;
    if end_ms < start_ms {
        return Err("the CA's suggested window ends before it starts".into());
    }
    Ok(AriWindow {
        start_ms,
        end_ms,
        explanation_url: info.explanation_url.clone(),
        refresh_after: retry_after.clamp(MIN_REFRESH, MAX_REFRESH),
    })
}

/// The ARI identifier of a leaf certificate (`base64url(AKI).base64url(serial)`).
pub fn certificate_id(leaf_der: &[u8]) -> Result<CertificateIdentifier<'static>, String> {
    CertificateIdentifier::try_from(&CertificateDer::from(leaf_der.to_vec()))
}

/// The new-order request for `identifiers`, naming the certificate it
/// replaces when the CA speaks ARI (a CA without it refuses the field).
pub fn new_order<'a>(
    identifiers: &'a [Identifier],
    replaces: Option<CertificateIdentifier<'a>>,
) -> NewOrder<'a> {
    let order = NewOrder::new(identifiers);
    match replaces {
        Some(id) => order.replaces(id),
        None => order,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::certificates::refreshed_fields;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use mongodb::bson::DateTime;

    /// The example response of RFC 9773 §4.2.
    const RECORDED: &str = r#"{
        "suggestedWindow": {
            "start": "2025-01-02T04:00:00Z",
            "end": "2025-01-03T04:00:00Z"
        },
        "explanationURL": "https://acme.example.com/docs/ari"
    }"#;

    #[test]
    fn a_recorded_window_is_read_and_the_renewal_falls_inside_it() {
        let info: RenewalInfo = serde_json::from_str(RECORDED).unwrap();
        let w = window_of(&info, Duration::from_secs(21_600)).unwrap();
        assert_eq!(w.start_ms, 1_735_790_400_000);
        assert_eq!(w.end_ms, 1_735_876_800_000);
        assert_eq!(w.refresh_after, Duration::from_secs(21_600));
        assert_eq!(
            w.explanation_url.as_deref(),
            Some("https://acme.example.com/docs/ari")
        );
        for i in 0..50 {
            let due =
                crate::domain::renewal::ari_due_ms(&format!("crt_{i}"), "0a", w.start_ms, w.end_ms);
            assert!((w.start_ms..=w.end_ms).contains(&due));
        }
    }

    #[test]
    fn retry_after_is_honoured_within_limits() {
        let info: RenewalInfo = serde_json::from_str(RECORDED).unwrap();
        let soon = window_of(&info, Duration::from_secs(1)).unwrap();
        assert_eq!(soon.refresh_after, MIN_REFRESH);
        let late = window_of(&info, Duration::from_secs(30 * 86_400)).unwrap();
        assert_eq!(late.refresh_after, MAX_REFRESH);
    }

    #[test]
    fn a_window_the_ca_moves_earlier_moves_the_renewal_and_the_next_fetch_follows_retry_after() {
        let info: RenewalInfo = serde_json::from_str(RECORDED).unwrap();
        let planned = window_of(&info, Duration::from_secs(21_600)).unwrap();
        // The CA's later answer: renew now (a window already open), ask
        // again in an hour.
        let moved: RenewalInfo = serde_json::from_str(
            r#"{"suggestedWindow":{"start":"2024-12-20T00:00:00Z","end":"2024-12-20T01:00:00Z"},
                "explanationURL":"https://acme.example.com/incident"}"#,
        )
        .unwrap();
        let moved = window_of(&moved, Duration::from_secs(3600)).unwrap();
        let now = DateTime::from_millis(1_734_700_000_000); // 2024-12-20T13:06Z
        let (before, _) = refreshed_fields("crt_a", "0a", &planned, now);
        let (after, mark) = refreshed_fields("crt_a", "0a", &moved, now);
        let due = after
            .get_datetime("renewal_due_at")
            .unwrap()
            .timestamp_millis();
        assert!((moved.start_ms..=moved.end_ms).contains(&due));
        assert!(
            due < before
                .get_datetime("renewal_due_at")
                .unwrap()
                .timestamp_millis()
        );
        assert!(
            due < now.timestamp_millis(),
            "already due: the next scan renews"
        );
        assert_eq!(
            mark.get_datetime("renewal_next_at")
                .unwrap()
                .timestamp_millis(),
            due
        );
        assert_eq!(
            after
                .get_datetime("ari_next_fetch_at")
                .unwrap()
                .timestamp_millis(),
            now.timestamp_millis() + 3_600_000
        );
        assert_eq!(
            after
                .get_document("ari")
                .unwrap()
                .get_str("explanation_url"),
            Ok("https://acme.example.com/incident")
        );
        // The same window again moves nothing: the point in it is fixed.
        let (again, _) = refreshed_fields("crt_a", "0a", &moved, now);
        assert_eq!(again.get("renewal_due_at"), after.get("renewal_due_at"));
    }

    #[test]
    fn an_inverted_window_is_refused() {
        let json =
            r#"{"suggestedWindow":{"start":"2025-01-03T04:00:00Z","end":"2025-01-02T04:00:00Z"}}"#;
        let info: RenewalInfo = serde_json::from_str(json).unwrap();
        assert!(window_of(&info, Duration::ZERO).is_err());
    }

    #[test]
    fn a_renewal_order_names_the_certificate_it_replaces() {
        // A leaf from a CA that sets the authority key identifier, as CAs do.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_identifier_method = rcgen::KeyIdMethod::Sha256;
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut leaf = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        leaf.use_authority_key_identifier_extension = true;
        leaf.serial_number = Some(rcgen::SerialNumber::from_slice(&[
            0x00, 0x87, 0x65, 0x43, 0x21,
        ]));
        let leaf = leaf
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        let _ = ca_cert;

        let id = certificate_id(leaf.der()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.der()).unwrap();
        let aki = parsed
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.clone()
                }
                _ => None,
            })
            .unwrap();
        let expected = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(aki.0),
            URL_SAFE_NO_PAD.encode([0x00, 0x87, 0x65, 0x43, 0x21])
        );
        assert_eq!(id.to_string(), expected);

        let identifiers = [Identifier::Dns("a.example".into())];
        let body = serde_json::to_value(new_order(&identifiers, Some(id))).unwrap();
        assert_eq!(body["replaces"], expected);
        let first = serde_json::to_value(new_order(&identifiers, None)).unwrap();
        assert!(first.get("replaces").is_none(), "{first}");
    }
}
