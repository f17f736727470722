//! Bad input and failing functions: a clear error naming the cause, and nothing deployed is
//! disturbed.

use crate::harness::{App, Server, http};

async fn latest_version(s: &Server) -> serde_json::Value {
    s.cli(&["info", "echo", "--json"]).ok().json()["function"]["latest_version"].clone()
}

#[tokio::test]
async fn failed_deploys_change_nothing() {
    let s = Server::start();
    let good = App::fixture("echo");
    s.deploy(&good.dir).ok();

    // A manifest typo: refused locally with file, line and key, exit code 2.
    let typo = App::fixture("echo");
    typo.edit_manifest("[limits]\ntimeout", "[limits]\ntimout");
    let r = s.deploy(&typo.dir);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(
        r.stderr()
            .contains("stratus.toml:9:1: `limits.timout`: unknown key `timout`"),
        "{}",
        r.stderr()
    );

    // A command that does not exist.
    let missing = App::fixture("echo");
    missing.edit_manifest(
        "command = [\"node\", \"server.js\"]",
        "command = [\"no-such-binary-here\"]",
    );
    let r = s.deploy(&missing.dir);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(
        r.stderr().contains("`no-such-binary-here` not found"),
        "{}",
        r.stderr()
    );
    assert!(r.stderr().contains("nothing was changed"), "{}", r.stderr());

    // A process that exits at start: its stderr is quoted.
    let crashing = App::fixture("echo");
    crashing.write(
        "server.js",
        "console.error('boom: missing config DATABASE_URL'); process.exit(3);\n",
    );
    let r = s.deploy(&crashing.dir);
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains("exited with code 3"), "{}", r.stderr());
    assert!(
        r.stderr().contains("boom: missing config DATABASE_URL"),
        "{}",
        r.stderr()
    );

    // A process that never opens its port.
    let deaf = App::fixture("echo");
    deaf.write(
        "server.js",
        "console.log('I listen on nothing'); setInterval(() => {}, 1000);\n",
    );
    deaf.append_manifest("[health]\nstartup_timeout = \"4s\"");
    let r = s.deploy(&deaf.dir);
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains("did not open port"), "{}", r.stderr());
    assert!(r.stderr().contains("I listen on nothing"), "{}", r.stderr());

    // Through all of it, version 1 kept serving and latest never moved.
    assert_eq!(latest_version(&s).await, 1);
    let (status, body) = s.get_json("/fn/echo/").await;
    assert_eq!((status, body["version"].as_str()), (200, Some("1")));
    let versions = s.cli(&["versions", "echo", "--json"]).ok().json();
    assert_eq!(
        versions.as_array().unwrap().len(),
        1,
        "failed deploys create no version"
    );
}

fn targz(entries: &[(&str, &[u8])], raw_name: Option<&str>) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    if let Some(name) = raw_name {
        // tar refuses `..` through its safe API, so write the name bytes directly.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(3);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, &b"bad"[..]).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

#[tokio::test]
async fn hostile_or_broken_uploads_are_refused() {
    let s = Server::start();
    let manifest: &[u8] =
        b"name = \"evil\"\nruntime = \"process\"\ncommand = [\"node\", \"x.js\"]\n";
    let post = |body: Vec<u8>| {
        s.api_req(reqwest::Method::POST, "/deploy")
            .body(body)
            .send()
    };

    let r = post(targz(&[("stratus.toml", manifest)], Some("../escape.txt")))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_archive");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("`..`"),
        "{body}"
    );

    let r = post(targz(&[("stratus.toml", manifest)], Some("/etc/evil")))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = post(b"this is not an archive".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a gzip-compressed tar"),
        "{body}"
    );

    let r = post(targz(&[("server.js", b"x")], None)).await.unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_manifest", "{body}");

    let r = post(targz(
        &[("stratus.toml", b"name = \"evil\"\nruntim = 1\n")],
        None,
    ))
    .await
    .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_manifest");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stratus.toml:2:1"),
        "{body}"
    );

    // Nothing was created by any of it.
    let list: serde_json::Value = s
        .api_req(reqwest::Method::GET, "/functions")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, serde_json::json!([]));
    assert!(!s.data.join("escape.txt").exists() && !s.data.join("code/escape.txt").exists());
}

#[tokio::test]
async fn auth_and_connection_errors_have_their_exit_codes() {
    let s = Server::start();
    // No token: 401 from the API, exit code 6 from the CLI.
    let r = http()
        .get(format!("{}/api/v1/functions", s.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let out = s
        .cli_cmd(&["list"])
        .env("STRATUS_TOKEN", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    // Nobody listening: exit code 5 with a hint.
    let out = s
        .cli_cmd(&["list"])
        .env("STRATUS_API", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `stratus serve` running?"));
    // Bad alias input: 400 / exit 2, nothing changed.
    let app = App::fixture("echo");
    s.deploy(&app.dir).ok();
    let r = s.cli(&["alias", "set", "echo", "release", "9"]);
    assert_eq!(r.code(), 3, "{}", r.stderr());
    let r = s.cli(&["alias", "set", "echo", "Bad!", "1"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    let aliases = s.cli(&["alias", "list", "echo", "--json"]).ok().json();
    assert_eq!(aliases.as_array().unwrap().len(), 1);
}
