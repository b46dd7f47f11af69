//! The store conformance suite on every backend (see `tests/conformance`).

mod conformance;

conformance_suite!(sqlite, conformance::Fixture::sqlite());
conformance_suite!(postgres, conformance::Fixture::postgres());
