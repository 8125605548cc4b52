//! An ACME order as we record it: its stage, and what was published for
//! each of its authorizations.
//!
//! ```text
//! created ──► challenges_published ──► validating ──► finalizing ──► valid
//!    │ (the CA's order URL)  │ (key authorizations     │ (the CA was    │ (key stored
//!    │                       │  published)              │  told)         │  encrypted, CSR sent)
//!    └────────────── invalid: the CA's reason; abandoned: replaced by a new order
//! ```

/// Our record of an order's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Created,
    ChallengesPublished,
    Validating,
    Finalizing,
    Valid,
    Invalid,
    Abandoned,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Created,
        Stage::ChallengesPublished,
        Stage::Validating,
        Stage::Finalizing,
        Stage::Valid,
        Stage::Invalid,
        Stage::Abandoned,
    ];

    /// The stages of an order still under way.
    pub const OPEN: [Stage; 4] = [
        Stage::Created,
        Stage::ChallengesPublished,
        Stage::Validating,
        Stage::Finalizing,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Created => "created",
            Stage::ChallengesPublished => "challenges_published",
            Stage::Validating => "validating",
            Stage::Finalizing => "finalizing",
            Stage::Valid => "valid",
            Stage::Invalid => "invalid",
            Stage::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_open(self) -> bool {
        Stage::OPEN.contains(&self)
    }
}

/// A DNS-01 challenge record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtRecord {
    pub name: String,
    pub value: String,
}

/// What was published for one pending authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedChallenge {
    /// The authorization's URL.
    pub url: String,
    pub identifier: String,
    pub challenge_url: String,
    pub token: String,
    /// The TXT record, for DNS-01 (HTTP-01 key authorizations live in
    /// `challenges`, by token).
    pub txt: Option<TxtRecord>,
}

/// An order as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderRecord {
    pub id: String,
    pub certificate_id: String,
    pub project_id: String,
    /// The CA's URL of the order.
    pub url: String,
    pub dns_names: Vec<String>,
    pub stage: Stage,
    pub published: Vec<PublishedChallenge>,
    /// The secret holding the certificate's private key, from `finalizing` on.
    pub key_secret: Option<String>,
    /// The certificate this order renews (RFC 9773 `replaces`).
    pub replaces: Option<String>,
}

impl OrderRecord {
    /// The TXT records this order published (DNS-01).
    pub fn txt_records(&self) -> Vec<TxtRecord> {
        self.published
            .iter()
            .filter_map(|p| p.txt.clone())
            .collect()
    }
}

/// The secret that holds the private key of the certificate `order_id` obtains.
pub fn key_secret_id(order_id: &str) -> String {
    format!("cert-keys/{order_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_round_trip_and_only_four_are_open() {
        for s in Stage::ALL {
            assert_eq!(Stage::parse(s.as_str()), Some(s));
        }
        assert!(Stage::OPEN.iter().all(|s| s.is_open()));
        assert!(!Stage::Invalid.is_open() && !Stage::Abandoned.is_open());
    }
}
