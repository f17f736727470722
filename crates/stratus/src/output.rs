//! Human output (aligned tables) and `--json` output of the client commands.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use serde_json::Value;

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    print!("{}", table_string(headers, rows));
}

/// An aligned table as text, header first.
pub fn table_string(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut out = String::new();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(s.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
    out
}

fn json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn s(v: &Value) -> String {
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
                // An instance serving nothing is out of the serving CPU class; say which.
                match i["cpu_class"].as_str() {
                    Some(c @ ("background" | "parked")) => format!("{} ({c})", s(&i["state"])),
                    _ => s(&i["state"]),
                },
                s(&i["in_flight"]),
                s(&i["served"]),
                i["cpu_cores"]
                    .as_f64()
                    .map_or("-".into(), |c| format!("{c:.2}")),
                if i["memory_bytes"].is_u64() {
                    size(&i["memory_bytes"])
                } else {
                    "-".into()
                },
                time(&i["started_at"]),
            ]);
        }
        if p["starting"].as_u64().unwrap_or(0) > 0 {
            let mut row = vec![
                s(&p["version"]),
                "-".into(),
                format!("starting x{}", s(&p["starting"])),
            ];
            row.extend(std::iter::repeat_n("-".to_string(), 5));
            rows.push(row);
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
                "CPU",
                "MEMORY",
                "STARTED",
            ],
            rows,
        );
    }
    for p in items(&v["pools"]) {
        let ready = items(&p["instances"])
            .iter()
            .filter(|i| i["state"] == "ready")
            .count();
        println!(
            "version {}: {ready} ready, {} starting, {} waiting, desired {}{}",
            s(&p["version"]),
            s(&p["starting"]),
            s(&p["waiting"]),
            s(&p["desired"]),
            if p["panic"] == true {
                " (panic: a burst)"
            } else {
                ""
            }
        );
        let f = &p["floor"];
        if f.is_object() {
            let mut line = format!(
                "  floor {} (min {}, provisioned {}",
                s(&f["effective"]),
                s(&f["min"]),
                s(&f["provisioned"])
            );
            let e = &f["schedule"];
            if e.is_object() {
                line.push_str(&format!(
                    " by schedule \"{}\" ({}) since {}",
                    s(&e["cron"]),
                    s(&e["timezone"]),
                    time(&e["since"])
                ));
            }
            line.push(')');
            let n = &f["next"];
            if n.is_object() {
                line.push_str(&format!(
                    "; provisioned {} from {}",
                    s(&n["provisioned"]),
                    time(&n["at"])
                ));
            }
            println!("{line}");
        }
        for r in items(&p["rules"]) {
            println!("  rule {}", s(&r["reason"]));
        }
        for e in items(&p["scale_events"]) {
            println!(
                "  {}  {} -> {}  {}",
                time(&e["at"]),
                s(&e["from"]),
                s(&e["to"]),
                s(&e["reason"])
            );
        }
        if let Some(e) = p["last_error"].as_str() {
            println!("version {} last error: {e}", s(&p["version"]));
        }
        let x = &p["last_exit"];
        if x.is_object() {
            let n = x["crash_loop"].as_u64().unwrap_or(0);
            println!(
                "version {} last exit: {} {} at {}{} ({} crashes, {} out of memory, {} timeouts)",
                s(&p["version"]),
                s(&x["instance"]),
                s(&x["reason"]).replace('_', " "),
                time(&x["at"]),
                if n >= 3 {
                    format!(", crash loop ({n} quick exits in a row)")
                } else {
                    String::new()
                },
                s(&p["crashes"]),
                s(&p["oom_kills"]),
                s(&p["timeouts"]),
            );
        }
    }
    let l = &v["limits"];
    let e = &l["enforcement"];
    if e.is_object() {
        let set = |v: &Value, show: &dyn Fn(&Value) -> String| {
            if v.is_null() {
                "unlimited".to_string()
            } else {
                show(v)
            }
        };
        println!(
            "limits: memory {}, cpu {}, pids {} (enforced by {})",
            set(&l["memory_bytes"], &|v| size(v)),
            set(&l["cpu"], &|v| format!("{} cores", s(v))),
            set(&l["pids"], &|v| s(v)),
            s(&e["mechanism"])
        );
        for k in ["memory", "cpu", "pids", "stop", "usage"] {
            println!("  {k}: {}", s(&e[k]));
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
        &["ALIAS", "TARGET", "UPDATED"],
        items(v)
            .iter()
            .map(|a| vec![s(&a["name"]), policy(&a["policy"]), time(&a["updated_at"])])
            .collect(),
    );
    Ok(())
}

pub fn history(v: &Value, as_json: bool) -> Result<()> {
    if as_json {
        return json(v);
    }
    let from = |c: &Value| {
        if c["from_policy"].is_null() {
            "-".to_string()
        } else {
            policy(&c["from_policy"])
        }
    };
    table(
        &["WHEN", "FROM", "TO", "REASON", "BY", "NOTE"],
        items(v)
            .iter()
            .map(|c| {
                vec![
                    time(&c["at"]),
                    from(c),
                    policy(&c["to_policy"]),
                    s(&c["reason"]),
                    s(&c["actor"]),
                    c["note"].as_str().unwrap_or("").to_string(),
                ]
            })
            .collect(),
    );
    Ok(())
}

/// A traffic policy in the CLI's own syntax: `3`, `3=90 4=10`, plus rules and shadow.
pub fn policy(p: &Value) -> String {
    let weights = items(&p["weights"]);
    let mut out = if weights.len() == 1 {
        s(&weights[0]["version"])
    } else {
        weights
            .iter()
            .map(|w| format!("{}={}", s(&w["version"]), s(&w["weight"])))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let rules = items(&p["rules"]).len();
    if rules > 0 {
        out.push_str(&format!(
            " +{rules} rule{}",
            if rules == 1 { "" } else { "s" }
        ));
    }
    if p["sticky"].is_object() {
        out.push_str(&format!(" sticky:{}", s(&p["sticky"]["name"])));
    }
    if p["shadow"].is_object() {
        out.push_str(&format!(
            " shadow:{}@{}%",
            s(&p["shadow"]["version"]),
            s(&p["shadow"]["percent"])
        ));
    }
    out
}

pub fn alias_moved(rec: &Value, verb: &str, as_json: bool) -> Result<()> {
    if as_json {
        return json(rec);
    }
    println!(
        "{verb} {} {} -> {}",
        s(&rec["function"]),
        s(&rec["name"]),
        policy(&rec["policy"])
    );
    Ok(())
}

pub fn shadow(v: &Value, as_json: bool) -> Result<()> {
    if as_json {
        return json(v);
    }
    if v["shadow"].is_null() {
        println!(
            "no shadow configured (set one with `stratus alias set NAME ALIAS V --shadow VERSION:PERCENT`)"
        );
    }
    table(
        &[
            "SHADOW",
            "MIRRORED",
            "DROPPED",
            "ERRORS",
            "STATUS =/!=",
            "BODY =/!=",
            "PRIMARY p50/p99",
            "MIRROR p50/p99",
        ],
        items(&v["results"])
            .iter()
            .map(|r| {
                vec![
                    s(&r["shadow_version"]),
                    s(&r["mirrored"]),
                    s(&r["dropped"]),
                    s(&r["mirror_errors"]),
                    format!("{}/{}", s(&r["status_matches"]), s(&r["status_mismatches"])),
                    format!("{}/{}", s(&r["body_matches"]), s(&r["body_mismatches"])),
                    format!("{}/{} ms", s(&r["primary_p50_ms"]), s(&r["primary_p99_ms"])),
                    format!("{}/{} ms", s(&r["mirror_p50_ms"]), s(&r["mirror_p99_ms"])),
                ]
            })
            .collect(),
    );
    Ok(())
}

pub fn release_started(r: &Value, as_json: bool) -> Result<()> {
    if as_json {
        return json(r);
    }
    let last = items(&r["events"])
        .last()
        .map(|e| s(&e["message"]))
        .unwrap_or_default();
    println!(
        "release {} of {} ({}): {last}",
        s(&r["id"]),
        s(&r["function"]),
        s(&r["state"])
    );
    Ok(())
}

pub fn releases(v: &Value, as_json: bool) -> Result<()> {
    if as_json {
        return json(v);
    }
    for r in items(v) {
        let steps: Vec<String> = items(&r["steps"]).iter().map(s).collect();
        println!(
            "release {}  {}  {} {} -> {}  steps {}  state {}",
            s(&r["id"]),
            s(&r["alias"]),
            s(&r["function"]),
            s(&r["stable"]),
            s(&r["target"]),
            steps.join(","),
            s(&r["state"])
        );
        for e in items(&r["events"]) {
            println!(
                "  {}  {:>3}%  {}",
                time(&e["at"]),
                s(&e["weight"]),
                s(&e["message"])
            );
        }
    }
    Ok(())
}

fn time_ms(v: &Value) -> String {
    v.as_u64()
        .map(|ms| {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        })
        .unwrap_or_default()
}

/// One entry of a log stream: a request record (`kind: request`) or a line.
pub fn log_line(v: &Value) -> String {
    if v["kind"] == "request" {
        let ms = |k: &str| v[k].as_u64().map(|us| us as f64 / 1000.0);
        let mut out = format!(
            "{} v{} {} {} {} {} {:.1}ms req={} trace={}",
            time_ms(&v["start_ms"]),
            s(&v["version"]),
            s(&v["trigger"]),
            s(&v["method"]),
            s(&v["path"]),
            s(&v["status"]),
            ms("duration_us").unwrap_or_default(),
            s(&v["request_id"]),
            s(&v["trace_id"]),
        );
        if let Some(q) = ms("queue_us").filter(|q| *q >= 0.1) {
            out.push_str(&format!(" queued={q:.1}ms"));
        }
        if let Some(i) = ms("init_us") {
            out.push_str(&format!(" cold={i:.1}ms"));
        }
        if let Some(e) = v["error"].as_str() {
            out.push_str(&format!(" error={e}"));
        }
        return out;
    }
    let rid = v["request_id"]
        .as_str()
        .map(|r| format!(" [{}]", &r[..r.len().min(8)]))
        .unwrap_or_default();
    format!(
        "{} v{} {} {:<6}{rid} {}",
        time_ms(&v["at"]),
        s(&v["version"]),
        s(&v["instance"]),
        s(&v["stream"]),
        s(&v["line"])
    )
}
