//! `certautopilot migrate`: applies schema migrations, audited.

use std::process::ExitCode;

use mongodb::bson::doc;

use super::config::CommonArgs;
use super::{audit, connect, operator, Failure};
use crate::audit::Event;
use crate::store::schema;

pub async fn run(common: CommonArgs) -> Result<ExitCode, Failure> {
    let store = connect(&common).await?;
    let report = schema::migrate(&store, |step| eprintln!("applying {step}"))
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    if !report.applied.is_empty() {
        let event = Event::new(operator(), "schema.migrated", "schema").with(doc! {
            "from": report.from,
            "to": report.to,
            "applied": report.applied.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        });
        audit(&store, event).await?;
    }
    if report.applied.is_empty() {
        eprintln!("schema is at version {}; nothing to do", report.to);
    } else {
        eprintln!(
            "schema migrated from version {} to {}",
            report.from, report.to
        );
    }
    Ok(ExitCode::SUCCESS)
}
