//! The recorded trace fixtures (`tests/fixtures/traces/*.csv`) read with
//! the trace reader and hold together: every file says how it was made and
//! how the migration ended, iterations run 1, 2, 3, ... one sync each, and
//! X1 (rate x time) agrees with the pages counted from QEMU's counters
//! wherever QEMU's rate period was the iteration itself.

use std::path::PathBuf;

use vmbw::qemu::trace;

fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/traces");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_fixture_reads_and_holds_together() {
    let files = fixtures();
    assert!(files.len() >= 6, "six workloads at least: {files:?}");
    for path in &files {
        let name = path.display();
        let t = trace::read_path(path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!t.rows.is_empty(), "{name}: no rows");
        assert!(
            t.comments.iter().any(|c| c.starts_with("made with: ")),
            "{name}: no `made with` line"
        );
        assert!(
            t.comments.iter().any(|c| c.starts_with("QEMU ")),
            "{name}: no QEMU version"
        );
        assert!(
            t.comments.iter().any(|c| c.starts_with("outcome: ")),
            "{name}: no outcome line"
        );
        for (i, row) in t.rows.iter().enumerate() {
            assert_eq!(row.iteration, i as u64 + 1, "{name}: iterations in order");
            assert_eq!(t.extra_f64(row, "syncs"), Some(1.0), "{name}: {row:?}");
            if i > 0 {
                assert_eq!(row.prev_iter_s, t.rows[i - 1].iter_s, "{name}: X5");
            }
        }
        let mut compared = 0;
        for (i, row) in t.rows.iter().enumerate() {
            let prev_long = i == 0 || t.rows[i - 1].iter_s >= 1.0;
            let Some(counted) = t.extra_f64(row, "dirty_pages_counted") else {
                continue;
            };
            if prev_long && row.iter_s >= 1.0 {
                compared += 1;
                // The rate is an integer (pages/s): allow its rounding.
                let slack = 0.05 * counted + row.iter_s + 5.0;
                assert!(
                    (row.dirty_pages - counted).abs() <= slack,
                    "{name} iteration {}: X1 {} vs counted {counted}",
                    row.iteration,
                    row.dirty_pages
                );
            }
        }
        eprintln!(
            "{name}: {} rows, X1 checked against QEMU's counters on {compared}",
            t.rows.len()
        );
    }
}
