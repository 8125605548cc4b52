//! The email channel against a real SMTP server on loopback: aiosmtpd
//! (tests/smtp/receiver.py) requiring STARTTLS, then authentication, with
//! its own CA. The mail arrives with its Message-ID from the deduplication
//! key; a wrong password, a server answering 451, a server without
//! STARTTLS, a name the egress policy refuses and a CA we do not trust each
//! end as the error that says whether a retry can help.

use std::time::Duration;

use certautopilot::distribute::http::DeliveryError;
use certautopilot::net::egress::EgressPolicy;
use certautopilot::notify::email::{self, Mail, SmtpSettings, SmtpTls};
use zeroize::Zeroizing;

use crate::support::smtp::{pki, received, start, start_as, Receiver};

fn settings(r: &Receiver, password: &str) -> SmtpSettings {
    SmtpSettings {
        host: "localhost".into(),
        port: r.port,
        tls: SmtpTls::StartTls,
        credentials: Some(("alerts".into(), Zeroizing::new(password.into()))),
        from: "CertAutoPilot <certautopilot@example.test>".into(),
        to: vec!["oncall@example.test".into()],
        ca_pem: Some(r.ca_pem.clone().into_bytes()),
    }
}

fn loopback() -> EgressPolicy {
    EgressPolicy::parse("127.0.0.1,::1").unwrap()
}

const MAIL: Mail<'static> = Mail {
    subject: "www.example.test expires in 7 days",
    text: "Certificate crt_1 (serial 0a) expires on 2026-12-10.",
    dedup_key: "certificate.expiring:crt_1:0a:7d",
};

#[tokio::test]
async fn the_expiry_mail_arrives_over_starttls_authenticated_with_its_message_id() {
    let r = start(0);
    email::send(
        &loopback(),
        &settings(&r, "s3cret"),
        &MAIL,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let mails = received(&r);
    assert_eq!(mails.len(), 1);
    let (mail, meta) = &mails[0];
    assert_eq!(meta["tls"], true, "sent after STARTTLS");
    assert_eq!(meta["login"], "alerts");
    assert_eq!(meta["rcpt"], serde_json::json!(["oncall@example.test"]));
    assert!(
        mail.contains("Subject: www.example.test expires in 7 days"),
        "{mail}"
    );
    assert!(mail.contains("expires on 2026-12-10"), "{mail}");
    let id = email::message_id(MAIL.dedup_key);
    assert!(mail.contains(&format!("Message-ID: {id}")), "{mail}");
    assert!(mail.contains(MAIL.dedup_key), "{mail}");
}

#[tokio::test]
async fn refusals_say_whether_a_retry_can_help() {
    let r = start(1);
    let busy = email::send(
        &loopback(),
        &settings(&r, "s3cret"),
        &MAIL,
        Duration::from_secs(20),
    )
    .await
    .unwrap_err();
    assert!(busy.is_transient(), "451 is worth a retry: {busy}");
    email::send(
        &loopback(),
        &settings(&r, "s3cret"),
        &MAIL,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(received(&r).len(), 1, "the retry delivered it");

    let wrong = email::send(
        &loopback(),
        &settings(&r, "guess"),
        &MAIL,
        Duration::from_secs(20),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(wrong, DeliveryError::Rejected { status: 535, .. }),
        "a wrong password is final: {wrong}"
    );

    let mut untrusted = settings(&r, "s3cret");
    untrusted.ca_pem = Some(pki().0.into_bytes());
    let e = email::send(&loopback(), &untrusted, &MAIL, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(
        matches!(e, DeliveryError::Refused(_)),
        "a CA we do not trust: {e}"
    );

    let e = email::send(
        &EgressPolicy::default(),
        &settings(&r, "s3cret"),
        &MAIL,
        Duration::from_secs(20),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, DeliveryError::Egress(why) if why.contains("loopback")),
        "{e}"
    );
    assert_eq!(received(&r).len(), 1, "nothing else was delivered");
}

#[tokio::test]
async fn a_server_without_starttls_is_refused_and_gets_nothing() {
    let r = start_as(0, true);
    let e = email::send(
        &loopback(),
        &settings(&r, "s3cret"),
        &MAIL,
        Duration::from_secs(20),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, DeliveryError::Refused(why) if why.contains("STARTTLS")),
        "no STARTTLS is not worth a retry: {e}"
    );
    assert!(received(&r).is_empty(), "nothing was sent in the clear");
}
