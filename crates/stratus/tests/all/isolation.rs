//! Instance isolation when the server runs as root: a private /tmp, a read-only filesystem, and
//! the `nobody` user when the code folder is readable to it; `STRATUS_ISOLATION=off` turns it
//! off. Not root (or no mount namespaces): the server says isolation is off, and so do we.

use std::os::unix::fs::PermissionsExt;

use crate::harness::{App, Server};

const SERVER: &str = r#"
import http.server, json, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        def writable(path):
            try:
                open(path, "w").close(); os.remove(path); return True
            except OSError:
                return False
        body = json.dumps({
            "uid": os.getuid(),
            "marker": os.path.exists(os.environ["MARKER"]),
            "tmp_writable": writable("/tmp/stratus-probe"),
            "etc_writable": writable("/etc/stratus-probe"),
            "code_readable": os.path.exists("server.py"),
        }).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn app(marker: &std::path::Path) -> App {
    let app = App::fixture("echo");
    app.write("server.py", SERVER);
    // The system interpreter: one installed under /root (pyenv) is not reachable to `nobody`,
    // and an instance that needs it runs as root.
    app.edit_manifest(
        "command = [\"node\", \"server.js\"]",
        &format!("command = [\"{}\", \"server.py\"]", python()),
    );
    app.edit_manifest(
        "GREETING = \"hi\"",
        &format!("MARKER = \"{}\"", marker.display()),
    );
    app
}

fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

#[tokio::test]
async fn instances_get_a_private_tmp_a_read_only_filesystem_and_nobody() {
    // A data dir every user can reach, so the code folder is readable to `nobody`.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = Server::start_in(&tmp.path().join("data"));
    let info_iso = |s: &Server| {
        s.cli(&["info", "echo", "--json"]).ok().json()["limits"]["enforcement"]["isolation"].clone()
    };
    let marker = tmp.path().join("host-marker");
    std::fs::write(&marker, "on the host").unwrap();
    let app = app(&marker);
    s.deploy(&app.dir).ok();
    let iso = info_iso(&s);
    if iso["enabled"] != true {
        assert!(!root() || s.server_log().contains("instance isolation off"));
        eprintln!("skipping: isolation is off on this host: {iso}");
        return;
    }
    assert!(
        s.server_log().contains("instance isolation: read-only"),
        "{}",
        s.server_log()
    );
    let (status, v) = s.get_json("/fn/echo/").await;
    assert_eq!(status, 200, "{v}");
    if python() == "/usr/bin/python3" {
        assert_eq!(v["uid"], 65534, "{v}");
    } else {
        eprintln!("no /usr/bin/python3: not checking the unprivileged user");
    }
    assert_eq!(v["marker"], false, "the host's /tmp is visible: {v}");
    assert_eq!(v["tmp_writable"], true, "{v}");
    assert_eq!(v["etc_writable"], false, "{v}");
    assert_eq!(v["code_readable"], true, "{v}");
    // The host's /tmp is untouched by what the instance wrote into its own.
    assert!(!std::path::Path::new("/tmp/stratus-probe").exists());

    // Code the unprivileged user cannot read: still isolated, but as root (and said so).
    let tmp2 = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp2.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let s2 = Server::start_in(&tmp2.path().join("data"));
    s2.deploy(&app.dir).ok();
    let (_, v) = s2.get_json("/fn/echo/").await;
    assert_eq!(v["uid"], 0, "{v}");
    assert_eq!(v["marker"], false, "{v}");

    // Off: the instance shares the server's view.
    let tmp3 = tempfile::tempdir().unwrap();
    let s3 = Server::start_in_with_env(&tmp3.path().join("data"), &[("STRATUS_ISOLATION", "off")]);
    s3.deploy(&app.dir).ok();
    let (_, v) = s3.get_json("/fn/echo/").await;
    assert_eq!(v["marker"], true, "{v}");
    assert_eq!(v["uid"], 0, "{v}");
    assert_eq!(info_iso(&s3)["enabled"], false);
}
