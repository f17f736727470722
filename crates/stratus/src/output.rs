//! Human output (aligned tables) and `--json` output of the client commands.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use serde_json::Value;

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn time(ms: &Value) -> String {
    match ms.as_u64() {
        Some(ms) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        None => "-".into(),
    }
}

fn size(b: &Value) -> String {
    let b = b.as_u64().unwrap_or(0) as f64;
    match b {
        b if b >= 1024.0 * 1024.0 => format!("{:.1} MiB", b / 1024.0 / 1024.0),
        b if b >= 1024.0 => format!("{:.1} KiB", b / 1024.0),
        b => format!("{b} B"),
    }
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

pub fn deployed(out: &Value, as_json: bool) -> Result<()> {
    if as_json {
        return json(out);
    }
    let secs = out["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
    let aliases: Vec<String> = items(&out["aliases"]).iter().map(s).collect();
    println!(
        "deployed {} version {} (alias {}) in {secs:.1}s",
        s(&out["function"]),
        s(&out["version"]),
        aliases.join(", ")
    );
    Ok(())
}

pub fn list(v: &Value, as_json: bool) -> Result<()> {
    if as_json {
        return json(v);
    }
    table(
        &["NAME", "LATEST", "VERSIONS", "UPDATED"],
        items(v)
            .iter()
            .map(|f| {
                vec![
                    s(&f["name"]),
                    s(&f["latest_version"]),
                    s(&f["version_count"]),
                    time(&f["updated_at"]),
                ]
            })
            .collect(),
    );
    Ok(())
}

pub fn info(v: &Value, as_json: bool) -> Result<()> {
    if as_json {
        return json(v);
    }
    let f = &v["function"];
    println!("function  {}", s(&f["name"]));
    println!("created   {}", time(&f["created_at"]));
    println!("updated   {}", time(&f["updated_at"]));
    println!();
    aliases(&v["aliases"], false)?;
    println!();
    table(
        &["VERSION", "RUNTIME", "CREATED", "SIZE", "ARTIFACT"],
        items(&v["versions"])
            .iter()
            .map(|x| {
                vec![
                    s(&x["number"]),
                    s(&x["runtime"]),
                    time(&x["created_at"]),
                    size(&x["artifact_size"]),
                    s(&x["artifact"]).chars().take(19).collect(),
                ]
            })
            .collect(),
    );
    println!();
    let mut rows = Vec::new();
    for p in items(&v["pools"]) {
        for i in items(&p["instances"]) {
            rows.push(vec![
                s(&p["version"]),
                s(&i["id"]),
                s(&i["state"]),
                s(&i["in_flight"]),
                s(&i["served"]),
                time(&i["started_at"]),
            ]);
        }
        if p["starting"].as_u64().unwrap_or(0) > 0 {
            rows.push(vec![
                s(&p["version"]),
                "-".into(),
                format!("starting x{}", s(&p["starting"])),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
    }
    if rows.is_empty() {
        println!("no instances running (they start on the first request)");
    } else {
        table(
            &[
                "VERSION",
                "INSTANCE",
                "STATE",
                "IN-FLIGHT",
                "SERVED",
                "STARTED",
            ],
            rows,
        );
    }
    for p in items(&v["pools"]) {
        if let Some(e) = p["last_error"].as_str() {
            println!("version {} last error: {e}", s(&p["version"]));
        }
    }
    Ok(())
}

pub fn versions(versions: &Value, aliases: &Value, as_json: bool) -> Result<()> {
    if as_json {
        return json(versions);
    }
    table(
        &["VERSION", "CREATED", "SIZE", "ALIASES", "ARTIFACT"],
        items(versions)
            .iter()
            .map(|v| {
                let names: Vec<String> = items(aliases)
                    .iter()
                    .filter(|a| a["version"] == v["number"])
                    .map(|a| s(&a["name"]))
                    .collect();
                vec![
                    s(&v["number"]),
                    time(&v["created_at"]),
                    size(&v["artifact_size"]),
                    names.join(","),
                    s(&v["artifact"]).chars().take(19).collect(),
                ]
            })
            .collect(),
    );
    Ok(())
}

pub fn aliases(v: &Value, as_json: bool) -> Result<()> {
    if as_json {
        return json(v);
    }
    table(
        &["ALIAS", "VERSION", "UPDATED"],
        items(v)
            .iter()
            .map(|a| vec![s(&a["name"]), s(&a["version"]), time(&a["updated_at"])])
            .collect(),
    );
    Ok(())
}

pub fn history(v: &Value, as_json: bool) -> Result<()> {
    if as_json {
        return json(v);
    }
    table(
        &["WHEN", "FROM", "TO", "REASON", "BY"],
        items(v)
            .iter()
            .map(|c| {
                vec![
                    time(&c["at"]),
                    s(&c["from"]),
                    s(&c["to"]),
                    s(&c["reason"]),
                    s(&c["actor"]),
                ]
            })
            .collect(),
    );
    Ok(())
}

pub fn alias_moved(rec: &Value, verb: &str, as_json: bool) -> Result<()> {
    if as_json {
        return json(rec);
    }
    println!(
        "{verb} {} {} -> version {}",
        s(&rec["function"]),
        s(&rec["name"]),
        s(&rec["version"])
    );
    Ok(())
}

pub fn log_line(v: &Value) -> String {
    let at = v["at"]
        .as_u64()
        .map(|ms| {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        })
        .unwrap_or_default();
    format!(
        "{at} v{} {} {:<6} {}",
        s(&v["version"]),
        s(&v["instance"]),
        s(&v["stream"]),
        s(&v["line"])
    )
}
