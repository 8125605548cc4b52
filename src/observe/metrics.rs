//! Every metric we export, in one registry per process.
//!
//! Queue depth is not counted on every event: it is read from the database
//! when `/metrics` is scraped ([`crate::http`]), from the `state_kind` index,
//! so that every replica reports the same, true number.

use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Jobs by kind and state (queued, running, dead), read at scrape time.
    pub queue_depth: GaugeVec,
    /// How long the oldest runnable queued job has waited (0: none waits),
    /// read at scrape time.
    pub queue_oldest_queued_seconds: IntGauge,
    /// Job outcomes: completed, retrying, dead, released, lease_lost.
    pub jobs_total: IntCounterVec,
    /// Seconds one claim round trip took (transaction included).
    pub claim_latency: Histogram,
    pub scheduler_is_leader: IntGauge,
    pub leader_takeovers_total: IntCounter,
    /// Actor restarts by actor, after a failure.
    pub actor_restarts_total: IntCounterVec,
    /// Database clock minus this process's wall clock, in seconds.
    pub clock_skew_seconds: Gauge,
    pub jobs_in_flight: IntGauge,
    /// The KEK version new secrets are wrapped with (0: KEK unreachable).
    pub kek_current_version: IntGauge,
    /// Data keys by the KEK version wrapping them (the leader refreshes it).
    pub kek_data_keys: IntGaugeVec,
    /// Data keys still wrapped by a version other than the current one.
    pub kek_rotation_remaining: IntGauge,
    /// Audit records this process appended.
    pub audit_appends_total: IntCounter,
    /// API requests refused with 429 for their token's rate limit.
    pub api_rate_limited_total: IntCounter,
    /// The highest audit `seq` the SIEM forwarder has delivered, by sink.
    pub audit_forwarded_seq: IntGaugeVec,
    /// 1 while housekeeping refuses to seal the audit chain because the
    /// records since the last checkpoint do not verify.
    pub audit_seal_refused: IntGauge,
    /// ACME requests by endpoint and HTTP status.
    pub acme_requests_total: IntCounterVec,
    pub acme_request_seconds: HistogramVec,
    /// Certificates by status, read at scrape time.
    pub certificates: IntGaugeVec,
    /// ACME orders not yet finished, read at scrape time.
    pub orders_in_flight: IntGauge,
    /// Each issued certificate's notAfter (Unix seconds), read at scrape time.
    pub certificate_expiry: IntGaugeVec,
    /// HTTP-01 challenges this api process answered.
    pub acme_challenges_served_total: IntCounter,
    /// Renewal attempts by outcome (succeeded, failed), counted by workers.
    pub renewals_total: IntCounterVec,
    /// When each certificate is due for renewal (Unix seconds), for the
    /// soonest due, read at scrape time.
    pub certificate_renewal_due: IntGaugeVec,
    /// Consecutive failed issuance or renewal attempts, for each failing
    /// certificate (the most failing first), read at scrape time.
    pub certificate_consecutive_failures: IntGaugeVec,
    pub certificates_by_drift: IntGaugeVec,
    /// Finished deliveries by target kind and outcome (validated,
    /// rolled_back, failed), counted by workers.
    pub distributions_total: IntCounterVec,
    /// Stored records a worker refused because their binding MAC did not
    /// verify (edited in the database without the KEK), by record kind.
    pub binding_refusals_total: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let queue_depth = GaugeVec::new(
            Opts::new(
                "certautopilot_queue_depth",
                "Jobs in the queue by kind and state",
            ),
            &["kind", "state"],
        )
        .unwrap();
        let queue_oldest_queued_seconds = IntGauge::new(
            "certautopilot_queue_oldest_queued_seconds",
            "Seconds the oldest runnable queued job has waited to be claimed (0 when none waits)",
        )
        .unwrap();
        let jobs_total = IntCounterVec::new(
            Opts::new(
                "certautopilot_jobs_total",
                "Jobs this process finished, by kind and outcome",
            ),
            &["kind", "outcome"],
        )
        .unwrap();
        let claim_latency = Histogram::with_opts(
            HistogramOpts::new(
                "certautopilot_claim_latency_seconds",
                "Time one claim round took",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .unwrap();
        let scheduler_is_leader = IntGauge::new(
            "certautopilot_scheduler_is_leader",
            "1 while this process leads the scheduler",
        )
        .unwrap();
        let leader_takeovers_total = IntCounter::new(
            "certautopilot_leader_takeovers_total",
            "Times this process became the scheduler leader",
        )
        .unwrap();
        let actor_restarts_total = IntCounterVec::new(
            Opts::new(
                "certautopilot_actor_restarts_total",
                "Actors restarted by their supervisor after a failure",
            ),
            &["actor"],
        )
        .unwrap();
        let clock_skew_seconds = Gauge::new(
            "certautopilot_clock_skew_seconds",
            "Database clock minus this process's wall clock (decisions use the database's)",
        )
        .unwrap();
        let jobs_in_flight = IntGauge::new(
            "certautopilot_jobs_in_flight",
            "Jobs this worker is running",
        )
        .unwrap();
        let kek_current_version = IntGauge::new(
            "certautopilot_kek_current_version",
            "KEK version new secrets are wrapped with (0 while the KEK is unreachable)",
        )
        .unwrap();
        let kek_data_keys = IntGaugeVec::new(
            Opts::new(
                "certautopilot_kek_data_keys",
                "Data keys by the KEK version that wraps them (reported by the scheduler leader)",
            ),
            &["version"],
        )
        .unwrap();
        let kek_rotation_remaining = IntGauge::new(
            "certautopilot_kek_rotation_remaining",
            "Data keys not yet re-wrapped by the current KEK version (reported by the scheduler leader)",
        )
        .unwrap();
        let api_rate_limited_total = IntCounter::new(
            "certautopilot_api_rate_limited_total",
            "API requests refused for their token's rate limit",
        )
        .unwrap();
        let audit_appends_total = IntCounter::new(
            "certautopilot_audit_appends_total",
            "Audit records this process appended",
        )
        .unwrap();
        let audit_forwarded_seq = IntGaugeVec::new(
            Opts::new(
                "certautopilot_audit_forwarded_seq",
                "Highest audit seq delivered to a SIEM sink",
            ),
            &["sink"],
        )
        .unwrap();
        let audit_seal_refused = IntGauge::new(
            "certautopilot_audit_seal_refused",
            "1 while the audit chain since the last checkpoint does not verify and is not sealed",
        )
        .unwrap();
        let acme_requests_total = IntCounterVec::new(
            Opts::new(
                "certautopilot_acme_requests_total",
                "ACME requests by endpoint and HTTP status",
            ),
            &["endpoint", "status"],
        )
        .unwrap();
        let acme_request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "certautopilot_acme_request_seconds",
                "ACME request latency by endpoint",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["endpoint"],
        )
        .unwrap();
        let certificates = IntGaugeVec::new(
            Opts::new("certautopilot_certificates", "Certificates by status"),
            &["status"],
        )
        .unwrap();
        let orders_in_flight = IntGauge::new(
            "certautopilot_acme_orders_in_flight",
            "ACME orders opened and not yet finished",
        )
        .unwrap();
        let certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "certautopilot_certificate_expiry_timestamp_seconds",
                "notAfter of each issued certificate",
            ),
            &["project", "certificate"],
        )
        .unwrap();
        let acme_challenges_served_total = IntCounter::new(
            "certautopilot_acme_challenges_served_total",
            "HTTP-01 challenges this process answered",
        )
        .unwrap();
        let renewals_total = IntCounterVec::new(
            Opts::new(
                "certautopilot_renewals_total",
                "Renewal attempts by outcome (succeeded, failed)",
            ),
            &["outcome"],
        )
        .unwrap();
        let distributions_total = IntCounterVec::new(
            Opts::new(
                "certautopilot_distributions_total",
                "Finished deliveries to distribution targets by kind and outcome (validated, rolled_back, failed)",
            ),
            &["kind", "outcome"],
        )
        .unwrap();
        let binding_refusals_total = IntCounterVec::new(
            Opts::new(
                "certautopilot_binding_refusals_total",
                "Stored records refused by a worker because their binding MAC did not verify (target, channel, certificate_targets)",
            ),
            &["record"],
        )
        .unwrap();
        let certificate_renewal_due = IntGaugeVec::new(
            Opts::new(
                "certautopilot_certificate_renewal_due_timestamp_seconds",
                "When each certificate is due for renewal (the soonest due)",
            ),
            &["project", "certificate"],
        )
        .unwrap();
        let certificate_consecutive_failures = IntGaugeVec::new(
            Opts::new(
                "certautopilot_certificate_consecutive_failures",
                "Consecutive failed issuance or renewal attempts of each failing certificate",
            ),
            &["project", "certificate"],
        )
        .unwrap();
        let certificates_by_drift = IntGaugeVec::new(
            Opts::new(
                "certautopilot_certificates_by_drift",
                "Certificates with endpoints, by their worst endpoint at the last scan (in_sync, unreachable, stale, foreign)",
            ),
            &["state"],
        )
        .unwrap();
        for c in [
            Box::new(queue_depth.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(queue_oldest_queued_seconds.clone()),
            Box::new(jobs_total.clone()),
            Box::new(claim_latency.clone()),
            Box::new(scheduler_is_leader.clone()),
            Box::new(leader_takeovers_total.clone()),
            Box::new(actor_restarts_total.clone()),
            Box::new(clock_skew_seconds.clone()),
            Box::new(jobs_in_flight.clone()),
            Box::new(kek_current_version.clone()),
            Box::new(kek_data_keys.clone()),
            Box::new(kek_rotation_remaining.clone()),
            Box::new(audit_appends_total.clone()),
            Box::new(api_rate_limited_total.clone()),
            Box::new(audit_forwarded_seq.clone()),
            Box::new(audit_seal_refused.clone()),
            Box::new(acme_requests_total.clone()),
            Box::new(acme_request_seconds.clone()),
            Box::new(certificates.clone()),
            Box::new(orders_in_flight.clone()),
            Box::new(certificate_expiry.clone()),
            Box::new(acme_challenges_served_total.clone()),
            Box::new(renewals_total.clone()),
            Box::new(certificate_renewal_due.clone()),
            Box::new(certificate_consecutive_failures.clone()),
            Box::new(certificates_by_drift.clone()),
            Box::new(distributions_total.clone()),
            Box::new(binding_refusals_total.clone()),
        ] {
            registry.register(c).unwrap();
        }
        Arc::new(Metrics {
            registry,
            queue_depth,
            queue_oldest_queued_seconds,
            jobs_total,
            claim_latency,
            scheduler_is_leader,
            leader_takeovers_total,
            actor_restarts_total,
            clock_skew_seconds,
            jobs_in_flight,
            kek_current_version,
            kek_data_keys,
            kek_rotation_remaining,
            audit_appends_total,
            api_rate_limited_total,
            audit_forwarded_seq,
            audit_seal_refused,
            acme_requests_total,
            acme_request_seconds,
            certificates,
            orders_in_flight,
            certificate_expiry,
            acme_challenges_served_total,
            renewals_total,
            certificate_renewal_due,
            certificate_consecutive_failures,
            certificates_by_drift,
            binding_refusals_total,
            distributions_total,
        })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}
