//! The user story: deploy, versions, aliases, rollback, list/info/versions/logs/delete.

use std::time::Duration;

use crate::harness::{App, Server, eventually};

#[tokio::test]
async fn deploy_versions_aliases_and_rollback() {
    let s = Server::start();
    let app = App::fixture("echo");

    let out = s.deploy(&app.dir);
    out.ok();
    let line = out.stdout();
    assert!(
        line.starts_with("deployed echo version 1 (alias latest) in "),
        "{line}"
    );

    let (status, body) = s.get_json("/fn/echo/some/path?q=1").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["path"], "/some/path?q=1",
        "the function sees the path after the prefix"
    );
    assert_eq!(body["headers"]["x-forwarded-prefix"], "/fn/echo");
    assert_eq!(body["version"], "1");
    assert_eq!(body["greeting"], "hi");

    // A second deploy with a change: version 2, latest moves.
    app.edit_manifest("GREETING = \"hi\"", "GREETING = \"hello\"");
    assert!(s.deploy(&app.dir).ok().stdout().contains("version 2"));
    let (_, body) = s.get_json("/fn/echo/").await;
    assert_eq!(
        (body["version"].as_str(), body["greeting"].as_str()),
        (Some("2"), Some("hello"))
    );

    // release -> 1, served by tag URL; versions are addressable directly too.
    s.cli(&["alias", "set", "echo", "release", "1"]).ok();
    let (_, body) = s.get_json("/fn/echo@release/").await;
    assert_eq!(body["version"], "1");
    assert_eq!(body["headers"]["x-forwarded-prefix"], "/fn/echo@release");
    let (_, body) = s.get_json("/fn/echo@2/").await;
    assert_eq!(body["version"], "2");
    let r = s.get("/fn/echo@1/").await;
    assert_eq!(r.headers()["x-stratus-version"], "1");

    // Rollback latest: back to 1, and recorded.
    s.cli(&["rollback", "echo"]).ok();
    let (_, body) = s.get_json("/fn/echo/").await;
    assert_eq!(body["version"], "1");
    let history = s
        .cli(&["alias", "history", "echo", "latest", "--json"])
        .ok()
        .json();
    let reasons: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasons, ["deploy", "deploy", "rollback"]);
    // No more history: refused, exit code 4, nothing changed.
    let r = s.cli(&["rollback", "echo"]);
    assert_eq!(r.code(), 4, "{}", r.stderr());
    assert!(r.stderr().contains("no earlier target"), "{}", r.stderr());

    // Listing commands.
    let list = s.cli(&["list"]).ok().stdout();
    assert!(list.lines().next().unwrap().starts_with("NAME"), "{list}");
    assert!(list.contains("echo"), "{list}");
    let info = s.cli(&["info", "echo", "--json"]).ok().json();
    assert_eq!(info["function"]["latest_version"], 1);
    assert_eq!(info["versions"].as_array().unwrap().len(), 2);
    let versions = s.cli(&["versions", "echo"]).ok().stdout();
    assert!(
        versions.contains("latest,release") || versions.contains("release"),
        "{versions}"
    );

    // A version in use cannot be deleted; an unused one can.
    let r = s.cli(&["delete", "echo", "--version", "1"]);
    assert_eq!(r.code(), 4);
    assert!(r.stderr().contains("in use by alias"), "{}", r.stderr());
    s.cli(&["delete", "echo", "--version", "2"]).ok();
    assert_eq!(s.get("/fn/echo@2/").await.status(), 404);

    // Logs: the instance's stdout was captured with function, version and instance.
    let logs = eventually(Duration::from_secs(5), || async {
        let out = s.cli(&["logs", "echo", "--json"]).ok().stdout();
        out.contains("echo listening on").then_some(out)
    })
    .await
    .expect("instance output reaches the logs");
    let first: serde_json::Value =
        serde_json::from_str(logs.lines().find(|l| l.contains("echo listening")).unwrap()).unwrap();
    assert_eq!(first["function"], "echo");
    assert_eq!(first["stream"], "stdout");
    assert!(first["instance"].as_str().unwrap().starts_with("echo-v"));

    // Delete the function: gone from the gateway and the API.
    s.cli(&["delete", "echo"]).ok();
    let (status, body) = s.get_json("/fn/echo/").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "function_not_found");
    assert_eq!(s.cli(&["info", "echo"]).code(), 3);
}

#[tokio::test]
async fn identical_content_is_stored_once() {
    let s = Server::start();
    let app = App::fixture("echo");
    let first = s.cli(&["deploy", app.path(), "--json"]).ok().json();
    let second = s.cli(&["deploy", app.path(), "--json"]).ok().json();
    assert_eq!(first["artifact"], second["artifact"]);
    assert_eq!(first["deduplicated"], false);
    assert_eq!(second["deduplicated"], true);
    assert_eq!(second["version"], 2, "still a new immutable version");
    let blobs = walk_files(&s.data.join("blobs/sha256"));
    assert_eq!(blobs, 1, "one blob for identical content");
}

fn walk_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test]
async fn ignored_files_are_not_deployed() {
    let s = Server::start();
    let app = App::fixture("echo");
    app.write(".gitignore", "secret.txt\n");
    app.write(".stratusignore", "big/\n");
    app.write("secret.txt", "no");
    std::fs::create_dir_all(app.dir.join("big")).unwrap();
    app.write("big/blob.bin", "x");
    app.write("kept.txt", "yes");
    let out = s.cli(&["deploy", app.path(), "--json"]).ok().json();
    let digest = out["artifact"].as_str().unwrap().replace(':', "-");
    let code = s.data.join("code").join(digest);
    assert!(code.join("kept.txt").exists());
    assert!(code.join("server.js").exists());
    assert!(!code.join("secret.txt").exists(), ".gitignore honoured");
    assert!(!code.join("big").exists(), ".stratusignore honoured");
}

#[tokio::test]
async fn manifest_routes_serve_their_alias() {
    let s = Server::start();
    let app = App::fixture("echo");
    app.append_manifest("[[routes]]\npath = \"/api/echo\"\nalias = \"release\"");
    s.deploy(&app.dir).ok();
    // The route's alias does not exist yet.
    let (status, body) = s.get_json("/api/echo/x").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("alias_not_found"))
    );
    s.cli(&["alias", "set", "echo", "release", "1"]).ok();
    let (status, body) = s.get_json("/api/echo/x?y=2").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["path"], "/api/echo/x?y=2",
        "manifest routes pass the path through"
    );
    assert_eq!(s.get("/api/echoes").await.status(), 404, "segment boundary");

    // Another function cannot take the same route.
    let other = App::fixture("echo");
    other.edit_manifest("name = \"echo\"", "name = \"other\"");
    other.append_manifest("[[routes]]\npath = \"/api/echo\"");
    let r = s.deploy(&other.dir);
    assert_eq!(r.code(), 4, "{}", r.stderr());
    assert!(
        r.stderr().contains("already served by function `echo`"),
        "{}",
        r.stderr()
    );
}
