//! The README's demo command, on a short replay, from this checkout: it must run the whole
//! pipeline and end with a summary that shows the faults detected.

use anyhow::Result;
use edge_test_utils::repo_root;

#[test]
fn demo_runs_and_summarises() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = std::process::Command::new(repo_root().join("scripts/demo.sh"))
        .env("DEMO_PROFILE", "dev")
        .env("DEMO_SKIP_BUILD", "1")
        .env("DEMO_RUNS", "d00_te d01_te d06_te")
        .env("DEMO_DIR", tmp.path().join("demo"))
        .env("DEMO_SECONDS", "240")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("== Summary"), "no summary:\n{stdout}");
    assert!(
        stdout.contains("samples ingested 2880  scored 2880"),
        "not every sample scored:\n{stdout}"
    );
    for run in ["d01_te", "d06_te"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(run) && l.contains("detected after"))
            .unwrap_or_default();
        assert!(!line.is_empty(), "{run} not detected:\n{stdout}");
    }
    Ok(())
}
