//! The route table: every route of the server with who may call it. One middleware enforces
//! it ([`super::authorize`]); a test fails when a route of the router has no entry here, or an
//! entry names no route. Public routes are public on purpose and listed as such.

use crate::store::users::Role;
use axum::http::Method;

/// What a token must carry (in addition to its owner's role) to call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Read builds, logs, jobs, agents, plugins.
    BuildsRead,
    /// Trigger, cancel, retry builds.
    BuildsWrite,
    /// Create, change and delete jobs and schedules; delete artifacts and caches.
    JobsWrite,
    /// Set and delete secrets.
    SecretsWrite,
    /// Install, allow, deny plugins and change their grants.
    PluginsAdmin,
    /// Create and revoke agent tokens.
    AgentsAdmin,
    /// Manage users, read the audit log, replay webhooks, prune storage.
    ServerAdmin,
    /// Manage the owner's own credentials: create and revoke their API tokens, change their
    /// password. Browser sessions need no scope; a token needs this one (so a token handed to
    /// automation cannot mint more tokens unless it was made to).
    TokensWrite,
    /// No particular scope (signing in is enough).
    Any,
}

impl Scope {
    /// The scope's name in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::BuildsRead => "builds:read",
            Scope::BuildsWrite => "builds:write",
            Scope::JobsWrite => "jobs:write",
            Scope::SecretsWrite => "secrets:write",
            Scope::PluginsAdmin => "plugins:admin",
            Scope::AgentsAdmin => "agents:admin",
            Scope::ServerAdmin => "server:admin",
            Scope::TokensWrite => "tokens:write",
            Scope::Any => "",
        }
    }

    /// Every scope a token can carry.
    pub const ALL: [Scope; 8] = [
        Scope::BuildsRead,
        Scope::BuildsWrite,
        Scope::JobsWrite,
        Scope::SecretsWrite,
        Scope::PluginsAdmin,
        Scope::AgentsAdmin,
        Scope::ServerAdmin,
        Scope::TokensWrite,
    ];

    /// Every scope's name.
    pub fn all_names() -> Vec<String> {
        Scope::ALL.iter().map(|s| s.as_str().to_string()).collect()
    }

    /// The least role that may hold the scope.
    pub fn min_role(self) -> Role {
        match self {
            Scope::BuildsRead | Scope::TokensWrite | Scope::Any => Role::Viewer,
            Scope::BuildsWrite | Scope::JobsWrite | Scope::SecretsWrite => Role::Developer,
            Scope::PluginsAdmin | Scope::AgentsAdmin | Scope::ServerAdmin => Role::Admin,
        }
    }

    /// The names of the scopes `role` may hold.
    pub fn names_for(role: Role) -> Vec<String> {
        Scope::ALL.iter().filter(|s| s.min_role() <= role).map(|s| s.as_str().to_string()).collect()
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, on purpose (health, sign-in, static files, signature-checked webhooks).
    Public,
    /// Remote agents with an agent token (checked by the agent API itself).
    Agent,
    /// Badges: public unless the server is started with `--private-badges`.
    Badge,
    /// Any signed-in user (their token list, sign-out).
    SignedIn,
    /// At least this role, and for tokens this scope.
    Role(Role, Scope),
    /// Secrets: a job's (`?job=`) need a developer, global ones an admin; scope `secrets:write`.
    Secrets,
}

/// One route and its rule.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// HTTP method (HEAD is checked as GET).
    pub method: &'static str,
    /// The route as registered (`/api/v1/builds/{id}`).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// The audit action recorded when it succeeds, if it is security-relevant.
    pub audit: Option<&'static str>,
}

const fn r(method: &'static str, path: &'static str, access: Access) -> Rule {
    Rule { method, path, access, audit: None }
}

const fn a(method: &'static str, path: &'static str, access: Access, action: &'static str) -> Rule {
    Rule { method, path, access, audit: Some(action) }
}

const VIEW: Access = Access::Role(Role::Viewer, Scope::BuildsRead);
const BUILD: Access = Access::Role(Role::Developer, Scope::BuildsWrite);
const JOBS: Access = Access::Role(Role::Developer, Scope::JobsWrite);
const PLUGINS: Access = Access::Role(Role::Admin, Scope::PluginsAdmin);
const AGENTS: Access = Access::Role(Role::Admin, Scope::AgentsAdmin);
const ADMIN: Access = Access::Role(Role::Admin, Scope::ServerAdmin);
/// The caller's own credentials: a session, or a token with `tokens:write`.
const ACCOUNT: Access = Access::Role(Role::Viewer, Scope::TokensWrite);

/// Every route of the server.
pub const RULES: &[Rule] = &[
    // Public on purpose.
    r("GET", "/health", Access::Public),
    r("GET", "/startup", Access::Public),
    r("GET", "/ready", Access::Public),
    r("GET", "/login", Access::Public),
    r("POST", "/login", Access::Public),
    r("POST", "/api/v1/login", Access::Public),
    r("GET", "/static/{file}", Access::Public),
    r("GET", "/api/v1/openapi.json", Access::Public),
    r("POST", "/hooks/{provider}/{job}", Access::Public),
    r("GET", "/badge/{file}", Access::Badge),
    // Agents (agent tokens).
    r("POST", "/api/v1/agent/register", Access::Agent),
    r("POST", "/api/v1/agent/lease", Access::Agent),
    r("POST", "/api/v1/agent/leases/{entry}/{action}", Access::Agent),
    r("POST", "/api/v1/agent/state", Access::Agent),
    r("PUT", "/api/v1/agent/leases/{entry}/blobs", Access::Agent),
    r("GET", "/api/v1/agent/leases/{entry}/blobs/{sha256}", Access::Agent),
    r("PUT", "/api/v1/agent/leases/{entry}/caches", Access::Agent),
    r("GET", "/api/v1/agent/leases/{entry}/caches/{id}", Access::Agent),
    r("GET", "/api/v1/agent/leases/{entry}/plugins/{digest}", Access::Agent),
    // Any signed-in user.
    r("POST", "/logout", Access::SignedIn),
    r("GET", "/api/v1/me", Access::SignedIn),
    // Signing out the token in hand needs no scope: any token may end itself.
    a("DELETE", "/api/v1/me/token", Access::SignedIn, "token.revoke"),
    r("GET", "/api/v1/tokens", Access::SignedIn),
    // Their own credentials: a session, or a token with `tokens:write`.
    a("POST", "/api/v1/me/password", ACCOUNT, "user.password"),
    a("POST", "/api/v1/tokens", ACCOUNT, "token.create"),
    a("DELETE", "/api/v1/tokens/{id}", ACCOUNT, "token.revoke"),
    // Viewers: read.
    r("GET", "/", VIEW),
    r("GET", "/jobs/{name}", VIEW),
    r("GET", "/builds/{id}", VIEW),
    r("GET", "/builds/{id}/artifacts", VIEW),
    r("GET", "/builds/{id}/jobs/{job}/log", VIEW),
    r("GET", "/plugins", VIEW),
    r("GET", "/agents", VIEW),
    r("GET", "/api/v1/jobs", VIEW),
    r("GET", "/api/v1/jobs/{name}", VIEW),
    r("GET", "/api/v1/jobs/{name}/builds/{number}", VIEW),
    r("GET", "/api/v1/builds", VIEW),
    r("GET", "/api/v1/builds/{id}", VIEW),
    r("GET", "/api/v1/builds/{id}/tests", VIEW),
    r("GET", "/api/v1/builds/{id}/events", VIEW),
    r("GET", "/api/v1/builds/{id}/jobs/{job}/logs", VIEW),
    r("GET", "/api/v1/builds/{id}/jobs/{job}/logs/stream", VIEW),
    r("GET", "/api/v1/builds/{id}/artifacts", VIEW),
    r("GET", "/api/v1/artifacts/{id}", VIEW),
    r("GET", "/api/v1/agents", VIEW),
    r("GET", "/api/v1/schedules", VIEW),
    r("GET", "/api/v1/caches", VIEW),
    r("GET", "/api/v1/storage", VIEW),
    // Developers: builds, jobs, schedules, their secrets.
    a("POST", "/jobs/{name}/trigger", BUILD, "build.trigger"),
    a("POST", "/builds/{id}/cancel", BUILD, "build.cancel"),
    a("POST", "/builds/{id}/retry", BUILD, "build.retry"),
    a("POST", "/api/v1/jobs/{name}/builds", BUILD, "build.trigger"),
    a("POST", "/api/v1/builds/{id}/cancel", BUILD, "build.cancel"),
    a("POST", "/api/v1/builds/{id}/retry", BUILD, "build.retry"),
    a("POST", "/api/v1/jobs", JOBS, "job.create"),
    a("PUT", "/api/v1/jobs/{name}", JOBS, "job.update"),
    a("DELETE", "/api/v1/jobs/{name}", JOBS, "job.delete"),
    a("POST", "/api/v1/schedules", JOBS, "schedule.create"),
    a("DELETE", "/api/v1/schedules/{id}", JOBS, "schedule.delete"),
    a("DELETE", "/api/v1/builds/{id}/artifacts/{name}", JOBS, "artifact.delete"),
    a("DELETE", "/api/v1/caches/{id}", JOBS, "cache.delete"),
    r("GET", "/api/v1/secrets", Access::Role(Role::Developer, Scope::SecretsWrite)),
    a("PUT", "/api/v1/secrets/{name}", Access::Secrets, "secret.set"),
    a("DELETE", "/api/v1/secrets/{name}", Access::Secrets, "secret.delete"),
    r("GET", "/api/v1/webhooks", Access::Role(Role::Developer, Scope::JobsWrite)),
    // Admins.
    a("POST", "/plugins/{name}/{decision}", PLUGINS, "plugin.decide"),
    a("POST", "/api/v1/webhooks/{id}/replay", ADMIN, "webhook.replay"),
    a("POST", "/api/v1/storage/prune", ADMIN, "storage.prune"),
    r("GET", "/api/v1/agent-tokens", AGENTS),
    a("POST", "/api/v1/agent-tokens", AGENTS, "agent_token.create"),
    a("DELETE", "/api/v1/agent-tokens/{id}", AGENTS, "agent_token.revoke"),
    r("GET", "/api/v1/users", ADMIN),
    a("POST", "/api/v1/users", ADMIN, "user.create"),
    a("PATCH", "/api/v1/users/{name}", ADMIN, "user.change"),
    r("GET", "/api/v1/audit", ADMIN),
    r("GET", "/api/v1/audit/verify", ADMIN),
    r("GET", "/audit", ADMIN),
];

/// The rule of `method` on the registered route `path`.
pub fn rule(method: &Method, path: &str) -> Option<&'static Rule> {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static INDEX: OnceLock<HashMap<String, &'static Rule>> = OnceLock::new();
    INDEX
        .get_or_init(|| RULES.iter().map(|r| (format!("{} {}", r.method, r.path), r)).collect())
        .get(&format!("{} {path}", method.as_str()))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_router_has_exactly_one_rule() {
        let registered = crate::server::routes().registered;
        let mut missing = Vec::new();
        for (method, path) in &registered {
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            if rule(&m, path).is_none() {
                missing.push(format!("{method} {path}"));
            }
        }
        assert!(missing.is_empty(), "routes without an access rule: {missing:?}");
        let stale: Vec<String> = RULES
            .iter()
            .filter(|r| !registered.contains(&(r.method, r.path)))
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert!(stale.is_empty(), "rules naming no route: {stale:?}");
        let mut keys: Vec<(&str, &str)> = RULES.iter().map(|r| (r.method, r.path)).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), RULES.len(), "a route has two rules");
    }

    #[test]
    fn scopes_follow_roles() {
        assert_eq!(Scope::names_for(Role::Viewer), ["builds:read", "tokens:write"]);
        assert!(Scope::names_for(Role::Developer).contains(&"secrets:write".to_string()));
        assert!(!Scope::names_for(Role::Developer).contains(&"plugins:admin".to_string()));
        assert_eq!(Scope::names_for(Role::Admin).len(), Scope::ALL.len());
    }
}
