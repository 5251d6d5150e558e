//! Compile-time tests of `#[cluster::main]`: every mistake in tests/ui/fail is an error on the
//! token at fault (pinned by the .stderr files), and both styles in tests/ui/pass compile.
//! Regenerate the .stderr files with `TRYBUILD=overwrite cargo test --test ui` and review them.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
