//! The C SDK's JSON helpers (`guest-sdk/c/weir_json.c`), compiled natively
//! with AddressSanitizer and UndefinedBehaviorSanitizer and run over what
//! the host sends, malformed and truncated texts and 20,000 random ones
//! (`guest-sdk/c/tests/json_test.c`): a read past a view or undefined
//! behaviour fails the test. Needs Debian's clang, like the C guests.

use std::process::Command;
use weir_tests::{c_toolchain_or_skip, workspace};

#[test]
fn the_c_json_helpers_stay_inside_their_views_under_the_sanitizers() {
    if !c_toolchain_or_skip("the_c_json_helpers_stay_inside_their_views_under_the_sanitizers") {
        return;
    }
    let sdk = workspace().join("guest-sdk/c");
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("json_test");
    let out = Command::new("clang")
        .args(["-g", "-O1", "-fsanitize=address,undefined"])
        .args(["-fno-sanitize-recover=all", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(&sdk)
        .arg(sdk.join("tests/json_test.c"))
        .arg(sdk.join("weir_json.c"))
        .arg("-o")
        .arg(&binary)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&binary).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "all checks passed\n");
}
