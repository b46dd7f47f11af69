//! The wire codec: round trips, truncation, limits, hostile input.

mod common;

use common::{all_messages, arb_message, arb_mutations, entry, mutate};
use persist_core::Digest;
use persist_sync::codec::{decode, encode, CodecError, Limits, WIRE_VERSION};
use persist_sync::protocol::{
    LinkRole, Message, ModuleManifest, ModuleMismatch, RefuseReason, SnapshotTable,
};
use proptest::prelude::*;

#[test]
fn every_variant_round_trips() {
    for msg in all_messages() {
        let frame = encode(&msg);
        assert_eq!(frame[0], WIRE_VERSION);
        assert_eq!(decode(&frame, &Limits::default()).as_ref(), Ok(&msg));
    }
}

#[test]
fn handshake_messages_fit_the_handshake_limits() {
    for msg in all_messages() {
        if matches!(
            msg,
            Message::Hello { .. } | Message::Proof { .. } | Message::Refused { .. }
        ) {
            let frame = encode(&msg);
            assert_eq!(decode(&frame, &Limits::handshake()).as_ref(), Ok(&msg));
        }
    }
}

#[test]
fn every_truncation_is_an_error() {
    for msg in all_messages() {
        let frame = encode(&msg);
        for cut in 0..frame.len() {
            let result = decode(&frame[..cut], &Limits::default());
            assert!(result.is_err(), "{msg:?} cut at {cut} decoded: {result:?}");
        }
    }
    assert_eq!(decode(&[], &Limits::default()), Err(CodecError::Truncated));
    assert_eq!(
        decode(&[WIRE_VERSION], &Limits::default()),
        Err(CodecError::Truncated)
    );
}

#[test]
fn wrong_version_names_both() {
    let mut frame = encode(&Message::SnapshotEnd);
    frame[0] = 2;
    let err = decode(&frame, &Limits::default()).unwrap_err();
    assert_eq!(
        err,
        CodecError::UnsupportedVersion {
            found: 2,
            supported: 1
        }
    );
    let text = err.to_string();
    assert!(
        text.contains("version 2") && text.contains("version 1"),
        "{text}"
    );
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut frame = encode(&Message::Ack { position: 1 });
    frame.push(0);
    assert!(matches!(
        decode(&frame, &Limits::default()),
        Err(CodecError::Malformed(m)) if m.contains("trailing")
    ));
}

#[test]
fn oversized_frame_is_rejected_before_decoding() {
    let frame = encode(&Message::SnapshotRows {
        table: 0,
        rows: vec![vec![0; 5000]],
    });
    assert!(matches!(
        decode(&frame, &Limits::handshake()),
        Err(CodecError::TooLarge {
            what: "frame",
            limit: 4096,
            ..
        })
    ));
}

#[test]
fn item_counts_are_limited() {
    let limits = Limits {
        max_items: 2,
        ..Limits::default()
    };
    let entries = encode(&Message::Entries(vec![entry(1), entry(2), entry(3)]));
    assert_eq!(
        decode(&entries, &limits),
        Err(CodecError::TooLarge {
            what: "entries",
            size: 3,
            limit: 2
        })
    );
    let rows = encode(&Message::SnapshotRows {
        table: 1,
        rows: vec![vec![]; 3],
    });
    assert!(matches!(
        decode(&rows, &limits),
        Err(CodecError::TooLarge {
            what: "snapshot rows",
            size: 3,
            ..
        })
    ));
    // Before authentication no sequence is expected at all.
    let one = encode(&Message::Entries(vec![entry(1)]));
    assert!(matches!(
        decode(&one, &Limits::handshake()),
        Err(CodecError::TooLarge {
            what: "entries",
            ..
        })
    ));
}

#[test]
fn a_huge_count_in_a_tiny_frame_is_refused_without_allocating() {
    // Entries variant (5), then a count of u64::MAX >> 1 and nothing else.
    let mut frame = vec![WIRE_VERSION, 5];
    frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert!(matches!(
        decode(&frame, &Limits::default()),
        Err(CodecError::TooLarge {
            what: "entries",
            ..
        })
    ));
    // A count under the limit that cannot fit in the bytes left.
    let mut frame = vec![WIRE_VERSION, 8, 0];
    frame.extend_from_slice(&[0xc0, 0x84, 0x3d]); // 1_000_000 rows
    frame.extend_from_slice(&[0; 10]);
    assert!(matches!(
        decode(&frame, &Limits::default()),
        Err(CodecError::Malformed(m)) if m.contains("cannot fit")
    ));
}

#[test]
fn string_lengths_are_limited() {
    let long = "x".repeat(300);
    let hello = |cluster: &str, node_id: &str| Message::Hello {
        protocol: 1,
        cluster: cluster.into(),
        node_id: node_id.into(),
        role: LinkRole::Dialer,
        nonce: [0; 32],
    };
    assert!(matches!(
        decode(&encode(&hello(&long, "n")), &Limits::handshake()),
        Err(CodecError::TooLarge {
            what: "cluster name",
            size: 300,
            limit: 256
        })
    ));
    assert!(matches!(
        decode(&encode(&hello("c", &long)), &Limits::handshake()),
        Err(CodecError::TooLarge {
            what: "node id",
            ..
        })
    ));
    let refused = Message::Refused {
        reason: RefuseReason::Protocol(long.clone()),
    };
    assert!(matches!(
        decode(&encode(&refused), &Limits::handshake()),
        Err(CodecError::TooLarge {
            what: "refusal detail",
            ..
        })
    ));
    let small = Limits {
        max_string: 10,
        ..Limits::default()
    };
    let begin = Message::SnapshotBegin {
        history: "h".into(),
        position: 0,
        digest: Digest::EMPTY,
        epoch: 0,
        tables: vec![SnapshotTable {
            name: long,
            rows: 0,
        }],
    };
    assert!(matches!(
        decode(&encode(&begin), &small),
        Err(CodecError::TooLarge {
            what: "table name",
            ..
        })
    ));
}

#[test]
fn module_manifests_are_limited_like_any_sequence() {
    let modules = |n: usize, name: &str| {
        Message::Modules(
            (0..n)
                .map(|i| ModuleManifest::new(format!("{name}{i}"), "1.0.0", i as u128))
                .collect(),
        )
    };
    let limits = Limits {
        max_items: 2,
        max_string: 10,
        ..Limits::default()
    };
    assert_eq!(
        decode(&encode(&modules(3, "m")), &limits),
        Err(CodecError::TooLarge {
            what: "module manifests",
            size: 3,
            limit: 2
        })
    );
    assert!(matches!(
        decode(&encode(&modules(1, "a-long-module-name")), &limits),
        Err(CodecError::TooLarge {
            what: "module name",
            ..
        })
    ));
    // Before authentication no manifest is expected.
    assert!(matches!(
        decode(&encode(&modules(1, "m")), &Limits::handshake()),
        Err(CodecError::TooLarge {
            what: "module manifests",
            ..
        })
    ));
    // Modules variant (17), a count of 1,000,000 and ten bytes.
    let mut frame = vec![WIRE_VERSION, 17];
    frame.extend_from_slice(&[0xc0, 0x84, 0x3d]);
    frame.extend_from_slice(&[0; 10]);
    assert!(matches!(
        decode(&frame, &Limits::default()),
        Err(CodecError::Malformed(m)) if m.contains("cannot fit")
    ));
    let refused = Message::Refused {
        reason: RefuseReason::ModuleMismatch(Box::new(ModuleMismatch {
            module: "alarms".into(),
            ours: Some("1.0.0".into()),
            theirs: Some("x".repeat(11)),
            ours_node: "gw-a".into(),
            theirs_node: "gw-b".into(),
        })),
    };
    assert!(matches!(
        decode(&encode(&refused), &limits),
        Err(CodecError::TooLarge {
            what: "module version",
            ..
        })
    ));
}

#[test]
fn entries_must_be_consecutive() {
    let gap = encode(&Message::Entries(vec![entry(4), entry(5), entry(7)]));
    let err = decode(&gap, &Limits::default()).unwrap_err();
    assert_eq!(
        err,
        CodecError::NonConsecutive {
            index: 2,
            expected: 6,
            found: 7
        }
    );
    assert!(err.to_string().contains("not consecutive"), "{err}");
    let repeat = encode(&Message::Entries(vec![entry(4), entry(4)]));
    assert!(matches!(
        decode(&repeat, &Limits::default()),
        Err(CodecError::NonConsecutive { index: 1, .. })
    ));
    let wrap = encode(&Message::Entries(vec![entry(u64::MAX), entry(0)]));
    assert!(matches!(
        decode(&wrap, &Limits::default()),
        Err(CodecError::NonConsecutive { .. })
    ));
}

#[test]
fn unknown_variant_is_malformed() {
    assert!(matches!(
        decode(&[WIRE_VERSION, 100], &Limits::default()),
        Err(CodecError::Malformed(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        // Integration tests have no lib.rs for proptest to anchor its
        // regression files to; the failure message carries the input.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_messages_round_trip(msg in arb_message()) {
        prop_assert_eq!(decode(&encode(&msg), &Limits::default()), Ok(msg));
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, &Limits::default());
        let _ = decode(&bytes, &Limits::handshake());
        let mut versioned = vec![WIRE_VERSION];
        versioned.extend_from_slice(&bytes);
        let _ = decode(&versioned, &Limits::default());
    }

    #[test]
    fn mutated_frames_never_panic(msg in arb_message(), mutations in arb_mutations()) {
        let frame = mutate(encode(&msg), &mutations);
        if let Ok(decoded) = decode(&frame, &Limits::default()) {
            // Postcard accepts overlong varints, so the bytes may differ, but
            // whatever decodes must survive a round trip unchanged.
            prop_assert_eq!(decode(&encode(&decoded), &Limits::default()), Ok(decoded));
        }
        let _ = decode(&frame, &Limits::handshake());
    }
}
