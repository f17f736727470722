use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::client::{Client, Connection};
use crate::{deploy, dev, output, serve};

pub const ENV_LISTEN: &str = "STRATUS_LISTEN";
pub const ENV_API_LISTEN: &str = "STRATUS_API_LISTEN";
pub const ENV_DATA_DIR: &str = "STRATUS_DATA_DIR";
pub const ENV_API: &str = "STRATUS_API";
pub const ENV_TOKEN: &str = "STRATUS_TOKEN";

#[derive(Parser)]
#[command(name = "stratus", version, about = "Self-hosted serverless platform")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// How a client command reaches the API.
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// API base URL.
    #[arg(long, env = ENV_API, default_value = "http://127.0.0.1:8081", global = true)]
    pub api: String,
    /// Bearer token; defaults to the admin token in the data dir.
    #[arg(long, env = ENV_TOKEN, global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Data dir of the local server, to read its admin token from.
    #[arg(long, env = ENV_DATA_DIR, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a node: the gateway (data plane) and the control-plane API.
    Serve(serve::ServeArgs),
    /// Deploy the function in DIR (default: the current folder) as a new version.
    Deploy {
        dir: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deploy DIR, then redeploy whenever a file in it changes.
    Dev {
        dir: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List functions.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a function: aliases, versions, instances.
    Info {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a function's versions.
    Versions {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage aliases.
    Alias {
        #[command(subcommand)]
        command: AliasCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Move an alias (default `latest`) back to where it pointed before.
    Rollback {
        name: String,
        #[arg(long, default_value = "latest")]
        alias: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a function's captured output.
    Logs {
        name: String,
        /// Keep printing new lines.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Newest lines to show first.
        #[arg(long, default_value_t = 100)]
        tail: u32,
        /// Only lines newer than this, like 15m or 1h.
        #[arg(long)]
        since: Option<String>,
        /// Only lines of this version or alias.
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a function (or one version of it with --version).
    Delete {
        name: String,
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
pub enum AliasCommand {
    /// Point ALIAS of NAME at VERSION.
    Set {
        name: String,
        alias: String,
        version: u32,
    },
    /// List the aliases of NAME.
    List { name: String },
    /// Show every change of ALIAS.
    History { name: String, alias: String },
}

fn client(args: &ClientArgs) -> Result<Client> {
    Client::new(Connection::resolve(args)?)
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Deploy { dir, client: c } => {
            let out =
                deploy::deploy(&client(&c)?, &dir.unwrap_or_else(|| ".".into()), !c.json).await?;
            output::deployed(&out, c.json)
        }
        Command::Dev { dir, client: c } => {
            dev::run(&client(&c)?, &dir.unwrap_or_else(|| ".".into()), c.json).await
        }
        Command::List { client: c } => output::list(&client(&c)?.get("/functions").await?, c.json),
        Command::Info { name, client: c } => output::info(
            &client(&c)?.get(&format!("/functions/{name}")).await?,
            c.json,
        ),
        Command::Versions { name, client: c } => {
            let cl = client(&c)?;
            let versions = cl.get(&format!("/functions/{name}/versions")).await?;
            let aliases = cl.get(&format!("/functions/{name}/aliases")).await?;
            output::versions(&versions, &aliases, c.json)
        }
        Command::Alias { command, client: c } => {
            let cl = client(&c)?;
            match command {
                AliasCommand::Set {
                    name,
                    alias,
                    version,
                } => {
                    let rec = cl
                        .put(
                            &format!("/functions/{name}/aliases/{alias}"),
                            &serde_json::json!({"version": version}),
                        )
                        .await?;
                    output::alias_moved(&rec, "set", c.json)
                }
                AliasCommand::List { name } => output::aliases(
                    &cl.get(&format!("/functions/{name}/aliases")).await?,
                    c.json,
                ),
                AliasCommand::History { name, alias } => output::history(
                    &cl.get(&format!("/functions/{name}/aliases/{alias}/history"))
                        .await?,
                    c.json,
                ),
            }
        }
        Command::Rollback {
            name,
            alias,
            client: c,
        } => {
            let rec = client(&c)?
                .post_empty(&format!("/functions/{name}/aliases/{alias}/rollback"))
                .await?;
            output::alias_moved(&rec, "rolled back", c.json)
        }
        Command::Logs {
            name,
            follow,
            tail,
            since,
            version,
            client: c,
        } => {
            let mut q = vec![("tail", tail.to_string()), ("follow", follow.to_string())];
            if let Some(s) = since {
                q.push(("since", s));
            }
            if let Some(v) = version {
                q.push(("version", v));
            }
            client(&c)?.stream_logs(&name, &q, c.json).await
        }
        Command::Delete {
            name,
            version,
            client: c,
        } => {
            let cl = client(&c)?;
            match version {
                Some(v) => {
                    cl.delete(&format!("/functions/{name}/versions/{v}"))
                        .await?;
                    if !c.json {
                        println!("deleted version {v} of {name}");
                    }
                }
                None => {
                    cl.delete(&format!("/functions/{name}")).await?;
                    if !c.json {
                        println!("deleted {name}");
                    }
                }
            }
            Ok(())
        }
    }
}
