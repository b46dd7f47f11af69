//! `persist-node` processes for the process-level tests: spawn, read their
//! event lines, SIGKILL / SIGSTOP / SIGCONT them.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const NODE: &str = env!("CARGO_BIN_EXE_persist-node");
/// How many of a node's last log lines a failing test prints.
const LOG_LINES: usize = 200;

pub struct Node {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    stdin: Option<ChildStdin>,
    /// The node's log lines (stderr), printed when a test fails holding it.
    log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    pub fn spawn(args: &[&str]) -> Node {
        let mut child = Command::new(NODE)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start persist-node");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = keep.lock().unwrap_or_else(|p| p.into_inner());
                if log.len() == LOG_LINES {
                    log.remove(0);
                }
                log.push(line);
            }
        });
        let stdin = child.stdin.take();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Node {
            child,
            lines,
            stdin,
            log,
        }
    }

    /// Waits for a line starting with `prefix`; returns the rest.
    pub fn expect(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l[prefix.len()..].trim().to_string(),
                Ok(l) => {
                    if !l.starts_with("POSITION") {
                        seen.push(l);
                    }
                }
                Err(e) => panic!(
                    "persist-node never printed {prefix}: {e}; it printed meanwhile: {seen:?}"
                ),
            }
        }
    }

    /// Waits for a line starting with each of `prefixes`, in any order.
    pub fn expect_all(&self, prefixes: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut missing: Vec<&str> = prefixes.to_vec();
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => missing.retain(|p| !l.starts_with(p)),
                Err(e) => panic!("persist-node never printed {missing:?}: {e}"),
            }
        }
    }

    /// SIGKILL: no cleanup, no flush, as a power cut of the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// Sends an operator command on standard input.
    pub fn command(&mut self, cmd: &str) {
        if let Some(i) = self.stdin.as_mut() {
            let _ = writeln!(i, "{cmd}");
            let _ = i.flush();
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            eprintln!(
                "--- persist-node {} log (last {} lines) ---\n{}",
                self.child.id(),
                log.len(),
                log.join("\n")
            );
        }
    }
}

pub struct Pair {
    pub dir: tempfile::TempDir,
}

impl Pair {
    pub fn new() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("secret"),
            b"a long shared secret for the pair",
        )
        .unwrap();
        Pair { dir }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn secret(&self) -> String {
        self.path("secret").display().to_string()
    }
    pub fn master(&self, extra: &[&str]) -> (Node, String) {
        let db = self.path("master.db").display().to_string();
        let mut args = vec!["master", "--db", &db, "--secret-file", &self.secret()]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let node = Node::spawn(&refs);
        let addr = node.expect("LISTENING ");
        (node, addr)
    }
    pub fn backup(&self, master_addr: &str) -> Node {
        self.backup_with(master_addr, &[])
    }

    pub fn backup_with(&self, master_addr: &str, extra: &[&str]) -> Node {
        let db = self.path("backup.db").display().to_string();
        let secret = self.secret();
        let mut args = vec![
            "backup",
            "--db",
            &db,
            "--secret-file",
            &secret,
            "--peer",
            master_addr,
            "--reconnect-max-ms",
            "200",
        ];
        args.extend_from_slice(extra);
        Node::spawn(&args)
    }
}
