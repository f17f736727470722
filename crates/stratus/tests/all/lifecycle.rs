//! Restarts, kills and shutdown: nothing acknowledged is lost, nothing is left running.

use std::time::Duration;

use crate::harness::{App, Server, eventually, pid_alive};

#[tokio::test]
async fn everything_survives_kill_9_and_instances_do_not_outlive_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = Server::start_in(&data);
    let app = App::fixture("echo");
    s.deploy(&app.dir).ok();
    app.edit_manifest("GREETING = \"hi\"", "GREETING = \"two\"");
    s.deploy(&app.dir).ok();
    s.cli(&["alias", "set", "echo", "release", "1"]).ok();
    let (_, body) = s.get_json("/fn/echo/").await;
    let instance_pid = body["pid"].as_u64().unwrap() as u32;
    assert!(pid_alive(instance_pid));

    s.kill9();
    let gone = eventually(Duration::from_secs(5), || async {
        (!pid_alive(instance_pid)).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "instance {instance_pid} outlived a kill -9 of the server"
    );

    let s = Server::start_in(&data);
    let (status, body) = s.get_json("/fn/echo/").await;
    assert_eq!(
        (status, body["version"].as_str(), body["greeting"].as_str()),
        (200, Some("2"), Some("two"))
    );
    let (_, body) = s.get_json("/fn/echo@release/").await;
    assert_eq!(body["version"], "1");
    let history = s
        .cli(&["alias", "history", "echo", "latest", "--json"])
        .ok()
        .json();
    assert_eq!(history.as_array().unwrap().len(), 2);
    // The same token keeps working.
    s.cli(&["list"]).ok();
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests_and_stops_instances() {
    let mut s = Server::start();
    let app = App::fixture("echo");
    s.deploy(&app.dir).ok();
    let (_, body) = s.get_json("/fn/echo/").await;
    let instance_pid = body["pid"].as_u64().unwrap() as u32;

    let url = format!("{}/fn/echo/slow?ms=1500", s.gw);
    let slow = tokio::spawn(async move {
        crate::harness::http()
            .get(url)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || {
        let st = s.terminate(Duration::from_secs(20));
        (st, s)
    });
    let slow_status = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(slow_status, 200, "in-flight request was cut by shutdown");
    let (exit, s) = status.await.unwrap();
    assert!(
        exit.success(),
        "serve exits 0 on SIGTERM: {exit:?}\n{}",
        s.server_log()
    );
    assert!(
        !pid_alive(instance_pid),
        "instances are stopped at shutdown"
    );
    assert!(
        s.server_log().contains("shutting down"),
        "{}",
        s.server_log()
    );
}
