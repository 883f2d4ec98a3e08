//! The attribute macros reject wrong functions with an error at the user's
//! code (compile-fail cases in `ui/`, expected output beside each).

#[test]
fn macro_errors_point_at_the_users_code() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
