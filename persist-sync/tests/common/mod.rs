//! Helpers shared by the persist-sync integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use persist_core::{Digest, LogEntry};
use persist_sync::auth::{AuthConfig, Secret};
use persist_sync::protocol::{
    LinkRole, Message, ModuleManifest, ModuleMismatch, Plan, RefuseReason, ResyncReason,
    SnapshotTable, PROTOCOL_VERSION,
};
use proptest::prelude::*;

pub const SECRET: &[u8] = b"correct horse battery staple";

pub fn cfg(cluster: &str, node: &str, secret: &[u8]) -> AuthConfig {
    AuthConfig::new(cluster, node, Secret::new(secret.to_vec()).unwrap()).unwrap()
}

pub fn entry(position: u64) -> LogEntry {
    LogEntry {
        position,
        epoch: 3,
        committed_at: -5,
        digest: Digest(u128::MAX - position as u128),
        body: persist_core::log::encode_body(&[("t", persist_core::log::Op::Insert, &[1, 2])]),
    }
}

/// One message of every variant (and every nested enum variant).
pub fn all_messages() -> Vec<Message> {
    let reasons = [
        ResyncReason::DifferentHistory,
        ResyncReason::AheadOfMaster,
        ResyncReason::DigestMismatch,
        ResyncReason::EntriesTrimmed,
        ResyncReason::ApplyFailed("constraint failed".into()),
        ResyncReason::Requested,
    ];
    let refusals = [
        RefuseReason::ProtocolVersion { ours: 1, theirs: 2 },
        RefuseReason::ClusterName,
        RefuseReason::SchemaMismatch {
            ours: 1,
            theirs: u128::MAX,
        },
        RefuseReason::NotMaster,
        RefuseReason::Busy,
        RefuseReason::Protocol("unexpected Ack".into()),
        RefuseReason::DualMaster,
        RefuseReason::ModuleMismatch(Box::new(ModuleMismatch {
            module: "alarms".into(),
            ours: Some("1.1.0".into()),
            theirs: Some("1.0.0".into()),
            ours_node: "gw-a".into(),
            theirs_node: "gw-b".into(),
        })),
        RefuseReason::ModuleMismatch(Box::new(ModuleMismatch {
            module: "counters".into(),
            ours: None,
            theirs: Some("2.0.0".into()),
            ours_node: "gw-a".into(),
            theirs_node: "gw-b".into(),
        })),
    ];
    let mut msgs = vec![
        Message::Hello {
            protocol: PROTOCOL_VERSION,
            cluster: "plant-7".into(),
            node_id: "gw-a".into(),
            role: LinkRole::Dialer,
            nonce: [9; 32],
        },
        Message::Hello {
            protocol: u16::MAX,
            cluster: String::new(),
            node_id: "gw-b".into(),
            role: LinkRole::Acceptor,
            nonce: [0; 32],
        },
        Message::Proof { mac: [0xAB; 32] },
        Message::SyncRequest {
            schema: 77,
            history: "h-1".into(),
            position: 10,
            digest: Digest(5),
            epoch: 2,
            force_snapshot: None,
            role: persist_sync::protocol::NodeRole::Backup,
        },
        Message::SyncPlan(Plan::Incremental {
            from: 11,
            history: "h-1".into(),
        }),
        Message::Entries(vec![]),
        Message::Entries(vec![entry(11), entry(12), entry(13)]),
        Message::Ack { position: u64::MAX },
        Message::SnapshotBegin {
            history: "h-2".into(),
            position: 1 << 40,
            digest: Digest(u128::MAX),
            epoch: 9,
            tables: vec![SnapshotTable {
                name: "valve".into(),
                rows: 3,
            }],
        },
        Message::SnapshotRows {
            table: 0,
            rows: vec![vec![1, 2, 3], vec![], vec![0xff; 300]],
        },
        Message::SnapshotEnd,
        Message::Heartbeat {
            epoch: 1,
            position: 2,
            role: persist_sync::protocol::NodeRole::Master,
            active: None,
            sent: 7,
            echo: 0,
        },
        Message::Modules(vec![]),
        Message::Modules(vec![
            ModuleManifest::new("alarms", "1.1.0", u128::MAX),
            ModuleManifest::new("counters", "", 0),
        ]),
    ];
    for reason in refusals {
        msgs.push(Message::Refused { reason });
    }
    for reason in reasons {
        msgs.push(Message::SyncPlan(Plan::Snapshot {
            reason: reason.clone(),
        }));
        msgs.push(Message::SyncRequest {
            schema: 1,
            history: String::new(),
            position: 0,
            digest: Digest::EMPTY,
            epoch: 0,
            force_snapshot: Some(reason),
            role: persist_sync::protocol::NodeRole::Backup,
        });
    }
    msgs
}

fn arb_string() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z0-9\\-é]{0,12}").unwrap()
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn arb_resync() -> impl Strategy<Value = ResyncReason> {
    prop_oneof![
        Just(ResyncReason::DifferentHistory),
        Just(ResyncReason::AheadOfMaster),
        Just(ResyncReason::DigestMismatch),
        Just(ResyncReason::EntriesTrimmed),
        arb_string().prop_map(ResyncReason::ApplyFailed),
        Just(ResyncReason::Requested),
    ]
}

fn arb_refuse() -> impl Strategy<Value = RefuseReason> {
    prop_oneof![
        (any::<u16>(), any::<u16>())
            .prop_map(|(ours, theirs)| RefuseReason::ProtocolVersion { ours, theirs }),
        Just(RefuseReason::ClusterName),
        (any::<u128>(), any::<u128>())
            .prop_map(|(ours, theirs)| RefuseReason::SchemaMismatch { ours, theirs }),
        Just(RefuseReason::NotMaster),
        Just(RefuseReason::Busy),
        Just(RefuseReason::DualMaster),
        arb_string().prop_map(RefuseReason::Protocol),
        (
            arb_string(),
            proptest::option::of(arb_string()),
            proptest::option::of(arb_string()),
            arb_string(),
            arb_string()
        )
            .prop_map(|(module, ours, theirs, ours_node, theirs_node)| {
                RefuseReason::ModuleMismatch(Box::new(ModuleMismatch {
                    module,
                    ours,
                    theirs,
                    ours_node,
                    theirs_node,
                }))
            }),
    ]
}

fn arb_entries() -> impl Strategy<Value = Vec<LogEntry>> {
    (
        any::<u64>(),
        proptest::collection::vec(
            (any::<u64>(), any::<i64>(), any::<u128>(), arb_bytes(24)),
            0..5,
        ),
    )
        .prop_map(|(start, items)| {
            let start = start.min(u64::MAX - 8);
            items
                .into_iter()
                .enumerate()
                .map(|(i, (epoch, committed_at, digest, body))| LogEntry {
                    position: start + i as u64,
                    epoch,
                    committed_at,
                    digest: Digest(digest),
                    body,
                })
                .collect()
        })
        // Arbitrary bytes may begin like a packed body (0x81) and state an
        // unpacked length past a frame, which the codec refuses: not a valid
        // message. Bodies that look packed and state less are kept.
        .prop_filter(
            "a body stating more than a frame is not valid",
            |entries: &Vec<LogEntry>| {
                let max = persist_sync::codec::Limits::default().max_frame;
                entries.iter().all(|e| e.plain_len() <= max)
            },
        )
}

/// Any valid message (entries consecutive, strings short).
pub fn arb_message() -> impl Strategy<Value = Message> {
    let role = prop_oneof![Just(LinkRole::Dialer), Just(LinkRole::Acceptor)];
    prop_oneof![
        (
            any::<u16>(),
            arb_string(),
            arb_string(),
            role,
            any::<[u8; 32]>()
        )
            .prop_map(|(protocol, cluster, node_id, role, nonce)| Message::Hello {
                protocol,
                cluster,
                node_id,
                role,
                nonce
            }),
        any::<[u8; 32]>().prop_map(|mac| Message::Proof { mac }),
        arb_refuse().prop_map(|reason| Message::Refused { reason }),
        (
            any::<u128>(),
            arb_string(),
            any::<u64>(),
            any::<u128>(),
            any::<u64>(),
            proptest::option::of(arb_resync())
        )
            .prop_map(
                |(schema, history, position, digest, epoch, force_snapshot)| {
                    Message::SyncRequest {
                        schema,
                        history,
                        position,
                        digest: Digest(digest),
                        epoch,
                        force_snapshot,
                        role: persist_sync::protocol::NodeRole::Backup,
                    }
                }
            ),
        prop_oneof![
            (any::<u64>(), "[a-z0-9-]{0,40}")
                .prop_map(|(from, history)| Plan::Incremental { from, history }),
            arb_resync().prop_map(|reason| Plan::Snapshot { reason }),
        ]
        .prop_map(Message::SyncPlan),
        arb_entries().prop_map(Message::Entries),
        any::<u64>().prop_map(|position| Message::Ack { position }),
        (
            arb_string(),
            any::<u64>(),
            any::<u128>(),
            any::<u64>(),
            proptest::collection::vec(
                (arb_string(), any::<u64>()).prop_map(|(name, rows)| SnapshotTable { name, rows }),
                0..4
            )
        )
            .prop_map(|(history, position, digest, epoch, tables)| {
                Message::SnapshotBegin {
                    history,
                    position,
                    digest: Digest(digest),
                    epoch,
                    tables,
                }
            }),
        (any::<u32>(), proptest::collection::vec(arb_bytes(16), 0..5))
            .prop_map(|(table, rows)| Message::SnapshotRows { table, rows }),
        Just(Message::SnapshotEnd),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(epoch, position, sent)| {
            Message::Heartbeat {
                epoch,
                position,
                role: persist_sync::protocol::NodeRole::Backup,
                active: Some("gw-a".into()),
                sent,
                echo: sent / 2,
            }
        }),
        proptest::collection::vec(
            (arb_string(), arb_string(), any::<u128>()).prop_map(|(name, version, schema)| {
                ModuleManifest {
                    name,
                    version,
                    schema,
                }
            }),
            0..5
        )
        .prop_map(Message::Modules),
    ]
}

/// A mutation applied to a valid frame.
#[derive(Debug, Clone)]
pub enum Mutation {
    Flip { at: usize, xor: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, len: usize },
    Truncate { at: usize },
}

pub fn arb_mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let m = prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        (
            any::<usize>(),
            prop_oneof![Just(0u8), Just(0x7f), Just(0x80), Just(0xff), any::<u8>()]
        )
            .prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (any::<usize>(), arb_bytes(12)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1..8usize).prop_map(|(at, len)| Mutation::Remove { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ];
    proptest::collection::vec(m, 1..4)
}

pub fn mutate(mut frame: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = frame.len();
        match m {
            Mutation::Flip { at, xor } if n > 0 => frame[at % n] ^= xor,
            Mutation::Set { at, byte } if n > 0 => frame[at % n] = *byte,
            Mutation::Insert { at, bytes } => {
                let at = at % (n + 1);
                frame.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove { at, len } if n > 0 => {
                let at = at % n;
                frame.drain(at..(at + len).min(n));
            }
            Mutation::Truncate { at } => frame.truncate(at % (n + 1)),
            _ => {}
        }
    }
    frame
}

/// A private CA, a server certificate for `localhost`/127.0.0.1, a client
/// certificate, and an unrelated CA, as PEM files in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn generate() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
        let ca = |cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.self_signed(&key).unwrap();
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("persist test CA");
        let (other_cert, _other_key) = ca("some other CA");
        write("ca.pem", ca_cert.pem());
        write("other-ca.pem", other_cert.pem());
        for (name, sans) in [
            (
                "server",
                vec!["localhost".to_string(), "127.0.0.1".to_string()],
            ),
            ("client", vec!["gw-b".to_string()]),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
