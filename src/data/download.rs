//! Downloads through the system `curl` (no TLS stack linked in), checked by size and SHA-256.

use crate::fs::sync_dir;
use crate::{bail, Error, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TINYSHAKESPEARE_URL: &str =
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";
pub const TINYSHAKESPEARE_BYTES: u64 = 1_115_394;
pub const TINYSHAKESPEARE_SHA256: &str = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed";

/// Fetches `url` into `dest`: curl writes `dest.part`, which is checked against the expected size and
/// SHA-256 (hex) and only then renamed into place, so `dest` is never a partial or wrong file.
pub fn download(
    url: &str,
    dest: impl AsRef<Path>,
    expected_size: Option<u64>,
    expected_sha256: Option<&str>,
) -> Result<()> {
    download_with("curl", url, dest.as_ref(), expected_size, expected_sha256)
}

fn download_with(
    curl: &str,
    url: &str,
    dest: &Path,
    expected_size: Option<u64>,
    expected_sha256: Option<&str>,
) -> Result<()> {
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::Invalid(format!("download: cannot create {}: {e}", dir.display())))?;
    let hint = format!("download {url} by hand and pass --data FILE");

    let out = Command::new(curl)
        .args(["-fsSL", "--retry", "2", "--connect-timeout", "30", "-o"])
        .arg(&part)
        .arg(url)
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => bail!(Invalid, "download: cannot run `{curl}` ({e}); install curl, or {hint}"),
    };
    if !out.status.success() {
        let _ = fs::remove_file(&part);
        // With --retry curl repeats its message; the last line says it.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message").trim().to_string();
        let code = out.status.code().map_or("a signal".to_string(), |c| format!("exit code {c}"));
        bail!(Invalid, "download: curl failed for {url} ({code}: {why}); no network? Then {hint}");
    }

    let check = verify(&part, expected_size, expected_sha256);
    if let Err(e) = check {
        let _ = fs::remove_file(&part);
        bail!(Invalid, "download: {url}: {e}");
    }
    fs::File::open(&part).and_then(|f| f.sync_all())?;
    fs::rename(&part, dest)
        .map_err(|e| Error::Invalid(format!("download: cannot move {} to {}: {e}", part.display(), dest.display())))?;
    sync_dir(dir)
}

/// Checks a file's size and SHA-256; the error says what was expected and what was found.
fn verify(path: &Path, expected_size: Option<u64>, expected_sha256: Option<&str>) -> std::result::Result<(), String> {
    let size = fs::metadata(path).map_err(|e| format!("cannot stat {}: {e}", path.display()))?.len();
    if let Some(want) = expected_size {
        if size != want {
            return Err(format!("got {size} bytes, expected {want}"));
        }
    }
    if let Some(want) = expected_sha256 {
        let got = sha256_file(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if !got.eq_ignore_ascii_case(want.trim()) {
            return Err(format!("SHA-256 mismatch: got {got}, expected {want}"));
        }
    }
    Ok(())
}

/// SHA-256 of a file's contents, lower-case hex.
pub fn sha256_file(path: impl AsRef<Path>) -> std::io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `dir/tinyshakespeare.txt`, downloaded (and checked) when it is not there yet.
pub fn tinyshakespeare(dir: impl AsRef<Path>) -> Result<PathBuf> {
    let path = dir.as_ref().join("tinyshakespeare.txt");
    if !path.exists() {
        download(TINYSHAKESPEARE_URL, &path, Some(TINYSHAKESPEARE_BYTES), Some(TINYSHAKESPEARE_SHA256))?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn missing_curl_says_what_to_do() {
        let dest = std::env::temp_dir().join(format!("irontensor-nocurl-{}", std::process::id()));
        let err = super::download_with("/nonexistent/curl", "https://example.com/x", &dest, None, None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("--data FILE") && msg.contains("curl"), "{msg}");
        assert!(!dest.exists());
    }
}
