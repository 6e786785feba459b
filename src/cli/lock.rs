//! One writer per run directory: an advisory lock on `DIR/.irontensor.lock`, released by the
//! operating system when the process ends, however it ends (`kill -9` included).

use crate::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Held while a process writes a run directory; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    pub path: PathBuf,
}

impl RunLock {
    /// Takes the lock of run directory `dir` (made if missing), or fails at once naming the
    /// process that holds it: its pid, host and start time, which the holder writes there.
    pub fn take(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(".irontensor.lock");
        let cannot = |e: std::io::Error| Error::Invalid(format!("cannot lock {}: {e}", path.display()));
        // Not truncated on open: the holder's note must survive a failed attempt.
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(cannot)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "another process" } else { holder };
                return Err(Error::Invalid(format!(
                    "{} is in use by another irontensor ({holder}); wait for it to finish, or pass --out DIR for another run directory",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(cannot(e)),
        }
        let note = format!("pid {} on {}, started {}", std::process::id(), host(), now_utc());
        file.set_len(0).map_err(cannot)?;
        file.rewind().map_err(cannot)?;
        file.write_all(note.as_bytes()).map_err(cannot)?;
        file.flush().map_err(cannot)?;
        Ok(RunLock { _file: file, path })
    }
}

/// This machine's name, as well as it can be found without a system call.
fn host() -> String {
    let from_file = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| from_file("/proc/sys/kernel/hostname"))
        .or_else(|| from_file("/etc/hostname"))
        .filter(|h| !h.is_empty())
        .map_or("this machine".into(), |h| format!("host {h}"))
}

/// The time now as `YYYY-MM-DD HH:MM:SS UTC`.
fn now_utc() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_first_until_it_is_dropped() {
        let dir = std::env::temp_dir().join(format!("irontensor-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = RunLock::take(&dir).unwrap();
        let e = RunLock::take(&dir).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())) && e.contains("--out"), "{e}");
        drop(first);
        RunLock::take(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dates_are_civil_utc() {
        assert!(now_utc().ends_with(" UTC") && now_utc().len() == 23, "{}", now_utc());
    }
}
