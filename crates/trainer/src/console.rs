//! Writing to the terminal without panicking: `println!` and `eprintln!` panic when the stream
//! is closed or full (`recallseg eval --json > /dev/full`, `recallseg train 2>&1 | head`, a
//! closed terminal under `nohup … | tee`), and a panic in the training loop would end the run
//! without its checkpoint.
//!
//! * `note!` (standard error: progress, notes, warnings) ignores a failed
//!   write: losing a progress line must never stop a run.
//! * `out!` (standard output: what the user asked for — JSON, tables, a preset)
//!   returns an error naming standard output, which goes the way of any other error.

use std::io::Write;

/// Writes one line to standard error; a failure (closed pipe, full disk) is ignored.
pub fn note_line(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// Writes `warning: <line>` to standard error unless this process already wrote the same
/// warning (a dataset folder opened for its train and its validation split has the same
/// skipped files: said once).
pub fn warn_once(line: &str) {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if said.iter().any(|s| s == line) {
        return;
    }
    said.push(line.to_string());
    note_line(format_args!("warning: {line}"));
}

/// Writes one line to standard output; a failure is an error that says so.
pub fn out_line(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| anyhow::anyhow!("writing to standard output: {e}"))
}
