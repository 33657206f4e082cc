//! The `chengis` command line: argument parsing and one function per subcommand.

mod account;
mod agent;
mod build;
mod client;
mod docker;
pub mod error;
mod lint;
mod plugin;
mod render;
mod run;
mod serve;
mod storage;
mod token;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Chengis: a self-hosted CI/CD server with WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "chengis", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Readable text (colours only on a terminal).
    Text,
    /// JSON for tools.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check pipeline files and report every problem with its file:line:column.
    Lint(lint::LintArgs),
    /// Run a pipeline on this machine with the local process executor.
    Run(run::RunArgs),
    /// Print the JSON Schema of the pipeline format.
    Schema {
        /// Write it to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Make sure the `wasm32-wasip2` target that plugins build for is installed.
    EnsureWasmTarget,
    /// Run the server with its embedded agent.
    Serve(Box<serve::ServeArgs>),
    /// Apply database migrations and exit.
    Migrate(account::LocalDb),
    /// Manage the plugin trust allowlist on the server host (and scaffold new plugins).
    Plugin {
        /// The server's database settings.
        #[command(flatten)]
        db: account::LocalDb,
        /// What to do.
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
    /// Manage jobs on a server.
    Job {
        /// Server options.
        #[command(flatten)]
        client: client::ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: client::JobCommand,
    },
    /// Trigger, list, show, follow, cancel and retry builds on a server.
    Build {
        /// Server options.
        #[command(flatten)]
        client: client::ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: build::BuildCommand,
    },
    /// Manage secrets on a server (values are write-only).
    Secret {
        /// Server options.
        #[command(flatten)]
        client: client::ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: client::SecretCommand,
    },
    /// List and delete build caches on a server, or run its maintenance pass now.
    Cache {
        /// Server options.
        #[command(flatten)]
        client: client::ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: storage::CacheCommand,
    },
    /// List, download and delete build artifacts on a server.
    Artifact {
        /// Server options.
        #[command(flatten)]
        client: client::ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: storage::ArtifactCommand,
    },
    /// Run a remote agent that pulls jobs from a server (`chengis agent list`: the server's agents).
    Agent(Box<agent::AgentArgs>),
    /// Create, list and revoke agent tokens on a server.
    AgentToken {
        /// Server options.
        #[command(flatten)]
        client: client::ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: agent::TokenCommand,
    },
    /// Sign the CLI in to a server: stores an API token in the config directory (0600); the
    /// server becomes the default of later commands. Asks for the password on a terminal.
    Login(Box<account::LoginArgs>),
    /// Sign the CLI out of a server: revokes its stored token there and forgets it.
    Logout(account::LogoutArgs),
    /// Show who the CLI is signed in as: user, role, server, and the token's scopes.
    Whoami {
        /// Server options.
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Change your own password (the current one is required); ends your other sessions and
    /// tokens.
    Passwd(account::PasswdArgs),
    /// Create, list and revoke your API tokens, with scopes and an expiry.
    Token {
        /// Server options.
        #[command(flatten)]
        client: client::ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Add, list, change and disable users on a server (admins).
    User {
        /// Server options.
        #[command(flatten)]
        client: client::ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: account::UserCommand,
    },
    /// Export the audit log or check its hash chain (admins).
    Audit {
        /// Server options.
        #[command(flatten)]
        client: client::ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: account::AuditCommand,
    },
    /// Add, list and delete cron schedules on a server.
    Schedule {
        /// Server options.
        #[command(flatten)]
        client: client::ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: client::ScheduleCommand,
    },
}

pub use chengis_runner::sandbox::startup_var;

/// Runs the command line; returns the process exit code ([`error`] lists them; an error maps
/// to one with [`error::exit_code`]).
pub fn main() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    if matches!(&cli.command, Command::Serve(_)) || matches!(&cli.command, Command::Agent(a) if a.command.is_none()) {
        // Still one thread (the runtime starts later): tokens, passwords and keys leave the
        // environment (the flags are parsed), and the process becomes non-dumpable.
        // SAFETY: no other thread runs yet.
        unsafe { chengis_runner::sandbox::harden_and_keep(chengis_runner::sandbox::is_secret_var) };
        // Long-running: large freed blocks go back to the OS, not into the arenas for good.
        crate::memory::configure_for_server();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHENGIS_LOG")
                .unwrap_or_else(|_| "warn,chengis::plugins=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Lint(args) => lint::lint(args),
        Command::Run(args) => run::run(args),
        Command::Schema { output } => {
            let schema = chengis_pipeline::schema::pipeline_schema_json();
            match output {
                Some(path) => std::fs::write(&path, schema)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
                None => print!("{schema}"),
            }
            Ok(0)
        }
        Command::Serve(args) => serve::serve(*args),
        Command::Migrate(db) => serve::migrate(db.serve_args()),
        Command::Plugin { db, command } => plugin::plugin(db.serve_args(), command),
        Command::Job { client, command } => client::job(&client, command),
        Command::Build { client, command } => build::build(&client, command),
        Command::Secret { client, command } => client::secret(&client, command),
        Command::Schedule { client, command } => client::schedule(&client, command),
        Command::Cache { client, command } => storage::cache(&client, command),
        Command::Artifact { client, command } => storage::artifact(&client, command),
        Command::Agent(args) => agent::agent(*args),
        Command::AgentToken { client, command } => agent::token(&client, command),
        Command::Login(args) => account::login(*args),
        Command::Logout(args) => account::logout(args),
        Command::Whoami { client } => account::whoami(&client),
        Command::Passwd(args) => account::passwd(args),
        Command::Token { client, command } => token::token(&client, command),
        Command::User { client, command } => account::user(&client, command),
        Command::Audit { client, command } => account::audit(&client, command),
        Command::EnsureWasmTarget => {
            let how = crate::toolchain::ensure_wasm_target()?;
            eprintln!("{how}");
            Ok(0)
        }
    }
}
