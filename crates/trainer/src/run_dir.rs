//! The run folder: one run at a time, no silent overwrite, no leftovers of killed writes.
//!
//! * [`RunLock`]: an exclusive advisory lock (`flock` on Unix, `LockFileEx` on Windows) on
//!   `<out_dir>/run.lock`, held for the whole run. A second run in the same folder fails at once,
//!   naming the process that holds it. The operating system releases the lock when the holder
//!   exits, however it exits (`kill -9` included), so a lock left by a dead process is stale by
//!   construction and the next run takes it over. The file itself stays (deleting a lock file
//!   while others may open it would let two runs hold "the" lock at once). Network file systems
//!   without `flock` support make the lock advisory only.
//! * [`existing_run`]: what a folder holds of an earlier run, so that `train` without `--resume`
//!   or `--overwrite` refuses to replace it.

use crate::run_files as files;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file inside a run folder.
pub const LOCK_FILE: &str = "run.lock";

/// The exclusive lock on a run folder, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock on `dir` (which must exist), or fails naming the process holding it.
    pub fn acquire(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("{}: cannot open the run lock: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.split_whitespace().collect::<Vec<_>>().join(" ");
                anyhow::bail!(
                    "{} is in use by another run ({}); two runs must not share a folder: wait for \
                     it, stop it, or choose another train.out_dir",
                    dir.display(),
                    if holder.is_empty() {
                        "holder unknown".to_string()
                    } else {
                        holder
                    }
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                anyhow::bail!("{}: cannot lock: {e}", path.display())
            }
        }
        // Who holds it, for the message another run prints.
        let stamp = format!(
            "pid {} started {}\n",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        );
        let _ = file
            .set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(stamp.as_bytes()))
            .and_then(|_| file.flush());
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What `dir` holds of an earlier run (`None` when nothing): the files `train` would replace.
/// A file counts when its name is there at all, also as a dangling or looping link.
pub fn existing_run(dir: &Path) -> Option<String> {
    let present: Vec<&str> = [files::LAST, files::BEST, files::LOG]
        .into_iter()
        .filter(|f| std::fs::symlink_metadata(dir.join(f)).is_ok())
        .collect();
    (!present.is_empty()).then(|| present.join(", "))
}

/// Whether `dir` holds only a log without a single training, validation or checkpoint record
/// (a run stopped before its first step, e.g. while the data was generated): nothing a new
/// run could lose. An unreadable log is not "nothing".
pub fn holds_nothing_to_lose(dir: &Path) -> bool {
    use crate::log::LogRecord;
    let only_log = [files::LAST, files::BEST]
        .into_iter()
        .all(|f| std::fs::symlink_metadata(dir.join(f)).is_err());
    only_log
        && crate::log::read_log(&dir.join(files::LOG)).is_ok_and(|records| {
            records.iter().all(|r| {
                matches!(
                    r,
                    LogRecord::Header { .. }
                        | LogRecord::Resumed { .. }
                        | LogRecord::Stopped { .. }
                )
            })
        })
}

/// Removes the files of an earlier run (`last`, `best`, the log and `metrics.csv`) before a run
/// that replaces it.
pub fn remove_run_files(dir: &Path) -> anyhow::Result<()> {
    for f in [files::LAST, files::BEST, files::LOG, files::METRICS] {
        let p = dir.join(f);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("{}: cannot remove: {e}", p.display()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_folder_fails_and_the_first_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains("in use by another run"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        // The file stays; the lock is free again (a stale lock file is no obstacle).
        assert!(dir.path().join(LOCK_FILE).is_file());
        let again = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(again.path(), dir.path().join(LOCK_FILE));
    }

    #[test]
    fn existing_runs_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(existing_run(dir.path()), None);
        std::fs::write(dir.path().join(files::LOG), b"{}\n").unwrap();
        std::fs::write(dir.path().join(files::BEST), b"x").unwrap();
        assert_eq!(
            existing_run(dir.path()).as_deref(),
            Some("best.safetensors, log.jsonl")
        );
        remove_run_files(dir.path()).unwrap();
        assert_eq!(existing_run(dir.path()), None);
    }
}
