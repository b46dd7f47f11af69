//! The fleet against a real `nats-server` each test starts on a free port
//! with its own store dir (never a shared server).

mod common;

use std::time::Duration;

use common::*;
use persist_core::Store;
use persist_fleet::sample::{FleetLimit, FleetTag, SiteNote, SiteTagNote};
use persist_fleet::{records, Edge, FleetConfig, Publisher, StatusReader};

const WAIT: Duration = Duration::from_secs(60);

/// `n` central transactions of shared changes (inserts, then updates and
/// deletes among them), each with a site-local change beside it.
fn churn(store: &Store, from: u64, n: u64) {
    for i in from..from + n {
        store
            .write(|tx| {
                match i % 10 {
                    7 if i > 20 => {
                        let mut t = tag(i - 7, 0);
                        t.scan_ms = i as i64;
                        tx.save(&t)?;
                    }
                    9 if i > 20 => {
                        if tx.get::<FleetTag>(tag(i - 11, 0).name)?.is_some() {
                            tx.delete::<FleetTag>(tag(i - 11, 0).name)?;
                        }
                    }
                    _ => {
                        tx.save(&tag(i, 100))?;
                        if i % 4 == 0 {
                            // A child the tag's delete cascades to.
                            tx.save(&FleetLimit {
                                name: format!("limit-{i}"),
                                tag: tag(i, 0).name,
                                high: i as i64,
                            })?;
                        }
                    }
                }
                if i % 3 == 0 {
                    tx.insert(&SiteNote {
                        id: 0,
                        text: format!("central only {i}"),
                    })?;
                }
                Ok(())
            })
            .unwrap();
    }
}

fn edge_config(cfg: &FleetConfig, name: &str) -> FleetConfig {
    cfg.clone().with_edge(name)
}

/// The issue's "one publisher and 20 edge processes on this machine; an
/// edge killed and restarted". Cheap enough for a debug build on two
/// cores: the edges start together and stop together (one by one, each
/// would take up to half a second to notice), and the central load is
/// 350 small transactions, so the cost is 20 x 350 entry applications.
#[test]
fn twenty_edge_processes_converge_and_one_killed_mid_stream_catches_up() {
    const EDGES: usize = 20;
    const COMMITS: u64 = 350;
    let took = std::time::Instant::now();
    let Central {
        dir,
        nats,
        key,
        cfg,
        rt,
        central,
        publisher,
    } = start_central(1, |_| {});
    let names: Vec<String> = (0..EDGES).map(|i| format!("site-{i:02}")).collect();
    let mut edges = spawn_edges(&nats, &key, dir.path(), &names, &[]);
    let started = took.elapsed();
    // The central node commits in bursts while the edges consume.
    let writer = {
        let central = central.clone();
        std::thread::spawn(move || {
            for burst in 0..COMMITS / 25 {
                churn(&central, burst * 25, 25);
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };
    // One edge dies hard in the middle of the stream, once it applied some.
    assert!(edges[1].wait_position(30, WAIT), "{}", edges[1].name);
    edges[1].kill();
    let killed_at = edges[1].position;
    // It comes back 60 entries later, while the stream (most likely) still moves.
    assert!(
        edges[0].wait_position(killed_at + 60, WAIT),
        "{} stuck at {}",
        edges[0].name,
        edges[0].position
    );
    let restarted_at = edges[0].position;
    edges[1] = EdgeProcess::spawn(&nats, &key, dir.path(), &names[1]);
    writer.join().unwrap();
    assert!(rt.block_on(publisher.wait_published(central.position(), WAIT)));
    let st = publisher.status();
    assert!(
        killed_at < st.position,
        "killed at {killed_at}, stream ends at {}: not mid-stream",
        st.position
    );
    for e in &mut edges {
        assert!(
            e.wait_position(st.position, WAIT),
            "{} stuck at {}",
            e.name,
            e.position
        );
        assert_eq!(
            e.digest,
            persist_fleet::wire::digest_hex(st.digest),
            "{}",
            e.name
        );
    }
    let converged = took.elapsed();
    // The central operator view: every edge, agreeing (each writes its
    // status at most every 500 ms).
    let deadline = std::time::Instant::now() + WAIT;
    let view = loop {
        let view = rt.block_on(persist_fleet::fleet_status(&cfg)).unwrap();
        let done = view.len() == EDGES
            && view
                .iter()
                .all(|v| v.status.position == st.position && v.digest_agrees == Some(true));
        if done || std::time::Instant::now() >= deadline {
            break view;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(view.len(), EDGES, "{view:?}");
    for v in &view {
        assert_eq!(v.status.position, st.position, "{v:?}");
        assert_eq!(v.digest_agrees, Some(true), "{v:?}");
    }
    stop_all(&mut edges);
    let want = tags(&central);
    assert!(want.len() > 100);
    for e in &edges {
        let s = open_store(&e.db);
        assert_eq!(tags(&s), want, "{}: shared rows", e.name);
        // Site-local rows stayed where they were written.
        let notes = s.list::<SiteNote>().unwrap();
        assert!(
            notes.iter().all(|n| n.text == "edge started"),
            "{}: {notes:?}",
            e.name
        );
        // The fleet rows went through the edge's own log (its pair link ships it).
        assert!(s.position() > 1, "{}", e.name);
        let c = records::cursor(&s, "test").unwrap().unwrap();
        assert_eq!(c.position as u64, st.position);
    }
    rt.block_on(publisher.stop());
    eprintln!(
        "{EDGES} edge processes, {} fleet entries, one killed at {killed_at} and restarted when \
         another had {restarted_at}: started in {:.2} s, converged at {:.2} s, done in {:.2} s",
        st.position,
        started.as_secs_f64(),
        converged.as_secs_f64(),
        took.elapsed().as_secs_f64()
    );
}

#[test]
fn an_edge_offline_while_many_entries_are_published_catches_up() {
    // FLEET_CATCHUP_ENTRIES=100000 for the size.
    let n: u64 = std::env::var("FLEET_CATCHUP_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path());
    let key = key_file(dir.path(), 2);
    let mut cfg = config(&nats, &key);
    cfg.snapshot_every = n * 2; // no snapshot: the edge must replay the stream
    let rt = runtime();
    let central = open_store(&dir.path().join("central.db"));
    let publisher = rt
        .block_on(Publisher::start(central.clone(), cfg.clone()))
        .unwrap();
    let (edge_store, edge) = start_edge(&rt, &cfg, &dir.path().join("edge.db"), "late");
    churn(&central, 0, 10);
    assert!(rt.block_on(publisher.wait_published(central.position(), WAIT)));
    assert!(rt.block_on(edge.wait_position(publisher.status().position, WAIT)));
    rt.block_on(edge.stop());

    churn(&central, 10, n);
    assert!(rt.block_on(publisher.wait_published(central.position(), Duration::from_secs(600))));
    let target = publisher.status().position;
    let t0 = std::time::Instant::now();
    let edge = rt
        .block_on(Edge::start(edge_store.clone(), edge_config(&cfg, "late")))
        .unwrap();
    assert!(rt.block_on(edge.wait_position(target, Duration::from_secs(600))));
    let took = t0.elapsed();
    eprintln!(
        "catch-up: {} entries in {:.2} s ({:.0} entries/s)",
        target,
        took.as_secs_f64(),
        (target - 11) as f64 / took.as_secs_f64()
    );
    // Nothing was trimmed: a rebase here is the publisher taking the
    // writer's head, published just after a commit its log read already
    // saw, for a store that went back (six in 100,000 entries before).
    assert_eq!(publisher.status().rebases, 0, "{:?}", publisher.status());
    assert_eq!(edge.status().bootstraps, 0, "replayed, not loaded");
    assert_eq!(tags(&edge_store), tags(&central));
    rt.block_on(edge.stop());
    rt.block_on(publisher.stop());
}

#[test]
fn an_edge_behind_retention_and_one_whose_shared_rows_were_changed_load_a_snapshot() {
    let Central {
        dir,
        nats: _nats,
        cfg,
        rt,
        central,
        publisher,
        ..
    } = start_central(3, |cfg| {
        cfg.snapshot_every = 50;
        cfg.keep_snapshots = 1;
    });
    let (edge_store, edge) = start_edge(&rt, &cfg, &dir.path().join("edge.db"), "behind");
    churn(&central, 0, 20);
    assert!(rt.block_on(publisher.wait_published(central.position(), WAIT)));
    assert!(rt.block_on(edge.wait_position(publisher.status().position, WAIT)));
    rt.block_on(edge.stop());
    // The stream moves on and is purged below the newest snapshot.
    churn(&central, 20, 400);
    assert!(rt.block_on(publisher.wait_published(central.position(), WAIT)));
    assert!(publisher.status().snapshots >= 2);
    let edge = rt
        .block_on(Edge::start(edge_store.clone(), edge_config(&cfg, "behind")))
        .unwrap();
    assert!(rt.block_on(edge.wait_position(publisher.status().position, WAIT)));
    assert_eq!(edge.status().bootstraps, 1, "{:?}", edge.status());
    assert_eq!(tags(&edge_store), tags(&central));
    rt.block_on(edge.stop());

    // Shared rows changed behind the fleet's back: found at start, repaired.
    let mut t = tags(&edge_store)[0].clone();
    t.address = "changed locally".into();
    edge_store.update(&t).unwrap();
    churn(&central, 420, 60); // past the next snapshot
    assert!(rt.block_on(publisher.wait_published(central.position(), WAIT)));
    let edge = rt
        .block_on(Edge::start(edge_store.clone(), edge_config(&cfg, "behind")))
        .unwrap();
    assert!(rt.block_on(edge.wait_position(publisher.status().position, WAIT)));
    assert_eq!(tags(&edge_store), tags(&central));
    assert!(edge.status().bootstraps >= 1);
    rt.block_on(edge.stop());
    rt.block_on(publisher.stop());
}

#[test]
fn the_nats_server_restarted_mid_stream_loses_and_repeats_nothing() {
    let Central {
        dir,
        mut nats,
        cfg,
        rt,
        central,
        publisher,
        ..
    } = start_central(4, |_| {});
    let (edge_store, edge) = start_edge(&rt, &cfg, &dir.path().join("edge.db"), "through");
    let writer = {
        let central = central.clone();
        std::thread::spawn(move || {
            for burst in 0..20 {
                churn(&central, burst * 20, 20);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    nats.restart();
    writer.join().unwrap();
    assert!(
        rt.block_on(publisher.wait_published(central.position(), WAIT)),
        "{:?}",
        publisher.status()
    );
    let st = publisher.status();
    assert!(
        rt.block_on(edge.wait_position(st.position, WAIT)),
        "{:?}",
        edge.status()
    );
    assert_eq!(tags(&edge_store), tags(&central));
    // Each central entry with shared changes became exactly one fleet entry.
    let with_shared = central
        .read_log(1, 100_000)
        .unwrap()
        .iter()
        .filter(|e| {
            let body = e.plain_body().unwrap();
            let changes = persist_core::log::decode_body(&body).unwrap();
            changes.iter().any(|c| c.table == "fleet_tag")
        })
        .count() as u64;
    assert_eq!(st.position, with_shared);
    rt.block_on(edge.stop());
    rt.block_on(publisher.stop());
}

#[test]
fn a_forged_message_is_refused_and_the_real_entry_still_arrives() {
    let Central {
        dir,
        nats,
        key: _key,
        cfg,
        rt,
        central,
        publisher,
    } = start_central(5, |_| {});
    let (edge_store, edge) = start_edge(&rt, &cfg, &dir.path().join("edge.db"), "target");
    churn(&central, 0, 5);
    assert!(rt.block_on(publisher.wait_published(central.position(), WAIT)));
    let at = publisher.status().position;
    assert!(rt.block_on(edge.wait_position(at, WAIT)));

    // An account that can publish sends a well-formed entry that would
    // delete every tag, under the next entry's message id, sealed with
    // another key, and a second copy with the real MAC of a different payload.
    let forged_key = persist_fleet::FleetKey::from_file(&key_file(dir.path(), 6)).unwrap();
    let mut body = Vec::new();
    for t in tags(&central) {
        let mut k = Vec::new();
        persist_core::log::encode_key(&persist_core::Value::Text(t.name), &mut k);
        body.push(k);
    }
    let changes: Vec<(&str, persist_core::log::Op, &[u8])> = body
        .iter()
        .map(|k| ("fleet_tag", persist_core::log::Op::Delete, k.as_slice()))
        .collect();
    let entry = persist_fleet::wire::FleetEntry {
        position: at + 1,
        source_position: 999,
        epoch: 9,
        committed_at: 0,
        digest: persist_core::Digest::default(),
        body: persist_fleet::wire::EntryBody::Changes(persist_core::log::encode_body(&changes)),
    };
    let (payload, mac) = persist_fleet::wire::seal_entry(&forged_key, "test", &entry);
    rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("test:{}", at + 1).as_str());
        h.insert(persist_fleet::wire::MAC_HEADER, mac.as_str());
        js.publish_with_headers(cfg.subject(), h, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    });
    let deadline = std::time::Instant::now() + WAIT;
    while edge.status().refused == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "not refused: {:?}",
            edge.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(edge
        .status()
        .last_error
        .unwrap()
        .contains("MAC does not verify"));
    assert_eq!(edge.status().position, at, "nothing applied");
    assert_eq!(tags(&edge_store), tags(&central));

    // The real next entry took its id first? No: the forger did. The
    // publisher sees the duplicate and publishes under another id.
    churn(&central, 5, 5);
    assert!(rt.block_on(publisher.wait_published(central.position(), WAIT)));
    assert!(
        rt.block_on(edge.wait_position(publisher.status().position, WAIT)),
        "{:?}",
        edge.status()
    );
    assert_eq!(tags(&edge_store), tags(&central));
    rt.block_on(edge.stop());
    rt.block_on(publisher.stop());
}

#[test]
fn a_site_override_outlives_central_updates_and_the_digests_still_agree() {
    let Central {
        dir,
        nats: _nats,
        cfg,
        rt,
        central,
        publisher,
        ..
    } = start_central(7, |_| {});
    let (edge_store, edge) = start_edge(&rt, &cfg, &dir.path().join("edge.db"), "ovr");
    central.insert(&tag(1, 100)).unwrap();
    assert!(rt.block_on(publisher.wait_published(central.position(), WAIT)));
    assert!(rt.block_on(edge.wait_position(publisher.status().position, WAIT)));
    let mut local = tag(1, 100);
    local.scan_ms = 5;
    records::set_override(&edge_store, &local).unwrap();
    let mut central_new = tag(1, 100);
    central_new.address = "moved".into();
    central.update(&central_new).unwrap();
    assert!(rt.block_on(publisher.wait_published(central.position(), WAIT)));
    assert!(rt.block_on(edge.wait_position(publisher.status().position, WAIT)));
    assert_eq!(
        edge_store.get::<FleetTag>(tag(1, 0).name).unwrap(),
        Some(central_new.clone())
    );
    assert_eq!(
        records::effective::<FleetTag>(&edge_store, tag(1, 0).name).unwrap(),
        Some(local)
    );
    assert_eq!(
        edge.status().digest,
        persist_fleet::wire::digest_hex(publisher.status().digest)
    );
    records::clear_override::<FleetTag>(&edge_store, tag(1, 0).name).unwrap();
    assert_eq!(
        records::effective::<FleetTag>(&edge_store, tag(1, 0).name).unwrap(),
        Some(central_new)
    );
    rt.block_on(edge.stop());
    rt.block_on(publisher.stop());
}

#[test]
fn a_restarted_publisher_goes_on_from_the_stream_and_cascades_reach_edges() {
    let Central {
        dir,
        nats: _nats,
        cfg,
        rt,
        central,
        publisher,
        ..
    } = start_central(8, |cfg| {
        cfg.snapshot_every = 40;
    });
    let (edge_store, edge) = start_edge(&rt, &cfg, &dir.path().join("edge.db"), "e");
    churn(&central, 0, 100);
    assert!(rt.block_on(publisher.wait_published(central.position(), WAIT)));
    let before = publisher.status();
    assert!(rt.block_on(edge.wait_position(before.position, WAIT)));
    // A site-local note on a shared tag: the fleet's delete of the tag takes it along.
    let doomed = tags(&edge_store)[0].name.clone();
    edge_store
        .insert(&SiteTagNote {
            id: 0,
            tag: doomed.clone(),
            text: "check wiring".into(),
        })
        .unwrap();
    rt.block_on(publisher.stop());

    // Commits while no publisher runs, then a new one: no rebase, positions go on.
    central.delete::<FleetTag>(doomed.clone()).unwrap();
    churn(&central, 100, 30);
    let publisher = rt
        .block_on(Publisher::start(central.clone(), cfg.clone()))
        .unwrap();
    assert!(rt.block_on(publisher.wait_published(central.position(), WAIT)));
    let after = publisher.status();
    assert_eq!(after.rebases, 0, "{after:?}");
    assert!(after.position > before.position);
    assert!(
        rt.block_on(edge.wait_position(after.position, WAIT)),
        "{:?}",
        edge.status()
    );
    assert_eq!(tags(&edge_store), tags(&central));
    assert_eq!(
        edge_store.list::<FleetLimit>().unwrap(),
        central.list::<FleetLimit>().unwrap()
    );
    assert!(edge_store.list::<SiteTagNote>().unwrap().is_empty());
    assert_eq!(
        edge.status().digest,
        persist_fleet::wire::digest_hex(after.digest)
    );
    rt.block_on(edge.stop());
    rt.block_on(publisher.stop());
}

#[test]
fn only_the_master_of_an_edge_pair_consumes() {
    let Central {
        dir,
        nats: _nats,
        cfg,
        rt,
        central,
        publisher,
        ..
    } = start_central(9, |_| {});
    // The pair's backup: its write gate is closed, as the redundancy runtime closes it.
    let backup_store = open_store(&dir.path().join("backup.db"));
    backup_store.set_write_gate(Some("this node is the backup".into()));
    let on_backup = rt
        .block_on(Edge::start(backup_store.clone(), edge_config(&cfg, "pair")))
        .unwrap();
    let master_store = open_store(&dir.path().join("master.db"));
    let on_master = rt
        .block_on(Edge::start(master_store.clone(), edge_config(&cfg, "pair")))
        .unwrap();
    for burst in 0..5 {
        churn(&central, burst * 40, 40);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rt.block_on(publisher.wait_published(central.position(), WAIT)));
    let at = publisher.status().position;
    assert!(
        rt.block_on(on_master.wait_position(at, WAIT)),
        "{:?}",
        on_master.status()
    );
    assert_eq!(tags(&master_store), tags(&central));
    let b = on_backup.status();
    assert_eq!(b.position, 0, "{b:?}");
    assert!(b.last_error.unwrap().contains("not consuming"));
    assert!(tags(&backup_store).is_empty());
    rt.block_on(on_backup.stop());
    rt.block_on(on_master.stop());
    rt.block_on(publisher.stop());
}

/// The central operator surface reads the fleet's status over one kept
/// connection, not a connection per read (per page load), and opens it
/// again after the server restarts.
#[test]
fn the_status_reader_keeps_its_connection_and_reopens_it_after_a_restart() {
    let Central {
        dir,
        mut nats,
        cfg,
        rt,
        central,
        publisher,
        ..
    } = start_central(3, |_| {});
    let (_edge_store, edge) = start_edge(&rt, &cfg, &dir.path().join("edge.db"), "seen");
    churn(&central, 0, 10);
    assert!(rt.block_on(publisher.wait_published(central.position(), WAIT)));
    let target = publisher.status().position;
    assert!(rt.block_on(edge.wait_position(target, WAIT)));

    let reader = StatusReader::new(cfg.clone());
    let sees_edge = |reader: &StatusReader| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Ok(view) = rt.block_on(reader.read()) {
                if view
                    .iter()
                    .any(|v| v.status.edge == "seen" && v.status.position == target)
                {
                    return true;
                }
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(sees_edge(&reader), "the edge's status");
    let before = nats.total_connections();
    for _ in 0..5 {
        assert!(!rt.block_on(reader.read()).unwrap().is_empty());
    }
    assert_eq!(
        nats.total_connections() - before,
        0,
        "five reads over the kept connection"
    );
    // What a read of its own costs, for contrast: a connection each.
    let before = nats.total_connections();
    for _ in 0..2 {
        rt.block_on(persist_fleet::fleet_status(&cfg)).unwrap();
    }
    assert_eq!(nats.total_connections() - before, 2);

    nats.restart();
    assert!(sees_edge(&reader), "read again after the server restarted");
    rt.block_on(edge.stop());
    rt.block_on(publisher.stop());
}
