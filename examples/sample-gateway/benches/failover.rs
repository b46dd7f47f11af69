//! Failover benchmark with real processes (`persist-node` on loopback TCP).
//!
//! `cargo bench -p persist-gateway --bench failover` runs: failover time from SIGKILL of the
//! master to the backup reporting Active, over `PERSIST_FAILOVER_TRIALS`
//! trials (default 20) each with a 1,000 ms and a 300 ms failover timeout and
//! a 100 ms heartbeat (min / median / max); then a sustained full-load run of
//! `PERSIST_SOAK_SECS` seconds (default 60) with a 300 ms timeout, counting
//! false failovers (target 0).

#![allow(missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const NODE: &str = env!("CARGO_BIN_EXE_persist-node");

struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(args: &[String]) -> Proc {
        let mut child = Command::new(NODE)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }
    fn expect(&self, prefix: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) if l.starts_with(prefix) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn args(role: &str, dir: &std::path::Path, timeout_ms: u64, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        role.into(),
        "--db".into(),
        dir.join(format!("{role}.db")).display().to_string(),
        "--secret-file".into(),
        dir.join("secret").display().to_string(),
        "--failover-timeout-ms".into(),
        timeout_ms.to_string(),
        "--heartbeat-ms".into(),
        "100".into(),
        "--startup-allowance-ms".into(),
        "2000".into(),
        "--reconnect-max-ms".into(),
        "200".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn pair(timeout_ms: u64, master_extra: &[&str]) -> (tempfile::TempDir, Proc, Proc) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secret"),
        b"a long shared secret for the pair",
    )
    .unwrap();
    let m = Proc::spawn(&args("master", dir.path(), timeout_ms, master_extra));
    let addr =
        m.expect("LISTENING ", Duration::from_secs(10)).unwrap()["LISTENING ".len()..].to_string();
    let b = Proc::spawn(&args("backup", dir.path(), timeout_ms, &["--peer", &addr]));
    m.expect("ACTIVITY Active", Duration::from_secs(10))
        .expect("master active");
    b.expect("ACTIVITY Cold", Duration::from_secs(10))
        .expect("backup cold");
    (dir, m, b)
}

fn failover_trials(timeout_ms: u64, trials: usize) {
    let mut times = Vec::new();
    for _ in 0..trials {
        let (_dir, mut m, b) = pair(timeout_ms, &[]);
        std::thread::sleep(Duration::from_millis(150));
        let t = Instant::now();
        let _ = m.child.kill();
        let _ = m.child.wait();
        b.expect("ACTIVITY Active", Duration::from_secs(10))
            .expect("backup took over");
        times.push(t.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{:<52} {:>8.1} {:>8.1} {:>8.1}   (bound: timeout + heartbeat = {} ms)",
        format!("failover, timeout {timeout_ms} ms, heartbeat 100 ms, {trials} trials"),
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        timeout_ms + 100
    );
}

fn soak(secs: u64) {
    // Full write load on the master: back-to-back 100-row transactions.
    let (_dir, m, b) = pair(
        300,
        &[
            "--write-txs",
            "100000000",
            "--rows-per-tx",
            "100",
            "--sync-timeout-ms",
            "0",
        ],
    );
    let end = Instant::now() + Duration::from_secs(secs);
    let mut false_failovers = 0;
    let mut commits = 0u64;
    while Instant::now() < end {
        if let Ok(l) = b.lines.recv_timeout(Duration::from_millis(50)) {
            if l.starts_with("ACTIVITY Active") {
                false_failovers += 1;
            }
        }
        while let Ok(l) = m.lines.try_recv() {
            if l.starts_with("COMMITTED") {
                commits += 1;
            }
        }
    }
    println!(
        "{:<52} {:>8}   ({} transactions of 100 rows committed and replicated meanwhile; target 0)",
        format!("false failovers, {secs} s full load, timeout 300 ms"),
        false_failovers,
        commits
    );
}

fn main() {
    let trials = std::env::var("PERSIST_FAILOVER_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let secs = std::env::var("PERSIST_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    println!(
        "persist failover benchmark: persist-node processes on loopback; {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "{:<52} {:>8} {:>8} {:>8}",
        "case (ms)", "min", "median", "max"
    );
    failover_trials(1000, trials);
    failover_trials(300, trials);
    soak(secs);
}
