//! `stratus invoke` and `stratus dlq`: invoke a function now or asynchronously, look up an
//! invocation, list and redrive dead letters.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::cli::ClientArgs;
use crate::client::{ApiFailure, Client, Connection, InvalidInput};

#[derive(Args, Debug, Clone)]
pub struct InvokeArgs {
    /// The function to invoke.
    pub name: Option<String>,
    /// Queue the invocation and return its id at once (delivered with retries).
    #[arg(long = "async")]
    pub async_: bool,
    /// The event: JSON (or any text), or @FILE to read it from a file. Default `{}`.
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// The alias or version to invoke.
    #[arg(long, default_value = "latest")]
    pub alias: String,
}

#[derive(Subcommand, Debug, Clone)]
pub enum InvokeCommand {
    /// Show an invocation: state, attempts, result or errors.
    Status { id: String },
}

#[derive(Subcommand, Debug, Clone)]
pub enum DlqCommand {
    /// The invocations of NAME that ran out of retries (or of time), oldest first.
    List { name: String },
    /// Send dead letters of NAME (one by ID, or all) back to be delivered again.
    Redrive { name: String, id: Option<String> },
}

fn client(c: &ClientArgs) -> Result<Client> {
    Client::new(Connection::resolve(c)?)
}

fn payload(data: Option<&str>) -> Result<(Vec<u8>, &'static str)> {
    let bytes = match data {
        None => b"{}".to_vec(),
        Some(d) => match d.strip_prefix('@') {
            Some(file) => std::fs::read(file)
                .map_err(|e| InvalidInput(format!("cannot read --data file {file}: {e}")))?,
            None => d.as_bytes().to_vec(),
        },
    };
    let ct = if serde_json::from_slice::<Value>(&bytes).is_ok() {
        "application/json"
    } else {
        "text/plain"
    };
    Ok((bytes, ct))
}

fn time(ms: i64) -> String {
    crate::output::time(&Value::from(ms))
}

pub async fn invoke(cmd: Option<InvokeCommand>, args: InvokeArgs, c: &ClientArgs) -> Result<()> {
    let cl = client(c)?;
    if let Some(InvokeCommand::Status { id }) = cmd {
        let inv = cl.get(&format!("/invocations/{id}")).await?;
        if c.json {
            println!("{}", serde_json::to_string_pretty(&inv)?);
            return Ok(());
        }
        println!(
            "invocation {} of {}@{}",
            inv["id"].as_str().unwrap_or(""),
            inv["function"].as_str().unwrap_or(""),
            inv["target"].as_str().unwrap_or("")
        );
        println!("state:    {}", inv["state"].as_str().unwrap_or(""));
        println!("attempts: {}", inv["attempts"]);
        println!(
            "created:  {}",
            time(inv["created_at"].as_i64().unwrap_or(0))
        );
        if !inv["result"].is_null() {
            println!("result:   {}", inv["result"]);
        }
        for e in inv["errors"].as_array().into_iter().flatten() {
            println!(
                "attempt {}: {}",
                e["attempt"],
                e["error"].as_str().unwrap_or("")
            );
        }
        return Ok(());
    }
    let Some(name) = args.name else {
        return Err(InvalidInput("usage: stratus invoke NAME [--async] [--data JSON|@FILE] [--alias A], or stratus invoke status ID".into()).into());
    };
    let (body, ct) = payload(args.data.as_deref())?;
    let mut req = cl
        .http()
        .post(cl.url(&format!("/functions/{name}/invocations")))
        .query(&[("target", args.alias.as_str())])
        .header("content-type", ct)
        .body(body);
    if args.async_ {
        req = req.header("x-stratus-invocation-type", "Event");
        let resp = cl.send(req).await?;
        let v: Value = resp
            .json()
            .await
            .context("the API answered with invalid JSON")?;
        if c.json {
            println!("{v}");
        } else {
            println!(
                "queued invocation {} of {name}",
                v["invocation_id"].as_str().unwrap_or("")
            );
        }
        return Ok(());
    }
    // A failed invocation is the function's answer, not an API failure: print it, then fail.
    let resp = match cl.send(req).await {
        Ok(r) => r,
        Err(e) => match e.downcast::<ApiFailure>() {
            Ok(f) if f.code == "upstream_error" => {
                eprintln!("the invocation failed: {}", f.message);
                return Err(anyhow::anyhow!("{name} failed"));
            }
            Ok(f) => return Err(f.into()),
            Err(e) => return Err(e),
        },
    };
    let text = resp.text().await.unwrap_or_default();
    println!("{text}");
    Ok(())
}

pub async fn dlq(cmd: DlqCommand, c: &ClientArgs) -> Result<()> {
    let cl = client(c)?;
    match cmd {
        DlqCommand::List { name } => {
            let list = cl.get(&format!("/functions/{name}/dlq")).await?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            let items = list.as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                println!("no dead letters for {name}");
                return Ok(());
            }
            println!(
                "{:<40} {:<20} {:>8}  LAST ERROR",
                "ID", "CREATED", "ATTEMPTS"
            );
            for i in items {
                let last = i["errors"]
                    .as_array()
                    .and_then(|e| e.last())
                    .and_then(|e| e["error"].as_str())
                    .unwrap_or("");
                println!(
                    "{:<40} {:<20} {:>8}  {last}",
                    i["id"].as_str().unwrap_or(""),
                    time(i["created_at"].as_i64().unwrap_or(0)),
                    i["errors"].as_array().map(|e| e.len()).unwrap_or(0)
                );
            }
            Ok(())
        }
        DlqCommand::Redrive { name, id } => {
            let body = match &id {
                Some(id) => serde_json::json!({"id": id}),
                None => serde_json::json!({}),
            };
            let v = cl
                .json_post(&format!("/functions/{name}/dlq/redrive"), &body)
                .await?;
            if c.json {
                println!("{v}");
            } else {
                println!("redriven {} dead letter(s) of {name}", v["redriven"]);
            }
            Ok(())
        }
    }
}
