//! The email channel against a real SMTP server on loopback: aiosmtpd
//! (tests/smtp/receiver.py) requiring STARTTLS, then authentication, with
//! its own CA. The mail arrives with its Message-ID from the deduplication
//! key; a wrong password, a server answering 451, a server without
//! STARTTLS, a name the egress policy refuses and a CA we do not trust each
//! end as the error that says whether a retry can help.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use certautopilot::distribute::http::DeliveryError;
use certautopilot::net::egress::EgressPolicy;
use certautopilot::notify::email::{self, Mail, SmtpSettings, SmtpTls};
use zeroize::Zeroizing;

/// The receiver process; killed when dropped.
struct Receiver {
    child: Child,
    port: u16,
    out: tempfile::TempDir,
    _pki: tempfile::TempDir,
    ca_pem: String,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/aiosmtpd/bin/python");
    assert!(
        python.exists(),
        "aiosmtpd not at {}: run scripts/setup.sh",
        python.display()
    );
    python
}

/// A CA and a certificate for `localhost` signed by it: (CA PEM, cert, key).
fn pki() -> (String, String, String) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test SMTP CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_pem, leaf.pem(), key.serialize_pem())
}

fn start(fail_first: u32) -> Receiver {
    start_as(fail_first, false)
}

/// Starts the receiver on a free port; a port taken between our pick and
/// its bind (another test) makes it exit, and it is started again.
fn start_as(fail_first: u32, plain: bool) -> Receiver {
    let (ca_pem, cert, key) = pki();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), key).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp/receiver.py");
    for _ in 0..5 {
        let out = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(python())
            .arg(&script)
            .arg(dir.path().join("cert.pem"))
            .arg(dir.path().join("key.pem"))
            .arg(port.to_string())
            .arg(out.path())
            .args(["alerts", "s3cret", &fail_first.to_string()])
            .args(plain.then_some("plain"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        if line.trim() == "ready" {
            return Receiver {
                child,
                port,
                out,
                _pki: dir,
                ca_pem,
            };
        }
        let _ = child.wait();
    }
    panic!("the SMTP receiver did not start in 5 tries");
}

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

fn received(r: &Receiver) -> Vec<(String, serde_json::Value)> {
    let mut mails = Vec::new();
    for n in 0.. {
        let Ok(mail) = std::fs::read_to_string(r.out.path().join(format!("{n}.eml"))) else {
            break;
        };
        let meta = std::fs::read_to_string(r.out.path().join(format!("{n}.json"))).unwrap();
        mails.push((mail, serde_json::from_str(&meta).unwrap()));
    }
    mails
}

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
        matches!(&e, DeliveryError::Refused(why) if why.contains("loopback")),
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
