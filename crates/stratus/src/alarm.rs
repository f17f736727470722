//! `stratus alarm create|list|get|delete`.

use anyhow::Result;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::ClientArgs;
use crate::client::{Client, Connection};
use crate::output::{s, table_string, time};

#[derive(Subcommand)]
pub enum AlarmCommand {
    /// Watch a function's metric and notify a webhook when it crosses a threshold for a while
    /// (and again when it resolves). Metrics: error_rate, request_rate, p50_ms, p99_ms,
    /// cold_starts, throttle_rate.
    Create {
        /// The function to watch (all its versions).
        #[arg(long = "fn", value_name = "NAME")]
        function: String,
        #[arg(long)]
        metric: String,
        /// One of >, >=, <, <=.
        #[arg(long, allow_hyphen_values = true)]
        op: String,
        #[arg(long, allow_hyphen_values = true)]
        threshold: f64,
        /// How long the condition must hold before the alarm fires, like 1m (default: at once).
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        /// The window the metric is computed over (default 1m).
        #[arg(long)]
        window: Option<String>,
        /// Where fire and resolve notifications are POSTed (JSON), with retries.
        #[arg(long)]
        webhook: String,
        /// An id of your own (default: generated).
        #[arg(long)]
        id: Option<String>,
    },
    /// Every alarm with its state and last value.
    List,
    /// One alarm, with its notifications.
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
}

fn row(a: &Value) -> Vec<String> {
    vec![
        s(&a["id"]),
        s(&a["function"]),
        format!("{} {} {}", s(&a["metric"]), s(&a["op"]), s(&a["threshold"])),
        s(&a["state"]),
        a["last_value"]
            .as_f64()
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "-".into()),
        time(&a["state_since"]),
    ]
}

const HEADERS: [&str; 6] = ["ID", "FUNCTION", "CONDITION", "STATE", "VALUE", "SINCE"];

pub async fn run(cmd: AlarmCommand, c: &ClientArgs) -> Result<()> {
    let cl = Client::new(Connection::resolve(c)?)?;
    let out = match cmd {
        AlarmCommand::Create {
            function,
            metric,
            op,
            threshold,
            for_,
            window,
            webhook,
            id,
        } => {
            let body = json!({
                "function": function, "metric": metric, "op": op, "threshold": threshold,
                "for": for_, "window": window, "webhook": webhook, "id": id,
            });
            let a = cl.json_post("/alarms", &body).await?;
            if !c.json {
                println!("created alarm {} on {}", s(&a["id"]), s(&a["function"]));
                return Ok(());
            }
            a
        }
        AlarmCommand::List => {
            let list = cl.get("/alarms").await?;
            if !c.json {
                let rows = list.as_array().into_iter().flatten().map(row).collect();
                print!("{}", table_string(&HEADERS, rows));
                return Ok(());
            }
            list
        }
        AlarmCommand::Get { id } => {
            let a = cl.get(&format!("/alarms/{id}")).await?;
            if !c.json {
                print!("{}", table_string(&HEADERS, vec![row(&a)]));
                let notes: Vec<Vec<String>> = a["notifications"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|n| {
                        vec![
                            time(&n["at"]),
                            s(&n["kind"]),
                            s(&n["value"]),
                            if n["delivered"] == true {
                                "delivered"
                            } else {
                                "not delivered"
                            }
                            .into(),
                            s(&n["attempts"]),
                            s(&n["error"]),
                        ]
                    })
                    .collect();
                if !notes.is_empty() {
                    println!();
                    print!(
                        "{}",
                        table_string(
                            &["AT", "KIND", "VALUE", "DELIVERY", "ATTEMPTS", "ERROR"],
                            notes
                        )
                    );
                }
                return Ok(());
            }
            a
        }
        AlarmCommand::Delete { id } => {
            cl.delete(&format!("/alarms/{id}")).await?;
            if !c.json {
                println!("deleted alarm {id}");
            }
            return Ok(());
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
