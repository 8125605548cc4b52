//! DNS-01 against real servers: Debian's bind9 as the zone's primary (taking
//! TSIG-signed RFC 2136 updates) and Pebble resolving through it. An ordinary
//! and a wildcard certificate are issued and their TXT records removed; a
//! server that does not answer the record holds the order back before the CA
//! is asked; a wrong TSIG secret says so.

use std::time::Duration;

use crate::support;
use crate::support::api::{assert_not_stored, ApiClient};
use crate::support::bind::Bind;
use crate::support::cluster::Cluster;
use crate::support::pebble::{Pebble, PebbleOptions};
use serde_json::{json, Value};

const ZONE: &str = "dns.example.test";

fn dns_issuer(pebble: &Pebble, bind: &Bind, secret: &str, nameservers: &[String]) -> Value {
    json!({
        "name": "pebble-dns", "directory_url": pebble.directory, "contact": "ops@example.test",
        "challenge": "dns-01", "ca_bundle_pem": pebble.listener_ca_pem,
        "dns": {
            "primary": bind.addr.to_string(), "zone": ZONE,
            "tsig_key_name": bind.key_name, "tsig_secret": secret,
            "nameservers": nameservers, "propagation_timeout_secs": 3,
        },
    })
}

/// Creates a certificate for `dns_name` with `issuer` and waits for its
/// first failed attempt; returns its path and the certificate then.
async fn first_failure(
    api: &ApiClient,
    p: &str,
    issuer: &Value,
    name: &str,
    dns_name: &str,
) -> (String, Value) {
    let body = json!({ "name": name, "dns_names": [dns_name], "issuer_id": issuer["id"] });
    let (status, cert) = api.post(&format!("/projects/{p}/certificates"), body).await;
    assert_eq!(status, 201, "{cert}");
    let path = format!(
        "/projects/{p}/certificates/{}",
        cert["id"].as_str().unwrap()
    );
    let failed = api
        .wait_for(&path, Duration::from_secs(60), name, |c| {
            !c["last_error"].is_null()
        })
        .await;
    (path, failed)
}

#[tokio::test]
async fn ordinary_and_wildcard_certificates_are_issued_over_rfc2136_and_cleaned_up() {
    let cluster = Cluster::builder("dns01")
        .bind(ZONE)
        .pebble(PebbleOptions {
            nonce_reject_percent: 0,
            ..PebbleOptions::default()
        })
        .workers(1)
        .start()
        .await;
    let (api, pebble, bind, db) = (&cluster.api, cluster.pebble(), cluster.bind(), &cluster.db);
    // Authoritative for the zone too, but never updated: it cannot answer.
    let lagging = Bind::start(ZONE);
    // With no `nameservers` given, the zone's own NS records (and their
    // glue) name the servers to check.
    assert_eq!(
        certautopilot::acme::dns::authoritative_servers(
            &support::test_egress(),
            &bind.addr.to_string(),
            ZONE
        )
        .await
        .unwrap(),
        ["127.0.0.1:53"]
    );
    let (_, project) = api.post("/projects", json!({ "name": "dns" })).await;
    let p = project["id"].as_str().unwrap().to_string();
    api.grant(&p, &[ZONE]).await;

    // Bad issuers: dns-01 without its settings, settings without dns-01,
    // settings that cannot work.
    let (status, problem) = api
        .post(
            &format!("/projects/{p}/issuers"),
            json!({ "name": "x", "directory_url": pebble.directory, "contact": "ops@example.test", "challenge": "dns-01" }),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert!(problem.to_string().contains("\"dns\""), "{problem}");
    let mut bad = dns_issuer(pebble, bind, "c2hvcnQ=", &[]);
    bad["dns"]["primary"] = json!("127.0.0.1");
    bad["dns"]["tsig_algorithm"] = json!("hmac-md5");
    let (status, problem) = api.post(&format!("/projects/{p}/issuers"), bad).await;
    assert_eq!(status, 422, "{problem}");
    for field in ["dns.primary", "dns.tsig_algorithm", "dns.tsig_secret"] {
        assert!(problem.to_string().contains(field), "{field}: {problem}");
    }

    let servers = [bind.addr.to_string()];
    let (status, issuer) = api
        .post(
            &format!("/projects/{p}/issuers"),
            dns_issuer(pebble, bind, &bind.key_secret, &servers),
        )
        .await;
    assert_eq!(status, 201, "{issuer}");
    assert_eq!(issuer["dns"]["zone"], ZONE, "{issuer}");
    assert_eq!(issuer["dns"]["tsig_algorithm"], "hmac-sha256", "{issuer}");
    assert_eq!(issuer["dns"]["propagation_timeout_secs"], 3, "{issuer}");
    assert!(
        !issuer.to_string().contains(&bind.key_secret),
        "the TSIG secret is never shown: {issuer}"
    );
    let issuer_id = issuer["id"].as_str().unwrap().to_string();
    assert_not_stored(&db.store().await, &bind.key_secret).await;

    // Outside the zone: refused (409: it does not fit the issuer) before
    // anything is ordered.
    let (status, problem) = api
        .post(
            &format!("/projects/{p}/certificates"),
            json!({ "name": "out", "dns_names": ["www.elsewhere.test"], "issuer_id": issuer_id }),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem
            .to_string()
            .contains("outside the issuer's DNS zone"),
        "{problem}"
    );

    for (name, names) in [
        ("ordinary", json!([format!("www.{ZONE}")])),
        ("wildcard", json!([ZONE, format!("*.{ZONE}")])),
    ] {
        let (_, issued) = api
            .issue(
                &p,
                json!({ "name": name, "dns_names": names, "issuer_id": issuer_id }),
                Duration::from_secs(90),
            )
            .await;
        let chain = issued["chain_pem"].as_str().unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(chain.as_bytes()).unwrap();
        let leaf = pem.parse_x509().unwrap();
        let sans: Vec<String> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        for n in names.as_array().unwrap() {
            assert!(
                sans.iter().any(|s| s.contains(n.as_str().unwrap())),
                "{n} in {sans:?}"
            );
        }
    }
    // The CA has decided: the challenge records are gone from the zone.
    for name in [
        format!("_acme-challenge.www.{ZONE}"),
        format!("_acme-challenge.{ZONE}"),
    ] {
        assert_eq!(
            bind.txt(&name),
            Vec::<String>::new(),
            "{name} still has TXT records"
        );
    }

    // One authoritative server never answers: the CA is not asked, and the
    // certificate says which server and which record.
    let servers = [bind.addr.to_string(), lagging.addr.to_string()];
    let (_, issuer) = api
        .post(
            &format!("/projects/{p}/issuers"),
            dns_issuer(pebble, bind, &bind.key_secret, &servers),
        )
        .await;
    let (path, stuck) = first_failure(api, &p, &issuer, "lagging", &format!("lag.{ZONE}")).await;
    let error = stuck["last_error"].as_str().unwrap();
    assert!(
        error.contains(&lagging.addr.to_string())
            && error.contains(&format!("_acme-challenge.lag.{ZONE}")),
        "{error}"
    );
    let (_, orders) = api.get(&format!("{path}/orders")).await;
    assert_eq!(
        orders["items"][0]["stage"], "challenges_published",
        "never validating: {orders}"
    );
    assert!(
        bind.txt(&format!("_acme-challenge.lag.{ZONE}")).is_empty(),
        "removed again after the failed wait (the retry publishes anew)"
    );

    // A wrong TSIG secret: refused by the server, and the error says why.
    use base64::Engine;
    let wrong = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let (_, issuer) = api
        .post(
            &format!("/projects/{p}/issuers"),
            dns_issuer(pebble, bind, &wrong, &[]),
        )
        .await;
    let (_, refused) = first_failure(api, &p, &issuer, "wrong-key", &format!("key.{ZONE}")).await;
    let error = refused["last_error"].as_str().unwrap();
    assert!(
        error.contains("refused the update") && error.contains("TSIG"),
        "{error}"
    );
    assert_eq!(
        refused["status"], "pending",
        "retried with back-off: {refused}"
    );
    assert!(bind.txt(&format!("_acme-challenge.key.{ZONE}")).is_empty());
}
