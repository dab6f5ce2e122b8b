//! The `tally` command: run the server, manage projects and keys.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tally_server::config::Role;
use tally_server::meta::{KeyKind, Projects};
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
    /// Print the effective configuration (defaults, file and environment merged).
    Config,
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
            let mut projects = Projects::load(&config.data_dir)?;
            let made = projects.create_project(&name)?;
            projects.save(&config.data_dir)?;
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
                Format::Json => println!("{}", serde_json::to_string_pretty(&projects)?),
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
            let mut projects = Projects::load(&config.data_dir)?;
            let kind = match kind {
                Kind::Write => KeyKind::Write,
                Kind::Read => KeyKind::Read,
            };
            let key = projects.create_key(&project, kind)?;
            projects.save(&config.data_dir)?;
            println!("{key}");
            Ok(())
        }
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

fn serve(config: Config) -> anyhow::Result<()> {
    tally_server::init_logging(&config);
    if config.role != Role::All {
        // Scale-out processes share projects.json (a mounted folder); only the
        // single-node server makes the default project on first start.
    } else if let Some(made) = tally_server::bootstrap(&config)? {
        println!("created the default project; point your SDKs at this server with:");
        println!("  write key: {}", made.write_key);
        println!("  read key:  {}  (shown only now: keep it)", made.read_key);
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
