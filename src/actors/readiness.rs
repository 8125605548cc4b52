//! What `/readyz` reports, kept fresh by one background monitor so that the
//! endpoint itself never waits on the database.
//!
//! Not ready when: shutting down; the schema does not fit this binary; the
//! KEK fails its canary round trip, or is not the installation's (a version
//! whose check value differs from the one recorded for it, see
//! [`crate::crypto::kek::check`]: workers then claim nothing, so nothing is
//! sealed under it); or the primary has not answered for
//! longer than the grace period. The grace
//! period means a brief election does not pull every replica out of the load
//! balancer at the same moment.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::crypto::kek::check::{self, CheckError};
use crate::crypto::kek::{KekError, KekProvider};
use crate::observe::metrics::Metrics;
use crate::observe::shutdown::Shutdown;
use crate::store::schema::{self, SchemaFit};
use crate::store::{short, Store};

/// How often the monitor asks the primary, and how long it waits for an answer.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
pub const PROBE_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Readiness {
    grace: Duration,
    shutting_down: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// None until the primary first answered.
    last_ok: Option<Instant>,
    unreachable_since: Option<Instant>,
    last_error: Option<String>,
    schema: Option<SchemaFit>,
    /// The last KEK canary's failure, if it failed.
    kek_error: Option<String>,
    /// Why the KEK is not this installation's, if the last check said so.
    kek_foreign: Option<String>,
}

/// The answer `/readyz` gives.
#[derive(Debug, Clone)]
pub struct Report {
    pub ready: bool,
    pub body: serde_json::Value,
}

impl Readiness {
    pub fn new(grace: Duration) -> Arc<Readiness> {
        Arc::new(Readiness {
            grace,
            shutting_down: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        })
    }

    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn schema_fit(&self) -> Option<SchemaFit> {
        self.state.lock().unwrap().schema
    }

    pub fn record_ok(&self, fit: SchemaFit) {
        let mut s = self.state.lock().unwrap();
        s.last_ok = Some(Instant::now());
        s.unreachable_since = None;
        s.last_error = None;
        s.schema = Some(fit);
    }

    pub fn record_kek(&self, result: Result<(), String>) {
        self.state.lock().unwrap().kek_error = result.err();
    }

    pub fn record_kek_identity(&self, result: Result<(), String>) {
        self.state.lock().unwrap().kek_foreign = result.err();
    }

    /// The KEK is another key ring than the one the data keys are wrapped
    /// with: nothing may be sealed under it.
    pub fn kek_foreign(&self) -> bool {
        self.state.lock().unwrap().kek_foreign.is_some()
    }

    pub fn record_unreachable(&self, error: String) {
        let mut s = self.state.lock().unwrap();
        s.unreachable_since.get_or_insert_with(Instant::now);
        s.last_error = Some(error);
    }

    pub fn report(&self) -> Report {
        if self.shutting_down.load(Ordering::SeqCst) {
            return not_ready("shutting down", json!({}));
        }
        let s = self.state.lock().unwrap();
        let database = match (&s.last_ok, &s.unreachable_since) {
            (None, _) => {
                let reason = s
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "not yet connected".into());
                return not_ready("database not reachable yet", json!({ "database": reason }));
            }
            (Some(_), Some(since)) if since.elapsed() > self.grace => {
                return not_ready(
                    "database primary unreachable",
                    json!({ "database": s.last_error, "unreachable_for_secs": since.elapsed().as_secs() }),
                );
            }
            (Some(_), Some(since)) => json!({
                "status": "unreachable, within grace period",
                "unreachable_for_secs": since.elapsed().as_secs(),
                "grace_secs": self.grace.as_secs(),
            }),
            (Some(_), None) => json!({ "status": "ok" }),
        };
        match s.schema {
            Some(fit) if fit.runs() => {}
            None => {}
            Some(fit) => {
                return not_ready("schema does not fit", json!({ "schema": fit.describe() }))
            }
        }
        if let Some(e) = &s.kek_error {
            return not_ready("KEK unreachable", json!({ "kek": e }));
        }
        if let Some(e) = &s.kek_foreign {
            return not_ready("KEK is not this installation's", json!({ "kek": e }));
        }
        Report {
            ready: true,
            body: json!({ "status": "ready", "checks": { "database": database, "schema": "ok", "kek": "ok" } }),
        }
    }
}

fn not_ready(reason: &str, details: serde_json::Value) -> Report {
    Report {
        ready: false,
        body: json!({ "status": "not ready", "reason": reason, "details": details }),
    }
}

/// Asks the primary for `hello` and the schema version, and runs the KEK
/// canary, every [`PROBE_INTERVAL`] until shutdown.
pub async fn monitor(
    store: Store,
    kek: Arc<dyn KekProvider>,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    loop {
        match probe(&store).await {
            Ok(fit) => readiness.record_ok(fit),
            Err(e) => readiness.record_unreachable(e),
        }
        let mut kek_result = kek_canary(kek.clone()).await;
        if kek_result.is_ok() {
            match kek_identity(&store, kek.clone()).await {
                Ok(()) => readiness.record_kek_identity(Ok(())),
                Err(CheckError::Kek(e @ KekError::NotThisKeyRing { .. })) => {
                    readiness.record_kek_identity(Err(e.to_string()))
                }
                Err(CheckError::Kek(e)) => kek_result = Err(e.to_string()),
                // The database check reports it; keep what we knew.
                Err(CheckError::Db(e)) => tracing::debug!(error = %e, "KEK check values not read"),
            }
        }
        if kek_result.is_ok() {
            metrics
                .kek_current_version
                .set(kek.current_version() as i64);
        }
        readiness.record_kek(kek_result);
        if let Some(skew) = store.clock().observed_skew_secs() {
            metrics.clock_skew_seconds.set(skew);
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = shutdown.requested() => return,
        }
    }
}

/// Re-reads the KEK source and runs a wrap/unwrap round trip, off the async
/// threads (an HSM call blocks).
pub async fn kek_canary(kek: Arc<dyn KekProvider>) -> Result<(), String> {
    let check = tokio::task::spawn_blocking(move || {
        kek.refresh()?;
        kek.check()
    });
    match tokio::time::timeout(PROBE_DEADLINE, check).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Err(_)) => Err("KEK check panicked".into()),
        Err(_) => Err("KEK check timed out".into()),
    }
}

/// Is the KEK the installation's? Its check values against the recorded ones
/// (recording those of versions seen for the first time).
pub async fn kek_identity(store: &Store, kek: Arc<dyn KekProvider>) -> Result<(), CheckError> {
    tokio::time::timeout(PROBE_DEADLINE, check::verify(store, kek))
        .await
        .unwrap_or_else(|_| Err(CheckError::Db("timed out".into())))
}

async fn probe(store: &Store) -> Result<SchemaFit, String> {
    store.ping_primary(PROBE_DEADLINE).await?;
    let state = tokio::time::timeout(PROBE_DEADLINE, schema::probe_state(store))
        .await
        .map_err(|_| "schema version read timed out".to_string())?
        .map_err(|e| short(&e))?;
    // Keep the clock sample fresh (and the skew metric current).
    let _ = tokio::time::timeout(PROBE_DEADLINE, store.server_now()).await;
    Ok(SchemaFit::of(state))
}
