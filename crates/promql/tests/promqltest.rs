//! Runs Prometheus' promqltest scripts (../shared/promql-testdata, or `$PROMQL_TESTDATA`) and our
//! own cases in <repo>/tests/promql/ through the engine; asserts that no case fails.

use std::path::{Path, PathBuf};

use tidemark_promql::promqltest::run_test_files;

fn test_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "test"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn prometheus_and_own_promqltest_files_pass() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = std::env::var_os("PROMQL_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // `<workspace>/../shared/promql-testdata`; worktrees sit one level deeper, so walk up.
            manifest
                .ancestors()
                .map(|a| a.join("shared/promql-testdata"))
                .find(|p| p.is_dir())
                .unwrap_or_else(|| manifest.join("../../../shared/promql-testdata"))
        });
    let mut files = test_files(&shared);
    let upstream = files.len();
    files.extend(test_files(&manifest.join("../../tests/promql")));
    let summary = run_test_files(&files);
    println!("{summary}");
    // Prometheus' own scripts must be there: a run over our cases alone proves nothing.
    assert!(
        upstream > 0,
        "no .test files in {} (set PROMQL_TESTDATA to the promql-testdata directory)",
        shared.display()
    );
    assert!(summary.passed() > 0, "nothing passed");
    assert_eq!(summary.failed(), 0, "{summary}");
}

/// Lists the skipped cases (run with `--ignored --nocapture` to review the skip rule).
#[test]
#[ignore]
fn list_skipped_cases() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = manifest
        .ancestors()
        .map(|a| a.join("shared/promql-testdata"))
        .find(|p| p.is_dir());
    let files = shared.map(|d| test_files(&d)).unwrap_or_default();
    for r in run_test_files(&files).files {
        for s in r.skips {
            println!("{}: {s}", r.path.display());
        }
    }
}
