//! Compile-fail tests: every misuse of the derives, with the compiler's output
//! reviewed in the `.stderr` files (is the error on the right token, does it say
//! what to write instead?). Regenerate with `TRYBUILD=overwrite` and re-read them.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/attr/*.rs");
    t.compile_fail("tests/ui/types/*.rs");
    t.compile_fail("tests/ui/keys/*.rs");
    t.compile_fail("tests/ui/shape/*.rs");
    t.compile_fail("tests/ui/default/*.rs");
    t.compile_fail("tests/ui/enum/*.rs");
    t.compile_fail("tests/ui/presentation/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
