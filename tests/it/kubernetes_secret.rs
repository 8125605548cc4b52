//! `distribute::kubernetes_secret` against the stand-in of the Secrets
//! endpoints (`support::kubernetes`; no API server can be had here): create
//! or replace keeping metadata, a base URL with a path, concurrent writers,
//! refusals that change nothing, an endless answer read no further than the
//! cap.

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::json;
use url::Url;

use crate::support::kubernetes::{serve, StandIn, TOKEN};
use certautopilot::distribute::http::DeliveryError;
use certautopilot::distribute::kubernetes_secret::{
    read, replace, Cluster, TlsData, DEFAULT_TIMEOUT, MAX_ANSWER_BYTES,
};
use certautopilot::net::egress::EgressPolicy;

fn cluster(server: &Url, token: &str) -> Cluster {
    Cluster {
        server: server.clone(),
        bearer_token: token.into(),
        ca_pem: None,
    }
}

fn tls(n: u8) -> TlsData {
    TlsData {
        certificate_pem: format!("cert {n}").into_bytes(),
        key_pem: format!("key {n}").into_bytes(),
        ca_pem: (n > 1).then(|| b"ca".to_vec()),
    }
}

fn loopback() -> EgressPolicy {
    EgressPolicy::parse("127.0.0.1").unwrap()
}

#[actix_web::test]
async fn an_absent_secret_is_created_and_a_present_one_replaced_keeping_its_metadata() {
    let state = Arc::new(Mutex::new(StandIn::default()));
    let stand_in = serve(state.clone(), false).await;
    let server = stand_in.url.clone();
    let c = cluster(&server, TOKEN);
    let created = replace(&loopback(), &c, "web", "www-tls", &tls(1), DEFAULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(created.previous, None);
    {
        let mut s = state.lock().unwrap();
        let secret = s.secrets.get_mut("web/www-tls").unwrap();
        assert_eq!(secret["type"], "kubernetes.io/tls");
        assert_eq!(TlsData::from_data(&secret["data"]), Some(tls(1)));
        assert_eq!(
            secret["metadata"]["resourceVersion"],
            json!(created.resource_version)
        );
        // Someone else labels it; a replace must not drop that.
        secret["metadata"]["labels"] = json!({"team": "edge"});
    }
    let replaced = replace(&loopback(), &c, "web", "www-tls", &tls(2), DEFAULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(replaced.previous, Some(tls(1)), "what to roll back to");
    let writes = state.lock().unwrap().writes;
    let again = replace(&loopback(), &c, "web", "www-tls", &tls(2), DEFAULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        again.previous, None,
        "a retry does not take the new data for the old"
    );
    assert_eq!(state.lock().unwrap().writes, writes, "and writes nothing");
    let secret = state.lock().unwrap().secrets["web/www-tls"].clone();
    assert_eq!(TlsData::from_data(&secret["data"]), Some(tls(2)));
    assert_eq!(secret["data"]["ca.crt"], json!(BASE64.encode("ca")));
    assert_eq!(secret["metadata"]["labels"], json!({"team": "edge"}));
    stand_in.handle.stop(true).await;
}

#[actix_web::test]
async fn a_server_url_with_a_path_keeps_it() {
    let state = Arc::new(Mutex::new(StandIn::default()));
    let stand_in = serve(state.clone(), false).await;
    let server = stand_in.url.clone();
    // The stand-in answers under /k8s/clusters/c-1/ too (it matches the
    // path's tail); a dropped segment would reach /k8s/clusters/api/….
    let c = cluster(&server.join("k8s/clusters/c-1").unwrap(), TOKEN);
    replace(&loopback(), &c, "web", "www-tls", &tls(1), DEFAULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        state.lock().unwrap().paths.last().unwrap(),
        "/k8s/clusters/c-1/api/v1/namespaces/web/secrets"
    );
    stand_in.handle.stop(true).await;
}

#[actix_web::test]
async fn a_concurrent_write_is_read_again_and_a_secret_that_keeps_changing_gives_up() {
    let state = Arc::new(Mutex::new(StandIn::default()));
    let stand_in = serve(state.clone(), false).await;
    let server = stand_in.url.clone();
    let c = cluster(&server, TOKEN);
    replace(&loopback(), &c, "web", "www-tls", &tls(1), DEFAULT_TIMEOUT)
        .await
        .unwrap();
    {
        let mut s = state.lock().unwrap();
        s.interfere = 2;
        s.writes = 0;
    }
    let replaced = replace(&loopback(), &c, "web", "www-tls", &tls(2), DEFAULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(replaced.previous, Some(tls(1)));
    assert_eq!(
        state.lock().unwrap().writes,
        3,
        "two stale writes refused, the third lands"
    );

    state.lock().unwrap().interfere = 100;
    let e = replace(&loopback(), &c, "web", "www-tls", &tls(3), DEFAULT_TIMEOUT)
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(
        e.to_string()
            .contains("changed under every one of 5 writes"),
        "{e}"
    );
    let secret = state.lock().unwrap().secrets["web/www-tls"].clone();
    assert_eq!(TlsData::from_data(&secret["data"]), Some(tls(2)));
    stand_in.handle.stop(true).await;
}

#[actix_web::test]
async fn refusals_are_clear_and_change_nothing() {
    let state = Arc::new(Mutex::new(StandIn::default()));
    let stand_in = serve(state.clone(), false).await;
    let server = stand_in.url.clone();
    let wrong = replace(
        &loopback(),
        &cluster(&server, "stolen"),
        "web",
        "www-tls",
        &tls(1),
        DEFAULT_TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(wrong, DeliveryError::Rejected { status: 401, .. }),
        "{wrong}"
    );

    state.lock().unwrap().secrets.insert(
        "web/opaque".into(),
        json!({"metadata": {"name": "opaque", "resourceVersion": "1"}, "type": "Opaque", "data": {}}),
    );
    let c = cluster(&server, TOKEN);
    let opaque = replace(&loopback(), &c, "web", "opaque", &tls(1), DEFAULT_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(opaque, DeliveryError::Refused(_)), "{opaque}");

    for (ns, name) in [
        ("web", "../../pods"),
        ("web/x", "a"),
        ("web", "A"),
        ("", "a"),
    ] {
        let e = replace(&loopback(), &c, ns, name, &tls(1), DEFAULT_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(e, DeliveryError::Refused(_)), "{ns}/{name}: {e}");
    }
    let e = replace(
        &EgressPolicy::default(),
        &c,
        "web",
        "a",
        &tls(1),
        DEFAULT_TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("loopback"), "{e}");
    assert_eq!(state.lock().unwrap().writes, 0, "nothing was written");
    stand_in.handle.stop(true).await;
}

/// The attack: a "cluster" a tenant names answers a Secret's GET with a 200
/// whose body never ends, to take the memory of every worker that claims
/// the delivery. The read stops as soon as the answer passes the cap, long
/// before the request's timeout, with an error naming the cap; what the
/// stand-in managed to hand over (the cap plus what the sockets buffer)
/// shows nothing near the body's endless length was taken in.
#[actix_web::test]
async fn an_endless_answer_is_read_no_further_than_the_cap() {
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let state = Arc::new(Mutex::new(StandIn {
        endless: Some(sent.clone()),
        ..StandIn::default()
    }));
    let stand_in = serve(state.clone(), false).await;
    let c = cluster(&stand_in.url, TOKEN);
    let started = std::time::Instant::now();
    let e = read(&loopback(), &c, "web", "www-tls", DEFAULT_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(e, DeliveryError::Refused(_)), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "the Secret as read is longer than {MAX_ANSWER_BYTES} bytes; reading stopped there"
        )
    );
    let e = replace(&loopback(), &c, "web", "www-tls", &tls(1), DEFAULT_TIMEOUT)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("reading stopped there"), "{e}");
    assert!(
        started.elapsed() < DEFAULT_TIMEOUT / 2,
        "stopped at the cap, not at the timeout: {:?}",
        started.elapsed()
    );
    stand_in.handle.stop(false).await;
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent < 4 * MAX_ANSWER_BYTES + (64 << 20),
        "{sent} bytes were handed over for two reads"
    );
    assert_eq!(state.lock().unwrap().writes, 0, "nothing was written");
}
