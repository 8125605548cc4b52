//! `certautopilot token create`: an API token, printed once.

use std::process::ExitCode;

use clap::Subcommand;
use mongodb::bson::doc;

use super::config::{CommonArgs, ConfigError};
use super::{audit, connect, open_kek, operator, Failure};
use crate::audit::Event;
use crate::crypto::api_tokens::TokenKey;
use crate::crypto::secrets::Secrets;
use crate::store::projects;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create an API token and print it (only it) on standard output; it is
    /// stored only as a hash and cannot be shown again
    Create {
        /// admin, editor or viewer
        #[arg(long)]
        role: String,
        /// The project the role is on; without it, --role admin makes a
        /// global admin (the bootstrap token)
        #[arg(long)]
        project: Option<String>,
        /// A note for whoever finds the token in the audit log
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        common: CommonArgs,
    },
}

pub async fn run(command: TokenCommand) -> Result<ExitCode, Failure> {
    match command {
        TokenCommand::Create {
            role,
            project,
            description,
            common,
        } => create(common, &role, project, &description).await,
    }
}

async fn create(
    common: CommonArgs,
    role: &str,
    project: Option<String>,
    description: &str,
) -> Result<ExitCode, Failure> {
    use crate::http::api::auth::{self, Role};
    let role = Role::parse(role).ok_or_else(|| {
        Failure::Config(ConfigError(format!(
            "invalid --role {role:?}: expected admin, editor or viewer"
        )))
    })?;
    if role == Role::Agent {
        return Err(Failure::Config(ConfigError(
            "agent tokens name their targets: make them through the API (POST /v1/tokens)".into(),
        )));
    }
    let grants = match &project {
        Some(p) => vec![auth::RoleGrant::on(p, role)],
        None if role == Role::Admin => Vec::new(),
        None => {
            return Err(Failure::Config(ConfigError(
                "--role editor or viewer needs --project".into(),
            )))
        }
    };
    let store = connect(&common).await?;
    if let Some(p) = &project {
        let found = projects::find(&store, p)
            .await
            .map_err(|e| Failure::Runtime(crate::store::short(&e)))?;
        if found.is_none() {
            return Err(Failure::Runtime(format!("no project {p}")));
        }
    }
    let token_key = TokenKey::new(Secrets::new(store.clone(), open_kek(&common)?));
    let spec = auth::TokenSpec {
        global_admin: project.is_none(),
        roles: &grants,
        description,
        expires_at: None,
    };
    let token = auth::create(&store, &token_key, &spec)
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    let event =
        Event::new(operator(), "token.created", format!("tokens/{}", token.id)).with(doc! {
            "global_admin": project.is_none(),
            "project_id": project.clone(),
            "role": role.as_str(),
        });
    audit(&store, event).await?;
    eprintln!(
        "created token {} ({}); it is shown once, below",
        token.id,
        match &project {
            Some(p) => format!("{} on {p}", role.as_str()),
            None => "global admin".into(),
        }
    );
    println!("{}", token.secret);
    Ok(ExitCode::SUCCESS)
}
