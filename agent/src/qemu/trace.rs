//! The dirty-page trace CSV (docs/trace-format.md): one row per pre-copy iteration,
//! `#` lines are comments, extra columns after the nine named ones are
//! allowed (and kept as text by the reader). The writer is what
//! `vmbw record` uses; the reader is what the predictor and its benchmarks
//! load recorded traces with, and it rejects a bad row naming file:line.

use std::{
    fmt::Write as _,
    io::Write,
    path::{Path, PathBuf},
};

use crate::predict::Iteration;

/// The columns every trace starts with, in order.
pub const COLUMNS: [&str; 9] = [
    "iteration",
    "dirty_pages",
    "mem_usage_pct",
    "cpu_usage_pct",
    "vm_net_bps",
    "prev_iter_s",
    "host_net_bps",
    "iter_s",
    "page_size",
];

/// One pre-copy iteration: X1..X6 of the GM(1,N) model plus timing.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRow {
    /// Pre-copy iteration, 1-based, strictly increasing in a trace.
    pub iteration: u64,
    /// X1: pages dirtied during the iteration.
    pub dirty_pages: f64,
    /// X2: VM memory usage, percent.
    pub mem_usage_pct: f64,
    /// X3: VM (vCPU) CPU usage, percent of its vCPUs.
    pub cpu_usage_pct: f64,
    /// X4: VM network throughput, bits/s.
    pub vm_net_bps: f64,
    /// X5: the previous iteration's duration, seconds (0 for the first).
    pub prev_iter_s: f64,
    /// X6: host uplink usage, bits/s.
    pub host_net_bps: f64,
    /// This iteration's duration, seconds.
    pub iter_s: f64,
    /// Guest page size, bytes.
    pub page_size: u64,
    /// Values of the extra columns, as written.
    pub extra: Vec<String>,
}

impl TraceRow {
    /// The six model variables X1..X6 in order.
    pub fn x(&self) -> [f64; 6] {
        [
            self.dirty_pages,
            self.mem_usage_pct,
            self.cpu_usage_pct,
            self.vm_net_bps,
            self.prev_iter_s,
            self.host_net_bps,
        ]
    }
}

/// A trace read from CSV.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    /// Comment lines without the leading `#` and one space.
    pub comments: Vec<String>,
    /// Names of the columns after the nine standard ones.
    pub extra_columns: Vec<String>,
    pub rows: Vec<TraceRow>,
}

impl Trace {
    /// An extra column's value in `row` parsed as a number; `None` if the
    /// column is absent, empty or not a number.
    pub fn extra_f64(&self, row: &TraceRow, column: &str) -> Option<f64> {
        let i = self.extra_columns.iter().position(|c| c == column)?;
        row.extra.get(i)?.trim().parse().ok()
    }

    /// The guest's RAM, bytes, from the header line `vmbw record` writes
    /// ("...; guest RAM N MiB; ..."); `None` when no comment says.
    pub fn guest_ram_bytes(&self) -> Option<f64> {
        self.comments.iter().find_map(|c| {
            let mib = c.split("guest RAM ").nth(1)?.split(' ').next()?;
            mib.parse::<f64>()
                .ok()
                .filter(|m| m.is_finite() && *m > 0.0)
                .map(|m| m * 1024.0 * 1024.0)
        })
    }

    /// The rows as the predictors see them. Bytes sent in an iteration are
    /// the growth of `transferred_bytes` since the row before (since 0 for
    /// the first: QEMU counts per migration); with `remaining_bytes` they
    /// give the physics drivers. Traces without those columns (or with an
    /// empty or decreasing value) leave them out. Used pages are X2 of the
    /// RAM [`Trace::guest_ram_bytes`] finds.
    pub fn iterations(&self) -> Vec<Iteration> {
        let mut prev_transferred = Some(0.0);
        let ram = self.guest_ram_bytes();
        self.rows
            .iter()
            .map(|row| {
                let transferred = self
                    .extra_f64(row, "transferred_bytes")
                    .filter(|v| v.is_finite());
                let sent = match (transferred, prev_transferred) {
                    (Some(now), Some(then)) if now >= then => Some(now - then),
                    _ => None,
                };
                prev_transferred = transferred;
                Iteration {
                    x: row.x(),
                    duration_s: row.iter_s,
                    sent_bytes: sent,
                    remaining_bytes: self
                        .extra_f64(row, "remaining_bytes")
                        .filter(|v| v.is_finite() && *v >= 0.0),
                    sampled_dirty_pps: self.extra_f64(row, "sampled_dirty_bps").and_then(|bps| {
                        crate::predict::sampled_pages_per_s(bps, row.page_size as f64)
                    }),
                    sampled_end_pps: self
                        .extra_f64(row, "sampled_dirty_end_bps")
                        .and_then(|bps| {
                            crate::predict::sampled_pages_per_s(bps, row.page_size as f64)
                        }),
                    used_pages: ram.and_then(|ram| {
                        crate::predict::used_pages(row.mem_usage_pct, ram, row.page_size as f64)
                    }),
                }
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("reading trace {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing trace")]
    Write {
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: bad header: {reason}")]
    Header {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("{file}: no header line (expected `{}`)", COLUMNS.join(","))]
    NoHeader { file: String },
    #[error("{file}:{line}: column {column}: {reason} (`{value}`)")]
    Field {
        file: String,
        line: usize,
        column: String,
        value: String,
        reason: String,
    },
    #[error("{file}:{line}: {reason}")]
    Row {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("row has {got} extra values but the trace declares {want} extra columns")]
    ExtraMismatch { got: usize, want: usize },
}

/// Reads a trace file.
pub fn read_path(path: &Path) -> Result<Trace, TraceError> {
    let text = std::fs::read_to_string(path).map_err(|source| TraceError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses trace text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Trace, TraceError> {
    let mut trace = Trace::default();
    let mut header_len: Option<usize> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.trim();
        if let Some(c) = content.strip_prefix('#') {
            trace
                .comments
                .push(c.strip_prefix(' ').unwrap_or(c).to_owned());
            continue;
        }
        if content.is_empty() {
            continue;
        }
        let fields: Vec<&str> = content.split(',').map(str::trim).collect();
        let Some(width) = header_len else {
            check_header(&fields, file, line)?;
            trace.extra_columns = fields[COLUMNS.len()..]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            header_len = Some(fields.len());
            continue;
        };
        if fields.len() != width {
            return Err(TraceError::Row {
                file: file.to_owned(),
                line,
                reason: format!("{} values, the header has {width} columns", fields.len()),
            });
        }
        let row = parse_row(&fields, file, line)?;
        if let Some(prev) = trace.rows.last()
            && row.iteration <= prev.iteration
        {
            return Err(TraceError::Row {
                file: file.to_owned(),
                line,
                reason: format!(
                    "iteration {} does not follow iteration {}",
                    row.iteration, prev.iteration
                ),
            });
        }
        trace.rows.push(row);
    }
    if header_len.is_none() {
        return Err(TraceError::NoHeader {
            file: file.to_owned(),
        });
    }
    Ok(trace)
}

fn check_header(fields: &[&str], file: &str, line: usize) -> Result<(), TraceError> {
    for (i, want) in COLUMNS.iter().enumerate() {
        match fields.get(i) {
            Some(got) if got == want => {}
            got => {
                return Err(TraceError::Header {
                    file: file.to_owned(),
                    line,
                    reason: format!(
                        "column {} should be `{want}`, found {}",
                        i + 1,
                        got.map_or("nothing".to_owned(), |g| format!("`{g}`"))
                    ),
                });
            }
        }
    }
    if let Some(empty) = fields[COLUMNS.len()..].iter().position(|f| f.is_empty()) {
        return Err(TraceError::Header {
            file: file.to_owned(),
            line,
            reason: format!("extra column {} has no name", COLUMNS.len() + empty + 1),
        });
    }
    Ok(())
}

fn parse_row(fields: &[&str], file: &str, line: usize) -> Result<TraceRow, TraceError> {
    let bad = |col: usize, reason: &str| TraceError::Field {
        file: file.to_owned(),
        line,
        column: COLUMNS[col].to_owned(),
        value: fields[col].to_owned(),
        reason: reason.to_owned(),
    };
    let int = |col: usize| -> Result<u64, TraceError> {
        fields[col]
            .parse::<u64>()
            .map_err(|_| bad(col, "not a non-negative integer"))
    };
    let num = |col: usize| -> Result<f64, TraceError> {
        let v: f64 = fields[col].parse().map_err(|_| bad(col, "not a number"))?;
        if !v.is_finite() {
            return Err(bad(col, "not a finite number"));
        }
        if v < 0.0 {
            return Err(bad(col, "negative"));
        }
        Ok(v)
    };
    let iteration = int(0)?;
    if iteration == 0 {
        return Err(bad(0, "iterations count from 1"));
    }
    let mem_usage_pct = num(2)?;
    if mem_usage_pct > 100.0 {
        return Err(bad(2, "a percentage above 100"));
    }
    let iter_s = num(7)?;
    if iter_s == 0.0 {
        return Err(bad(7, "an iteration takes some time"));
    }
    let page_size = int(8)?;
    if !page_size.is_power_of_two() || page_size < 512 {
        return Err(bad(8, "not a page size (a power of two >= 512)"));
    }
    Ok(TraceRow {
        iteration,
        dirty_pages: num(1)?,
        mem_usage_pct,
        cpu_usage_pct: num(3)?,
        vm_net_bps: num(4)?,
        prev_iter_s: num(5)?,
        host_net_bps: num(6)?,
        iter_s,
        page_size,
        extra: fields[COLUMNS.len()..]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    })
}

/// Writes a trace: comments and header first, then one row per call, each
/// flushed so that a trace being recorded can be read at any time.
pub struct TraceWriter<W: Write> {
    out: W,
    extra: usize,
}

impl<W: Write> TraceWriter<W> {
    /// `comments` are written one per line after `# `; `extra_columns` are
    /// appended to the header.
    pub fn new(
        mut out: W,
        comments: &[String],
        extra_columns: &[&str],
    ) -> Result<Self, TraceError> {
        let mut head = String::new();
        for c in comments {
            for l in c.lines() {
                let _ = writeln!(head, "# {l}");
            }
        }
        let mut cols: Vec<&str> = COLUMNS.to_vec();
        cols.extend_from_slice(extra_columns);
        let _ = writeln!(head, "{}", cols.join(","));
        out.write_all(head.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|source| TraceError::Write { source })?;
        Ok(TraceWriter {
            out,
            extra: extra_columns.len(),
        })
    }

    pub fn write_row(&mut self, row: &TraceRow) -> Result<(), TraceError> {
        if row.extra.len() != self.extra {
            return Err(TraceError::ExtraMismatch {
                got: row.extra.len(),
                want: self.extra,
            });
        }
        let mut line = format!(
            "{},{},{:.2},{:.2},{:.0},{:.3},{:.0},{:.3},{}",
            row.iteration,
            fmt_num(row.dirty_pages),
            row.mem_usage_pct,
            row.cpu_usage_pct,
            row.vm_net_bps,
            row.prev_iter_s,
            row.host_net_bps,
            row.iter_s,
            row.page_size
        );
        for e in &row.extra {
            line.push(',');
            line.push_str(e);
        }
        line.push('\n');
        self.out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(|source| TraceError::Write { source })
    }

    /// Writes comment lines (`# ...`); allowed anywhere in a trace.
    pub fn comment(&mut self, text: &str) -> Result<(), TraceError> {
        let mut out = String::new();
        for l in text.lines() {
            let _ = writeln!(out, "# {l}");
        }
        self.out
            .write_all(out.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(|source| TraceError::Write { source })
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Whole numbers without a fraction, others with one decimal.
fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "iteration,dirty_pages,mem_usage_pct,cpu_usage_pct,vm_net_bps,prev_iter_s,host_net_bps,iter_s,page_size";

    fn row(iteration: u64) -> TraceRow {
        TraceRow {
            iteration,
            dirty_pages: 1234.0,
            mem_usage_pct: 41.5,
            cpu_usage_pct: 97.25,
            vm_net_bps: 1e6,
            prev_iter_s: 2.5,
            host_net_bps: 3e7,
            iter_s: 1.75,
            page_size: 4096,
            extra: vec!["7".into(), String::new()],
        }
    }

    #[test]
    fn round_trip_keeps_values_comments_and_extras() {
        let mut w = TraceWriter::new(
            Vec::new(),
            &["made by a test".into(), "two\nlines".into()],
            &["counted", "note"],
        )
        .expect("writer");
        w.write_row(&row(1)).expect("row");
        w.write_row(&row(2)).expect("row");
        let text = String::from_utf8(w.into_inner()).expect("utf8");
        let t = parse(&text, "mem").expect("parses");
        assert_eq!(t.comments, vec!["made by a test", "two", "lines"]);
        assert_eq!(t.extra_columns, vec!["counted", "note"]);
        assert_eq!(t.rows, vec![row(1), row(2)]);
        assert_eq!(t.extra_f64(&t.rows[0], "counted"), Some(7.0));
        assert_eq!(t.extra_f64(&t.rows[0], "note"), None);
        assert_eq!(t.rows[0].x()[0], 1234.0);
    }

    /// The header's RAM (as `vmbw record` writes it) turns X2 into used
    /// pages, and a sampled rate gets its rounding back; without the
    /// header line there are no used pages.
    #[test]
    fn iterations_take_used_pages_from_the_header_s_ram() {
        let body = format!("{HEADER},sampled_dirty_bps\n1,10,50,5,0,0,0,0.5,4096,1048576\n");
        let with = format!("# QEMU 10.0.2; guest RAM 128 MiB; 1 vCPU(s)\n{body}");
        let t = parse(&with, "t").expect("parses");
        assert_eq!(t.guest_ram_bytes(), Some(128.0 * 1024.0 * 1024.0));
        let it = t.iterations();
        assert_eq!(it[0].used_pages, Some(16384.0));
        assert_eq!(it[0].sampled_dirty_pps, Some(320.0));
        let without = parse(&body, "t").expect("parses");
        assert_eq!(without.guest_ram_bytes(), None);
        assert_eq!(without.iterations()[0].used_pages, None);
        let odd = parse(&format!("# guest RAM lots MiB\n{body}"), "t").expect("parses");
        assert_eq!(odd.guest_ram_bytes(), None);
    }

    #[test]
    fn minimal_trace_without_extras() {
        let t = parse(&format!("{HEADER}\n1,10,5,5,0,0,0,0.5,4096\n"), "t").expect("parses");
        assert_eq!(t.rows.len(), 1);
        assert!(t.extra_columns.is_empty());
        // The predictors get X1..X6 and the duration, no bytes.
        let it = t.iterations();
        assert_eq!(it.len(), 1);
        assert_eq!(it[0].x[0], 10.0);
        assert_eq!(it[0].duration_s, 0.5);
        assert_eq!((it[0].sent_bytes, it[0].remaining_bytes), (None, None));
    }

    #[test]
    fn iterations_take_bytes_sent_and_left_from_the_extra_columns() {
        let t = parse(
            &format!(
                "{HEADER},transferred_bytes,remaining_bytes\n\
                 1,10,5,5,0,0,0,2,4096,8000000,4000000\n\
                 2,10,5,5,0,2,0,1,4096,12000000,\n\
                 3,10,5,5,0,1,0,1,4096,11000000,1000\n"
            ),
            "t",
        )
        .expect("parses");
        let got: Vec<(Option<f64>, Option<f64>)> = t
            .iterations()
            .iter()
            .map(|i| (i.sent_bytes, i.remaining_bytes))
            .collect();
        assert_eq!(
            got,
            vec![
                // QEMU counts per migration: the first row sent all of it.
                (Some(8e6), Some(4e6)),
                (Some(4e6), None),
                // A counter going backwards is no measurement.
                (None, Some(1000.0)),
            ]
        );
        assert_eq!(t.iterations()[0].next_duration_s(), Some(1.0));
    }

    fn err(text: &str) -> String {
        match parse(text, "bad.csv") {
            Ok(_) => String::from("parsed"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn rejects_bad_rows_naming_file_and_line() {
        let e = err(&format!(
            "# c\n{HEADER}\n1,10,5,5,0,0,0,0.5,4096\n2,ten,5,5,0,0,0,0.5,4096\n"
        ));
        assert_eq!(
            e, "bad.csv:4: column dirty_pages: not a number (`ten`)",
            "{e}"
        );
        assert!(err(&format!("{HEADER}\n1,10,5,5,0,0,0,0.5\n")).starts_with("bad.csv:2: 8 values"));
        assert!(err(&format!("{HEADER}\n1,10,5,5,-1,0,0,0.5,4096\n")).contains("negative"));
        assert!(err(&format!("{HEADER}\n1,10,5,5,0,0,0,0.5,4000\n")).contains("page size"));
        assert!(err(&format!("{HEADER}\n1,10,500,5,0,0,0,0.5,4096\n")).contains("above 100"));
        assert!(err(&format!("{HEADER}\n1,10,5,5,0,0,0,0,4096\n")).contains("some time"));
        assert!(err(&format!("{HEADER}\n0,10,5,5,0,0,0,1,4096\n")).contains("from 1"));
        assert!(err(&format!("{HEADER}\n1,NaN,5,5,0,0,0,1,4096\n")).contains("finite"));
        assert!(
            err(&format!(
                "{HEADER}\n2,10,5,5,0,0,0,1,4096\n2,10,5,5,0,0,0,1,4096\n"
            ))
            .contains("bad.csv:3: iteration 2 does not follow iteration 2")
        );
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(
            err("# only comments\n"),
            "bad.csv: no header line (expected `iteration,dirty_pages,mem_usage_pct,cpu_usage_pct,vm_net_bps,prev_iter_s,host_net_bps,iter_s,page_size`)"
        );
        assert!(err("iteration,dirty\n").contains("bad.csv:1: bad header: column 2"));
        assert!(err(&format!("{HEADER},\n")).contains("has no name"));
    }

    #[test]
    fn writer_checks_extra_count() {
        let mut w = TraceWriter::new(Vec::new(), &[], &["a"]).expect("writer");
        assert!(matches!(
            w.write_row(&row(1)),
            Err(TraceError::ExtraMismatch { got: 2, want: 1 })
        ));
    }
}
