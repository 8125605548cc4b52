//! The roles a token holds on a project: `admin` ⊃ `editor` ⊃ `viewer`,
//! and `agent`, which holds none of those (it reads only the certificates
//! and keys of the agent targets its grant names).

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Below every other role: it passes no `require`, only
    /// [`Caller::require_agent`] for its own targets.
    Agent,
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "agent" => Some(Role::Agent),
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    /// Whether this role opens the key door ([`crate::services::key_release`])
    /// and decides where keys go: reads a private key, makes or confirms a
    /// target that receives keys, names such a target on a certificate.
    pub fn releases_keys(self) -> bool {
        self == Role::Admin
    }
}
