//! `chengis token create|list|revoke`: the caller's own API tokens, with scopes and an expiry;
//! a new token is shown once.

use super::client::{Client, ClientArgs, print, print_list, s, time_of};
use super::error::CliError;
use clap::Subcommand;
use serde_json::{Value, json};

/// `chengis token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token of yours; it is printed once, as the last line.
    Create {
        /// A name to recognise it by.
        name: String,
        /// A scope it holds (repeatable, or comma-separated): builds:read, builds:write,
        /// jobs:write, secrets:write, plugins:admin, agents:admin, server:admin, tokens:write
        /// [default: every scope of the caller].
        #[arg(long = "scope", value_name = "SCOPE", value_delimiter = ',')]
        scopes: Vec<String>,
        /// How long it lives, such as 30d or 12h (at most 365d) [default: no expiry, or the
        /// expiry of the token the CLI is signed in with].
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// List your API tokens (never their secrets).
    List {
        /// Every user's tokens (admins).
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token of yours (admins: anyone's) by id or name, with every token made through it.
    Revoke {
        /// Token id or name.
        token: String,
    },
}

fn when(v: &Value, never: &str) -> String {
    v.as_i64().map_or_else(|| never.to_string(), time_of)
}

fn state(t: &Value) -> &'static str {
    if !t["revoked_ms"].is_null() {
        "revoked"
    } else if t["expires_ms"].as_i64().is_some_and(|ms| ms <= crate::store::now_ms()) {
        "expired"
    } else {
        "live"
    }
}

/// The id of the token `reference` names: an id as given, a name looked up among the live
/// tokens the caller can see.
fn token_id(c: &Client, reference: &str) -> anyhow::Result<i64> {
    if let Ok(id) = reference.parse::<i64>() {
        return Ok(id);
    }
    let v = c.get("/api/v1/tokens")?;
    let ids: Vec<i64> = v["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["name"] == reference && state(t) == "live")
        .filter_map(|t| t["id"].as_i64())
        .collect();
    match ids.as_slice() {
        [id] => Ok(*id),
        [] => Err(CliError::NotFound(format!("no live API token named `{reference}`")).into()),
        many => Err(CliError::Usage(format!(
            "{} live API tokens are named `{reference}` (ids {}): give the id",
            many.len(),
            many.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
        ))
        .into()),
    }
}

/// Runs `chengis token ...`.
pub fn token(args: &ClientArgs, cmd: TokenCommand) -> anyhow::Result<i32> {
    let c = Client::new(args)?;
    match cmd {
        TokenCommand::Create { name, scopes, expires_in } => {
            let mut body = json!({"name": name});
            if !scopes.is_empty() {
                body["scopes"] = json!(scopes);
            }
            if let Some(e) = expires_in {
                body["expires_in"] = json!(e);
            }
            let v = c.post_as(&format!("creating token `{name}`"), "/api/v1/tokens", body)?;
            print(args.format, &v, |v| {
                let info = &v["info"];
                let scopes: Vec<String> = info["scopes"].as_array().into_iter().flatten().map(s).collect();
                format!(
                    "created API token {} ({}); scopes: {}; expires: {}\nit is shown only now:\n{}\n",
                    s(&info["id"]),
                    s(&info["name"]),
                    scopes.join(", "),
                    when(&info["expires_ms"], "never"),
                    s(&v["token"])
                )
            });
        }
        TokenCommand::List { all } => {
            let v = c.get(if all { "/api/v1/tokens?all=true" } else { "/api/v1/tokens" })?;
            print_list(args.format, &v, "tokens", "no API tokens", |v| {
                let mut out = format!(
                    "{:>4} {:<20} {:<8} {:<20} {:<20} {:<20} SCOPES\n",
                    "ID", "NAME", "STATE", "EXPIRES", "LAST USED", "CREATED"
                );
                for t in v["tokens"].as_array().into_iter().flatten() {
                    let scopes: Vec<String> = t["scopes"].as_array().into_iter().flatten().map(s).collect();
                    out.push_str(&format!(
                        "{:>4} {:<20} {:<8} {:<20} {:<20} {:<20} {}\n",
                        s(&t["id"]),
                        s(&t["name"]),
                        state(t),
                        when(&t["expires_ms"], "never"),
                        when(&t["last_used_ms"], "never"),
                        when(&t["created_ms"], "-"),
                        scopes.join(",")
                    ));
                }
                out
            });
        }
        TokenCommand::Revoke { token } => {
            let id = token_id(&c, &token)?;
            c.delete(&format!("/api/v1/tokens/{id}"))?;
            print(args.format, &json!({"revoked": id}), |_| format!("revoked API token {id}\n"));
        }
    }
    Ok(0)
}
