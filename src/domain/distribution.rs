//! Distribution: putting an issued certificate where it is served
//! (docs/distribution.md). A project declares targets; a certificate names
//! the targets it goes to; each (certificate, serial, target) is delivered
//! once, by one `distribute` job that runs [`Step`]s in order and saves each
//! before the next.

use serde::{Deserialize, Serialize};

use super::drift::Endpoint;

/// How a certificate reaches a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// Pull: `certautopilot agent` beside the server fetches and writes files.
    Agent,
    /// Push: SFTP upload to a host with a pinned host key, then a reload command.
    Ssh,
    /// Push: a `kubernetes.io/tls` Secret, replaced with optimistic concurrency.
    KubernetesSecret,
    /// Push: a signed POST of the certificate (the key only when asked).
    Webhook,
}

impl TargetKind {
    pub const ALL: [TargetKind; 4] = [
        TargetKind::Agent,
        TargetKind::Ssh,
        TargetKind::KubernetesSecret,
        TargetKind::Webhook,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            TargetKind::Agent => "agent",
            TargetKind::Ssh => "ssh",
            TargetKind::KubernetesSecret => "kubernetes-secret",
            TargetKind::Webhook => "webhook",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether what was there before can be put back when validation fails.
    /// A webhook receiver's state is its own: nothing to put back.
    pub const fn can_roll_back(self) -> bool {
        !matches!(self, TargetKind::Webhook)
    }

    /// Whether CertAutoPilot writes to the target itself (the others fetch).
    pub const fn is_push(self) -> bool {
        !matches!(self, TargetKind::Agent)
    }
}

/// A project's distribution target, as the workers use it.
///
/// Serialized, it is the text its binding MAC is computed over
/// ([`crate::crypto::binding`]): a field added later must be skipped when
/// empty, or every stored MAC stops verifying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub delivery: Delivery,
    /// Where the delivered certificate must then be served (the
    /// `validate` step); `None` counts an executed delivery as validated.
    pub validate: Option<Endpoint>,
    /// Why nothing is delivered to it until a project admin confirms it
    /// (`POST …/targets/{id}/confirm`): set by migration 17 on targets that
    /// receive keys and were not made by an admin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<String>,
}

impl Target {
    pub fn kind(&self) -> TargetKind {
        self.delivery.kind()
    }

    /// Whether a delivery to it sends the certificate's private key.
    pub fn receives_keys(&self) -> bool {
        self.delivery.receives_keys()
    }
}

/// How a target is reached, with its kind's settings. Credentials are not
/// here: they are sealed secrets ([`crate::crypto::secrets::SecretRef::target_credential`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    Agent,
    Ssh {
        host: String,
        port: u16,
        user: String,
        /// The host's public key, pinned (OpenSSH's `<type> <base64>`).
        host_key: String,
        /// Each certificate's files go to `<directory>/<certificate id>/`.
        directory: String,
        /// Run over SSH after the files change and after a rollback.
        reload_command: Option<String>,
    },
    KubernetesSecret {
        namespace: String,
        secret_name: String,
        /// Put the issuer chain (everything after the leaf) in `ca.crt`.
        include_ca: bool,
        /// A sealed kubeconfig names the cluster; without one, the
        /// in-cluster service account.
        kubeconfig: bool,
    },
    Webhook {
        /// The receiver's URL. As parsed from the store it is only the
        /// origin (scheme://host[:port]): the whole URL, whose path or
        /// query may hold a token, is sealed under
        /// [`crate::crypto::secrets::SecretRef::target_url`].
        url: String,
        /// Send the private key too.
        include_key: bool,
    },
}

impl Delivery {
    pub fn kind(&self) -> TargetKind {
        match self {
            Delivery::Agent => TargetKind::Agent,
            Delivery::Ssh { .. } => TargetKind::Ssh,
            Delivery::KubernetesSecret { .. } => TargetKind::KubernetesSecret,
            Delivery::Webhook { .. } => TargetKind::Webhook,
        }
    }

    /// Whether a delivery sends the private key: every kind but a webhook
    /// without `include_key` (an agent fetches it with the chain). Making
    /// or naming such a target is a project admin's decision.
    pub fn receives_keys(&self) -> bool {
        !matches!(
            self,
            Delivery::Webhook {
                include_key: false,
                ..
            }
        )
    }
}

/// Where one (certificate, target) stands, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistributionState {
    /// A job is enqueued for the newest serial and has not started.
    Queued,
    /// A worker (or, for `agent`, the agent) is running its steps.
    Running,
    /// The target serves the new serial.
    Validated,
    /// Validation failed and the previous files or object are back.
    RolledBack,
    /// A step failed and nothing could be put back, or the attempts are spent.
    Failed,
}

impl DistributionState {
    pub const ALL: [DistributionState; 5] = [
        DistributionState::Queued,
        DistributionState::Running,
        DistributionState::Validated,
        DistributionState::RolledBack,
        DistributionState::Failed,
    ];

    pub fn parse(s: &str) -> Option<DistributionState> {
        DistributionState::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            DistributionState::Queued => "queued",
            DistributionState::Running => "running",
            DistributionState::Validated => "validated",
            DistributionState::RolledBack => "rolled_back",
            DistributionState::Failed => "failed",
        }
    }

    /// Whether the job for this serial has finished, well or not.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            DistributionState::Validated
                | DistributionState::RolledBack
                | DistributionState::Failed
        )
    }
}

/// A step of a `distribute` job, saved before the next starts so a worker
/// that dies mid-job leaves the next one knowing what was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Put the files or the object in place (keeping what was there).
    Execute,
    /// Check that the target's validation endpoint serves the new serial:
    /// a TLS handshake comparing fingerprints, the drift scan's probe.
    Validate,
    /// Put back what was there before.
    Rollback,
}

impl Step {
    pub const ALL: [Step; 3] = [Step::Execute, Step::Validate, Step::Rollback];

    pub const fn as_str(self) -> &'static str {
        match self {
            Step::Execute => "execute",
            Step::Validate => "validate",
            Step::Rollback => "rollback",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|step| step.as_str() == s)
    }
}

/// What a step ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepResult {
    Succeeded,
    Failed,
}

/// The step to run after `step` ended in `result`, or the state the job
/// ends in. `has_validation`: the target names an endpoint to probe (without
/// one, an executed delivery counts as validated).
pub fn next(
    kind: TargetKind,
    step: Step,
    result: StepResult,
    has_validation: bool,
) -> Result<Step, DistributionState> {
    use StepResult::*;
    match (step, result) {
        (Step::Execute, Succeeded) if has_validation => Ok(Step::Validate),
        (Step::Execute, Succeeded) => Err(DistributionState::Validated),
        (Step::Execute, Failed) => Err(DistributionState::Failed),
        (Step::Validate, Succeeded) => Err(DistributionState::Validated),
        (Step::Validate, Failed) if kind.can_roll_back() => Ok(Step::Rollback),
        (Step::Validate, Failed) => Err(DistributionState::Failed),
        (Step::Rollback, Succeeded) => Err(DistributionState::RolledBack),
        (Step::Rollback, Failed) => Err(DistributionState::Failed),
    }
}

/// The idempotency key of the delivery of `serial` to `target_id`: a target
/// gets each certificate once, however often issuance is reported.
pub fn job_key(certificate_id: &str, serial: &str, target_id: &str) -> String {
    format!("distribute:{certificate_id}:{serial}:{target_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use StepResult::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in TargetKind::ALL {
            assert_eq!(TargetKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        assert_eq!(TargetKind::parse("ftp"), None);
    }

    #[test]
    fn states_serialize_as_the_api_shows_them() {
        for state in [
            DistributionState::Queued,
            DistributionState::Running,
            DistributionState::Validated,
            DistributionState::RolledBack,
            DistributionState::Failed,
        ] {
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
    }

    #[test]
    fn a_failed_validation_rolls_back_where_the_target_can() {
        for kind in [
            TargetKind::Agent,
            TargetKind::Ssh,
            TargetKind::KubernetesSecret,
        ] {
            assert_eq!(next(kind, Step::Validate, Failed, true), Ok(Step::Rollback));
            assert_eq!(
                next(kind, Step::Rollback, Succeeded, true),
                Err(DistributionState::RolledBack)
            );
        }
        assert_eq!(
            next(TargetKind::Webhook, Step::Validate, Failed, true),
            Err(DistributionState::Failed)
        );
    }

    #[test]
    fn validation_follows_execution_only_when_there_is_an_endpoint() {
        let ssh = TargetKind::Ssh;
        assert_eq!(
            next(ssh, Step::Execute, Succeeded, true),
            Ok(Step::Validate)
        );
        assert_eq!(
            next(ssh, Step::Execute, Succeeded, false),
            Err(DistributionState::Validated)
        );
        assert_eq!(
            next(ssh, Step::Execute, Failed, true),
            Err(DistributionState::Failed),
            "a failed execute changed nothing it knows of: nothing to roll back"
        );
        assert_eq!(
            next(ssh, Step::Rollback, Failed, true),
            Err(DistributionState::Failed)
        );
    }

    #[test]
    fn one_job_per_certificate_serial_and_target() {
        assert_eq!(job_key("c", "s", "t"), "distribute:c:s:t");
        assert_ne!(job_key("c", "s", "t"), job_key("c", "s2", "t"));
        assert_ne!(job_key("c", "s", "t"), job_key("c", "s", "t2"));
    }
}
