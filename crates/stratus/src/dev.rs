use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use notify::{RecursiveMode, Watcher};

use crate::client::Client;
use crate::{deploy, output};

fn ignores(dir: &Path) -> Gitignore {
    let mut b = GitignoreBuilder::new(dir);
    for f in [".gitignore", stratus_artifact::STRATUSIGNORE] {
        let _ = b.add(dir.join(f));
    }
    b.build().unwrap_or_else(|_| Gitignore::empty())
}

/// Whether a changed path should trigger a redeploy.
fn relevant(dir: &Path, rules: &Gitignore, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(dir) else {
        return false;
    };
    if rel.components().any(|c| c.as_os_str() == ".git") {
        return false;
    }
    !rules
        .matched_path_or_any_parents(rel, path.is_dir())
        .is_ignore()
}

/// Deploys `dir`, then again after each burst of changes (debounced), until interrupted.
pub async fn run(client: &Client, dir: &Path, json: bool) -> Result<()> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot open {}", dir.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            let _ = tx.send(ev.paths);
        }
    })
    .context("cannot watch the folder")?;
    watcher
        .watch(&dir, RecursiveMode::Recursive)
        .context("cannot watch the folder")?;
    eprintln!("watching {} (Ctrl-C to stop)", dir.display());
    loop {
        match deploy::deploy(client, &dir, !json).await {
            Ok(out) => output::deployed(&out, json)?,
            Err(e) => eprintln!("deploy failed: {e:#}"),
        }
        // Wait for a relevant change, then let the burst settle.
        let rules = ignores(&dir);
        loop {
            let paths = tokio::select! {
                p = rx.recv() => p.context("the file watcher stopped")?,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            if paths.iter().any(|p| relevant(&dir, &rules, p)) {
                break;
            }
        }
        loop {
            match tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(_) => break,
            }
        }
        eprintln!("change detected, redeploying");
    }
}
