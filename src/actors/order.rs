//! `OrderActor`: the worker's ACME order runner, supervised like the other
//! actors. Asked to drive the order behind a claimed `issue-certificate` job
//! ([`crate::acme::order`]), it starts it in a task of its own and hands
//! back that task: a panic there becomes the order's error, never the
//! actor's death (actix's `Supervisor` does not catch panics), and the
//! ClaimActor cancelling the job (lease lost, hand-back on SIGTERM) aborts
//! the order with it.

use actix::prelude::*;
use futures::future::BoxFuture;

use crate::acme::order::{self, OrderSettings};
use crate::handlers::{HandlerError, JobHandler};
use crate::jobs::ClaimedJob;

pub struct OrderActor {
    settings: OrderSettings,
}

impl OrderActor {
    pub fn new(settings: OrderSettings) -> OrderActor {
        OrderActor { settings }
    }
}

impl Actor for OrderActor {
    type Context = Context<Self>;
}

impl Supervised for OrderActor {}

/// Start driving this job's order; answers with the running order's task.
#[derive(Message)]
#[rtype(result = "OrderTask")]
pub struct DriveOrder(pub ClaimedJob);

/// A running order. Dropping it aborts the order.
pub struct OrderTask(tokio::task::JoinHandle<Result<(), HandlerError>>);

impl Drop for OrderTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Handler<DriveOrder> for OrderActor {
    type Result = MessageResult<DriveOrder>;

    fn handle(&mut self, msg: DriveOrder, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(OrderTask(actix::spawn(order::issue(
            self.settings.clone(),
            msg.0,
        ))))
    }
}

/// The `issue-certificate` job handler: passes the job to the OrderActor
/// and waits for its order.
pub struct IssueCertificate(pub Addr<OrderActor>);

impl JobHandler for IssueCertificate {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), HandlerError>> {
        let actor = self.0.clone();
        Box::pin(async move {
            let mut task = actor.send(DriveOrder(job)).await.map_err(|e| {
                HandlerError::Retryable(format!("the order actor is unavailable: {e}"))
            })?;
            match (&mut task.0).await {
                Ok(result) => result,
                Err(e) if e.is_panic() => {
                    Err(HandlerError::Retryable("the ACME order panicked".into()))
                }
                Err(_) => Err(HandlerError::LeaseLost),
            }
        })
    }
}
