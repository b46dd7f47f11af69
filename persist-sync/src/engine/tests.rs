//! The node core driven by hand: two cores wired back to back, with their
//! store operations run by real stores.
//!
//! Below: a master core alone, facing clients that never authenticate.

use std::time::Duration;

use persist_core::Claim;

use super::master::MAX_UNAUTHENTICATED;
use super::{ConnId, Input, NodeCore, NodeParams, Output, Role};
use crate::auth::{AuthConfig, Handshake, HandshakeStep, Secret};
use crate::clock::Time;
use crate::protocol::{LinkRole, Message};
use crate::worker::SyncConfig;

const SECRET: &[u8] = b"the pair's shared secret";

fn auth(node: &str, secret: &[u8]) -> AuthConfig {
    AuthConfig::new("plant", node, Secret::new(secret).unwrap()).unwrap()
}

fn master() -> NodeCore {
    let mut seed = 0u8;
    let mut core = NodeCore::new(
        NodeParams {
            role: Role::Master,
            sync: SyncConfig::new(auth("gw-a", SECRET)),
            redundancy: None,
            witness: None,
            claim: Claim::default(),
            position: 0,
            schema: 0,
            history_id: "history".into(),
            runtime: None,
            history: false,
            probe_every: None,
            nonces: Box::new(move || {
                seed = seed.wrapping_add(1);
                [seed; 32]
            }),
        },
        Time::ZERO,
    );
    core.step(Time::ZERO, Input::Tick);
    core
}

fn accept(core: &mut NodeCore, now: Time, conn: ConnId) -> Vec<Output> {
    let addr = format!("192.0.2.7:{}", 40_000 + conn % 20_000);
    core.step(now, Input::Accepted { conn, addr })
}

fn closed(out: &[Output]) -> Vec<ConnId> {
    out.iter()
        .filter_map(|o| match o {
            Output::Close { conn } => Some(*conn),
            _ => None,
        })
        .collect()
}

fn messages_to(out: &[Output], to: ConnId) -> Vec<Message> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { conn, msg } if *conn == to => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

/// Runs a dialer's handshake against the master on `conn`; returns the
/// outputs of the master's last step.
fn handshake(core: &mut NodeCore, now: Time, conn: ConnId, cfg: &AuthConfig) -> Vec<Output> {
    let mut dialer = Handshake::new(LinkRole::Dialer, cfg, [0xd1; 32]);
    let mut to_master = Vec::new();
    dialer.start(&mut to_master);
    let mut last = Vec::new();
    while let Some(msg) = to_master.pop() {
        last = core.step(now, Input::Frame { conn, msg });
        for reply in messages_to(&last, conn) {
            let _: HandshakeStep = dialer.on_message(Some(reply), &mut to_master, &|_| false);
        }
    }
    last
}

#[test]
fn a_silent_client_is_closed_at_the_handshake_timeout_and_counted_not_shown() {
    let mut core = master();
    accept(&mut core, Time::ZERO, 1 << 48);
    let timeout = SyncConfig::new(auth("gw-a", SECRET)).handshake_timeout;
    let early = core.step(Time::ZERO + timeout / 2, Input::Tick);
    assert!(closed(&early).is_empty(), "closed before its timeout");
    let out = core.step(Time::ZERO + timeout, Input::Tick);
    assert_eq!(closed(&out), vec![1 << 48]);
    let r = core.report(Time::ZERO + timeout);
    assert_eq!(r.last_error, None, "{r:?}");
    assert_eq!(r.unauthenticated_failures, 1, "{r:?}");
}

#[test]
fn garbage_a_wrong_secret_and_failed_tls_are_counted_not_shown() {
    let mut core = master();
    let now = Time::ZERO;
    accept(&mut core, now, 1);
    let error = "frame of 1195725857 bytes exceeds the limit of 4096 bytes".into();
    let out = core.step(now, Input::Malformed { conn: 1, error });
    assert_eq!(closed(&out), vec![1]);
    accept(&mut core, now, 2);
    let out = handshake(&mut core, now, 2, &auth("gw-b", b"not the pair's secret"));
    assert_eq!(closed(&out), vec![2], "a wrong proof closes the link");
    let error = "TLS handshake with 192.0.2.7:1 timed out".into();
    core.step(now, Input::AcceptFailed { error });
    let r = core.report(now);
    assert_eq!(r.last_error, None, "{r:?}");
    assert_eq!(r.unauthenticated_failures, 3, "{r:?}");
}

#[test]
fn a_peer_that_proves_the_secret_and_is_refused_still_sets_the_last_error() {
    let mut core = master();
    accept(&mut core, Time::ZERO, 1);
    let out = handshake(&mut core, Time::ZERO, 1, &auth("gw-a", SECRET));
    assert_eq!(closed(&out), vec![1]);
    let r = core.report(Time::ZERO);
    assert!(
        r.last_error
            .as_deref()
            .is_some_and(|e| e.contains("own id")),
        "{r:?}"
    );
    assert_eq!(r.unauthenticated_failures, 0, "{r:?}");
}

#[test]
fn unauthenticated_links_are_capped_by_closing_the_oldest_and_the_backup_still_gets_in() {
    let mut core = master();
    let flood = MAX_UNAUTHENTICATED as u64 + 100;
    let mut evicted = Vec::new();
    for i in 0..flood {
        let now = Time::ZERO + Duration::from_millis(i);
        evicted.extend(closed(&accept(&mut core, now, 100 + i)));
    }
    // Every connection past the cap closed the oldest one still waiting.
    assert_eq!(evicted, (100..200).collect::<Vec<_>>());
    let now = Time::ZERO + Duration::from_millis(flood);
    accept(&mut core, now, 1_000);
    let out = handshake(&mut core, now, 1_000, &auth("gw-b", SECRET));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Authenticated { conn: 1_000 })),
        "the real backup did not authenticate among {MAX_UNAUTHENTICATED} silent clients: {out:?}"
    );
    let r = core.report(now);
    assert_eq!(r.last_error, None, "{r:?}");
    assert_eq!(r.unauthenticated_failures, 101, "{r:?}");
}
