//! Files that are never half-written.
//!
//! [`write_atomic`] fills a temporary file in the target's folder, flushes and syncs it to
//! disk, renames it over the target and syncs the folder, so a reader (or a crash, a `kill -9`,
//! a full disk) sees either the old file or the complete new one. [`write_bytes_atomic`] is the
//! same for bytes in memory. A process killed during a write leaves its temporary file
//! (`.<name>.tmp-<pid>-<n>`, [`is_temp_file_name`]); [`remove_stale_temp_files`] removes them.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("results.json");
//! recallseg_files::write_bytes_atomic(&path, b"{}")?;
//! let err = recallseg_files::write_atomic(&path, |_| Err(std::io::Error::other("disk full")))
//!     .unwrap_err();
//! assert!(err.to_string().starts_with("cannot write "));
//! assert_eq!(std::fs::read(&path)?, b"{}"); // the old file is intact
//! # Ok(())
//! # }
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file could not be written; nothing was changed at `path`.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    /// The file that was to be written.
    pub path: PathBuf,
    /// What failed (creating, writing, syncing or renaming the temporary file).
    #[source]
    pub source: std::io::Error,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `path` atomically: `write` fills a temporary file in the same folder (created when
/// missing), which is flushed, synced (`fsync`) and renamed over `path`; on Unix the folder is
/// then synced. If `write` or any step fails, the temporary file is removed, `path` is left as
/// it was, and the error names `path`.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), WriteError> {
    let err = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::other("the path has no file name")))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        write(&mut f)?;
        f.flush()?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        #[cfg(unix)]
        if let Ok(d) = std::fs::File::open(&dir) {
            // Persist the rename itself; failure to sync a folder is not fatal.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// [`write_atomic`] of bytes already in memory.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic(path, |f| f.write_all(bytes))
}

/// Whether `name` is a temporary file of [`write_atomic`] (`.<target>.tmp-<pid>-<n>`).
pub fn is_temp_file_name(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some((_, tail)) = rest.rsplit_once(".tmp-") else {
        return false;
    };
    let mut parts = tail.split('-');
    let digits =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

/// Removes the temporary files of interrupted [`write_atomic`] calls (a process killed while it
/// wrote) from `dir`, and returns their paths, sorted. Call it only while no other process
/// writes into `dir`. A folder that does not exist has none.
pub fn remove_stale_temp_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if is_temp_file_name(&entry.file_name()) && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck.safetensors");
        std::fs::write(&path, b"old and complete").unwrap();
        let err = write_atomic(&path, |f| {
            f.write_all(b"new but parti")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(
            text,
            format!("cannot write {}: disk full", path.display()),
            "{text}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"old and complete");
        assert_eq!(names(dir.path()), ["ck.safetensors"]);
        // While the writer runs, the target still holds the old bytes.
        write_atomic(&path, |f| {
            f.write_all(b"new")?;
            assert_eq!(std::fs::read(&path).unwrap(), b"old and complete");
            Ok(())
        })
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["ck.safetensors"]);
    }

    #[test]
    fn a_folder_in_the_way_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.md");
        std::fs::create_dir(&path).unwrap();
        let err = write_bytes_atomic(&path, b"x").unwrap_err();
        assert!(err.to_string().contains("report.md"), "{err}");
        assert!(path.is_dir());
        assert_eq!(names(dir.path()), ["report.md"]);
    }

    #[test]
    fn missing_folders_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c.txt");
        write_bytes_atomic(&path, b"hi").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hi");
    }

    #[test]
    fn temporary_file_names_are_recognised_and_removed() {
        use std::ffi::OsStr;
        for ok in [".last.safetensors.tmp-12-0", ".config.toml.tmp-1-99"] {
            assert!(is_temp_file_name(OsStr::new(ok)), "{ok}");
        }
        for no in [
            "last.safetensors",
            "x.tmp-1-2",
            ".x.tmp-1",
            ".x.tmp-a-2",
            ".x.tmp-1-2-3",
            ".x.tmp--2",
        ] {
            assert!(!is_temp_file_name(OsStr::new(no)), "{no}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".a.tmp-1-2"), b"").unwrap();
        std::fs::write(dir.path().join("a"), b"").unwrap();
        let removed = remove_stale_temp_files(dir.path()).unwrap();
        assert_eq!(removed, [dir.path().join(".a.tmp-1-2")]);
        assert_eq!(names(dir.path()), ["a"]);
        assert!(remove_stale_temp_files(&dir.path().join("absent"))
            .unwrap()
            .is_empty());
    }
}
