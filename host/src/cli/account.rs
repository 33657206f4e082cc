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

/// `chengis user reset-password`: works on the database, not through the server.
fn reset_password(name: &str, db: LocalDb) -> anyhow::Result<i32> {
    let password = read_password()?;
    if password.chars().count() < crate::server::auth::MIN_PASSWORD {
        bail!("a password needs at least {} characters", crate::server::auth::MIN_PASSWORD);
    }
    let args = super::serve::ServeArgs {
        data_dir: db.data_dir,
        database_url: db.database_url,
        config: db.config,
        ..Default::default()
    };
    let cfg = args.resolve()?;
    let url = cfg.database_url.clone().unwrap_or_default();
    if let Some(path) = url.strip_prefix("sqlite://")
        && !std::path::Path::new(path).exists()
    {
        bail!("no database at {path}: give the server's --data-dir or --database-url");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = super::serve::open_store(&cfg).await?;
        let (user, _) = store.user_by_name(name).await?.with_context(|| format!("no user `{name}`"))?;
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
