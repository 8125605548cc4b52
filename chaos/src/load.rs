//! The steady workload every scenario runs under: clients reading and
//! writing through the balancer, and new certificates requested through the
//! API. Every request is recorded (status, latency); every write answered
//! 2xx goes into the ledger, which is checked against the database at the
//! end.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::stack::DOMAIN;

/// What the client saw.
#[derive(Default)]
pub struct Record {
    /// (latency, status; `None` when no answer came).
    pub requests: Vec<(Duration, Option<u16>)>,
    /// Projects created (ids answered 201).
    pub projects: Vec<String>,
    /// Certificates requested (ids answered 201).
    pub certificates: Vec<String>,
}

/// The running load; [`Load::stop`] ends it and returns what it saw.
pub struct Load {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub record: Arc<Mutex<Record>>,
}

/// Where the load goes and how much of it.
#[derive(Clone)]
pub struct Target {
    pub front: String,
    pub token: String,
    pub project: String,
    pub issuer: String,
    /// A new certificate this often.
    pub certificate_every: Duration,
}

impl Load {
    pub fn start(target: Target) -> Load {
        let (stop, stopped) = watch::channel(false);
        let record = Arc::new(Mutex::new(Record::default()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(4)
            .build()
            .expect("an HTTP client");
        let mut tasks = Vec::new();
        // Two writers (about 10 writes/s together) and two readers (about 20/s).
        for w in 0..2 {
            let (c, t, r, s) = (
                client.clone(),
                target.clone(),
                record.clone(),
                stopped.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                every(Duration::from_millis(200), s, || {
                    n += 1;
                    let body = json!({"name": format!("ledger-{w}-{n}")});
                    let (c, t, r) = (c.clone(), t.clone(), r.clone());
                    async move {
                        let (answer, body) = send(
                            &c,
                            &t,
                            reqwest::Method::POST,
                            "/v1/projects",
                            Some(body),
                            &r,
                        )
                        .await;
                        if answer == Some(201) {
                            if let Some(id) = body["id"].as_str() {
                                r.lock().unwrap().projects.push(id.to_string());
                            }
                        }
                    }
                })
                .await;
            }));
        }
        for _ in 0..2 {
            let (c, t, r, s) = (
                client.clone(),
                target.clone(),
                record.clone(),
                stopped.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                every(Duration::from_millis(100), s, || {
                    n += 1;
                    let path = match n % 2 {
                        0 => "/v1/projects?limit=5".to_string(),
                        _ => format!("/v1/projects/{}/certificates?limit=20", t.project),
                    };
                    let (c, t, r) = (c.clone(), t.clone(), r.clone());
                    async move {
                        send(&c, &t, reqwest::Method::GET, &path, None, &r).await;
                    }
                })
                .await;
            }));
        }
        {
            let (c, t, r, s) = (
                client.clone(),
                target.clone(),
                record.clone(),
                stopped.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                every(t.certificate_every, s, || {
                    n += 1;
                    let body = json!({
                        "name": format!("c{n}"),
                        "dns_names": [format!("c{n}.{DOMAIN}")],
                        "issuer_id": t.issuer,
                        "key_algorithm": "ecdsa-p256",
                    });
                    let path = format!("/v1/projects/{}/certificates", t.project);
                    let (c, t, r) = (c.clone(), t.clone(), r.clone());
                    async move {
                        let (answer, body) =
                            send(&c, &t, reqwest::Method::POST, &path, Some(body), &r).await;
                        if answer == Some(201) {
                            if let Some(id) = body["id"].as_str() {
                                r.lock().unwrap().certificates.push(id.to_string());
                            }
                        }
                    }
                })
                .await;
            }));
        }
        Load {
            stop,
            tasks,
            record,
        }
    }

    /// Stops every client, waiting for requests in flight.
    pub async fn stop(self) -> Arc<Mutex<Record>> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.record
    }

    /// Certificates requested so far.
    pub fn certificates(&self) -> Vec<String> {
        self.record.lock().unwrap().certificates.clone()
    }
}

/// Runs `step` every `period` (one at a time) until told to stop.
async fn every<F, Fut>(period: Duration, mut stopped: watch::Receiver<bool>, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => step().await,
            _ = stopped.changed() => return,
        }
    }
}

async fn send(
    client: &reqwest::Client,
    target: &Target,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    record: &Mutex<Record>,
) -> (Option<u16>, Value) {
    let mut req = client
        .request(method, format!("{}{path}", target.front))
        .bearer_auth(&target.token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let started = Instant::now();
    let (status, body) = match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (Some(status), resp.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (None, Value::Null),
    };
    record
        .lock()
        .unwrap()
        .requests
        .push((started.elapsed(), status));
    (status, body)
}
