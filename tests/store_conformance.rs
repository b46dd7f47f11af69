//! The store conformance suite on every backend (see `tests/conformance`).

mod conformance;

conformance_suite!(sqlite, Fixture::sqlite());
conformance_suite!(postgres, Fixture::postgres());
