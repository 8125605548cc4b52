//! The signature on everything CertAutoPilot POSTs to a webhook: the
//! `webhook` distribution target and webhook notification channels
//! (docs/distribution.md).
//!
//! Header `CertAutoPilot-Signature: t=<unix seconds>,v1=<hex>` where `<hex>`
//! is HMAC-SHA256 under the shared secret over `<t>.<body>`. Signing the
//! timestamp with the body lets a receiver refuse a replay of an old
//! delivery: it checks the MAC, then that `t` is within its tolerance of
//! its own clock ([`DEFAULT_TOLERANCE_SECS`]).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::certs::hex;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "CertAutoPilot-Signature";

/// How far a receiver should let `t` be from its clock, either way.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is not `t=<unix seconds>,v1=<hex>`")]
    Malformed,
    #[error("the signature does not match the body")]
    Mismatch,
    #[error("the signature's timestamp is {0} s from now, more than the tolerance")]
    Stale(i64),
}

/// The header value for `body` sent at `unix_secs`.
pub fn sign(secret: &[u8], unix_secs: i64, body: &[u8]) -> String {
    let mac = mac_over(secret, unix_secs, body).finalize().into_bytes();
    format!("t={unix_secs},v1={}", hex(&mac))
}

/// Checks `header` against `body` at the receiver's time `now_secs`: the MAC
/// first (in constant time), then the timestamp.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let (t, v1) = parse(header).ok_or(SignatureError::Malformed)?;
    mac_over(secret, t, body)
        .verify_slice(&v1)
        .map_err(|_| SignatureError::Mismatch)?;
    let skew = now_secs.saturating_sub(t);
    if skew.unsigned_abs() > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::Stale(skew));
    }
    Ok(())
}

fn mac_over(secret: &[u8], unix_secs: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// `t=<digits>,v1=<64 hex digits>`, in that order, nothing else.
fn parse(header: &str) -> Option<(i64, Vec<u8>)> {
    let (t, v1) = header.trim().split_once(',')?;
    let t: i64 = t.strip_prefix("t=")?.parse().ok()?;
    let v1 = v1.strip_prefix("v1=")?;
    if v1.len() != 64 {
        return None;
    }
    let bytes = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(v1.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((t, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec-test";
    const BODY: &[u8] = br#"{"event":"certificate.issued"}"#;

    #[test]
    fn a_signed_body_verifies_within_the_tolerance() {
        let header = sign(SECRET, 1_700_000_000, BODY);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(verify(SECRET, &header, BODY, 1_700_000_100, 300), Ok(()));
        assert_eq!(verify(SECRET, &header, BODY, 1_699_999_900, 300), Ok(()));
    }

    #[test]
    fn the_known_answer_is_hmac_sha256_over_timestamp_dot_body() {
        // Receivers reimplement this; pin it. Computed independently with
        // `printf '1700000000.{"event":"certificate.issued"}' |
        //  openssl dgst -sha256 -hmac whsec-test`.
        assert_eq!(
            sign(SECRET, 1_700_000_000, BODY),
            "t=1700000000,v1=386a95acb591fba9565d4e15214298223430b45701731b079b587e2e3b20035a"
        );
    }

    #[test]
    fn another_body_secret_or_time_is_refused() {
        let header = sign(SECRET, 1_700_000_000, BODY);
        assert_eq!(
            verify(SECRET, &header, b"{}", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", &header, BODY, 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        let moved = header.replace("t=1700000000", "t=1700000500");
        assert_eq!(
            verify(SECRET, &moved, BODY, 1_700_000_500, 300),
            Err(SignatureError::Mismatch),
            "the timestamp is signed: moving it breaks the MAC"
        );
        assert_eq!(
            verify(SECRET, &header, BODY, 1_700_000_301, 300),
            Err(SignatureError::Stale(301))
        );
    }

    #[test]
    fn malformed_headers_are_refused_not_panicked_on() {
        for header in [
            "",
            "t=1",
            "v1=00,t=1",
            "t=x,v1=00",
            "t=1,v1=zz",
            "t=1,v1=é",
            &format!("t=1,v1={}", "é".repeat(32)),
            &format!("t=1,v1={}", "0".repeat(63)),
        ] {
            assert_eq!(
                verify(SECRET, header, BODY, 1, 300),
                Err(SignatureError::Malformed),
                "{header:?}"
            );
        }
    }
}
