//! A real `redis-server` for the cluster tests: started by the test itself on a free
//! port and a Unix socket in a temporary directory (`--save "" --appendonly no`),
//! restartable (with its data, through `SHUTDOWN SAVE`), pausable with `SIGSTOP`, and
//! stopped when its guard drops, also when the test fails. The binary's end-of-run check
//! fails the run if any server is still alive. Without `redis-server` installed the
//! tests fail and say how to install it; they never skip.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Pids of every server started by this binary and not yet stopped.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

const INSTALL: &str =
    "redis-server is not installed: the cluster tests need it (apt-get install -y redis-server)";

/// Fails at once, with the install hint, if `redis-server` cannot be run, or is older
/// than the 7.0 the cluster needs (it would refuse every connection).
pub fn require_redis() {
    let out = Command::new("redis-server")
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success());
    let Some(out) = out else {
        eprintln!("{INSTALL}");
        std::process::exit(101);
    };
    // "Redis server v=7.0.15 sha=...".
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split("v=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next());
    let major = version.and_then(|v| v.split('.').next()?.parse::<u32>().ok());
    if major.is_some_and(|m| m < 7) {
        eprintln!(
            "redis-server {} is older than 7.0, which the cluster tests need (Debian 12 and \
             Ubuntu 24.04 ship 7; elsewhere see https://redis.io/docs/latest/operate/oss_and_stack/install/)",
            version.unwrap_or("")
        );
        std::process::exit(101);
    }
}

/// The end-of-run check: no server may be left running.
pub fn no_server_left() -> Box<dyn FnOnce() -> Result<(), String>> {
    Box::new(|| {
        let left = std::mem::take(&mut *LIVE.lock().unwrap());
        for pid in &left {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("redis-server processes left running: {left:?}"))
        }
    })
}

/// A `redis-server` of one test.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    extra: Vec<String>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server with extra configuration (`--requirepass x`, ...).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = super::common::tempdir("redis");
        let mut s = RedisServer {
            child: None,
            port: free_port(),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let sock = self.socket();
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--unixsocket")
            .arg(&sock)
            .args(["--unixsocketperm", "700", "--daemonize", "no"])
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL} ({e})"));
        LIVE.lock().unwrap().push(child.id());
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = self.raw() {
                let auth = self
                    .extra
                    .iter()
                    .position(|a| a == "--requirepass")
                    .and_then(|i| self.extra.get(i + 1).cloned());
                if let Some(p) = &auth {
                    let _ = c.call(&["AUTH", p]);
                }
                if matches!(c.call(&["PING"]), Ok(Resp::Simple(s)) if s == "PONG") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}: {}",
                self.port,
                std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    pub fn unix_url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// A plain connection for the test's own commands.
    pub fn raw(&self) -> std::io::Result<Raw> {
        let mut raw = raw_at(self.port)?;
        if let Some(i) = self.extra.iter().position(|a| a == "--requirepass") {
            raw.call(&["AUTH", &self.extra[i + 1]])?;
        }
        Ok(raw)
    }

    /// Runs one command on a fresh connection.
    pub fn cmd(&self, args: &[&str]) -> Resp {
        self.raw().unwrap().call(args).unwrap()
    }

    /// Every key whose name starts with `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut c = self.raw().unwrap();
        let mut out = Vec::new();
        let mut cursor = "0".to_string();
        // The prefix literally (a queue's name may hold glob characters).
        let literal: String = prefix
            .chars()
            .flat_map(|c| {
                let escape = matches!(c, '*' | '?' | '[' | ']' | '\\').then_some('\\');
                escape.into_iter().chain([c])
            })
            .collect();
        let pattern = format!("{literal}*");
        loop {
            let r = c
                .call(&["SCAN", &cursor, "MATCH", &pattern, "COUNT", "1000"])
                .unwrap();
            let Resp::Array(parts) = r else {
                panic!("SCAN: {r:?}")
            };
            cursor = parts[0].text();
            if let Resp::Array(keys) = &parts[1] {
                out.extend(keys.iter().map(Resp::text));
            }
            if cursor == "0" {
                return out;
            }
        }
    }

    /// Stops the server keeping its data, and starts it again on the same port.
    pub fn restart(&mut self) {
        self.restart_after(Duration::ZERO);
    }

    /// As [`restart`](Self::restart), leaving the server down for `down` first.
    pub fn restart_after(&mut self, down: Duration) {
        self.stop_keeping_data();
        std::thread::sleep(down);
        self.start_again();
    }

    /// Stops the server, keeping its data for [`start_again`](Self::start_again).
    pub fn stop_keeping_data(&mut self) {
        let _ = self.raw().and_then(|mut c| c.call(&["SHUTDOWN", "SAVE"]));
        self.reap();
    }

    /// Starts the server again on the same port, with the data it kept.
    pub fn start_again(&mut self) {
        self.launch();
    }

    /// Kills the server (`SIGKILL`: its data is gone) and starts an empty one on the same
    /// port.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.launch();
    }

    /// Stops the server (`SIGKILL`: its data is gone) without starting it again.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
        self.reap();
    }

    fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            LIVE.lock().unwrap().retain(|p| *p != c.id());
        }
    }

    /// `SIGSTOP`s the server.
    pub fn pause(&self) {
        signal(self.pid(), "-STOP");
    }

    /// `SIGCONT`s it.
    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            signal(c.id(), "-CONT");
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain connection to the server on `port` of this host (without credentials).
pub fn raw_at(port: u16) -> std::io::Result<Raw> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(Raw {
        r: BufReader::new(s.try_clone()?),
        w: s,
    })
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

impl Resp {
    pub fn text(&self) -> String {
        match self {
            Resp::Simple(s) | Resp::Error(s) => s.clone(),
            Resp::Int(i) => i.to_string(),
            Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Resp::Bulk(None) => String::new(),
            Resp::Array(a) => format!("{a:?}"),
        }
    }

    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(i) => *i,
            other => other.text().parse().unwrap_or(-1),
        }
    }
}

/// A minimal RESP2 connection (the tests talk to Redis without the library under
/// test).
pub struct Raw {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Raw {
    pub fn call(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.call_bytes(&bytes)
    }

    pub fn call_bytes(&mut self, args: &[&[u8]]) -> std::io::Result<Resp> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&out)?;
        self.read()
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut l = String::new();
        self.r.read_line(&mut l)?;
        if l.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(l.trim_end_matches("\r\n").to_string())
    }

    fn read(&mut self) -> std::io::Result<Resp> {
        let l = self.line()?;
        let (kind, rest) = l.split_at(1);
        Ok(match kind {
            "+" => Resp::Simple(rest.into()),
            "-" => Resp::Error(rest.into()),
            ":" => Resp::Int(rest.parse().unwrap_or(0)),
            "$" => {
                let n: i64 = rest.parse().unwrap_or(-1);
                if n < 0 {
                    Resp::Bulk(None)
                } else {
                    let mut b = vec![0; n as usize + 2];
                    self.r.read_exact(&mut b)?;
                    b.truncate(n as usize);
                    Resp::Bulk(Some(b))
                }
            }
            "*" => {
                let n: i64 = rest.parse().unwrap_or(-1);
                let mut v = Vec::new();
                for _ in 0..n.max(0) {
                    v.push(self.read()?);
                }
                Resp::Array(v)
            }
            other => {
                return Err(std::io::Error::other(format!("bad RESP type {other:?}")));
            }
        })
    }
}
