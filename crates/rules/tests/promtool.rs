//! Parity with Debian's promtool: the same rule files and rule unit-test files get the same
//! verdicts from `promtool check rules` / `promtool test rules` and from tidemark-rules.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn promtool() -> Option<&'static str> {
    let p = "/usr/bin/promtool";
    Path::new(p).exists().then_some(p)
}

const TEST_FILES: &[(&str, bool)] = &[
    ("pass.test.yml", true),
    ("fail_alert.test.yml", false),
    ("fail_annotation.test.yml", false),
    ("fail_expr.test.yml", false),
    ("chain.test.yml", true),
];

const RULE_FILES: &[(&str, bool)] = &[
    ("rules.yml", true),
    ("bad_rules.yml", false),
    ("bad_labels.yml", false),
    ("bad_record_for.yml", false),
    ("chain_rules.yml", true),
];

#[test]
fn unit_test_verdicts_match_expectations() {
    for (f, pass) in TEST_FILES {
        let errs = tidemark_rules::unittest::run_file(&data(f));
        assert_eq!(errs.is_empty(), *pass, "{f}: {errs:#?}");
    }
}

#[test]
fn check_verdicts_match_expectations() {
    for (f, ok) in RULE_FILES {
        let r = tidemark_rules::file::check_files(&[data(f)]);
        assert_eq!(r[0].1.is_ok(), *ok, "{f}: {:?}", r[0].1);
    }
}

#[test]
fn same_verdicts_as_promtool() {
    let Some(pt) = promtool() else {
        println!("SKIPPED: /usr/bin/promtool not installed");
        return;
    };
    for (f, _) in TEST_FILES {
        let theirs = Command::new(pt)
            .args(["test", "rules"])
            .arg(data(f))
            .output()
            .unwrap()
            .status
            .success();
        let ours = tidemark_rules::unittest::run_file(&data(f));
        assert_eq!(ours.is_empty(), theirs, "test rules {f}: ours {ours:#?}");
    }
    for (f, _) in RULE_FILES {
        let theirs = Command::new(pt)
            .args(["check", "rules"])
            .arg(data(f))
            .output()
            .unwrap()
            .status
            .success();
        let ours = tidemark_rules::file::check_files(&[data(f)]);
        assert_eq!(
            ours[0].1.is_ok(),
            theirs,
            "check rules {f}: ours {:?}",
            ours[0].1
        );
    }
}
