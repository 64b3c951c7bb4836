//! Run logging: a progress display (an indicatif bar on a terminal, plain lines otherwise), a
//! JSON-lines log (`log.jsonl`) holding every logged figure, one [`LogEntry`] per line, and
//! `metrics.csv`, one row per validation ([`metrics_csv`]).
//!
//! Every line of `log.jsonl` carries the wall-clock `time` it was written (RFC 3339, UTC, with
//! milliseconds) and `elapsed_s`, the seconds the run has been running, summed over its
//! invocations (the time between an interruption and its resume is not counted), then the
//! record's `kind` and fields:
//!
//! ```text
//! {"time":"2026-11-29T05:41:17.125Z","elapsed_s":0.0,"kind":"header","class_names":["void","sky"],"loss":"recall_ce","iters":600}
//! {"time":"2026-11-29T05:41:19.502Z","elapsed_s":2.377,"kind":"train","step":20,"loss":1.93,"lr":0.001,"steps_per_s":8.4,"class_weights":[0.41,null]}
//! {"time":"2026-11-29T05:41:20.007Z","elapsed_s":2.882,"kind":"val","step":20,"loss":1.87,"mean_accuracy":0.31,…}
//! ```

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

/// One line of `log.jsonl`: when it was written and what it records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Wall-clock time the line was written, RFC 3339 in UTC (`2026-11-29T05:41:17.125Z`);
    /// `None` in logs written before timestamps were added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Seconds the run had been running when the line was written, summed over the run's
    /// invocations (a resumed run continues from the last kept line's value); `None` in older
    /// logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_s: Option<f64>,
    /// The record.
    #[serde(flatten)]
    pub record: LogRecord,
}

/// What one line of `log.jsonl` records (its `kind`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogRecord {
    /// The first line of a run: what the per-class lists of the other records refer to.
    Header {
        /// Class names in train-id order (the order of `recall`, `iou` and `class_weights`).
        class_names: Vec<String>,
        /// The loss's name (`recall_ce`).
        loss: String,
        /// Steps the run is configured for (`train.iters` when it started).
        iters: u64,
        /// Processes (data-parallel ranks) the run started with; absent in older logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ranks: Option<u64>,
    },
    /// The run was resumed from a checkpoint at `step` (the lines after it were dropped).
    Resumed {
        /// The checkpoint's step.
        step: u64,
        /// Processes (data-parallel ranks) of this invocation (the count may change on
        /// resume); absent in older logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ranks: Option<u64>,
    },
    /// Training figures at a logged step.
    Train {
        /// Steps completed.
        step: u64,
        /// Mean loss over the steps since the previous record.
        loss: f64,
        /// Learning rate of the last step.
        lr: f64,
        /// Throughput since the previous record.
        steps_per_s: f64,
        /// Per-class weights the loss used on the last step (`1 − recall` for Recall loss,
        /// mean `(1 − p)^γ` for Focal loss; Fig. 4 of the paper), if the loss reports them;
        /// `null` for classes absent from the batch.
        class_weights: Option<Vec<Option<f32>>>,
        /// The unweighted value of each term of a combined loss (`[loss] name = "combined"`) on
        /// the last step, by term key (`"recall_ce"`, `"lovasz"`, `"dice_2"`); absent for a
        /// single loss.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        loss_terms: Option<std::collections::BTreeMap<String, f64>>,
    },
    /// Validation figures.
    Val {
        /// Steps completed.
        step: u64,
        /// Validation loss: the run's loss (in its current state, not updated) averaged over
        /// the validation images; `None` in older logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        loss: Option<f64>,
        /// Mean accuracy (mean recall) over classes.
        mean_accuracy: Option<f64>,
        /// Mean IoU over classes.
        mean_iou: Option<f64>,
        /// Pixel accuracy.
        pixel_accuracy: Option<f64>,
        /// Per-class recall.
        recall: Vec<Option<f64>>,
        /// Per-class IoU.
        iou: Vec<Option<f64>>,
        /// Whether this is the best mean IoU so far (then `best.safetensors` was written).
        best: bool,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Steps completed.
        step: u64,
        /// File written.
        path: PathBuf,
        /// Why: `periodic`, `final`, `interrupt`, `best`.
        reason: String,
    },
    /// The run stopped before its last step.
    Stopped {
        /// Steps completed (and saved) before stopping.
        step: u64,
        /// Why.
        reason: String,
    },
    /// The test split (`data.test_split`) evaluated with the final weights when the run ended
    /// (also in `test.json`).
    Test {
        /// Steps completed (the weights of `last.safetensors`).
        step: u64,
        /// The split's name.
        split: String,
        /// Images evaluated.
        images: usize,
        /// Mean accuracy (mean recall) over classes.
        mean_accuracy: Option<f64>,
        /// Mean IoU over classes.
        mean_iou: Option<f64>,
        /// Pixel accuracy.
        pixel_accuracy: Option<f64>,
        /// Per-class recall.
        recall: Vec<Option<f64>>,
        /// Per-class IoU.
        iou: Vec<Option<f64>>,
    },
}

impl LogRecord {
    /// The step the record belongs to.
    pub fn step(&self) -> u64 {
        match self {
            LogRecord::Header { .. } => 0,
            LogRecord::Resumed { step, .. }
            | LogRecord::Train { step, .. }
            | LogRecord::Val { step, .. }
            | LogRecord::Checkpoint { step, .. }
            | LogRecord::Stopped { step, .. }
            | LogRecord::Test { step, .. } => *step,
        }
    }
}

/// Appends [`LogRecord`]s to a JSON-lines file, each stamped with its time and elapsed
/// seconds ([`LogEntry`]).
pub struct JsonlLog {
    path: PathBuf,
    /// `None`: a log that writes nothing ([`JsonlLog::discard`]).
    file: Option<std::fs::File>,
    start: Instant,
    /// Elapsed seconds of the earlier invocations (the last kept line's `elapsed_s`).
    elapsed_before: f64,
}

impl JsonlLog {
    /// Creates (truncates) the log; elapsed seconds count from now.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file =
            std::fs::File::create(path).map_err(|e| with_path(e, "creating the run log", path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(file),
            start: Instant::now(),
            elapsed_before: 0.0,
        })
    }

    /// A log that writes nothing (the data-parallel ranks other than rank 0, which alone
    /// writes the run's log).
    pub fn discard(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            file: None,
            start: Instant::now(),
            elapsed_before: 0.0,
        }
    }

    /// Opens the log of a resumed run: keeps the lines up to `step` as they were (those after
    /// it belong to steps that will be run again, and `stopped` lines end an invocation),
    /// and continues the elapsed seconds from the last kept line. The caller writes the
    /// [`LogRecord::Resumed`] line when steps remain (a finished run reopened changes nothing).
    ///
    /// A last line cut short (no final newline, not valid JSON: a write that a full disk or a
    /// kill interrupted) lies after the checkpoint and is dropped too; a malformed line anywhere
    /// else is an error naming it. The kept lines replace the file atomically (a temporary file
    /// renamed over it), so an interruption here loses nothing.
    pub fn resume(path: &Path, step: u64) -> std::io::Result<Self> {
        let kept: Vec<LogEntry> = if path.exists() {
            read_log_entries_for_resume(path)?
                .into_iter()
                .filter(|r| {
                    r.record.step() <= step && !matches!(r.record, LogRecord::Stopped { .. })
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut text = String::new();
        for r in &kept {
            text.push_str(&serde_json::to_string(r).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        recallseg_files::write_atomic(path, |f| f.write_all(text.as_bytes())).map_err(|e| {
            std::io::Error::new(
                e.source.kind(),
                format!("rewriting the run log {}: {}", path.display(), e.source),
            )
        })?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| with_path(e, "opening the run log", path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(file),
            start: Instant::now(),
            elapsed_before: kept.iter().filter_map(|e| e.elapsed_s).fold(0.0, f64::max),
        })
    }

    /// Seconds the run has been running (earlier invocations included).
    pub fn elapsed_s(&self) -> f64 {
        self.elapsed_before + self.start.elapsed().as_secs_f64()
    }

    /// Appends one record, stamped with the current time and elapsed seconds, and flushes it.
    pub fn write(&mut self, record: &LogRecord) -> std::io::Result<()> {
        // Milliseconds are plenty and keep the lines short.
        let elapsed = (self.elapsed_s() * 1000.0).round() / 1000.0;
        self.write_entry(&LogEntry {
            time: Some(rfc3339_utc(SystemTime::now())),
            elapsed_s: Some(elapsed),
            record: record.clone(),
        })
    }

    fn write_entry(&mut self, entry: &LogEntry) -> std::io::Result<()> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        let mut line = serde_json::to_string(entry).map_err(std::io::Error::other)?;
        line.push('\n');
        // One write of the whole line, so that a failure leaves at most one partial last line
        // (which a resume drops).
        file.write_all(line.as_bytes())
            .and_then(|()| file.flush())
            .map_err(|e| with_path(e, "appending to the run log", &self.path))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `time` as RFC 3339 in UTC with milliseconds (`2026-11-29T05:41:17.125Z`). Times before 1970
/// are written as 1970-01-01T00:00:00.000Z.
pub fn rfc3339_utc(time: SystemTime) -> String {
    let d = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's civil_from_days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Reads every record of a JSON-lines log (without the times; see [`read_log_entries`]). A
/// malformed line is an error naming the line.
pub fn read_log(path: &Path) -> std::io::Result<Vec<LogRecord>> {
    Ok(read_log_entries(path)?
        .into_iter()
        .map(|e| e.record)
        .collect())
}

/// An I/O error with what was being done and the file in its text (the kind is kept).
fn with_path(e: std::io::Error, doing: &str, path: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

/// [`read_log_entries`], but a last line without its final newline that does not parse (a
/// write cut short) is left out instead of being an error.
fn read_log_entries_for_resume(path: &Path) -> std::io::Result<Vec<LogEntry>> {
    let bytes = std::fs::read(path).map_err(|e| with_path(e, "cannot read the run log", path))?;
    let complete = match bytes.last() {
        Some(b'\n') | None => bytes.len(),
        Some(_) => {
            let start = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let parses = std::str::from_utf8(&bytes[start..])
                .ok()
                .is_some_and(|l| serde_json::from_str::<LogEntry>(l).is_ok());
            if parses {
                bytes.len()
            } else {
                start
            }
        }
    };
    parse_log_lines(&bytes[..complete], path)
}

fn parse_log_lines(bytes: &[u8], path: &Path) -> std::io::Result<Vec<LogEntry>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: not UTF-8: {e}", path.display()),
        )
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: LogEntry = serde_json::from_str(line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}:{}: {e}", path.display(), i + 1),
            )
        })?;
        out.push(r);
    }
    Ok(out)
}

/// Reads every line of a JSON-lines log with its time and elapsed seconds. A malformed line is
/// an error naming the line.
pub fn read_log_entries(path: &Path) -> std::io::Result<Vec<LogEntry>> {
    let bytes = std::fs::read(path).map_err(|e| with_path(e, "cannot read the run log", path))?;
    parse_log_lines(&bytes, path)
}

/// The class names of a log: its header's, else `class0`, `class1`, … as many as the longest
/// per-class list.
pub fn log_class_names(entries: &[LogEntry]) -> Vec<String> {
    for e in entries {
        if let LogRecord::Header { class_names, .. } = &e.record {
            return class_names.clone();
        }
    }
    let n = entries
        .iter()
        .map(|e| match &e.record {
            LogRecord::Val { recall, .. } => recall.len(),
            LogRecord::Train {
                class_weights: Some(w),
                ..
            } => w.len(),
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    (0..n).map(|c| format!("class{c}")).collect()
}

/// The fixed columns of `metrics.csv`, before `recall_<class>` and `iou_<class>` of every class.
pub const METRICS_COLUMNS: [&str; 10] = [
    "step",
    "time",
    "elapsed_s",
    "train_loss",
    "lr",
    "val_loss",
    "pixel_accuracy",
    "mean_accuracy",
    "mean_iou",
    "best",
];

/// `metrics.csv` of a log: a header row ([`METRICS_COLUMNS`], then `recall_<class>` and
/// `iou_<class>` for every class in train-id order), then one row per validation line:
/// `train_loss` and `lr` are those of the latest training line at or before its step, figures
/// are fractions (as in the log), undefined values are empty cells, `best` is 0 or 1. Read by
/// pandas (`pd.read_csv`), spreadsheets and gnuplot (`set datafile separator ","`).
pub fn metrics_csv(entries: &[LogEntry]) -> String {
    let names = log_class_names(entries);
    let mut header: Vec<String> = METRICS_COLUMNS.iter().map(|s| s.to_string()).collect();
    header.extend(names.iter().map(|n| format!("recall_{n}")));
    header.extend(names.iter().map(|n| format!("iou_{n}")));
    let mut out = csv_row(header.iter().map(|h| h.to_string()));
    let mut train: Option<(f64, f64)> = None;
    let num = |v: Option<f64>| {
        v.filter(|x| x.is_finite())
            .map_or(String::new(), |x| format!("{x}"))
    };
    for e in entries {
        match &e.record {
            LogRecord::Train { loss, lr, .. } => train = Some((*loss, *lr)),
            LogRecord::Val {
                step,
                loss,
                mean_accuracy,
                mean_iou,
                pixel_accuracy,
                recall,
                iou,
                best,
            } => {
                let mut row = vec![
                    step.to_string(),
                    e.time.clone().unwrap_or_default(),
                    num(e.elapsed_s),
                    num(train.map(|t| t.0)),
                    num(train.map(|t| t.1)),
                    num(*loss),
                    num(*pixel_accuracy),
                    num(*mean_accuracy),
                    num(*mean_iou),
                    u8::from(*best).to_string(),
                ];
                for list in [recall, iou] {
                    row.extend((0..names.len()).map(|c| num(list.get(c).copied().flatten())));
                }
                out.push_str(&csv_row(row.into_iter()));
            }
            _ => {}
        }
    }
    out
}

/// One CSV line; fields with a comma, a quote or a line break are quoted (RFC 4180).
fn csv_row(fields: impl Iterator<Item = String>) -> String {
    let mut line = fields
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

/// Rewrites `metrics.csv` of the run folder `dir` from its `log.jsonl` (atomically), so the two
/// always agree, also after a resume. Returns the file written.
pub fn write_metrics_csv(dir: &Path) -> anyhow::Result<PathBuf> {
    let entries = read_log_entries(&dir.join(crate::run_files::LOG))?;
    let path = dir.join(crate::run_files::METRICS);
    let text = metrics_csv(&entries);
    recallseg_files::write_bytes_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// Progress display of a training run.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    start: Instant,
    start_step: u64,
    label: String,
}

impl Progress {
    /// A progress display for steps `start_step..total`: a bar when `interactive` (stderr is a
    /// terminal), otherwise plain lines on stderr.
    pub fn new(label: &str, start_step: u64, total: u64, interactive: bool) -> Self {
        let bar = interactive.then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                // `wide_bar` takes the columns the rest leaves on the terminal (re-measured at
                // every draw), so the line fits the terminal instead of wrapping.
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{wide_bar}] {pos}/{len} {msg} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            b.set_position(start_step);
            b
        });
        Self {
            bar,
            total,
            start: Instant::now(),
            start_step,
            label: label.to_string(),
        }
    }

    /// Whether stderr is a terminal.
    pub fn stderr_is_terminal() -> bool {
        use std::io::IsTerminal;
        std::io::stderr().is_terminal()
    }

    /// Steps per second since the display started.
    pub fn rate(&self, step: u64) -> f64 {
        let dt = self.start.elapsed().as_secs_f64();
        if dt > 0.0 {
            (step.saturating_sub(self.start_step)) as f64 / dt
        } else {
            0.0
        }
    }

    /// Moves to `step`; `loss` is shown (on the bar, or as a line when `line` is set).
    pub fn update(&self, step: u64, loss: f64, line: bool) {
        let rate = self.rate(step);
        let eta = if rate > 0.0 {
            (self.total.saturating_sub(step)) as f64 / rate
        } else {
            0.0
        };
        match &self.bar {
            Some(b) => {
                b.set_position(step);
                b.set_message(format!("loss {loss:.4} {rate:.2} steps/s"));
            }
            None if line => note!(
                "[{}] step {step}/{} loss {loss:.4} {rate:.2} steps/s ETA {}",
                self.label,
                self.total,
                recallseg_metrics::format_seconds(eta)
            ),
            None => {}
        }
    }

    /// Prints a message without breaking the bar.
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => note!("[{}] {msg}", self.label),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(step: u64) -> LogRecord {
        LogRecord::Train {
            step,
            loss: 1.0 / (step as f64 + 1.0),
            lr: 1e-3,
            steps_per_s: 2.0,
            class_weights: Some(vec![Some(0.5), None]),
            loss_terms: (step == 2).then(|| [("dice".to_string(), 0.25)].into()),
        }
    }

    #[test]
    fn jsonl_round_trip_and_resume_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let mut log = JsonlLog::create(&path).unwrap();
        for s in [10, 20, 30] {
            log.write(&train(s)).unwrap();
        }
        log.write(&LogRecord::Val {
            step: 30,
            loss: Some(0.75),
            mean_accuracy: Some(0.5),
            mean_iou: None,
            pixel_accuracy: Some(0.9),
            recall: vec![Some(1.0), None],
            iou: vec![None, Some(0.0)],
            best: true,
        })
        .unwrap();
        drop(log);
        let all = read_log(&path).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0], train(10));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().next().unwrap().contains("\"kind\":\"train\""));
        // Resuming from step 20 drops the records of steps 30 and says it resumed.
        let mut log = JsonlLog::resume(&path, 20).unwrap();
        log.write(&LogRecord::Resumed {
            step: 20,
            ranks: None,
        })
        .unwrap();
        log.write(&train(30)).unwrap();
        let all = read_log(&path).unwrap();
        assert_eq!(
            all,
            vec![
                train(10),
                train(20),
                LogRecord::Resumed {
                    step: 20,
                    ranks: None,
                },
                train(30)
            ]
        );
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        std::fs::write(
            &path,
            "{\"kind\":\"stopped\",\"step\":1,\"reason\":\"x\"}\nnot json\n",
        )
        .unwrap();
        let e = read_log(&path).unwrap_err().to_string();
        assert!(e.contains("log.jsonl:2"), "{e}");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        use std::time::Duration;
        // Reference: GNU `date -u -d @N +%Y-%m-%dT%H:%M:%S`.
        for (secs, want) in [
            (0u64, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_709_164_799, "2024-02-28T23:59:59"),
            (4_102_444_800, "2100-01-01T00:00:00"),
            (1_795_930_877, "2026-11-29T05:41:17"),
        ] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + 125);
            assert_eq!(rfc3339_utc(t), format!("{want}.125Z"));
        }
    }

    #[test]
    fn every_line_is_stamped_and_resume_continues_the_elapsed_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let mut log = JsonlLog::create(&path).unwrap();
        log.write(&LogRecord::Header {
            class_names: vec!["a".into(), "b".into()],
            loss: "recall_ce".into(),
            iters: 30,
            ranks: Some(1),
        })
        .unwrap();
        log.write(&train(10)).unwrap();
        log.write(&train(20)).unwrap();
        drop(log);
        // Pretend the first invocation ran for 100 s before step 20 was logged.
        let text = std::fs::read_to_string(&path).unwrap();
        let mut entries: Vec<LogEntry> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(entries
            .iter()
            .all(|e| e.time.as_ref().is_some_and(|t| t.ends_with('Z'))));
        entries[2].elapsed_s = Some(100.0);
        let lines: Vec<String> = entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        assert!(lines[0].starts_with("{\"time\":\""), "{}", lines[0]);
        assert!(lines[0].contains("\"kind\":\"header\",\"class_names\":[\"a\",\"b\"]"));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let mut log = JsonlLog::resume(&path, 20).unwrap();
        log.write(&LogRecord::Resumed {
            step: 20,
            ranks: None,
        })
        .unwrap();
        log.write(&train(30)).unwrap();
        let all = read_log_entries(&path).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(
            all[3].record,
            LogRecord::Resumed {
                step: 20,
                ranks: None,
            }
        );
        let (e3, e4) = (all[3].elapsed_s.unwrap(), all[4].elapsed_s.unwrap());
        assert!((100.0..101.0).contains(&e3) && e4 >= e3, "{e3} {e4}");
        // Older logs without times still read.
        std::fs::write(
            &path,
            "{\"kind\":\"stopped\",\"step\":1,\"reason\":\"x\"}\n",
        )
        .unwrap();
        let old = read_log_entries(&path).unwrap();
        assert_eq!((old[0].time.as_deref(), old[0].elapsed_s), (None, None));
    }

    #[test]
    fn metrics_csv_has_one_row_per_validation() {
        let at = |record: LogRecord, t: f64| LogEntry {
            time: Some(format!("2026-01-01T00:00:{:02}.000Z", t as u64)),
            elapsed_s: Some(t),
            record,
        };
        let val = |step: u64, best: bool| LogRecord::Val {
            step,
            loss: Some(0.5),
            mean_accuracy: Some(0.25),
            mean_iou: None,
            pixel_accuracy: Some(0.9),
            recall: vec![Some(1.0), None],
            iou: vec![Some(0.125), Some(0.0)],
            best,
        };
        let entries = vec![
            at(
                LogRecord::Header {
                    class_names: vec!["traffic sign".into(), "a,b".into()],
                    loss: "ce".into(),
                    iters: 20,
                    ranks: None,
                },
                0.0,
            ),
            at(train(10), 1.0),
            at(val(10, true), 2.0),
            at(train(20), 3.0),
            at(val(20, false), 4.5),
        ];
        let csv = metrics_csv(&entries);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines,
            [
                "step,time,elapsed_s,train_loss,lr,val_loss,pixel_accuracy,mean_accuracy,mean_iou,\
                 best,recall_traffic sign,\"recall_a,b\",iou_traffic sign,\"iou_a,b\"",
                "10,2026-01-01T00:00:02.000Z,2,0.09090909090909091,0.001,0.5,0.9,0.25,,1,1,,0.125,0",
                "20,2026-01-01T00:00:04.000Z,4.5,0.047619047619047616,0.001,0.5,0.9,0.25,,0,1,,0.125,0",
            ]
        );
        // Without a header (older logs) the classes are numbered.
        let csv = metrics_csv(&entries[1..]);
        assert!(csv.starts_with(&(METRICS_COLUMNS.join(",") + ",recall_class0,recall_class1,")));
    }

    #[test]
    fn durations() {
        assert_eq!(recallseg_metrics::format_seconds(3.2), "3s");
        assert_eq!(recallseg_metrics::format_seconds(123.0), "2m03s");
        assert_eq!(recallseg_metrics::format_seconds(3723.0), "1h02m03s");
    }
}
