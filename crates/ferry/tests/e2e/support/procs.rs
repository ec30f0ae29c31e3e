//! Guards for the processes a test starts: the `ferry proxy` under test, real
//! nginx backends and `ferry backend` instances. Each guard kills its process
//! (by pid) and reaps it when dropped, so a failing test leaks nothing.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The binary under test, built by cargo for this test target.
pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Longest wait for a process to be ready or to exit: only there to catch hangs.
const START_LIMIT: Duration = Duration::from_secs(30);

/// A loopback port that was free a moment ago (bind to port 0, then close),
/// never the same twice in this process: the tests run in parallel, and the
/// kernel may hand a port just closed to the next `bind(0)`.
/// For processes that cannot report the port they bound themselves (nginx),
/// and for routers that must know each other's address before starting.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding 127.0.0.1:0")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Waits at most `limit` for `child` to exit.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// Sends `signal` ("HUP", "TERM", ...) to `pid` with kill(1).
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A running `ferry proxy`, started with `--ready-file`.
pub struct Ferry {
    child: Child,
    pub pid: u32,
    /// The config file it runs on (tests edit it before a SIGHUP).
    pub config: PathBuf,
    /// Traffic listeners, in config order, with port 0 resolved.
    pub listeners: Vec<SocketAddr>,
    pub admin: SocketAddr,
    /// `[[passthrough]]` listeners, in config order, with port 0 resolved.
    pub passthrough: Vec<SocketAddr>,
    stderr: PathBuf,
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

impl Ferry {
    /// Writes `config` to `dir/proxy.toml` and starts the router on it.
    pub fn start(dir: &Path, config: &str) -> Ferry {
        let path = dir.join("proxy.toml");
        std::fs::write(&path, config).expect("writing proxy.toml");
        Ferry::start_file(&path)
    }

    /// Starts the router on an existing config file; its output goes to files
    /// next to it (printed when the start fails).
    pub fn start_file(config: &Path) -> Ferry {
        Ferry::start_under(config, &[])
    }

    /// Writes `config` and starts the router with an open-file limit of
    /// `nofile` (soft and hard, so the router cannot raise it), through
    /// util-linux's prlimit, which execs the router in place (same pid).
    #[allow(dead_code)] // used by the abuse suite
    pub fn start_with_nofile(dir: &Path, config: &str, nofile: u64) -> Ferry {
        let path = dir.join("proxy.toml");
        std::fs::write(&path, config).expect("writing proxy.toml");
        let limit = format!("--nofile={nofile}:{nofile}");
        Ferry::start_under(&path, &["prlimit", &limit, "--"])
    }

    /// Starts the router, through `wrapper` (a command that execs its
    /// arguments) when it is not empty.
    fn start_under(config: &Path, wrapper: &[&str]) -> Ferry {
        let dir = config.parent().expect("config file has a directory");
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let ready = dir.join(format!("ready-{run}.json"));
        let stdout = dir.join(format!("ferry-{run}.stdout"));
        let stderr = dir.join(format!("ferry-{run}.stderr"));
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(FERRY);
                c
            }
            None => Command::new(FERRY),
        };
        let child = command
            .args(["proxy", "--grace", "2s", "--config"])
            .arg(config)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("creating stdout file"))
            .stderr(File::create(&stderr).expect("creating stderr file"))
            .spawn()
            .expect("starting ferry proxy");
        let pid = child.id();
        // The guard exists from here on: a panic below still kills the process.
        let mut ferry = Ferry {
            child,
            pid,
            config: config.to_path_buf(),
            listeners: Vec::new(),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            passthrough: Vec::new(),
            stderr,
        };
        let end = Instant::now() + START_LIMIT;
        let info: serde_json::Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break serde_json::from_str(&text).expect("ready file is JSON");
            }
            if let Ok(Some(status)) = ferry.child.try_wait() {
                panic!(
                    "ferry proxy exited ({status}) before it was ready:\n{}",
                    ferry.stderr()
                );
            }
            assert!(
                Instant::now() < end,
                "ferry proxy not ready after {START_LIMIT:?}:\n{}",
                ferry.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(info["pid"].as_u64(), Some(u64::from(pid)), "ready file pid");
        ferry.listeners = info["listeners"]
            .as_array()
            .expect("ready file lists listeners")
            .iter()
            .map(|l| {
                l.as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("listener address")
            })
            .collect();
        ferry.passthrough = info["passthrough"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str().and_then(|s| s.parse().ok()))
            .collect();
        ferry.admin = info["admin"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("ready file names the admin address");
        ferry
    }

    /// The first traffic listener.
    pub fn addr(&self) -> SocketAddr {
        self.listeners[0]
    }

    /// What the router wrote to stderr so far (its log).
    pub fn stderr(&self) -> String {
        read_or_empty(&self.stderr)
    }

    pub fn sighup(&self) {
        signal(self.pid, "HUP");
    }

    /// SIGTERM, then waits for a graceful exit and returns its status.
    pub fn terminate(mut self) -> ExitStatus {
        signal(self.pid, "TERM");
        match wait_exit(&mut self.child, START_LIMIT) {
            Some(status) => status,
            None => panic!("ferry proxy did not stop after SIGTERM:\n{}", self.stderr()),
        }
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        // Kill by pid through the Child handle (a no-op once reaped), then reap.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real nginx: one process (`master_process off`), everything in its own
/// temporary prefix. [`Nginx::start`] answers `NAME PATH X-FORWARDED-FOR`
/// with `X-Backend: NAME`, and `/healthz`; `/files/NAME` serves what
/// [`Nginx::put_file`] wrote; requests are logged to `access.log` there.
/// [`Nginx::run`] serves any `http` block.
pub struct Nginx {
    child: Child,
    pub name: String,
    pub port: u16,
    dir: TempDir,
}

fn nginx_binary() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// A temporary directory for one nginx (its prefix).
pub fn nginx_prefix(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ferry-e2e-nginx-{name}-"))
        .tempdir()
        .expect("creating nginx prefix")
}

impl Nginx {
    /// Its process (nginx runs without a master here: the one worker).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts on a free port.
    pub fn start(name: &str) -> Nginx {
        Nginx::start_on(name, free_port())
    }

    /// Starts on `port` (e.g. the port of an instance stopped earlier).
    pub fn start_on(name: &str, port: u16) -> Nginx {
        let dir = nginx_prefix(name);
        let d = dir.path().display();
        let http = format!(
            r#"log_format e2e '$request_method $request_uri fwd=$http_forwarded xff=$http_x_forwarded_for';
    access_log {d}/access.log e2e;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        location = /healthz {{
            return 200 "ok\n";
        }}
        location /files/ {{
            alias {d}/files/;
        }}
        location / {{
            add_header X-Backend {name} always;
            return 200 "{name} $uri $http_x_forwarded_for\n";
        }}
    }}"#
        );
        Nginx::run(name, port, dir, &http)
    }

    /// Starts nginx in `dir` (its prefix: config, logs, temporary files)
    /// with `http` inside its `http` block (listening on `port`, at
    /// 127.0.0.1), and waits until `port` accepts.
    pub fn run(name: &str, port: u16, dir: TempDir, http: &str) -> Nginx {
        let d = dir.path().display();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
    default_type text/plain;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    {http}
}}
"#
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("writing nginx.conf");
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("stderr")).expect("creating nginx stderr"))
            .spawn()
            .expect("starting nginx (apt-get install nginx-light)");
        let nginx = Nginx {
            child,
            name: name.to_string(),
            port,
            dir,
        };
        nginx.wait_listening();
        nginx
    }

    fn wait_listening(&self) {
        let end = Instant::now() + START_LIMIT;
        while TcpStream::connect(self.addr()).is_err() {
            let diag = || {
                format!(
                    "{}{}",
                    read_or_empty(&self.dir.path().join("stderr")),
                    read_or_empty(&self.dir.path().join("error.log"))
                )
            };
            assert!(
                Instant::now() < end,
                "nginx {} not listening on {} after {START_LIMIT:?}:\n{}",
                self.name,
                self.port,
                diag()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Writes a file nginx serves at `/files/NAME`: `len` bytes of `fill`.
    #[allow(dead_code)] // used by the abuse suite
    pub fn put_file(&self, name: &str, len: usize, fill: u8) {
        let dir = self.dir.path().join("files");
        std::fs::create_dir_all(&dir).expect("creating nginx files/");
        std::fs::write(dir.join(name), vec![fill; len]).expect("writing a file for nginx");
    }

    /// The requests nginx logged so far, as `METHOD URI fwd=FORWARDED xff=X-FORWARDED-FOR`.
    pub fn requests(&self) -> Vec<String> {
        read_or_empty(&self.dir.path().join("access.log"))
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The access log once it has at least `n` lines: nginx writes a line
    /// after the response has gone out, so a client can be faster than it.
    pub fn requests_at_least(&self, n: usize) -> Vec<String> {
        let end = Instant::now() + START_LIMIT;
        loop {
            let seen = self.requests();
            if seen.len() >= n || Instant::now() >= end {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ferry backend`: a lightweight HTTP/1.1 server answering `NAME PATH XFF`
/// with `X-Backend: NAME`. Used where many backends or many requests are needed.
pub struct Backend {
    child: Child,
    pub addr: SocketAddr,
    /// Kept open: the backend prints only its address, but must never write to
    /// a closed pipe.
    _stdout: Option<BufReader<ChildStdout>>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        let mut child = Command::new(FERRY)
            .args(["backend", "--listen", "127.0.0.1:0", "--name", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting ferry backend");
        let stdout = child.stdout.take().expect("piped stdout");
        // The guard exists from here on: a panic below still kills the process.
        let mut backend = Backend {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            _stdout: None,
        };
        // Read the first line on a thread so a silent process cannot hang us.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut out = BufReader::new(stdout);
            let mut line = String::new();
            let _ = out.read_line(&mut line);
            let _ = tx.send((line, out));
        });
        let (line, out) = rx
            .recv_timeout(START_LIMIT)
            .expect("ferry backend printed no address");
        backend.addr = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("ferry backend printed {line:?}, not an address"));
        backend._stdout = Some(out);
        backend
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
