//! ACME errors as job outcomes: the one place that decides whether a
//! failure at the CA is retried, retried later, or ends the job.

use crate::acme::AcmeError;
use crate::queue::handler::HandlerError;

/// For orders and ARI refreshes: a problem the CA answered is retried with
/// back-off (a failed validation may pass once DNS or the responder is
/// fixed); `rateLimited` waits for the CA's `Retry-After`.
pub fn of_order(e: AcmeError) -> HandlerError {
    match e {
        AcmeError::Permanent(reason) => HandlerError::Permanent(reason),
        AcmeError::RateLimited {
            reason,
            retry_after,
        } => HandlerError::RetryAfter {
            reason,
            after: retry_after,
        },
        e @ (AcmeError::Transient(_) | AcmeError::Refused(_) | AcmeError::BadNonce(_)) => {
            HandlerError::Retryable(e.to_string())
        }
    }
}

/// For revocations: a problem the CA answered (other than a bad nonce or a
/// rate limit) is its decision, and asking again would get the same answer.
pub fn of_revocation(e: AcmeError) -> HandlerError {
    match e {
        AcmeError::Refused(reason) => {
            HandlerError::Permanent(format!("the CA refused the revocation: {reason}"))
        }
        e => of_order(e),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::acme::RetryAfter;

    fn problem(kind: &str) -> instant_acme::Error {
        let json = format!(
            r#"{{"type":"urn:ietf:params:acme:error:{kind}","detail":"nope","status":400}}"#
        );
        instant_acme::Error::Api(serde_json::from_str(&json).unwrap())
    }

    #[test]
    fn the_ca_problem_types_are_classified_once() {
        let retry = RetryAfter::default();
        assert!(matches!(
            AcmeError::from_acme(problem("badNonce"), &retry),
            AcmeError::BadNonce(_)
        ));
        assert!(matches!(
            AcmeError::from_acme(problem("rejectedIdentifier"), &retry),
            AcmeError::Refused(_)
        ));
        let limited = AcmeError::from_acme(problem("rateLimited"), &retry);
        assert_eq!(
            limited,
            AcmeError::RateLimited {
                reason: limited.to_string(),
                retry_after: Duration::from_secs(60)
            }
        );
        let transport = instant_acme::Error::Str("connection reset");
        assert!(matches!(
            AcmeError::from_acme(transport, &retry),
            AcmeError::Transient(_)
        ));
    }

    #[test]
    fn orders_retry_what_the_ca_refused_and_wait_out_a_rate_limit() {
        let after = Duration::from_secs(120);
        assert!(matches!(
            of_order(AcmeError::RateLimited { reason: "slow down".into(), retry_after: after }),
            HandlerError::RetryAfter { after: a, .. } if a == after
        ));
        assert!(matches!(
            of_order(AcmeError::Refused("unauthorized".into())),
            HandlerError::Retryable(_)
        ));
        assert!(matches!(
            of_order(AcmeError::BadNonce("again".into())),
            HandlerError::Retryable(_)
        ));
        assert!(matches!(
            of_order(AcmeError::Permanent("bad bundle".into())),
            HandlerError::Permanent(r) if r == "bad bundle"
        ));
    }

    #[test]
    fn a_revocation_the_ca_refused_is_final_but_a_bad_nonce_is_not() {
        assert!(matches!(
            of_revocation(AcmeError::Refused("malformed".into())),
            HandlerError::Permanent(r) if r.starts_with("the CA refused the revocation")
        ));
        assert!(matches!(
            of_revocation(AcmeError::BadNonce("again".into())),
            HandlerError::Retryable(_)
        ));
        assert!(matches!(
            of_revocation(AcmeError::Transient("reset".into())),
            HandlerError::Retryable(_)
        ));
    }
}
