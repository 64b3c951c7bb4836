//! Run logging: a progress display (an indicatif bar on a terminal, plain lines otherwise) and a
//! JSON-lines log (`log.jsonl`) holding every logged figure, one [`LogRecord`] per line.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One line of `log.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogRecord {
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
    },
    /// Validation figures.
    Val {
        /// Steps completed.
        step: u64,
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
}

impl LogRecord {
    /// The step the record belongs to.
    pub fn step(&self) -> u64 {
        match self {
            LogRecord::Train { step, .. }
            | LogRecord::Val { step, .. }
            | LogRecord::Checkpoint { step, .. }
            | LogRecord::Stopped { step, .. } => *step,
        }
    }
}

/// Appends [`LogRecord`]s to a JSON-lines file.
pub struct JsonlLog {
    path: PathBuf,
    file: std::fs::File,
}

impl JsonlLog {
    /// Creates (truncates) the log.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::create(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Opens the log of a resumed run: keeps the records up to `step` (those after it belong to
    /// steps that will be run again) and appends from there.
    pub fn resume(path: &Path, step: u64) -> std::io::Result<Self> {
        let kept: Vec<LogRecord> = if path.exists() {
            read_log(path)?
                .into_iter()
                .filter(|r| r.step() <= step && !matches!(r, LogRecord::Stopped { .. }))
                .collect()
        } else {
            Vec::new()
        };
        let mut log = Self::create(path)?;
        for r in &kept {
            log.write(r)?;
        }
        Ok(log)
    }

    /// Appends one record and flushes it.
    pub fn write(&mut self, record: &LogRecord) -> std::io::Result<()> {
        let line = serde_json::to_string(record).map_err(std::io::Error::other)?;
        writeln!(self.file, "{line}")?;
        self.file.flush()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every record of a JSON-lines log. A malformed line is an error naming the line.
pub fn read_log(path: &Path) -> std::io::Result<Vec<LogRecord>> {
    let f = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    for (i, line) in f.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let r: LogRecord = serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}:{}: {e}", path.display(), i + 1),
            )
        })?;
        out.push(r);
    }
    Ok(out)
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
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}",
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
            None if line => eprintln!(
                "[{}] step {step}/{} loss {loss:.4} {rate:.2} steps/s ETA {}",
                self.label,
                self.total,
                fmt_secs(eta)
            ),
            None => {}
        }
    }

    /// Prints a message without breaking the bar.
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("[{}] {msg}", self.label),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// `1h02m03s` / `2m03s` / `3s`.
pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
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
        // Resuming from step 20 drops the records of steps 30.
        let mut log = JsonlLog::resume(&path, 20).unwrap();
        log.write(&train(30)).unwrap();
        let all = read_log(&path).unwrap();
        assert_eq!(all, vec![train(10), train(20), train(30)]);
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
    fn durations() {
        assert_eq!(fmt_secs(3.2), "3s");
        assert_eq!(fmt_secs(123.0), "2m03s");
        assert_eq!(fmt_secs(3723.0), "1h02m03s");
    }
}
