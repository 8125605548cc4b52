//! No write answered 2xx is lost when the database dies: a `secantusd-rs` of
//! its own, started with `--sync-on-commit`, SIGKILLed under a stream of API
//! writes and restarted on the same data and port; every write in the
//! clients' ledger is found afterwards, once, as written, and the audit
//! chain verifies.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::api::{bootstrap_token, ApiClient};
use crate::support::{self, documents, Proc, TestDb};
use mongodb::bson::doc;

/// Concurrent API clients writing.
const CLIENTS: usize = 8;
/// Writes answered 2xx before the database is killed.
const BEFORE_KILL: usize = 300;
/// Writes answered 2xx after it is back.
const AFTER_RESTART: usize = 100;

/// A write the API answered 2xx: the project's id and the name it was given.
#[derive(Clone, Debug)]
struct Acked {
    id: String,
    name: String,
}

/// What the clients saw.
#[derive(Default)]
struct Ledger {
    acked: Mutex<Vec<Acked>>,
    /// Answers that were not 2xx (expected while the database is down).
    refused: AtomicU64,
}

impl Ledger {
    fn len(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

/// One client: creates projects named `durable-{client}-{n}` until `stop`,
/// recording each answered 201 with the id it was given.
async fn write_stream(
    api: ApiClient,
    token: String,
    client: usize,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let name = format!("durable-{client}-{n}");
        n += 1;
        let sent = api
            .http
            .post(format!("{}/projects", api.base))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await;
        let answered = match sent {
            Ok(resp) if resp.status().is_success() => {
                let status = resp.status();
                let body: serde_json::Value = resp.json().await.expect("a 2xx body is JSON");
                assert_eq!(status, 201, "{body}");
                assert_eq!(body["name"], name.as_str(), "{body}");
                Some(body["id"].as_str().expect("an id").to_string())
            }
            Ok(resp) => {
                eprintln!("POST /projects answered {}", resp.status());
                None
            }
            Err(e) => {
                eprintln!("POST /projects failed: {e}");
                None
            }
        };
        match answered {
            Some(id) => ledger.acked.lock().unwrap().push(Acked { id, name }),
            None => {
                ledger.refused.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Waits until the ledger holds `n` writes; panics naming `what` otherwise.
async fn wait_for_writes(ledger: &Ledger, n: usize, what: &str) {
    let reached =
        support::wait_until(Duration::from_secs(120), || async { ledger.len() >= n }).await;
    assert!(reached, "{what}: only {} writes answered 2xx", ledger.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_sigkilled_under_a_stream_of_writes_loses_none_answered_2xx() {
    let db = TestDb::on_restartable_server("durability").await;
    let api = Proc::start("api", &db, "durability-api", &[]);
    api.wait_alive().await;
    let token = bootstrap_token(&db);
    let client = ApiClient::new(api.url("/v1"), token.clone());

    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let api = client.with_token(&token);
            tokio::spawn(write_stream(
                api,
                token.clone(),
                c,
                ledger.clone(),
                stop.clone(),
            ))
        })
        .collect();

    wait_for_writes(&ledger, BEFORE_KILL, "before the kill").await;
    // Killing and starting a server block: not on a thread the clients need.
    let pid = db.server().pid().expect("the server runs");
    tokio::task::block_in_place(|| db.server().kill());
    let at_kill = ledger.len();
    eprintln!("SIGKILLed secantusd-rs (pid {pid}) after {at_kill} writes answered 2xx");
    // The clients' requests meet a dead database for a while.
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| db.server().restart());
    let at_restart = ledger.len();
    eprintln!("restarted it; {at_restart} writes answered 2xx so far");
    wait_for_writes(&ledger, at_restart + AFTER_RESTART, "after the restart").await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("a client panicked");
    }
    let acked = ledger.acked.lock().unwrap().clone();
    let refused = ledger.refused.load(Ordering::SeqCst);
    eprintln!(
        "{} writes answered 2xx ({at_kill} before the kill), {refused} not",
        acked.len()
    );

    // Every write answered 2xx reads back through the API, as written.
    let mut lost = Vec::new();
    for w in &acked {
        let (status, body) = client.get(&format!("/projects/{}", w.id)).await;
        match status {
            200 => assert_eq!(
                body["name"],
                w.name.as_str(),
                "{} read back as {body}",
                w.id
            ),
            404 => lost.push(w.clone()),
            other => panic!("GET /projects/{}: {other} {body}", w.id),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} writes answered 2xx are gone after the restart: {:?}",
        lost.len(),
        acked.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );

    // In the database, each once: no write answered 2xx stored twice, no
    // two answers with the same id.
    let store = db.store().await;
    let mut by_name: HashMap<String, Vec<String>> = HashMap::new();
    for d in documents(&store, "projects", doc! {}).await {
        by_name
            .entry(d.get_str("name").unwrap().to_string())
            .or_default()
            .push(d.get_str("_id").unwrap().to_string());
    }
    for w in &acked {
        assert_eq!(
            by_name.get(&w.name),
            Some(&vec![w.id.clone()]),
            "{} is stored once, with the id it was answered",
            w.name
        );
    }

    // Each is audited, and the chain verifies.
    let audited: HashSet<String> = documents(
        &store,
        certautopilot::audit::AUDIT_COLLECTION,
        doc! { "action": "project.created" },
    )
    .await
    .iter()
    .map(|r| r.get_str("target").unwrap().to_string())
    .collect();
    let unaudited: Vec<&Acked> = acked
        .iter()
        .filter(|w| !audited.contains(&format!("projects/{}", w.id)))
        .collect();
    assert!(
        unaudited.is_empty(),
        "{} writes answered 2xx have no audit record: {:?}",
        unaudited.len(),
        unaudited.iter().take(10).collect::<Vec<_>>()
    );
    let out = db.cli(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("intact"),
        "audit verify: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
