//! Long-running fuzz of every decoder that reads bytes from the network:
//! the wire codec, and the log entry body and row image decoders of
//! persist-core (entries travel inside frames and are decoded at apply).
//!
//! Runs 2,000 cases by default (CI). For a long run:
//! ```text
//! PERSIST_FUZZ_CASES=1000000 cargo test --release -p persist-sync --test codec_fuzz -- --nocapture
//! ```
//! Each case is one generated input, fed to every decoder; a panic fails
//! the test with the minimized input.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use common::{arb_message, arb_mutations, mutate};
use persist_core::log::{decode_body, decode_image, encode_body, encode_image, Op};
use persist_core::Value;
use persist_sync::codec::{decode, encode, Limits, WIRE_VERSION};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[derive(Debug, Clone)]
enum Input {
    /// Random bytes.
    Raw(Vec<u8>),
    /// Random bytes after a valid version byte.
    Versioned(Vec<u8>),
    /// A valid frame, mutated.
    Frame(Vec<u8>),
    /// A valid entry body, mutated.
    Body(Vec<u8>),
    /// A valid row image, mutated.
    Image(Vec<u8>),
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::I64),
        "[a-z]{0,8}".prop_map(Value::Text),
    ]
}

fn arb_input() -> impl Strategy<Value = Input> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..300);
    let body = proptest::collection::vec(
        (
            "[a-z]{1,4}",
            prop_oneof![Just(Op::Insert), Just(Op::Update), Just(Op::Delete)],
            proptest::collection::vec(any::<u8>(), 0..16),
        ),
        0..4,
    )
    .prop_map(|changes| {
        let refs: Vec<(&str, Op, &[u8])> = changes
            .iter()
            .map(|(t, op, p)| (t.as_str(), *op, p.as_slice()))
            .collect();
        encode_body(&refs)
    });
    let image = proptest::collection::vec(arb_value(), 0..6).prop_map(|values| {
        let mut out = Vec::new();
        encode_image(&values, &mut out);
        out
    });
    prop_oneof![
        1 => bytes().prop_map(Input::Raw),
        1 => bytes().prop_map(Input::Versioned),
        3 => (arb_message(), arb_mutations()).prop_map(|(m, muts)| Input::Frame(mutate(encode(&m), &muts))),
        1 => (body, arb_mutations()).prop_map(|(b, muts)| Input::Body(mutate(b, &muts))),
        1 => (image, arb_mutations()).prop_map(|(i, muts)| Input::Image(mutate(i, &muts))),
    ]
}

fn feed(bytes: &[u8], calls: &AtomicU64) {
    let _ = decode(bytes, &Limits::default());
    let _ = decode(bytes, &Limits::handshake());
    let _ = decode_body(bytes);
    if let Ok(changes) = decode_body(bytes) {
        for c in changes {
            let _ = c.image();
            let _ = c.key();
        }
    }
    let _ = decode_image(bytes);
    calls.fetch_add(5, Ordering::Relaxed);
}

#[test]
fn decoders_never_panic() {
    let cases: u32 = std::env::var("PERSIST_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let inputs = AtomicU64::new(0);
    let calls = AtomicU64::new(0);
    let started = Instant::now();
    let result = runner.run(&arb_input(), |input| {
        inputs.fetch_add(1, Ordering::Relaxed);
        match &input {
            Input::Raw(b) | Input::Frame(b) | Input::Body(b) | Input::Image(b) => feed(b, &calls),
            Input::Versioned(b) => {
                let mut v = vec![WIRE_VERSION];
                v.extend_from_slice(b);
                feed(&v, &calls);
            }
        }
        Ok(())
    });
    let elapsed = started.elapsed();
    println!(
        "codec_fuzz: {} inputs ({} decoder calls) in {:.1?}, no panic",
        inputs.load(Ordering::Relaxed),
        calls.load(Ordering::Relaxed),
        elapsed
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(inputs.load(Ordering::Relaxed) >= u64::from(cases));
}
