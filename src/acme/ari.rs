//! ACME Renewal Information (RFC 9773): the CA's suggested renewal window,
//! and the `replaces` field naming the certificate a new order renews.
//!
//! The same conversion serves recorded responses in the tests and the live
//! answer of [`instant_acme::Account::renewal_info`].

use std::time::Duration;

use instant_acme::{CertificateIdentifier, Identifier, NewOrder, RenewalInfo};
use rustls_pki_types::CertificateDer;

/// How soon we ask again when the CA's `Retry-After` is shorter, and how
/// long we wait at most when it is longer (RFC 9773 §4.3.2 asks clients to
/// honour Retry-After, within limits of their own).
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// A CA's suggested renewal window, and when to ask again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AriWindow {
    pub start_ms: i64,
    pub end_ms: i64,
    pub explanation_url: Option<String>,
    pub refresh_after: Duration,
}

impl AriWindow {
    /// The window of a `renewalInfo` answer with its `Retry-After`. A window
    /// that ends before it starts is the CA's error: refused, so the default
    /// window stays in force.
    pub fn from_response(info: &RenewalInfo, retry_after: Duration) -> Result<AriWindow, String> {
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
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

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
        let w = AriWindow::from_response(&info, Duration::from_secs(21_600)).unwrap();
        assert_eq!(w.start_ms, 1_735_790_400_000);
        assert_eq!(w.end_ms, 1_735_876_800_000);
        assert_eq!(w.refresh_after, Duration::from_secs(21_600));
        assert_eq!(
            w.explanation_url.as_deref(),
            Some("https://acme.example.com/docs/ari")
        );
        for i in 0..50 {
            let due = crate::renewal::ari_due_ms(&format!("crt_{i}"), "0a", w.start_ms, w.end_ms);
            assert!((w.start_ms..=w.end_ms).contains(&due));
        }
    }

    #[test]
    fn retry_after_is_honoured_within_limits() {
        let info: RenewalInfo = serde_json::from_str(RECORDED).unwrap();
        let soon = AriWindow::from_response(&info, Duration::from_secs(1)).unwrap();
        assert_eq!(soon.refresh_after, MIN_REFRESH);
        let late = AriWindow::from_response(&info, Duration::from_secs(30 * 86_400)).unwrap();
        assert_eq!(late.refresh_after, MAX_REFRESH);
    }

    #[test]
    fn an_inverted_window_is_refused() {
        let json =
            r#"{"suggestedWindow":{"start":"2025-01-03T04:00:00Z","end":"2025-01-02T04:00:00Z"}}"#;
        let info: RenewalInfo = serde_json::from_str(json).unwrap();
        assert!(AriWindow::from_response(&info, Duration::ZERO).is_err());
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
