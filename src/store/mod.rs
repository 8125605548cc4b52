//! The only code that touches the domain's collections: the MongoDB
//! connection and the policy that rides through elections, the database's
//! clock ([`clock`]), fenced writes ([`fence`]), the schema and its
//! migrations ([`schema`]), and one module per collection ([`certificates`],
//! [`orders`], [`challenges`], [`issuers`], [`projects`], [`tokens`],
//! [`keys`], [`kek_versions`], [`idempotency`], [`rate_limits`],
//! [`targets`], [`distributions`], [`channels`], [`notifications`]; [`stats`]
//! shares the certificate counts), and
//! whole-database reads and loads for snapshots ([`snapshot`]).
//!
//! Every write uses write concern `majority` and every read that decides
//! anything goes to the primary (DESIGN.md invariant 1), whatever the URI
//! says. [`Store::ride_through`] retries the errors a primary step-down or an
//! election produces for a bounded window, because our server of record (and a
//! real replica set mid-election) answers `NotWritablePrimary` without the
//! `RetryableWriteError` label the driver would retry on its own.

pub mod certificates;
pub mod challenges;
pub mod channels;
pub mod clock;
pub mod distributions;
pub mod fence;
pub mod fleet;
pub mod idempotency;
pub mod issuers;
pub mod kek_versions;
pub mod keys;
pub mod notifications;
pub mod orders;
pub mod projects;
pub mod rate_limits;
pub mod schema;
pub mod snapshot;
pub mod stats;
pub mod targets;
pub mod tokens;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, DateTime, Document};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, ReadConcern, ReadPreference, SelectionCriteria, WriteConcern,
};
use mongodb::{Client, Collection, Database};

use crate::domain::backoff::Backoff;
use crate::store::clock::{LocalClock, ServerClock};

pub const DEFAULT_DATABASE: &str = "certautopilot";
/// The field of a target or channel holding its binding MAC
/// ([`crate::crypto::binding`]).
pub const BINDING_MAC: &str = "binding_mac";
/// The shortest wait for a primary, whatever the election window: a new
/// client needs a moment to find the primary at all.
const MIN_SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(3);
const ELECTION_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

/// Server error codes a step-down, an election or a shutdown produce.
const ELECTION_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

pub const DUPLICATE_KEY: i32 = 11000;
pub const NAMESPACE_EXISTS: i32 = 48;

#[derive(Clone, Debug)]
pub struct Store {
    client: Client,
    db: Database,
    election_retry: Duration,
    clock: Arc<ServerClock>,
}

impl Store {
    pub async fn connect(uri: &str, election_retry: Duration) -> Result<Store, MongoError> {
        Self::connect_with_clock(uri, election_retry, LocalClock::default()).await
    }

    pub async fn connect_with_clock(
        uri: &str,
        election_retry: Duration,
        local: LocalClock,
    ) -> Result<Store, MongoError> {
        let mut options = ClientOptions::parse(uri).await?;
        options.write_concern = Some(WriteConcern::builder().w(Acknowledgment::Majority).build());
        options.read_concern = Some(ReadConcern::majority());
        options.selection_criteria =
            Some(SelectionCriteria::ReadPreference(ReadPreference::Primary));
        // How long one operation waits for a primary (unless the URI sets
        // `serverSelectionTimeoutMS`): the election window, so that every
        // read and write — not only those wrapped in `ride_through` — rides
        // through a step-down or an election instead of failing after a few
        // seconds (the API answered 503 during a step-down storm); never
        // under 3 s. Probes
        // (`/readyz`, `health`) bound their own waits.
        options
            .server_selection_timeout
            .get_or_insert(election_retry.max(MIN_SERVER_SELECTION_TIMEOUT));
        options
            .connect_timeout
            .get_or_insert(Duration::from_secs(3));
        options
            .app_name
            .get_or_insert_with(|| "certautopilot".to_string());
        let db_name = options
            .default_database
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE.to_string());
        let client = Client::with_options(options)?;
        let db = client.database(&db_name);
        Ok(Store {
            client,
            db,
            election_retry,
            clock: Arc::new(ServerClock::new(local)),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    pub fn collection(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    /// The database's time now, riding through elections.
    pub async fn server_now(&self) -> Result<DateTime, MongoError> {
        self.ride_through("read server time", || self.clock.now(&self.db))
            .await
    }

    /// The database's time plus `d`: a deadline to store.
    pub async fn server_after(&self, d: Duration) -> Result<DateTime, MongoError> {
        self.ride_through("read server time", || self.clock.after(&self.db, d))
            .await
    }

    pub fn clock(&self) -> &ServerClock {
        &self.clock
    }

    pub fn election_retry(&self) -> Duration {
        self.election_retry
    }

    /// Runs `op` until it succeeds, fails with an error that is not caused by
    /// an election, or the election-retry window has passed.
    ///
    /// `op` must be safe to run again after an ambiguous failure (a network
    /// error after the server applied the write): every caller's write is
    /// idempotent or fenced so that a repeat is harmless.
    pub async fn ride_through<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, MongoError>
    where
        F: FnMut() -> Fut,
        Fut: IntoFuture<Output = Result<T, MongoError>>,
    {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if is_election_error(&e) && started.elapsed() < self.election_retry => {
                    attempt += 1;
                    let delay = ELECTION_BACKOFF.delay(attempt);
                    tracing::debug!(operation = what, attempt, error = %short(&e), "database unavailable, retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Inserts a document with a fresh `_id`, riding through elections. A
    /// retry whose first try had landed meets its own document: success.
    pub async fn insert(
        &self,
        what: &str,
        collection: &str,
        document: Document,
    ) -> Result<(), MongoError> {
        let coll = self.collection(collection);
        match self
            .ride_through(what, || coll.insert_one(document.clone()))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => {
                let id = document
                    .get("_id")
                    .cloned()
                    .unwrap_or(mongodb::bson::Bson::Null);
                match coll.find_one(mongodb::bson::doc! { "_id": id }).await? {
                    Some(found) if found == document => Ok(()),
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// One page of `collection` matching `filter`, in `_id` order (ids are
    /// strings), starting after `after`: the documents and the id to pass as
    /// `after` for the next page, if there is one.
    pub async fn page(
        &self,
        collection: &str,
        mut filter: Document,
        after: Option<&str>,
        limit: i64,
    ) -> Result<(Vec<Document>, Option<String>), MongoError> {
        use futures::TryStreamExt;
        if let Some(after) = after {
            filter.insert("_id", mongodb::bson::doc! { "$gt": after });
        }
        let mut docs: Vec<Document> = self
            .collection(collection)
            .find(filter)
            .sort(mongodb::bson::doc! { "_id": 1 })
            .limit(limit + 1)
            .await?
            .try_collect()
            .await?;
        let next = (docs.len() as i64 > limit).then(|| {
            docs[limit as usize - 1]
                .get_str("_id")
                .unwrap_or_default()
                .to_string()
        });
        docs.truncate(limit as usize);
        Ok((docs, next))
    }

    /// Asks the primary for `hello` within `deadline`: the readiness probe.
    pub async fn ping_primary(&self, deadline: Duration) -> Result<Document, String> {
        let cmd = self
            .db
            .run_command(doc! { "hello": 1 })
            .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary));
        match tokio::time::timeout(deadline, cmd).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(short(&e)),
            Err(_) => Err(format!("no answer from the primary within {deadline:?}")),
        }
    }
}

/// The server error code, whatever shape the error came in.
pub fn error_code(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|errs| errs.first().map(|w| w.code))
            .or_else(|| m.write_concern_error.as_ref().map(|w| w.code)),
        _ => None,
    }
}

pub fn is_duplicate_key(e: &MongoError) -> bool {
    error_code(e) == Some(DUPLICATE_KEY)
}

/// Errors that mean "the primary is briefly away": retry, do not fail.
pub fn is_election_error(e: &MongoError) -> bool {
    if e.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR) {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. } => true,
        _ => error_code(e).is_some_and(|c| ELECTION_CODES.contains(&c)),
    }
}

/// A one-line description of a database error, for logs and reasons.
pub fn short(e: &MongoError) -> String {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => format!("{} ({}): {}", c.code_name, c.code, c.message),
        ErrorKind::Write(WriteFailure::WriteError(w)) => {
            format!("write error {}: {}", w.code, w.message)
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
            format!(
                "write concern error {} ({}): {}",
                w.code_name, w.code, w.message
            )
        }
        ErrorKind::ServerSelection { message, .. } => {
            format!(
                "no primary available: {}",
                message.lines().next().unwrap_or("")
            )
        }
        other => other.to_string(),
    }
}
