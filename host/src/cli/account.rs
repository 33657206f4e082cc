//! `chengis login|logout`, `chengis user ...` and `chengis audit ...`: signing the CLI in (an API
//! token kept in the user's config directory, mode 0600), managing users, and reading and
//! checking the audit log.

use super::client::{Client, ClientArgs, enc, print, s};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
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

/// The token for `server`: `CHENGIS_TOKEN`, else the one `chengis login` stored for it.
pub fn token_for(server: &str) -> Option<String> {
    if let Ok(t) = std::env::var("CHENGIS_TOKEN")
        && !t.is_empty()
    {
        return Some(t);
    }
    let text = std::fs::read_to_string(credentials_path()?).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    table.get(server.trim_end_matches('/'))?.get("token")?.as_str().map(str::to_string)
}

fn store_token(server: &str, username: &str, token: &str) -> anyhow::Result<PathBuf> {
    let path = credentials_path().context("no config directory: set HOME or CHENGIS_CONFIG_DIR")?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut table: toml::Table =
        std::fs::read_to_string(&path).ok().and_then(|t| toml::from_str(&t).ok()).unwrap_or_default();
    let mut entry = toml::Table::new();
    entry.insert("username".into(), toml::Value::String(username.into()));
    entry.insert("token".into(), toml::Value::String(token.into()));
    table.insert(server.trim_end_matches('/').to_string(), toml::Value::Table(entry));
    let text = toml::to_string(&table).context("writing credentials")?;
    // Written to a new 0600 file and renamed, so the token is never readable by others.
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

/// `chengis login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Server options.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Username (with --password-stdin).
    #[arg(long)]
    pub username: Option<String>,
    /// Read the password from standard input.
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Store this API token instead of signing in with a password.
    #[arg(long, conflicts_with_all = ["username", "password_stdin"])]
    pub token: Option<String>,
}

/// Runs `chengis login`: checks the credentials against the server and stores a token.
pub fn login(args: LoginArgs) -> anyhow::Result<i32> {
    let (token, username) = match (&args.token, &args.username) {
        (Some(t), _) => {
            let c = Client::with_token(&args.client, Some(t.clone()))?;
            let me = c.get("/api/v1/me").context("checking the token")?;
            (t.clone(), s(&me["user"]["username"]))
        }
        (None, Some(user)) => {
            if !args.password_stdin {
                bail!("give the password on standard input with --password-stdin (or use --token)");
            }
            let mut password = String::new();
            std::io::stdin().read_to_string(&mut password).context("reading the password")?;
            let password = password.trim_end_matches(['\r', '\n']).to_string();
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "cli".into());
            let c = Client::with_token(&args.client, None)?;
            let v = c.post(
                "/api/v1/login",
                json!({"username": user, "password": password, "token_name": format!("cli@{host}")}),
            )?;
            (s(&v["token"]), user.clone())
        }
        (None, None) => bail!("give --username U --password-stdin, or --token T"),
    };
    let path = store_token(&args.client.server, &username, &token)?;
    print(args.client.format, &json!({"server": args.client.server, "username": username}), |_| {
        format!("signed in to {} as {username} (token kept in {})\n", args.client.server, path.display())
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
