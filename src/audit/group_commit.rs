//! Group commit for audit appends: the records one process appends while a
//! commit is in flight wait for it, then go together in the next
//! transaction, which takes as many numbers from the head at once.
//!
//! Every append is a transaction on the one head document, so appends made
//! at the same time conflict and retry one another; grouping them turns N
//! conflicting transactions into one. The order and the chain are those of
//! single appends: a group's records take consecutive numbers in the order
//! they were asked for, each hashing the one before, and groups from several
//! processes still serialize on the head.
//!
//! The commit runs in a task of its own, not in the future of the caller
//! that started it: a caller that gives up (an HTTP client hanging up
//! drops its handler) must not cut short a transaction carrying other
//! callers' records.

use std::sync::{Arc, Mutex};

use futures::FutureExt;
use mongodb::error::Error as MongoError;
use tokio::sync::oneshot;

use super::Event;

/// Records one transaction carries at most (well under the 16 MiB a
/// command may hold, with room for large `details`).
pub const MAX_GROUP: usize = 256;

/// What a group's commit answers: the `seq` of its first record.
pub type Committed = Result<i64, MongoError>;

#[derive(Default)]
pub struct GroupCommit {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    waiting: Vec<Waiting>,
    /// A commit task is running; it takes whatever waits when it is done.
    committing: bool,
}

struct Waiting {
    event: Event,
    done: oneshot::Sender<Result<i64, MongoError>>,
}

impl GroupCommit {
    /// Queues `event` and waits for the group it went out in; `commit`
    /// writes one group (in order) and answers its first `seq`.
    pub async fn append<C, F>(self: &Arc<Self>, event: &Event, commit: C) -> Result<i64, MongoError>
    where
        C: Fn(Vec<Event>) -> F + Send + 'static,
        F: std::future::Future<Output = Committed> + Send + 'static,
    {
        let (done, answer) = oneshot::channel();
        let lead = {
            let mut state = self.state.lock().expect("group commit state");
            state.waiting.push(Waiting {
                event: event.clone(),
                done,
            });
            !std::mem::replace(&mut state.committing, true)
        };
        if lead {
            tokio::spawn(self.clone().commit_while_waiting(commit));
        }
        answer.await.unwrap_or_else(|_| {
            Err(MongoError::custom(
                "the audit commit ended without an answer (it panicked)",
            ))
        })
    }

    /// Commits groups until nobody waits.
    async fn commit_while_waiting<C, F>(self: Arc<Self>, commit: C)
    where
        C: Fn(Vec<Event>) -> F,
        F: std::future::Future<Output = Committed>,
    {
        // Should this task end any other way (its runtime shutting down),
        // the callers waiting get an error and the next append starts a
        // committer afresh.
        let mut reset = ResetUnlessDone {
            commit: &self,
            done: false,
        };
        loop {
            let group: Vec<Waiting> = {
                let mut state = self.state.lock().expect("group commit state");
                if state.waiting.is_empty() {
                    state.committing = false;
                    reset.done = true;
                    return;
                }
                let n = state.waiting.len().min(MAX_GROUP);
                state.waiting.drain(..n).collect()
            };
            let (events, answers): (Vec<Event>, Vec<_>) =
                group.into_iter().map(|w| (w.event, w.done)).unzip();
            let result = std::panic::AssertUnwindSafe(commit(events))
                .catch_unwind()
                .await;
            let Ok(result) = result else {
                tracing::error!("an audit group commit panicked; its appends fail");
                continue;
            };
            for (i, answer) in answers.into_iter().enumerate() {
                let _ = answer.send(result.clone().map(|first| first + i as i64));
            }
        }
    }
}

struct ResetUnlessDone<'a> {
    commit: &'a GroupCommit,
    done: bool,
}

impl Drop for ResetUnlessDone<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut state = match self.commit.state.lock() {
                Ok(state) => state,
                Err(poisoned) => poisoned.into_inner(),
            };
            state.committing = false;
            state.waiting.clear();
        }
    }
}
