//! Helpers of the command line's end-to-end tests: the trainer's test helpers (a tiny generated
//! dataset and a tiny run, `crates/trainer/tests/common`) and the report comparisons.
#![allow(dead_code)]

#[path = "../../../trainer/tests/common/mod.rs"]
mod trainer_common;
pub(crate) use trainer_common::*;

use recallseg_report::RunSummary;

/// The report's table rows with times (`0s`, `1m05s`, …) replaced: the only cells that
/// differ between two trainings of the same runs.
pub(crate) fn table_rows(md: &str) -> Vec<String> {
    let is_time = |c: &str| {
        let c = c.trim();
        c.ends_with('s')
            && c.len() > 1
            && c[..c.len() - 1]
                .chars()
                .all(|ch| ch.is_ascii_digit() || ch == 'h' || ch == 'm')
    };
    md.lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.split('|')
                .map(|c| if is_time(c) { "T" } else { c })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

pub(crate) fn without_times(runs: &[RunSummary]) -> Vec<RunSummary> {
    runs.iter()
        .cloned()
        .map(|mut r| {
            r.train_seconds = 0.0;
            r
        })
        .collect()
}
