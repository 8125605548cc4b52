//! Telling people (docs/distribution.md, "Notifications"): one module per
//! kind of channel. What is sent when is decided by the rules in
//! [`crate::domain::notifications`].
//!
//! - [`email`] — a message over SMTP, STARTTLS and authentication, through the egress policy.

pub mod email;
