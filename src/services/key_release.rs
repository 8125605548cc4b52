//! The one door a certificate's private key leaves the process by
//! (DESIGN.md invariant 13). The key endpoint, every delivery kind (a
//! webhook with `include_key`, a Kubernetes Secret, SSH/SFTP) and the
//! agent's bundle ask here, and nowhere else opens a certificate's key for
//! sending.
//!
//! [`KeyRelease::release`] checks that the requester may send the key
//! where it asks, appends a `key.released` audit record naming the
//! certificate, the serial, the destination and who asked, and only then
//! opens the key. When the record cannot be written, the key is not opened
//! (fail closed, as Vault does with its audit devices).

use mongodb::bson::{doc, Document};
use mongodb::error::Error as MongoError;
use zeroize::Zeroizing;

use crate::audit::{Audit, Event};
use crate::crypto::secrets::{SecretError, SecretRef, Secrets};
use crate::domain::distribution::{Delivery, Target};
use crate::domain::roles::Role;
/// Where a webhook's key lands, as the record shows it: its URL's origin.
pub use crate::domain::target_settings::origin;

/// The audit action of every key that leaves.
pub const KEY_RELEASED: &str = "key.released";

/// The certificate serial whose key is asked for.
pub struct Serial<'a> {
    pub project_id: &'a str,
    pub certificate_id: &'a str,
    pub serial: &'a str,
    /// The order that obtained it: its key is that order's secret.
    pub order_id: &'a str,
}

/// Where the key goes.
pub enum Destination<'a> {
    /// Answered to the API caller (`GET …/private-key`).
    Caller,
    /// A distribution target: pushed by a worker, or fetched by its agent.
    /// `endpoint` is where it lands, as the audit record shows it (a host
    /// and port, a URL's origin, a cluster's API server).
    Target {
        target: &'a Target,
        endpoint: String,
    },
}

/// Who asks.
pub enum Requester<'a> {
    /// A token: a global admin, or the role it holds on the project (an
    /// agent's with the targets its grant names).
    Token {
        token_id: &'a str,
        global_admin: bool,
        role: Option<Role>,
        agent_targets: &'a [String],
    },
    /// A `distribute` job, by its idempotency key, run by `holder`.
    Job { key: &'a str, holder: &'a str },
}

impl Requester<'_> {
    fn actor(&self) -> String {
        match self {
            Requester::Token { token_id, .. } => format!("token:{token_id}"),
            Requester::Job { holder, .. } => holder.to_string(),
        }
    }

    fn requested_by(&self) -> String {
        match self {
            Requester::Token { token_id, .. } => format!("token:{token_id}"),
            Requester::Job { key, .. } => format!("job:{key}"),
        }
    }

    fn may_release_keys(&self) -> bool {
        match self {
            Requester::Token {
                global_admin, role, ..
            } => *global_admin || role.is_some_and(Role::releases_keys),
            Requester::Job { .. } => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The requester may not send this key there; nothing was recorded.
    #[error("{0}")]
    Refused(String),
    /// The `key.released` record could not be written: nothing was sent.
    #[error("the key's release cannot be audited right now, so the key is not sent: {}", crate::store::short(.0))]
    NotAudited(MongoError),
    /// The record was written, but the key does not open.
    #[error(transparent)]
    Key(#[from] SecretError),
}

impl ReleaseError {
    /// Worth trying again later: the database or the KEK away.
    pub fn is_transient(&self) -> bool {
        match self {
            ReleaseError::Refused(_) => false,
            ReleaseError::NotAudited(_) => true,
            ReleaseError::Key(e) => e.is_transient(),
        }
    }
}

#[derive(Clone)]
pub struct KeyRelease {
    secrets: Secrets,
    audit: Audit,
}

impl KeyRelease {
    pub fn new(secrets: Secrets, audit: Audit) -> KeyRelease {
        KeyRelease { secrets, audit }
    }

    /// The private key of `serial`, for `requester` to send to
    /// `destination`: permitted, then audited, then opened.
    pub async fn release(
        &self,
        serial: &Serial<'_>,
        destination: &Destination<'_>,
        requester: &Requester<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, ReleaseError> {
        permit(serial, destination, requester)?;
        let event = Event::new(
            requester.actor(),
            KEY_RELEASED,
            format!(
                "projects/{}/certificates/{}",
                serial.project_id, serial.certificate_id
            ),
        )
        .with(doc! {
            "project_id": serial.project_id,
            "serial": serial.serial,
            "destination": destination_details(destination),
            "requested_by": requester.requested_by(),
        });
        self.audit
            .append(&event)
            .await
            .map_err(ReleaseError::NotAudited)?;
        let secret =
            SecretRef::certificate_key(serial.project_id, serial.certificate_id, serial.order_id);
        Ok(self.secrets.get(&secret).await?)
    }
}

/// Whether `requester` may send `serial`'s key to `destination`.
fn permit(
    serial: &Serial<'_>,
    destination: &Destination<'_>,
    requester: &Requester<'_>,
) -> Result<(), ReleaseError> {
    let refused = |why: String| Err(ReleaseError::Refused(why));
    match destination {
        Destination::Caller if requester.may_release_keys() => Ok(()),
        Destination::Caller => {
            refused("reading a private key needs the project's admin role".into())
        }
        Destination::Target { target, .. } => {
            if target.project_id != serial.project_id {
                return refused(format!(
                    "target {} is not in project {}",
                    target.id, serial.project_id
                ));
            }
            if !target.receives_keys() {
                return refused(format!(
                    "target {} ({}) does not receive keys",
                    target.name,
                    target.kind().as_str()
                ));
            }
            if let Some(why) = &target.disabled {
                return refused(format!(
                    "target {} receives nothing until a project admin confirms it (POST …/targets/{}/confirm): {why}",
                    target.name, target.id
                ));
            }
            match requester {
                // The job was enqueued for a target bound to the project
                // and confirmed by an admin: that is its permission.
                Requester::Job { .. } => Ok(()),
                r if r.may_release_keys() => Ok(()),
                Requester::Token {
                    role: Some(Role::Agent),
                    agent_targets,
                    ..
                } if agent_targets.contains(&target.id) => Ok(()),
                Requester::Token { .. } => refused(format!(
                    "this token may not fetch the keys of target {}",
                    target.name
                )),
            }
        }
    }
}

/// The destination as the audit record shows it.
fn destination_details(destination: &Destination<'_>) -> Document {
    match destination {
        Destination::Caller => doc! { "kind": "api" },
        Destination::Target { target, endpoint } => doc! {
            "kind": target.kind().as_str(),
            "target_id": &target.id,
            "target": &target.name,
            "endpoint": endpoint,
        },
    }
}

/// Where a delivery to `target` lands, for the audit record: a host and
/// port, a URL's origin (never its path or query, which may hold a
/// token), or a cluster's API server.
pub fn endpoint_of(target: &Target, cluster_server: Option<&str>) -> String {
    match &target.delivery {
        Delivery::Agent => "agent".into(),
        Delivery::Ssh {
            host, port, user, ..
        } => format!("{user}@{host}:{port}"),
        Delivery::Webhook { url, .. } => origin(url),
        Delivery::KubernetesSecret {
            namespace,
            secret_name,
            ..
        } => format!(
            "{} {namespace}/{secret_name}",
            cluster_server.map_or_else(|| "in-cluster".to_string(), origin)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(delivery: Delivery, disabled: Option<&str>) -> Target {
        Target {
            id: "tgt_1".into(),
            project_id: "prj_1".into(),
            name: "edge".into(),
            delivery,
            validate: None,
            disabled: disabled.map(str::to_string),
        }
    }

    const SERIAL: Serial<'static> = Serial {
        project_id: "prj_1",
        certificate_id: "crt_1",
        serial: "01",
        order_id: "ord_1",
    };

    fn token(role: Option<Role>, agent_targets: &[String]) -> Requester<'_> {
        Requester::Token {
            token_id: "tok",
            global_admin: false,
            role,
            agent_targets,
        }
    }

    #[test]
    fn only_an_admin_reads_a_key_through_the_api() {
        assert!(permit(
            &SERIAL,
            &Destination::Caller,
            &token(Some(Role::Admin), &[])
        )
        .is_ok());
        for role in [
            None,
            Some(Role::Editor),
            Some(Role::Viewer),
            Some(Role::Agent),
        ] {
            assert!(permit(&SERIAL, &Destination::Caller, &token(role, &[])).is_err());
        }
        let job = Requester::Job {
            key: "k",
            holder: "w",
        };
        assert!(permit(&SERIAL, &Destination::Caller, &job).is_err());
    }

    #[test]
    fn a_target_gets_keys_only_when_it_takes_them_is_confirmed_and_is_the_projects() {
        let job = Requester::Job {
            key: "k",
            holder: "w",
        };
        let ssh = Delivery::Ssh {
            host: "h".into(),
            port: 22,
            user: "u".into(),
            host_key: "k".into(),
            directory: "/d".into(),
            reload_command: None,
        };
        let to = |t: &Target| {
            permit(
                &SERIAL,
                &Destination::Target {
                    target: t,
                    endpoint: String::new(),
                },
                &job,
            )
            .is_ok()
        };
        assert!(to(&target(ssh.clone(), None)));
        assert!(!to(&target(ssh.clone(), Some("made by an editor"))));
        let elsewhere = Target {
            project_id: "prj_2".into(),
            ..target(ssh, None)
        };
        assert!(!to(&elsewhere));
        let no_key = Delivery::Webhook {
            url: "https://h/x".into(),
            include_key: false,
        };
        assert!(!to(&target(no_key, None)));
    }

    #[test]
    fn an_agent_fetches_only_its_own_targets_keys() {
        let agent = target(Delivery::Agent, None);
        let at = Destination::Target {
            target: &agent,
            endpoint: "agent".into(),
        };
        let mine = ["tgt_1".to_string()];
        let other = ["tgt_2".to_string()];
        assert!(permit(&SERIAL, &at, &token(Some(Role::Agent), &mine)).is_ok());
        assert!(permit(&SERIAL, &at, &token(Some(Role::Agent), &other)).is_err());
        assert!(permit(&SERIAL, &at, &token(Some(Role::Editor), &mine)).is_err());
    }

    #[test]
    fn endpoints_show_no_path_or_query() {
        assert_eq!(
            origin("https://hooks.example.com:8443/x?token=secret"),
            "https://hooks.example.com:8443"
        );
    }
}
