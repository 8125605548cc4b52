//! Time. Lease and schedule decisions use the database's clock, never this
//! process's (DESIGN.md invariant 2).
//!
//! The server we test on evaluates `$$NOW` in filters and stamps but cannot
//! do date arithmetic (`$add` on a date is refused), so deadlines are
//! computed here from the database's clock: [`ServerClock`] samples the
//! primary's `hello.localTime` and extrapolates with this process's monotonic
//! clock, which a wrong or stepped wall clock does not disturb. Whether a
//! deadline has passed is still decided by the server (`$expr` against `$$NOW`).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mongodb::bson::{doc, DateTime};
use mongodb::error::Error as MongoError;
use mongodb::options::{ReadPreference, SelectionCriteria};
use mongodb::Database;

/// How long one sample of the database's clock is extrapolated before it is
/// taken again.
const SAMPLE_MAX_AGE: Duration = Duration::from_secs(10);

/// This process's wall clock, with the offset injected for tests
/// (`CAP_CLOCK_OFFSET_SECS`). Only used to report skew, never to decide.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalClock {
    pub offset_secs: i64,
}

impl LocalClock {
    pub fn now_millis(&self) -> i64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        real + self.offset_secs * 1000
    }
}

#[derive(Debug)]
pub struct ServerClock {
    sample: Mutex<Option<Sample>>,
    local: LocalClock,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    server_millis: i64,
    taken: Instant,
    /// Database clock minus local wall clock at the sample, in milliseconds.
    skew_millis: i64,
}

impl ServerClock {
    pub fn new(local: LocalClock) -> ServerClock {
        ServerClock {
            sample: Mutex::new(None),
            local,
        }
    }

    /// The database's time now (to within a round trip).
    pub async fn now(&self, db: &Database) -> Result<DateTime, MongoError> {
        if let Some(s) = *self.sample.lock().unwrap() {
            if s.taken.elapsed() < SAMPLE_MAX_AGE {
                return Ok(DateTime::from_millis(
                    s.server_millis + s.taken.elapsed().as_millis() as i64,
                ));
            }
        }
        let s = self.take_sample(db).await?;
        Ok(DateTime::from_millis(
            s.server_millis + s.taken.elapsed().as_millis() as i64,
        ))
    }

    /// The database's time plus `d`: a deadline to store.
    pub async fn after(&self, db: &Database, d: Duration) -> Result<DateTime, MongoError> {
        let now = self.now(db).await?;
        Ok(DateTime::from_millis(
            now.timestamp_millis() + d.as_millis() as i64,
        ))
    }

    /// How far this process's wall clock is from the database's, in seconds
    /// (positive: the database is ahead), as of the last sample.
    pub fn observed_skew_secs(&self) -> Option<f64> {
        self.sample
            .lock()
            .unwrap()
            .map(|s| s.skew_millis as f64 / 1000.0)
    }

    async fn take_sample(&self, db: &Database) -> Result<Sample, MongoError> {
        let sent = Instant::now();
        let reply = db
            .run_command(doc! { "hello": 1 })
            .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
            .await?;
        let rtt = sent.elapsed();
        let server_millis = reply
            .get_datetime("localTime")
            .map(|d| d.timestamp_millis())
            .map_err(|_| MongoError::custom("the server's hello reply has no localTime"))?;
        // The server read its clock somewhere in the round trip: assume the middle.
        let taken = sent + rtt / 2;
        let sample = Sample {
            server_millis,
            taken,
            skew_millis: server_millis - self.local.now_millis(),
        };
        *self.sample.lock().unwrap() = Some(sample);
        Ok(sample)
    }
}
