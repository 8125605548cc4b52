//! Entry points for the fuzz targets (`fuzz/`, run with `cargo fuzz`): each
//! hands outside input to a parser as the product reads it, so that a
//! panic, a hang or a runaway allocation there is found. Built only with
//! the `fuzzing` feature; nothing in the product calls it.

use std::time::Duration;

/// A DNS server's answer (RFC 1035 wire format, with TSIG).
pub fn dns_answer(msg: &[u8]) {
    let _ = crate::acme::dns::read_answer(msg);
}

/// A PEM chain as the CA sends it, and a CA bundle as an issuer is given.
pub fn pem_chain(text: &str) {
    let _ = crate::domain::certs::inspect_chain(text);
    let _ = crate::acme::check_ca_bundle(text);
}

/// A certificate or key as DER or PEM: the ARI identifier of a leaf, and
/// the public key of a stored private key.
pub fn certificate(bytes: &[u8]) {
    let _ = crate::acme::ari::certificate_id(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = crate::domain::certs::public_key_der(text);
    }
}

/// A CA's `renewalInfo` answer.
pub fn ari_answer(bytes: &[u8]) {
    if let Ok(info) = serde_json::from_slice::<instant_acme::RenewalInfo>(bytes) {
        let _ = crate::acme::ari::window_of(&info, Duration::from_secs(3600));
    }
}

/// What `audit verify` reads: a SIEM archive's line (`--witness`), and a
/// stored record (BSON) whose hash it recomputes.
pub fn audit_record(bytes: &[u8]) {
    if let Ok(line) = std::str::from_utf8(bytes) {
        let _ = crate::audit::witness::parse_line(line);
    }
    if let Ok(doc) = mongodb::bson::Document::from_reader(bytes) {
        let _ = crate::audit::recompute(&doc);
    }
}

/// A snapshot file, checked end to end and read item by item.
pub fn snapshot(bytes: &[u8]) {
    let _ = crate::backup::format::verify(bytes, |_| {});
    if let Ok(mut reader) = crate::backup::format::SnapshotReader::open(bytes) {
        while let Ok(Some(_)) = reader.next_item() {}
    }
}

/// The API's JSON bodies, parsed and checked as the handlers do before
/// touching the database.
pub fn api_body(bytes: &[u8]) {
    use crate::domain::validate;
    use crate::http::api::{certificates, issuers, projects, tokens};
    let Some((&kind, body)) = bytes.split_first() else {
        return;
    };
    let mut reasons = validate::Reasons::default();
    match kind % 6 {
        0 => {
            if let Ok(b) = serde_json::from_slice::<projects::NewProject>(body) {
                validate::name(&mut reasons, "name", &b.name);
            }
        }
        1 => {
            if let Ok(b) = serde_json::from_slice::<projects::DomainsUpdate>(body) {
                for d in &b.domains {
                    let _ = validate::dns_name_problem(d, false);
                }
            }
        }
        2 => {
            if let Ok(b) = serde_json::from_slice::<issuers::NewIssuer>(body) {
                let _ = issuers::check(&b);
            }
        }
        3 => {
            if let Ok(b) = serde_json::from_slice::<certificates::NewCertificate>(body) {
                validate::name(&mut reasons, "name", &b.name);
                validate::dns_names(&mut reasons, &b.dns_names, true);
                let _ = crate::domain::drift::endpoint_problems(&b.endpoints);
            }
        }
        4 => {
            if let Ok(b) = serde_json::from_slice::<certificates::EndpointsUpdate>(body) {
                let _ = crate::domain::drift::endpoint_problems(&b.endpoints);
            }
        }
        _ => {
            let _ = serde_json::from_slice::<tokens::NewToken>(body);
            let _ = serde_json::from_slice::<certificates::RevokeRequest>(body);
        }
    }
}
