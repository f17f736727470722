//! `stratus top`: the global view. Every refresh asks the API for the summary of the last
//! window (the same numbers `GET /api/v1/summary` gives any dashboard) and redraws one table.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::client::Client;
use crate::output::{s, table_string};

fn ms(v: &Value) -> String {
    v.as_f64()
        .map(|m| format!("{m:.1}"))
        .unwrap_or_else(|| "-".into())
}

/// The view as text: one row per function, then the total.
pub fn render(summary: &Value) -> String {
    let row = |f: &Value| {
        vec![
            s(&f["function"]),
            format!("{:.1}", f["rate"].as_f64().unwrap_or(0.0)),
            s(&f["requests"]),
            format!("{:.1}%", 100.0 * f["error_rate"].as_f64().unwrap_or(0.0)),
            ms(&f["p50_ms"]),
            ms(&f["p99_ms"]),
            s(&f["instances"]),
            s(&f["in_flight"]),
            s(&f["cold_starts"]),
            s(&f["throttled"]),
        ]
    };
    let mut rows: Vec<Vec<String>> = summary["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(row)
        .collect();
    let mut total = row(&summary["overall"]);
    total[0] = "TOTAL".into();
    rows.push(total);
    let secs = (summary["until_ms"].as_i64().unwrap_or(0)
        - summary["since_ms"].as_i64().unwrap_or(0)) as f64
        / 1000.0;
    format!(
        "stratus top — last {secs:.0}s\n{}",
        table_string(
            &[
                "FUNCTION",
                "REQ/S",
                "REQS",
                "ERRORS",
                "P50 MS",
                "P99 MS",
                "INSTANCES",
                "IN FLIGHT",
                "COLD",
                "THROTTLED",
            ],
            rows,
        )
    )
}

pub async fn run(
    client: &Client,
    window: &str,
    every: Duration,
    once: bool,
    json: bool,
) -> Result<()> {
    let path = format!("/summary?window={window}");
    loop {
        let summary = client.get(&path).await?;
        if json {
            println!("{summary}");
        } else if once {
            print!("{}", render(&summary));
        } else {
            // Clear the screen and home the cursor, then draw.
            print!("\x1b[2J\x1b[H{}", render(&summary));
        }
        if once {
            return Ok(());
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::time::sleep(every).await;
    }
}
