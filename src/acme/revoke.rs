//! Revocation at the CA (RFC 8555 §7.6 `revokeCert`).

use instant_acme::{Account, RevocationReason, RevocationRequest};
use rustls_pki_types::CertificateDer;

use super::{acme_call, is_problem, AcmeError, RetryAfter};

const ALREADY_REVOKED: &str = "urn:ietf:params:acme:error:alreadyRevoked";

/// The RFC 5280 reason a name of [`crate::domain::certificate::REVOCATION_REASONS`] stands for.
pub fn reason_named(name: &str) -> Option<RevocationReason> {
    Some(match name {
        "unspecified" => RevocationReason::Unspecified,
        "keyCompromise" => RevocationReason::KeyCompromise,
        "affiliationChanged" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessationOfOperation" => RevocationReason::CessationOfOperation,
        "privilegeWithdrawn" => RevocationReason::PrivilegeWithdrawn,
        "caCompromise" => RevocationReason::CaCompromise,
        _ => return None,
    })
}

/// Asks the CA to revoke `leaf_der`. Asking twice is harmless: the CA
/// answers `alreadyRevoked`, which counts as done.
pub async fn revoke(
    account: &Account,
    leaf_der: &[u8],
    reason: RevocationReason,
    retry: &RetryAfter,
) -> Result<(), AcmeError> {
    let der = CertificateDer::from(leaf_der.to_vec());
    let request = RevocationRequest {
        certificate: &der,
        reason: Some(reason),
    };
    acme_call!(
        retry,
        account.revoke(&request).await,
        accept = |e: &instant_acme::Error| is_problem(e, ALREADY_REVOKED).then_some(())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::certificate::REVOCATION_REASONS;

    #[test]
    fn every_reason_the_api_takes_has_its_rfc_5280_code() {
        for name in REVOCATION_REASONS {
            assert!(reason_named(name).is_some(), "{name}");
        }
        assert!(reason_named("removeFromCRL").is_none());
    }
}
