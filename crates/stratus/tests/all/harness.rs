use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_stratus");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `stratus serve` process on loopback ports, with its own data dir.
pub struct Server {
    child: Option<Child>,
    pub data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub gw: String,
    pub api: String,
    pub log: PathBuf,
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `serve` flags.
    pub fn start_with(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut s = Self::start_in_with(&data, extra);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on an existing data dir (for restart tests).
    pub fn start_in(data: &Path) -> Self {
        Self::start_in_full(data, &[], &[])
    }

    pub fn start_in_with(data: &Path, extra: &[&str]) -> Self {
        Self::start_in_full(data, extra, &[])
    }

    /// Starts a server with extra environment variables (server settings such as
    /// `STRATUS_ISOLATION`).
    pub fn start_in_with_env(data: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_in_full(data, &[], env)
    }

    pub fn start_in_full(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let (gw_port, api_port) = (free_port(), free_port());
        std::fs::create_dir_all(data).unwrap();
        let log = data.with_extension(format!("log-{api_port}"));
        let child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{gw_port}"),
                "--api-listen",
                &format!("127.0.0.1:{api_port}"),
            ])
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let s = Self {
            child: Some(child),
            data: data.to_path_buf(),
            _tmp: None,
            gw: format!("http://127.0.0.1:{gw_port}"),
            api: format!("http://127.0.0.1:{api_port}"),
            log,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = self.api.trim_start_matches("http://").to_string();
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&addr).is_ok()
                && std::net::TcpStream::connect(self.gw.trim_start_matches("http://")).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not start; log:\n{}", self.server_log());
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn cli_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("STRATUS_API", &self.api)
            .env("STRATUS_DATA_DIR", &self.data)
            .env_remove("STRATUS_TOKEN");
        c
    }

    /// Runs a CLI command to completion.
    pub fn cli(&self, args: &[&str]) -> Cli {
        Cli(self.cli_cmd(args).output().unwrap())
    }

    pub fn deploy(&self, dir: &Path) -> Cli {
        self.cli(&["deploy", dir.to_str().unwrap()])
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for the process to exit (at most `within`).
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "server did not exit within {within:?} of SIGTERM; log:\n{}",
                    self.server_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        http()
            .get(format!("{}{path}", self.gw))
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.get(path).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// GET an API path (under `/api/v1`): its status and JSON body (null when not JSON).
    pub async fn api_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .api_req(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub fn api_req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        http()
            .request(method, format!("{}/api/v1{path}", self.api))
            .bearer_auth(self.token())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub struct Cli(pub Output);

impl Cli {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code(),
            0,
            "command failed\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout()))
    }
}

/// A copy of a fixture (or example) folder that a test may edit.
pub struct App {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl App {
    pub fn fixture(name: &str) -> Self {
        Self::copy(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name),
        )
    }

    pub fn example(name: &str) -> Self {
        Self::copy(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples")
                .join(name),
        )
    }

    fn copy(src: &Path) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("app");
        copy_dir(src, &dir);
        Self { _tmp: tmp, dir }
    }

    pub fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    pub fn write(&self, file: &str, contents: &str) {
        std::fs::write(self.dir.join(file), contents).unwrap();
    }

    /// Edits the manifest with a string replacement.
    pub fn edit_manifest(&self, from: &str, to: &str) {
        let p = self.dir.join("stratus.toml");
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.contains(from), "manifest has no {from:?}");
        std::fs::write(p, s.replacen(from, to, 1)).unwrap();
    }

    pub fn append_manifest(&self, extra: &str) {
        let p = self.dir.join("stratus.toml");
        let s = std::fs::read_to_string(&p).unwrap();
        std::fs::write(p, format!("{s}\n{extra}\n")).unwrap();
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "node_modules" || name == ".deps" {
            continue;
        }
        let t = e.file_type().unwrap();
        if t.is_dir() {
            copy_dir(&e.path(), &dst.join(&name));
        } else {
            std::fs::copy(e.path(), dst.join(&name)).unwrap();
        }
    }
}

/// Polls `f` until it returns Some or `within` passes.
pub async fn eventually<T, F, Fut>(within: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}
