use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use stratus_core::FunctionSpec;

use crate::client::{Client, InvalidInput};

/// Uploads at least this large get a progress bar.
const PROGRESS_FROM: u64 = 4 * 1024 * 1024;

/// Reads and validates `DIR/stratus.toml`, so mistakes are reported before anything is sent.
pub fn manifest(dir: &Path) -> Result<FunctionSpec> {
    stratus_manifest::load_dir(dir).map_err(|e| InvalidInput(e.to_string()).into())
}

/// Runs the manifest's local build step, if any, in `dir`.
pub async fn build(dir: &Path, spec: &FunctionSpec) -> Result<()> {
    let Some(cmd) = &spec.build.command else {
        return Ok(());
    };
    eprintln!("building: {}", cmd.join(" "));
    let status = tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .current_dir(dir)
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .status()
        .await
        .with_context(|| format!("failed to run the build command `{}`", cmd.join(" ")))?;
    if !status.success() {
        bail!(
            "the build command `{}` failed ({status}); nothing was deployed",
            cmd.join(" ")
        );
    }
    Ok(())
}

/// Packs `dir` into a temporary tar.gz (honouring .gitignore and .stratusignore).
pub async fn pack(dir: &Path, show_progress: bool) -> Result<tempfile::NamedTempFile> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let total =
            stratus_artifact::measure(&dir).context("failed to read the folder to deploy")?;
        let bar = progress_bar(
            show_progress && total.bytes >= PROGRESS_FROM,
            total.bytes,
            "packing",
        );
        let file = tempfile::NamedTempFile::new().context("failed to create a temporary file")?;
        let out = std::io::BufWriter::new(file.reopen()?);
        stratus_artifact::pack(&dir, out, |n| bar.set_position(n))
            .context("failed to pack the folder")?;
        bar.finish_and_clear();
        Ok(file)
    })
    .await?
}

fn progress_bar(show: bool, total: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:>9} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Builds, packs and uploads `dir`; returns the API's answer with `elapsed_ms` (the whole
/// command, as the user waits for it) added.
pub async fn deploy(client: &Client, dir: &Path, interactive: bool) -> Result<Value> {
    let started = Instant::now();
    let spec = manifest(dir)?;
    build(dir, &spec).await?;
    let archive = pack(dir, interactive).await?;
    let size = archive.as_file().metadata()?.len();
    let bar = progress_bar(interactive && size >= PROGRESS_FROM, size, "uploading");
    let file = tokio::fs::File::open(archive.path()).await?;
    let progress = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map(move |chunk| {
        if let Ok(c) = &chunk {
            progress.inc(c.len() as u64);
        }
        chunk
    });
    let request = client
        .http()
        .post(client.url("/deploy"))
        .query(&[("function", spec.name.as_str())])
        .header("content-type", "application/gzip")
        .header("content-length", size)
        .body(reqwest::Body::wrap_stream(stream));
    let resp = client.send(request).await;
    bar.finish_and_clear();
    let mut out: Value = resp?
        .json()
        .await
        .context("the API answered with invalid JSON")?;
    out["elapsed_ms"] = Value::from(started.elapsed().as_millis() as u64);
    Ok(out)
}
