//! The README's "Write a module" is this crate, and it works as the README
//! says: the code shown is `src/main.rs`, and a pair of its processes
//! replicates the module's record from the master to the backup.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_readme_shows_this_module() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let main =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/main.rs")).unwrap();
    let start = readme
        .find("```rust,ignore\n//! A gateway with one module")
        .expect("the README shows src/main.rs in a ```rust,ignore block");
    let block = &readme[start + "```rust,ignore\n".len()..];
    let block = &block[..block.find("```").unwrap()];
    assert_eq!(
        block, main,
        "README.md and examples/startups/src/main.rs differ"
    );
}

#[test]
fn a_pair_of_its_gateways_replicates_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (link, sa, sb) = (port(()), port(()), port(()));
    std::fs::write(d.join("pair.secret"), "a secret shared by both gateways").unwrap();
    std::fs::write(d.join("operator.token"), "operator token of this pair").unwrap();
    for (id, role, link, status) in [
        (
            "gw-a",
            "master",
            format!("listen = \"127.0.0.1:{link}\""),
            sa,
        ),
        ("gw-b", "backup", format!("peer = \"127.0.0.1:{link}\""), sb),
    ] {
        std::fs::write(
            d.join(format!("{id}.toml")),
            format!(
                "[node]\nid = \"{id}\"\nrole = \"{role}\"\ncluster = \"plant-7\"\n[link]\n{link}\n\
                 secret_file = \"pair.secret\"\n[database]\nsqlite = \"{id}.db\"\n[status]\n\
                 listen = \"127.0.0.1:{status}\"\noperator_token_file = \"operator.token\"\n"
            ),
        )
        .unwrap();
    }
    let start = |id: &str| {
        Command::new(env!("CARGO_BIN_EXE_startups"))
            .arg(d.join(format!("{id}.toml")))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut a = start("gw-a");
    let mut b = start("gw-b");
    let (tx, rx) = std::sync::mpsc::channel();
    let out = b.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let t = Instant::now();
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.starts_with("gw-b stored: Added(Startup") => break true,
            Ok(line) => seen.push(line),
            Err(_) if t.elapsed() > Duration::from_secs(30) => break false,
            Err(_) => {}
        }
    };
    for p in [&mut a, &mut b] {
        let _ = p.kill();
        let _ = p.wait();
    }
    assert!(
        found,
        "the backup never printed the master's record; it printed {seen:?}"
    );
}
