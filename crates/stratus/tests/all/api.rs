//! The OpenAPI document matches the routes that really exist.

use std::collections::BTreeSet;

use crate::harness::{App, Server, http};

#[tokio::test]
async fn openapi_documents_exactly_the_real_routes() {
    let s = Server::start();
    let app = App::fixture("echo");
    s.deploy(&app.dir).ok();
    let doc: serde_json::Value = http()
        .get(format!("{}/api/v1/openapi.json", s.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch"] {
            if item.get(method).is_some() {
                documented.insert((method.to_string(), path.clone()));
            }
        }
    }
    let registered: BTreeSet<_> = stratus_api::routes().registered().iter().cloned().collect();
    assert_eq!(
        documented, registered,
        "openapi.json and the router disagree"
    );

    // Every documented operation reaches a handler (not the router's fallback or a 405).
    for (method, path) in &documented {
        if path.ends_with("/deploy") || method == "delete" {
            continue; // exercised by the deploy and delete tests
        }
        let url = path
            .replace("{name}", "echo")
            .replace("{version}", "1")
            .replace("{alias}", "latest");
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut req = match url.strip_prefix("/api/v1") {
            Some(rest) => s.api_req(m, rest),
            // Outside the versioned API (`/metrics`).
            None => http().request(m, format!("{}{url}", s.api)),
        };
        if method == "put" {
            req = req.json(&serde_json::json!({"version": 1}));
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}");
        assert!(
            !body.contains("no such API route"),
            "{method} {path} fell through: {body}"
        );
        assert!(status < 500, "{method} {path}: {status} {body}");
    }
    // An unknown route is a JSON 404 with its code.
    let r = s
        .api_req(reqwest::Method::GET, "/nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "route_not_found");
}
