//! The `tally` command: run the server, manage projects, keys and dashboard users.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tally_server::config::Role;
use tally_server::meta::{self, KeyKind, Projects, UserRole};
use tally_server::Config;

// The ingest path allocates many small, short-lived buffers across threads (request
// bodies, JSON values, batches); mimalloc handles that pattern with less contention than
// glibc's malloc (bench/ingest.sh measures the difference).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tally: self-hosted product analytics. Ingests events from ThriveStack-style SDKs,
/// stores them durably in an embedded DuckDB, and answers dashboard queries.
#[derive(Parser, Debug)]
#[command(name = "tally", version, about, long_about = None)]
struct Cli {
    /// TOML config file (every key documented in docs/configuration.md). Settings
    /// can also come from TALLY_* environment variables, which win over the file.
    #[arg(long, short, global = true, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    /// Data folder (queue, store, projects); overrides config and TALLY_DATA_DIR.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (ingest, writer and query API in one process, or one scale-out
    /// role).
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8080; overrides config and TALLY_LISTEN.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// all (default), or a scale-out role: ingest, writer or query (needs the Redis
        /// queue and the ClickHouse store; see docs/scale-out.md); overrides config and
        /// TALLY_ROLE.
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
    },
    /// Manage projects.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage dashboard users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Print the effective configuration (defaults, file and environment merged).
    Config,
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Create a dashboard user. Without --password-stdin a password is generated and
    /// printed (only this once).
    Create {
        email: String,
        /// admin: every project; viewer: only the --project ones, reports only.
        #[arg(long, value_enum)]
        role: RoleName,
        /// A project the user may see (repeat for more); a viewer needs at least one.
        #[arg(long = "project")]
        projects: Vec<String>,
        /// Read the password from standard input (its first line).
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the users (never their password hashes).
    List {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Set a user's password; their sessions end. Without --password-stdin a password is
    /// generated and printed.
    Passwd {
        email: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user; their sessions end. The last admin cannot be removed.
    Remove { email: String },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RoleName {
    Admin,
    Viewer,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum RoleArg {
    All,
    Ingest,
    Writer,
    Query,
}

#[derive(Subcommand, Debug)]
enum ProjectCommand {
    /// Create a project and print its write key and read key (the read key is shown
    /// only this once).
    Create {
        /// Display name; the project id is derived from it ("My Shop" → my-shop).
        name: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// List projects with their write keys and read-key prefixes.
    List {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Add a key to a project and print it.
    Create {
        /// Project id, as shown by `tally keys list`.
        project: String,
        /// Write keys send events; read keys run queries.
        #[arg(long, value_enum)]
        kind: Kind,
    },
    /// Remove a key from a project: a write key by the key, a read key by the prefix
    /// `tally keys list` shows. A running server refuses it within a second.
    Revoke {
        project: String,
        #[arg(long, value_enum)]
        kind: Kind,
        key: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    Write,
    Read,
}

impl From<Kind> for KeyKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Write => KeyKind::Write,
            Kind::Read => KeyKind::Read,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    match cli.command {
        Command::Serve { listen, role } => {
            if let Some(addr) = listen {
                config.listen = addr;
            }
            if let Some(role) = role {
                config.role = match role {
                    RoleArg::All => Role::All,
                    RoleArg::Ingest => Role::Ingest,
                    RoleArg::Writer => Role::Writer,
                    RoleArg::Query => Role::Query,
                };
                config.validate()?;
            }
            serve(config)
        }
        Command::Project {
            command: ProjectCommand::Create { name, format },
        } => {
            let (_, made) = Projects::update(&config.data_dir, |p| p.create_project(&name))?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&made)?),
                Format::Text => {
                    println!("created project {}", made.project);
                    println!("write key: {}", made.write_key);
                    println!("read key:  {}  (shown only now: keep it)", made.read_key);
                }
            }
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::List { format },
        } => {
            let projects = Projects::load(&config.data_dir)?;
            match format {
                // Projects only: the file also holds the users' password hashes.
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "projects": projects.projects })
                    )?
                ),
                Format::Text => {
                    if projects.projects.is_empty() {
                        println!("no projects yet in {}", config.data_dir.display());
                    }
                    for p in &projects.projects {
                        println!("{} ({})", p.id, p.name);
                        for k in &p.write_keys {
                            println!("  write  {k}");
                        }
                        for k in &p.read_keys {
                            println!("  read   {}…  (created {})", k.prefix, k.created_at);
                        }
                    }
                }
            }
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Create { project, kind },
        } => {
            let (_, key) =
                Projects::update(&config.data_dir, |p| p.create_key(&project, kind.into()))?;
            println!("{key}");
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Revoke { project, kind, key },
        } => {
            Projects::update(&config.data_dir, |p| {
                p.revoke_key(&project, kind.into(), &key)
            })?;
            println!(
                "revoked the {} key {key} of {project}",
                KeyKind::from(kind).name()
            );
            Ok(())
        }
        Command::User { command } => user(&config, command),
        Command::Config => {
            // A secret is shown as set or not, never printed.
            if !config.clickhouse.password.is_empty() {
                config.clickhouse.password = "(set)".into();
            }
            println!("{}", toml::to_string_pretty(&config)?);
            Ok(())
        }
    }
}

fn user(config: &Config, command: UserCommand) -> anyhow::Result<()> {
    let dir = &config.data_dir;
    match command {
        UserCommand::Create {
            email,
            role,
            projects: visible,
            password_stdin,
        } => {
            let (password, generated) = password(password_stdin)?;
            let role = match role {
                RoleName::Admin => UserRole::Admin,
                RoleName::Viewer => UserRole::Viewer,
            };
            let (_, made) =
                Projects::update(dir, |p| p.create_user(&email, role, &visible, &password))?;
            println!("created user {} ({:?})", made.email, made.role);
            if generated {
                println!("password: {password}  (shown only now: keep it)");
            }
        }
        UserCommand::List { format } => {
            let projects = Projects::load(dir)?;
            let users: Vec<_> = projects.users.iter().map(|u| u.summary()).collect();
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&users)?),
                Format::Text => {
                    if users.is_empty() {
                        println!("no users yet in {}", config.data_dir.display());
                    }
                    for u in &users {
                        let role = match u.role {
                            UserRole::Admin => "admin ".to_owned(),
                            UserRole::Viewer => format!("viewer of {}", u.projects.join(", ")),
                        };
                        println!("{}  {role}  (created {})", u.email, u.created_at);
                    }
                }
            }
        }
        UserCommand::Passwd {
            email,
            password_stdin,
        } => {
            let (password, generated) = password(password_stdin)?;
            Projects::update(dir, |p| p.set_password(&email, &password))?;
            println!("password changed; the user's sessions have ended");
            if generated {
                println!("password: {password}  (shown only now: keep it)");
            }
        }
        UserCommand::Remove { email } => {
            Projects::update(dir, |p| p.remove_user(&email))?;
            println!("removed user {email}; their sessions have ended");
        }
    }
    Ok(())
}

/// The password from standard input's first line, or a generated one (`true`).
fn password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((meta::generate_password(), true));
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(!password.is_empty(), "no password on standard input");
    Ok((password, false))
}

fn serve(config: Config) -> anyhow::Result<()> {
    tally_server::init_logging(&config);
    if config.role != Role::All {
        // Scale-out processes share projects.json (a mounted folder); only the
        // single-node server makes the default project and the admin on first start.
    } else {
        let made = tally_server::bootstrap(&config)?;
        if let Some(project) = &made.project {
            println!("created the default project; point your SDKs at this server with:");
            println!("  write key: {}", project.write_key);
            println!(
                "  read key:  {}  (shown only now: keep it)",
                project.read_key
            );
        }
        if let Some((email, password)) = &made.admin {
            println!(
                "created the dashboard's admin user; log in at http://{}/ with:",
                config.listen
            );
            println!("  email:    {email}");
            println!("  password: {password}  (shown only now: change it with `tally user passwd {email}`)");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        tally_server::serve(config, listener, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
