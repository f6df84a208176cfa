//! Fixture tests: every `fixtures/valid/*.json` parses; every `fixtures/invalid/NAME.json` is
//! refused with exactly the problems listed in `NAME.expected` (one `Display` form a line).
//!
//! To regenerate the expected files after a deliberate change, run with
//! `EDGE_MANIFEST_BLESS=1` and review the diff.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use edge_manifest::parse_file;
use std::path::{Path, PathBuf};

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn valid_fixtures_parse() {
    let files = fixtures("valid");
    assert!(files.len() >= 4, "expected at least 4 valid fixtures");
    for f in files {
        if let Err(e) = parse_file(&f) {
            let lines: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
            panic!("{}: {e}:\n{}", f.display(), lines.join("\n"));
        }
    }
}

#[test]
fn invalid_fixtures_report_exactly_the_expected_problems() {
    let files = fixtures("invalid");
    assert!(files.len() >= 12, "expected at least 12 invalid fixtures");
    let bless = std::env::var_os("EDGE_MANIFEST_BLESS").is_some();
    let mut failures = Vec::new();
    for f in files {
        let expected_path = f.with_extension("expected");
        let got = match parse_file(&f) {
            Ok(_) => {
                failures.push(format!("{}: parsed, but should be refused", f.display()));
                continue;
            }
            Err(e) => {
                assert!(
                    !e.problems.is_empty(),
                    "{}: refused without problems",
                    f.display()
                );
                let mut s: String = e.problems.iter().map(|p| format!("{p}\n")).collect();
                if s.is_empty() {
                    s.push('\n');
                }
                s
            }
        };
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        if got != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{got}",
                f.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
