use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::client::{Client, Connection};
use crate::{deploy, dev, init, output, serve};

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
    /// Create a function folder from a template (a wasm component with its build command).
    Init {
        /// The folder to create (default: the current folder).
        dir: Option<PathBuf>,
        #[arg(long, value_enum)]
        template: init::Template,
        /// The function's name (default: the folder's name).
        #[arg(long)]
        name: Option<String>,
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
        /// Keep printing new entries.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Newest entries to show first.
        #[arg(long, default_value_t = 100)]
        tail: u32,
        /// Only entries from this time on: a duration ago (15m, 1h) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only entries up to this time: a duration ago or an RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Only entries of this version or alias.
        #[arg(long)]
        version: Option<String>,
        /// Only requests with this status class (5xx, 4xx) or status (404), with their lines.
        #[arg(long)]
        status: Option<String>,
        /// Only requests whose path, error or log lines contain this text, with their lines.
        #[arg(long)]
        grep: Option<String>,
        /// Only this request (its x-request-id), with its lines.
        #[arg(long)]
        request_id: Option<String>,
        /// Only the requests of this trace (the trace id of a traceparent), with their lines.
        #[arg(long)]
        trace_id: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-send a captured request (functions with `[capture]`) to any version, or to a local
    /// dev server, and show the captured response beside the new one.
    Replay {
        #[command(flatten)]
        args: crate::replay::ReplayArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A live view across all functions: rate, errors, p50/p99, instances, cold starts.
    Top {
        /// The window each row adds up, ending now.
        #[arg(long, default_value = "10s")]
        window: String,
        /// Time between refreshes.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// Print one view and exit (for scripts; with --json, the API's summary).
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Progressive delivery: shift an alias to a version step by step, promoting or rolling back
    /// by itself (`stratus release NAME --to 5`), or `release status NAME` / `release abort NAME`.
    #[command(args_conflicts_with_subcommands = true)]
    Release {
        #[command(subcommand)]
        command: Option<ReleaseCommand>,
        #[command(flatten)]
        start: ReleaseArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Invoke a function now (its response is printed) or with --async (queued, retried); or
    /// `invoke status ID` for an invocation's state and result.
    #[command(args_conflicts_with_subcommands = true)]
    Invoke {
        #[command(subcommand)]
        command: Option<crate::invoke::InvokeCommand>,
        #[command(flatten)]
        args: crate::invoke::InvokeArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Dead letters: async invocations that ran out of retries (`dlq list NAME`, `dlq redrive`).
    Dlq {
        #[command(subcommand)]
        command: crate::invoke::DlqCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Alarm rules on a function's metrics, notified to a webhook (`alarm create`, `list`,
    /// `get`, `delete`).
    Alarm {
        #[command(subcommand)]
        command: crate::alarm::AlarmCommand,
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

#[derive(Args, Debug, Clone)]
pub struct ReleaseArgs {
    /// The function to release.
    pub name: Option<String>,
    /// The version to move to.
    #[arg(long)]
    pub to: Option<u32>,
    /// The alias to move.
    #[arg(long, default_value = "release")]
    pub alias: String,
    /// Percentages of traffic on the new version, one step per interval.
    #[arg(long, value_delimiter = ',', default_value = "10,25,50,100")]
    pub steps: Vec<u32>,
    #[arg(long, default_value = "1m")]
    pub interval: String,
    /// Roll back when the new version's error rate goes over this (and over the stable one's).
    #[arg(long, default_value = "1%")]
    pub max_error_rate: String,
    /// Roll back when the new version's p99 latency goes over this.
    #[arg(long)]
    pub max_p99: Option<String>,
}

#[derive(Subcommand)]
pub enum ReleaseCommand {
    /// Show the releases of NAME, newest first, with every step and its reason.
    Status { name: String },
    /// Stop the running release of NAME: the alias goes back to the stable version.
    Abort { name: String },
}

fn policy_body(
    versions: &[String],
    rules: &[String],
    sticky: Option<&str>,
    shadow: Option<&str>,
    compare_body: bool,
) -> Result<serde_json::Value> {
    use stratus_core::traffic::syntax;
    let invalid = |e: stratus_core::PolicyError| crate::client::InvalidInput(e.0);
    let policy = stratus_core::TrafficPolicy {
        weights: syntax::weights(versions).map_err(invalid)?,
        rules: rules
            .iter()
            .map(|r| syntax::rule(r))
            .collect::<Result<_, _>>()
            .map_err(invalid)?,
        sticky: sticky.map(syntax::sticky).transpose().map_err(invalid)?,
        shadow: shadow
            .map(|s| syntax::shadow(s, compare_body))
            .transpose()
            .map_err(invalid)?,
    };
    Ok(serde_json::to_value(policy)?)
}

async fn release(command: Option<ReleaseCommand>, args: ReleaseArgs, c: &ClientArgs) -> Result<()> {
    let cl = client(c)?;
    match command {
        Some(ReleaseCommand::Status { name }) => output::releases(
            &cl.get(&format!("/functions/{name}/releases")).await?,
            c.json,
        ),
        Some(ReleaseCommand::Abort { name }) => {
            let releases = cl.get(&format!("/functions/{name}/releases")).await?;
            let running = releases
                .as_array()
                .and_then(|a| a.iter().find(|r| r["state"] == "running"))
                .ok_or_else(|| crate::client::ApiFailure {
                    status: 409,
                    code: "conflict".into(),
                    message: format!("`{name}` has no running release"),
                })?;
            let r = cl
                .post_empty(&format!(
                    "/functions/{name}/releases/{}/abort",
                    running["id"]
                ))
                .await?;
            output::release_started(&r, c.json)
        }
        None => {
            let (Some(name), Some(to)) = (args.name, args.to) else {
                return Err(crate::client::InvalidInput("usage: stratus release NAME --to VERSION [--steps 10,25,50,100] [--interval 1m] [--max-error-rate 1%] [--max-p99 500ms]".into()).into());
            };
            let body = serde_json::json!({
                "alias": args.alias, "to": to, "steps": args.steps, "interval": args.interval,
                "max_error_rate": args.max_error_rate, "max_p99": args.max_p99,
            });
            let r = cl
                .json_post(&format!("/functions/{name}/releases"), &body)
                .await?;
            output::release_started(&r, c.json)
        }
    }
}

#[derive(Subcommand)]
pub enum AliasCommand {
    /// Point ALIAS of NAME at a version (`3`) or split it over versions (`3=90 4=10`).
    Set {
        name: String,
        alias: String,
        /// `3`, or weights adding up to 100: `3=90 4=10`.
        #[arg(required = true, num_args = 1..)]
        versions: Vec<String>,
        /// A rule tried before the weights, first match wins (repeatable):
        /// `header:x-tenant-id in t1,t7 -> 4`, `cookie:beta=1 -> canary`, `query:v ~ ^2 -> 5`,
        /// `cidr:10.0.0.0/8 -> 4`.
        #[arg(long = "rule", value_name = "RULE")]
        rules: Vec<String>,
        /// Pin each caller to one version by this key: `header:x-tenant-id` (or cookie:, query:).
        #[arg(long, value_name = "KEY")]
        sticky: Option<String>,
        /// Mirror a share of requests to a version, discarding its answers: `5:10%`.
        #[arg(long, value_name = "VERSION:PERCENT")]
        shadow: Option<String>,
        /// With --shadow, also compare response bodies.
        #[arg(long, requires = "shadow")]
        compare_body: bool,
    },
    /// List the aliases of NAME.
    List { name: String },
    /// Show every change of ALIAS.
    History { name: String, alias: String },
    /// Show what mirroring ALIAS to its shadow version found.
    Shadow { name: String, alias: String },
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
        Command::Init {
            dir,
            template,
            name,
        } => init::run(template, &dir.unwrap_or_else(|| ".".into()), name).map(|_| ()),
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
                    versions,
                    rules,
                    sticky,
                    shadow,
                    compare_body,
                } => {
                    let body = policy_body(
                        &versions,
                        &rules,
                        sticky.as_deref(),
                        shadow.as_deref(),
                        compare_body,
                    )?;
                    let rec = cl
                        .put(&format!("/functions/{name}/aliases/{alias}"), &body)
                        .await?;
                    output::alias_moved(&rec, "set", c.json)
                }
                AliasCommand::Shadow { name, alias } => output::shadow(
                    &cl.get(&format!("/functions/{name}/aliases/{alias}/shadow"))
                        .await?,
                    c.json,
                ),
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
            until,
            version,
            status,
            grep,
            request_id,
            trace_id,
            client: c,
        } => {
            let mut q = vec![("tail", tail.to_string()), ("follow", follow.to_string())];
            for (k, v) in [
                ("since", since),
                ("until", until),
                ("version", version),
                ("status", status),
                ("grep", grep),
                ("request_id", request_id),
                ("trace_id", trace_id),
            ] {
                if let Some(v) = v {
                    q.push((k, v));
                }
            }
            client(&c)?.stream_logs(&name, &q, c.json).await
        }
        Command::Replay { args, client: c } => crate::replay::run(args, &c).await,
        Command::Top {
            window,
            interval,
            once,
            client: c,
        } => crate::top::run(&client(&c)?, &window, interval, once, c.json).await,
        Command::Release {
            command,
            start,
            client: c,
        } => release(command, start, &c).await,
        Command::Invoke {
            command,
            args,
            client: c,
        } => crate::invoke::invoke(command, args, &c).await,
        Command::Dlq { command, client: c } => crate::invoke::dlq(command, &c).await,
        Command::Alarm { command, client: c } => crate::alarm::run(command, &c).await,
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
