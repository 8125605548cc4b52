//! What workers and the scheduler leader do: one module per job kind, the
//! registry that names them all ([`registry`]), the leader's scans that
//! enqueue time-driven work, and how ACME errors become job outcomes
//! ([`outcome`]).

pub mod distribute;
pub mod housekeeping;
pub mod issue;
pub mod kek_rewrap;
pub mod notify;
pub mod outcome;
pub mod periodic;
pub mod probe;
pub mod refresh_ari;
pub mod registry;
pub mod renewal;
pub mod revoke;
pub mod scan_drift;

use crate::domain::certificate::Certificate;
use crate::domain::issuer::Issuer;
use crate::queue::handler::HandlerError;
use crate::store::{certificates, issuers, Store};

/// A job's certificate; gone is permanent (the job cannot succeed).
async fn certificate_of(store: &Store, id: &str) -> Result<Certificate, HandlerError> {
    find_certificate(store, id)
        .await?
        .ok_or_else(|| HandlerError::Permanent(format!("certificate {id} no longer exists")))
}

/// The certificate `id`, or `None` once it has been deleted: for periodic
/// work, which has nothing left to do then.
async fn find_certificate(store: &Store, id: &str) -> Result<Option<Certificate>, HandlerError> {
    Ok(certificates::find(store, id).await?)
}

/// A certificate's issuer, as orders and revocations need it: looked up in
/// the certificate's own project, so an `issuer_id` pointed at another
/// project's issuer (a database writer's move) never lends its account or
/// keys; gone, elsewhere or unreadable is permanent.
async fn issuer_of(store: &Store, cert: &Certificate) -> Result<Issuer, HandlerError> {
    let id = &cert.issuer_id;
    let d = issuers::in_project(store, &cert.project_id, id)
        .await?
        .ok_or_else(|| {
            HandlerError::Permanent(format!(
                "issuer {id} no longer exists in project {}",
                cert.project_id
            ))
        })?;
    issuers::parse(&d).map_err(HandlerError::Permanent)
}
