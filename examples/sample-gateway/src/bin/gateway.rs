//! `gateway`: one node of a redundant pair running the sample modules (the
//! alarm module and the counter module), from a TOML config file.
//!
//! `cargo run --release -p sample-gateway --bin gateway -- gw-a.toml`
//!
//! The config is described in `persist_gateway::config`; the README shows a
//! pair in two terminals.

fn main() {
    persist_gateway::main(|gateway| {
        gateway
            .module(alarm_module::AlarmModule::new())
            .module(counter_module::Counters::new())
    })
}
