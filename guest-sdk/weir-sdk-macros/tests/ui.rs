//! Compile errors from `#[task]` and `#[flow]` are spanned and say what to do.

#[test]
fn macro_errors_are_readable() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/ok_*.rs");
    cases.compile_fail("tests/ui/err_*.rs");
}
