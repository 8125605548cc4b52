//! The ACME calls behind each step of an order, one request (or one poll)
//! each, with their errors classified ([`AcmeError`]). What is recorded
//! between the steps, and in which order they run, is the OrderActor's
//! state machine ([`crate::actors::order`]).

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeStatus, ChallengeType,
    Identifier, Order, OrderStatus, Problem, RetryPolicy,
};

use super::ari;
use super::{acme_call, AcmeError, RetryAfter};
use crate::domain::renewal::AriWindow;

/// How long one step polls the CA before the job is retried later.
const POLL_TIMEOUT: Duration = Duration::from_secs(90);

/// The order at `url`, resumed; `None` when the CA no longer has it, or it
/// is invalid there (a new order must replace it).
pub async fn resume(
    account: &Account,
    url: &str,
    retry: &RetryAfter,
) -> Result<Option<Order>, AcmeError> {
    let mut order = match acme_call!(retry, account.order(url.to_string()).await) {
        Ok(order) => order,
        Err(e) => {
            tracing::warn!(error = %e, "the recorded ACME order cannot be fetched; opening a new one");
            return Ok(None);
        }
    };
    let status = acme_call!(retry, order.refresh().await.map(|s| s.status))?;
    Ok((status != OrderStatus::Invalid).then_some(order))
}

/// A new order for `names`, naming the certificate it renews when the CA
/// speaks ARI.
pub async fn open(
    account: &Account,
    names: &[String],
    replaces: Option<CertificateIdentifier<'static>>,
    retry: &RetryAfter,
) -> Result<Order, AcmeError> {
    let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    acme_call!(
        retry,
        account
            .new_order(&ari::new_order(&identifiers, replaces.clone()))
            .await
    )
}

/// One pending authorization's challenge, as the CA offers it.
#[derive(Debug, Clone)]
pub struct PendingChallenge {
    pub authorization_url: String,
    pub identifier: String,
    pub challenge_url: String,
    pub token: String,
    /// What the HTTP-01 responder answers.
    pub key_authorization: String,
    /// What the DNS-01 TXT record holds.
    pub dns_value: String,
}

/// The challenges of `kind` of every authorization still pending.
pub async fn pending_challenges(
    order: &mut Order,
    kind: ChallengeType,
    retry: &RetryAfter,
) -> Result<Vec<PendingChallenge>, AcmeError> {
    let mut pending = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| AcmeError::from_acme(e, retry))?;
        let identifier = authz.identifier().to_string();
        if authz.status != AuthorizationStatus::Pending {
            continue;
        }
        let authorization_url = authz.url().to_string();
        let challenge = authz.challenge(kind.clone()).ok_or_else(|| {
            AcmeError::Permanent(format!(
                "the CA offers no {kind:?} challenge for {identifier}"
            ))
        })?;
        let key_authorization = challenge.key_authorization();
        pending.push(PendingChallenge {
            authorization_url,
            identifier,
            challenge_url: challenge.url.clone(),
            token: challenge.token.clone(),
            key_authorization: key_authorization.as_str().to_string(),
            dns_value: key_authorization.dns_value(),
        });
    }
    Ok(pending)
}

/// Tells the CA to validate every challenge of `kind` still pending (on a
/// resume, those already answered are left alone).
pub async fn request_validation(
    order: &mut Order,
    kind: ChallengeType,
    retry: &RetryAfter,
) -> Result<(), AcmeError> {
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| AcmeError::from_acme(e, retry))?;
        if authz.status != AuthorizationStatus::Pending {
            continue;
        }
        if let Some(mut challenge) = authz.challenge(kind.clone()) {
            if challenge.status == ChallengeStatus::Pending {
                acme_call!(retry, challenge.set_ready().await)?;
            }
        }
    }
    Ok(())
}

/// What the CA decided about an order's authorizations.
#[derive(Debug)]
pub enum Validation {
    /// Validated: the order can be finalized (or already was).
    Passed,
    /// Refused, with the CA's reason.
    Refused(String),
}

/// Waits for the CA to decide; a CA still deciding after the poll is
/// retried later.
pub async fn await_validation(
    order: &mut Order,
    retry: &RetryAfter,
) -> Result<Validation, AcmeError> {
    // Not through `acme_call!`: here every problem document the CA answers
    // (after the resends for a bad nonce) is its decision on the order, and
    // carries the reason.
    let mut attempt = 0;
    let polled = loop {
        attempt += 1;
        match order
            .poll_ready(&RetryPolicy::new().timeout(POLL_TIMEOUT))
            .await
        {
            Err(e) if super::resend(&e, attempt) => continue,
            polled => break polled,
        }
    };
    let problem = match polled {
        Ok(OrderStatus::Ready | OrderStatus::Processing | OrderStatus::Valid) => {
            return Ok(Validation::Passed)
        }
        Ok(OrderStatus::Pending) => {
            return Err(AcmeError::Transient("the CA has not validated yet".into()))
        }
        Ok(OrderStatus::Invalid) => None,
        // The CA answers a failed validation with the order's problem.
        Err(instant_acme::Error::Api(problem)) => Some(problem),
        Err(e) => return Err(AcmeError::from_acme(e, retry)),
    };
    Ok(Validation::Refused(invalid_reason(order, problem).await))
}

/// The CA's reason an order failed: the first failed challenge's error,
/// else the order's own problem.
async fn invalid_reason(order: &mut Order, problem: Option<Problem>) -> String {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let identifier = authz.identifier().to_string();
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        if state.status != AuthorizationStatus::Invalid {
            continue;
        }
        let detail = state
            .challenges
            .iter()
            .find_map(|c| c.error.as_ref())
            .or(problem.as_ref())
            .map(|e| {
                e.detail
                    .clone()
                    .unwrap_or_else(|| e.r#type.clone().unwrap_or_default())
            })
            .unwrap_or_default();
        return format!("the CA refused {identifier}: {detail}");
    }
    match problem {
        Some(p) => format!("the CA refused the order: {}", p.detail.unwrap_or_default()),
        None => "the CA marked the order invalid".into(),
    }
}

/// Whether the order still waits for its CSR (a resumed order may have been
/// finalized already).
pub async fn awaits_csr(order: &mut Order, retry: &RetryAfter) -> Result<bool, AcmeError> {
    let status = acme_call!(retry, order.refresh().await.map(|s| s.status))?;
    Ok(status == OrderStatus::Ready)
}

/// Sends the CSR.
pub async fn finalize(
    order: &mut Order,
    csr_der: &[u8],
    retry: &RetryAfter,
) -> Result<(), AcmeError> {
    acme_call!(retry, order.finalize_csr(csr_der).await)
}

/// The issued chain (PEM, leaf first), once the CA has it.
pub async fn certificate_chain(order: &mut Order, retry: &RetryAfter) -> Result<String, AcmeError> {
    acme_call!(
        retry,
        order
            .poll_certificate(&RetryPolicy::new().timeout(POLL_TIMEOUT))
            .await
    )
}

/// The CA's suggested renewal window for `leaf_der`, when its directory
/// offers ARI. Any failure leaves the default window in force (and is logged).
pub async fn renewal_window(account: &Account, leaf_der: &[u8]) -> Option<AriWindow> {
    let id = ari::certificate_id(leaf_der)
        .map_err(|e| tracing::warn!(error = %e, "no ARI identifier for the certificate"))
        .ok()?;
    match account.renewal_info(&id).await {
        Ok((info, retry_after)) => ari::window_of(&info, retry_after)
            .map_err(|e| tracing::warn!(error = %e, "ARI window refused"))
            .ok(),
        Err(instant_acme::Error::Unsupported(_)) => None,
        Err(e) => {
            tracing::warn!(error = %e, "fetching the ARI window failed; using the default window");
            None
        }
    }
}
