//! `certautopilot migrate`: applies schema migrations, audited.

use std::process::ExitCode;

use mongodb::bson::doc;

use super::config::CommonArgs;
use super::{audit, connect, open_kek, operator, Failure};
use crate::audit::Event;
use crate::crypto::secrets::Secrets;
use crate::services::migration::KekWork;
use crate::store::schema::{self, KekMigrations, MigrateError};

pub async fn run(common: CommonArgs, force: bool) -> Result<ExitCode, Failure> {
    let store = connect(&common).await?;
    // The KEK is needed only by migrations that re-seal what earlier builds
    // stored; a fresh installation migrates without it.
    let kek = open_kek(&common);
    let reseal = kek.as_ref().ok().map(|kek| KekWork {
        secrets: Secrets::new(store.clone(), kek.clone()),
    });
    let report = schema::migrate_with_kek(
        &store,
        reseal.as_ref().map(|r| r as &dyn KekMigrations),
        force,
        |step| eprintln!("applying {step}"),
    )
    .await
    .map_err(|e| match (&e, &kek) {
        (MigrateError::NeedsKek { .. }, Err(why)) => {
            let why = match why {
                Failure::Config(c) => c.to_string(),
                Failure::Runtime(r) => r.clone(),
            };
            Failure::Runtime(format!("{e} (the KEK did not open: {why})"))
        }
        _ => Failure::Runtime(e.to_string()),
    })?;
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
