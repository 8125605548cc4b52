//! A [`Cluster`]: what an API test runs against, started in one go and
//! stopped when dropped.
//!
//! ```ignore
//! let cluster = Cluster::builder("revocation")
//!     .pebble(PebbleOptions::default())
//!     .workers(1)
//!     .start()
//!     .await;
//! let (p, issuer) = cluster.api.project_with_issuer("revoking", cluster.pebble()).await;
//! ```
//!
//! Pebble validates HTTP-01 where the API listens: on the one `api`, or on
//! haproxy in front of several.

use std::time::Duration;

use super::api::{bootstrap_token, ApiClient};
use super::bind::Bind;
use super::haproxy::Haproxy;
use super::pebble::{Pebble, PebbleOptions};
use super::{free_addr, wait_until, Proc, TestDb};

/// The kinds of `certautopilot` process a cluster runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Api,
    Worker,
    Scheduler,
}

impl Role {
    /// Its subcommand, which is also its part of a process's id.
    fn command(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Worker => "worker",
            Role::Scheduler => "scheduler",
        }
    }
}

/// What a cluster is to run; [`ClusterBuilder::start`] starts it.
pub struct ClusterBuilder {
    hint: String,
    pebble: Option<PebbleOptions>,
    bind_zone: Option<String>,
    apis: usize,
    workers: usize,
    schedulers: usize,
    env: Vec<(Role, String, String)>,
}

/// A migrated database of its own, the processes on it and the servers they
/// talk to.
pub struct Cluster {
    /// The API as a global admin (a bootstrapped token).
    pub api: ApiClient,
    pub apis: Vec<Proc>,
    pub workers: Vec<Proc>,
    pub schedulers: Vec<Proc>,
    pub db: TestDb,
    env: Vec<(Role, String, String)>,
    // Dropped after the processes that talk to them.
    pebble: Option<Pebble>,
    bind: Option<Bind>,
    _haproxy: Option<Haproxy>,
}

impl Cluster {
    /// One api on a database named after `hint`, nothing else: ask for the
    /// rest. Processes are named after it too: `{hint}-api`, or
    /// `{hint}-worker-0`, `{hint}-worker-1`, … when a role has several.
    pub fn builder(hint: &str) -> ClusterBuilder {
        ClusterBuilder {
            hint: hint.to_string(),
            pebble: None,
            bind_zone: None,
            apis: 1,
            workers: 0,
            schedulers: 0,
            // Tests wait for work to be done, so workers look for it often.
            env: vec![(Role::Worker, "CAP_CLAIM_POLL_MS".into(), "100".into())],
        }
    }

    pub fn pebble(&self) -> &Pebble {
        self.pebble
            .as_ref()
            .expect("this cluster has no Pebble: ask for one with .pebble(…)")
    }

    pub fn bind(&self) -> &Bind {
        self.bind
            .as_ref()
            .expect("this cluster has no bind9: ask for one with .bind(…)")
    }

    /// One more process of `role`, with the settings its role has in this
    /// cluster (a successor to one the test killed, say); not waited for.
    pub fn spawn(&self, role: Role, id: &str) -> Proc {
        Proc::start(role.command(), &self.db, id, &env_of(&self.env, role))
    }
}

impl ClusterBuilder {
    /// Pebble as the CA, validating HTTP-01 where the API listens.
    pub fn pebble(mut self, options: PebbleOptions) -> ClusterBuilder {
        self.pebble = Some(options);
        self
    }

    /// bind9 as the primary for `zone`, taking TSIG-signed updates; Pebble
    /// resolves names through it, so DNS-01 reads what it holds.
    pub fn bind(mut self, zone: &str) -> ClusterBuilder {
        self.bind_zone = Some(zone.to_string());
        self
    }

    /// `n` api processes; more than one sit behind haproxy.
    pub fn apis(mut self, n: usize) -> ClusterBuilder {
        assert!(n >= 1, "a cluster serves the API: one api at least");
        self.apis = n;
        self
    }

    pub fn workers(mut self, n: usize) -> ClusterBuilder {
        self.workers = n;
        self
    }

    pub fn scheduler(mut self) -> ClusterBuilder {
        self.schedulers = 1;
        self
    }

    /// A `CAP_*` setting for every process of `role`; a later one for the
    /// same key wins.
    pub fn env(mut self, role: Role, key: &str, value: &str) -> ClusterBuilder {
        self.env.push((role, key.to_string(), value.to_string()));
        self
    }

    /// Starts everything asked for and returns once every process answers
    /// `/healthz` (and haproxy forwards to the apis).
    pub async fn start(self) -> Cluster {
        let bind = self.bind_zone.as_deref().map(Bind::start);
        // Where the API listens: the one api, or haproxy before several.
        let front = free_addr();
        let pebble = self.pebble.map(|mut options| {
            if let Some(bind) = &bind {
                options.dns_server = Some(bind.addr.to_string());
            }
            Pebble::start_with(front.port(), &options)
        });
        let db = TestDb::migrated(&self.hint).await;
        let start = |role: Role, n: usize, extra: &[(&str, &str)]| -> Vec<Proc> {
            let mut env = extra.to_vec();
            env.extend(env_of(&self.env, role));
            (0..n)
                .map(|i| {
                    let id = match n {
                        1 => format!("{}-{}", self.hint, role.command()),
                        _ => format!("{}-{}-{i}", self.hint, role.command()),
                    };
                    Proc::start(role.command(), &db, &id, &env)
                })
                .collect()
        };
        let front_addr = front.to_string();
        let apis = match self.apis {
            1 => start(Role::Api, 1, &[("CAP_HTTP_ADDR", &front_addr)]),
            n => start(Role::Api, n, &[]),
        };
        let workers = start(Role::Worker, self.workers, &[]);
        let schedulers = start(Role::Scheduler, self.schedulers, &[]);
        for p in &apis {
            p.wait_alive().await;
        }
        let haproxy = (apis.len() > 1)
            .then(|| Haproxy::start(front, &apis.iter().map(|a| a.http).collect::<Vec<_>>()));
        if haproxy.is_some() {
            let up = wait_until(Duration::from_secs(20), || async {
                reqwest::get(format!("http://{front}/healthz"))
                    .await
                    .map(|r| r.status() == 200)
                    .unwrap_or(false)
            })
            .await;
            assert!(up, "haproxy forwards to the apis");
        }
        for p in workers.iter().chain(&schedulers) {
            p.wait_alive().await;
        }
        let api = ApiClient::new(format!("http://{front}/v1"), bootstrap_token(&db));
        Cluster {
            api,
            apis,
            workers,
            schedulers,
            db,
            env: self.env,
            pebble,
            bind,
            _haproxy: haproxy,
        }
    }
}

/// The settings every process of `role` gets, in the order given.
fn env_of(env: &[(Role, String, String)], role: Role) -> Vec<(&str, &str)> {
    env.iter()
        .filter(|(r, _, _)| *r == role)
        .map(|(_, k, v)| (k.as_str(), v.as_str()))
        .collect()
}
