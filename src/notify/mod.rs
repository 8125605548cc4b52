//! Telling people (docs/distribution.md, "Notifications"): one module per
//! kind of channel. What is sent when is decided by the rules in
//! [`crate::domain::notifications`].
//!
//! - [`message`] — a notification as people (summary) and programs (JSON) read it.
//! - [`email`] — a message over SMTP, STARTTLS and authentication, through the egress policy.
//! - [`slack`] — a Slack-compatible incoming webhook.
//! - [`send`] — one notification on one channel, whatever its kind.
//! - [`outbox`] — raising an event: a record and a `notify` job per channel that takes it.

pub mod email;
pub mod message;
pub mod outbox;
pub mod send;
pub mod slack;
