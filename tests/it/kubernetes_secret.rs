//! `distribute::kubernetes_secret` against the stand-in of the Secrets
//! endpoints (`support::kubernetes`; no API server can be had here): create
//! or replace keeping metadata, a base URL with a path, concurrent writers,
//! refusals that change nothing.

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::json;
use url::Url;

use crate::support::kubernetes::{serve, StandIn, TOKEN};
use certautopilot::distribute::http::DeliveryError;
use certautopilot::distribute::kubernetes_secret::{replace, Cluster, TlsData, DEFAULT_TIMEOUT};
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
