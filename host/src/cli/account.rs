//! `chengis login|logout|whoami|passwd`, `chengis user ...` and `chengis audit ...`: signing the
//! CLI in (an API token kept in the user's config directory, mode 0600, and the server last
//! signed in to as the default), one's own password, managing users, and reading and checking
//! the audit log.

use super::client::{Client, ClientArgs, LOGIN, enc, print, s};
use super::error::CliError;
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::io::IsTerminal;
use std::io::Read;
use std::path::PathBuf;

/// Where the CLI keeps its token: `$CHENGIS_CONFIG_DIR`, else `$XDG_CONFIG_HOME/chengis`, else
/// `~/.config/chengis`.
pub fn credentials_path() -> Option<PathBuf> {
    let dir = std::env::var_os("CHENGIS_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CONFIG_HOME").map(|d| PathBuf::from(d).join("chengis")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/chengis")))?;
    Some(dir.join("credentials.toml"))
}

/// The credentials file as a table (empty when absent or unreadable).
fn read_credentials() -> toml::Table {
    credentials_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| toml::from_str(&t).ok())
        .unwrap_or_default()
}

/// The key of the credentials file that names the server last signed in to.
const CURRENT: &str = "current";

/// The token for `server` (a normalized URL): `CHENGIS_TOKEN`, else the one `chengis login`
/// stored for it.
pub fn token_for(server: &str) -> Option<String> {
    if let Ok(t) = std::env::var("CHENGIS_TOKEN")
        && !t.is_empty()
    {
        return Some(t);
    }
    stored_token(server)
}

/// The token `chengis login` stored for `server`, if any.
fn stored_token(server: &str) -> Option<String> {
    let table = read_credentials();
    table.get(server.trim_end_matches('/'))?.get("token")?.as_str().map(str::to_string)
}

/// The server last signed in to with `chengis login` (the default of `--server`); a
/// credentials file of an older version, without that record, names it when it holds one
/// server only.
pub fn current_server() -> Option<String> {
    let table = read_credentials();
    if let Some(url) = table.get(CURRENT).and_then(toml::Value::as_str) {
        return Some(url.to_string());
    }
    let mut servers = table.iter().filter(|(_, v)| v.is_table()).map(|(k, _)| k);
    match (servers.next(), servers.next()) {
        (Some(only), None) => Some(only.clone()),
        _ => None,
    }
}

/// Writes the credentials file: to a new 0600 file renamed over the old one, so that a token
/// is never readable by others.
fn write_credentials(table: &toml::Table) -> anyhow::Result<PathBuf> {
    let path = credentials_path().context("no config directory: set HOME or CHENGIS_CONFIG_DIR")?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = toml::to_string(table).context("writing credentials")?;
    let tmp = path.with_extension("toml.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Stores `token` for `server` and makes `server` the default of later commands.
fn store_token(server: &str, username: &str, token: &str) -> anyhow::Result<PathBuf> {
    let mut table = read_credentials();
    let mut entry = toml::Table::new();
    entry.insert("username".into(), toml::Value::String(username.into()));
    entry.insert("token".into(), toml::Value::String(token.into()));
    table.insert(server.trim_end_matches('/').to_string(), toml::Value::Table(entry));
    table.insert(CURRENT.into(), toml::Value::String(server.trim_end_matches('/').to_string()));
    write_credentials(&table)
}

/// Forgets the token stored for `server`; true when there was one.
fn forget_token(server: &str) -> anyhow::Result<bool> {
    let mut table = read_credentials();
    if table.remove(server).is_none() {
        return Ok(false);
    }
    if table.get(CURRENT).and_then(toml::Value::as_str) == Some(server) {
        table.remove(CURRENT);
    }
    write_credentials(&table)?;
    Ok(true)
}

/// `chengis login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Server options.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Username [default: asked on the terminal].
    #[arg(long)]
    pub username: Option<String>,
    /// Read the password from standard input instead of asking for it on the terminal.
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Store this API token instead of signing in with a password.
    #[arg(long, conflicts_with_all = ["username", "password_stdin"])]
    pub token: Option<String>,
}

/// Asks for a line on the terminal (echoed).
fn prompt_line(prompt: &str) -> anyhow::Result<String> {
    use std::io::{BufRead, Write};
    let mut err = std::io::stderr();
    write!(err, "{prompt}")?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading from the terminal")?;
    Ok(line.trim().to_string())
}

/// Asks for a password on the terminal without echoing it.
fn prompt_password(prompt: &str) -> anyhow::Result<String> {
    rpassword::prompt_password(prompt).context("reading the password from the terminal")
}

/// Whether the CLI may ask on the terminal.
fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Signs `user` in with `password`: the new token.
fn sign_in(c: &Client, user: &str, password: &str) -> anyhow::Result<String> {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "cli".into());
    let v = c.post_as(
        LOGIN,
        "/api/v1/login",
        json!({"username": user, "password": password, "token_name": format!("cli@{host}")}),
    )?;
    Ok(s(&v["token"]))
}

/// Runs `chengis login`: checks the credentials against the server, stores a token, and makes
/// the server the default of later commands.
pub fn login(args: LoginArgs) -> anyhow::Result<i32> {
    let server = args.client.server_url()?;
    let (token, username) = match (&args.token, &args.username) {
        (Some(t), _) => {
            let c = Client::with_token(&args.client, Some(t.clone()))?;
            let me = c.get_as("checking the token", "/api/v1/me")?;
            (t.clone(), s(&me["user"]["username"]))
        }
        (None, user) => {
            let (user, password) = if args.password_stdin {
                let user = user.clone().unwrap_or_default();
                let mut password = String::new();
                std::io::stdin().read_to_string(&mut password).context("reading the password")?;
                (user, password.trim_end_matches(['\r', '\n']).to_string())
            } else if interactive() {
                let user = match user {
                    Some(u) => u.clone(),
                    None => prompt_line(&format!("Username for {server}: "))?,
                };
                let password = prompt_password(&format!("Password for {user}: "))?;
                (user, password)
            } else {
                return Err(CliError::Usage(
                    "no terminal to ask for the password on: give --username U --password-stdin, or --token T".into(),
                )
                .into());
            };
            if user.is_empty() {
                return Err(CliError::Usage("no username given".into()).into());
            }
            let c = Client::with_token(&args.client, None)?;
            (sign_in(&c, &user, &password)?, user)
        }
    };
    let path = store_token(&server, &username, &token)?;
    print(args.client.format, &json!({"server": server, "username": username}), |_| {
        format!("signed in to {server} as {username} (token kept in {})\n", path.display())
    });
    Ok(0)
}

/// `chengis logout`.
#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Server options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `chengis logout`: revokes the stored token on the server and forgets it.
pub fn logout(args: LogoutArgs) -> anyhow::Result<i32> {
    let server = args.client.server_url()?;
    let Some(token) = stored_token(&server) else {
        return Err(CliError::Denied(format!("not signed in to {server}: no token stored for it")).into());
    };
    let c = Client::with_token(&args.client, Some(token))?;
    let revoked = match c.delete("/api/v1/me/token") {
        Ok(_) => "revoked on the server".to_string(),
        // Revoked or expired already, or its user disabled: nothing left to end there.
        Err(e) if super::error::exit_code(&e) == super::error::DENIED => "no longer valid on the server".to_string(),
        Err(e) => {
            eprintln!("warning: the token could not be revoked on the server: {e:#}");
            "not revoked on the server".to_string()
        }
    };
    forget_token(&server)?;
    print(args.client.format, &json!({"server": server, "logged_out": true}), |_| {
        format!("signed out of {server}: token forgotten here and {revoked}\n")
    });
    Ok(0)
}

/// Runs `chengis whoami`: the user, role, server and the token's scopes.
pub fn whoami(args: &ClientArgs) -> anyhow::Result<i32> {
    let server = args.server_url()?;
    if token_for(&server).is_none() {
        return Err(CliError::Denied(format!(
            "not signed in to {server}: sign in with `chengis login --server {server}` or set CHENGIS_TOKEN"
        ))
        .into());
    }
    let c = Client::new(args)?;
    let mut v = c.get_as("who am I", "/api/v1/me")?;
    v["server"] = json!(c.base());
    print(args.format, &v, |v| {
        let via = match (v["via"].as_str(), v["token"]["id"].as_i64()) {
            (Some("token"), Some(id)) => {
                let expiry = match v["token"]["expires_ms"].as_i64() {
                    Some(ms) => format!("expires {}", super::client::time_of(ms)),
                    None => "never expires".into(),
                };
                format!("API token {id} ({expiry})")
            }
            (via, _) => via.unwrap_or("-").to_string(),
        };
        let scopes: Vec<String> = v["scopes"].as_array().into_iter().flatten().map(s).collect();
        format!(
            "server:  {}\nuser:    {}\nrole:    {}\nvia:     {via}\nscopes:  {}\n",
            s(&v["server"]),
            s(&v["user"]["username"]),
            s(&v["user"]["role"]),
            if scopes.is_empty() { "(none)".to_string() } else { scopes.join(", ") }
        )
    });
    Ok(0)
}

/// `chengis passwd`.
#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// Server options.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Read the current password and the new one from standard input, one per line.
    #[arg(long)]
    pub password_stdin: bool,
}

/// Runs `chengis passwd`: changes the caller's own password (the current one is required). The
/// server ends every session and token of the user, so a CLI signed in with a stored token signs
/// in again with the new password.
pub fn passwd(args: PasswdArgs) -> anyhow::Result<i32> {
    let server = args.client.server_url()?;
    let c = Client::new(&args.client)?;
    let me = c.get_as("who am I", "/api/v1/me")?;
    let user = s(&me["user"]["username"]);
    let (current, new) = if args.password_stdin {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading the passwords")?;
        let mut lines = text.lines();
        match (lines.next(), lines.next()) {
            (Some(current), Some(new)) => (current.to_string(), new.to_string()),
            _ => {
                return Err(CliError::Usage(
                    "--password-stdin reads two lines: the current password, then the new one".into(),
                )
                .into());
            }
        }
    } else if interactive() {
        let current = prompt_password(&format!("Current password of {user}: "))?;
        let new = prompt_password("New password: ")?;
        if prompt_password("New password again: ")? != new {
            return Err(CliError::Usage("the new passwords differ; nothing changed".into()).into());
        }
        (current, new)
    } else {
        return Err(CliError::Usage("no terminal to ask for the passwords on: give --password-stdin".into()).into());
    };
    c.post_as("changing the password", "/api/v1/me/password", json!({"current": current, "new": new}))?;
    let mut again = String::new();
    if !matches!(std::env::var("CHENGIS_TOKEN"), Ok(t) if !t.is_empty()) && stored_token(&server).is_some() {
        let fresh = Client::with_token(&args.client, None)?;
        let token = sign_in(&fresh, &user, &new)?;
        store_token(&server, &user, &token)?;
        again = " and signed this CLI in again".into();
    }
    print(args.client.format, &json!({"changed": true, "username": user}), |_| {
        format!("password of {user} changed; its other sessions and tokens ended{again}\n")
    });
    Ok(0)
}

/// `chengis user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read from standard input.
    Add {
        /// Username.
        name: String,
        /// Role: admin, developer or viewer.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    /// List users.
    List,
    /// Set a user's password (read from standard input); ends their sessions and tokens.
    Passwd {
        /// Username.
        name: String,
    },
    /// Change a user's role.
    Role {
        /// Username.
        name: String,
        /// admin, developer or viewer.
        role: String,
    },
    /// Disable a user (ends their sessions and tokens).
    Disable {
        /// Username.
        name: String,
    },
    /// Enable a disabled user.
    Enable {
        /// Username.
        name: String,
    },
    /// On the server host, without signing in: set a user's password (read from standard
    /// input) straight in the database and lift any lockout. The recovery path when an admin
    /// is locked out or has lost the password; works whether the server runs or not. Ends the
    /// user's sessions and tokens.
    ResetPassword {
        /// Username.
        name: String,
        /// The server's database settings.
        #[command(flatten)]
        db: LocalDb,
    },
}

/// Where the server's database is, for commands run on the server host.
#[derive(Debug, Args)]
pub struct LocalDb {
    /// The server's data directory [default: ./chengis-data].
    #[arg(long, env = "CHENGIS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The server's database URL [default: SQLite in the data directory].
    #[arg(long, env = "CHENGIS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The server's config file (for its data directory and database URL).
    #[arg(long, env = "CHENGIS_CONFIG")]
    pub config: Option<PathBuf>,
}

impl LocalDb {
    /// The `chengis serve` settings these name (the rest at their defaults).
    pub fn serve_args(self) -> super::serve::ServeArgs {
        super::serve::ServeArgs {
            data_dir: self.data_dir,
            database_url: self.database_url,
            config: self.config,
            ..Default::default()
        }
    }
}

/// `chengis user reset-password`: works on the database, not through the server.
fn reset_password(name: &str, db: LocalDb) -> anyhow::Result<i32> {
    let password = read_password()?;
    if password.chars().count() < crate::server::auth::MIN_PASSWORD {
        return Err(CliError::Usage(format!(
            "a password needs at least {} characters",
            crate::server::auth::MIN_PASSWORD
        ))
        .into());
    }
    let cfg = db.serve_args().resolve()?;
    let url = cfg.database_url.clone().unwrap_or_default();
    if let Some(path) = url.strip_prefix("sqlite://")
        && !std::path::Path::new(path).exists()
    {
        return Err(
            CliError::Usage(format!("no database at {path}: give the server's --data-dir or --database-url")).into()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = super::serve::open_store(&cfg).await?;
        let Some((user, _)) = store.user_by_name(name).await? else {
            return Err(CliError::NotFound(format!("no user `{name}`")).into());
        };
        let hash = crate::server::auth::hash_password(&password).map_err(anyhow::Error::msg)?;
        store.set_password(user.id, &hash).await?;
        store
            .audit(
                "system",
                "local",
                "user.password",
                &format!("user:{name}"),
                "reset on the server host (chengis user reset-password); lockout lifted",
            )
            .await?;
        println!("password of {name} reset and any lockout lifted; their sessions and tokens ended");
        Ok(0)
    })
}

fn read_password() -> anyhow::Result<String> {
    let mut p = String::new();
    std::io::stdin().read_to_string(&mut p).context("reading the password from standard input")?;
    Ok(p.trim_end_matches(['\r', '\n']).to_string())
}

/// Runs `chengis user ...`.
pub fn user(args: &ClientArgs, cmd: UserCommand) -> anyhow::Result<i32> {
    let c = Client::new(args)?;
    let shown = |v: &Value| {
        format!("{} ({}{})\n", s(&v["username"]), s(&v["role"]), if v["active"] == false { ", disabled" } else { "" })
    };
    let v = match cmd {
        UserCommand::Add { name, role } => {
            c.post("/api/v1/users", json!({"username": name, "password": read_password()?, "role": role}))?
        }
        UserCommand::List => {
            let v = c.get("/api/v1/users")?;
            print(args.format, &v, |v| {
                v["users"].as_array().map(|a| a.iter().map(shown).collect()).unwrap_or_default()
            });
            return Ok(0);
        }
        UserCommand::Passwd { name } => {
            c.patch(&format!("/api/v1/users/{}", enc(&name)), json!({"password": read_password()?}))?
        }
        UserCommand::Role { name, role } => c.patch(&format!("/api/v1/users/{}", enc(&name)), json!({"role": role}))?,
        UserCommand::Disable { name } => c.patch(&format!("/api/v1/users/{}", enc(&name)), json!({"active": false}))?,
        UserCommand::Enable { name } => c.patch(&format!("/api/v1/users/{}", enc(&name)), json!({"active": true}))?,
        UserCommand::ResetPassword { name, db } => return reset_password(&name, db),
    };
    print(args.format, &v, shown);
    Ok(0)
}

/// `chengis audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; exits 1 when an entry was modified or removed.
    Verify,
    /// Print the log as CSV or JSON (`--format json`).
    Export {
        /// Entries after this id.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many.
        #[arg(long, default_value_t = 100_000)]
        limit: i64,
        /// csv or json.
        #[arg(long = "as", default_value = "csv")]
        output: String,
    },
}

/// Runs `chengis audit ...`.
pub fn audit(args: &ClientArgs, cmd: AuditCommand) -> anyhow::Result<i32> {
    let c = Client::new(args)?;
    match cmd {
        AuditCommand::Verify => {
            let v = c.get("/api/v1/audit/verify")?;
            print(args.format, &v, |v| match v["problem"].as_str() {
                None => format!("audit log intact: {} entries\n", s(&v["entries"])),
                Some(p) => format!("audit log TAMPERED: {p} ({} entries check out before it)\n", s(&v["entries"])),
            });
            Ok(if v["ok"] == true { 0 } else { 1 })
        }
        AuditCommand::Export { after, limit, output } => {
            let path = format!("/api/v1/audit?format={}&after={after}&limit={limit}", enc(&output));
            let mut out = std::io::stdout();
            c.download(&path, &mut out)?;
            Ok(0)
        }
    }
}
