//! The bundled examples deploy and answer, their dependencies installed at deploy time; and
//! `stratus dev` redeploys on change.

use std::process::Stdio;
use std::time::Duration;

use crate::harness::{App, Server, eventually};

#[tokio::test]
async fn node_express_and_flask_examples_serve() {
    let s = Server::start();
    for (example, path, expect) in [
        ("node-http", "/fn/hello/", "hi from node"),
        ("express", "/fn/express/", "hello from express"),
        ("flask", "/fn/flask/", "hello from flask"),
    ] {
        let app = App::example(example);
        s.deploy(&app.dir).ok();
        let (status, body) = s.get_json(path).await;
        assert_eq!(status, 200, "{example}: {body}");
        assert_eq!(body["message"], expect, "{example}");
    }
    // Express's manifest route.
    let (status, body) = s.get_json("/api/express/items/42").await;
    assert_eq!((status, body["id"].as_str()), (200, Some("42")));
}

#[tokio::test]
async fn dev_redeploys_on_change() {
    let s = Server::start();
    let app = App::fixture("echo");
    let mut dev = s
        .cli_cmd(&["dev", app.path()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let v1 = eventually(Duration::from_secs(20), || async {
        let (status, body) = s.get_json("/fn/echo/").await;
        (status == 200).then_some(body)
    })
    .await
    .expect("dev deploys at start");
    assert_eq!(v1["greeting"], "hi");
    app.edit_manifest("GREETING = \"hi\"", "GREETING = \"changed\"");
    let v2 = eventually(Duration::from_secs(20), || async {
        let (_, body) = s.get_json("/fn/echo/").await;
        (body["greeting"] == "changed").then_some(body)
    })
    .await;
    let _ = dev.kill();
    let _ = dev.wait();
    assert_eq!(v2.expect("dev redeployed after the change")["version"], "2");
}
