//! Telling people (docs/distribution.md, "Notifications"): one module per
//! kind of channel. What is sent when is decided by the rules in
//! [`crate::domain::notifications`].
//!
//! - [`message`] — a notification as people (summary) and programs (JSON) read it.
//! - [`email`] — a message over SMTP, STARTTLS and authentication, through the egress policy.
//! - [`slack`] — a Slack-compatible incoming webhook.

pub mod email;
pub mod message;
pub mod slack;
