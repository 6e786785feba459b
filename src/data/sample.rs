//! The text a tokenizer trains on: the whole corpus when it is small, else windows of whole lines
//! spread evenly across it (not only its head), read lazily as the trainer asks for them.

use super::jsonl::parse_record;
use super::sources::{Source, SourceKind};
use super::Record;
use crate::Error;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::sync::{Arc, Mutex};

/// Bytes per window of a sample.
const WINDOW: u64 = 1 << 20;

/// Lines (text) or record texts (JSONL) of a sample of about `bytes` bytes of `sources`.
pub struct Sample {
    sources: Vec<Source>,
    /// (source, first byte, end byte): lines that start in [first, end) belong to the window.
    windows: Vec<(usize, u64, u64)>,
    next: usize,
    open: Option<(BufReader<File>, usize, u64, u64)>,
    buf: Vec<u8>,
    /// The first error met; iteration stops there and `error()` returns it.
    error: Arc<Mutex<Option<Error>>>,
    /// Bytes handed out so far.
    pub taken: Arc<Mutex<u64>>,
}

impl Sample {
    /// A sample of about `bytes` bytes: all of `sources` if they hold no more, else windows of
    /// at most `WINDOW` bytes at even steps through the corpus.
    pub fn new(sources: &[Source], bytes: u64) -> Sample {
        let total: u64 = sources.iter().map(|s| s.bytes).sum();
        let windows = if total <= bytes {
            sources.iter().enumerate().map(|(i, s)| (i, 0, s.bytes)).collect()
        } else {
            // n windows of w bytes, window k starting k/n of the way through the corpus; a window
            // that reaches a file's end goes on in the next file.
            let n = bytes.div_ceil(WINDOW).max(1);
            let w = (bytes / n).max(1);
            let mut windows = Vec::new();
            for k in 0..n {
                let from = (k as u128 * total as u128 / n as u128) as u64;
                let mut file_start = 0;
                for (i, s) in sources.iter().enumerate() {
                    let (a, b) = (from.max(file_start), (from + w).min(file_start + s.bytes));
                    if a < b {
                        windows.push((i, a - file_start, b - file_start));
                    }
                    file_start += s.bytes;
                }
            }
            windows
        };
        Sample {
            sources: sources.to_vec(),
            windows,
            next: 0,
            open: None,
            buf: Vec::new(),
            error: Arc::new(Mutex::new(None)),
            taken: Arc::new(Mutex::new(0)),
        }
    }

    /// A handle on the first error met while iterating.
    pub fn error_slot(&self) -> Arc<Mutex<Option<Error>>> {
        self.error.clone()
    }

    fn fail(&mut self, e: Error) -> Option<String> {
        *self.error.lock().expect("not poisoned") = Some(e);
        self.next = self.windows.len();
        self.open = None;
        None
    }

    /// The next line of the sample, with its source and byte offset; None at the end.
    fn next_line(&mut self) -> std::io::Result<Option<(usize, u64)>> {
        loop {
            if self.open.is_none() {
                let Some(&(i, start, end)) = self.windows.get(self.next) else { return Ok(None) };
                self.next += 1;
                let mut r = BufReader::with_capacity(1 << 16, File::open(&self.sources[i].path)?);
                let mut pos = start;
                if start > 0 {
                    // Skip the line that began before the window (the previous window has it).
                    r.seek(SeekFrom::Start(start - 1))?;
                    self.buf.clear();
                    pos = start - 1 + r.read_until(b'\n', &mut self.buf)? as u64;
                }
                self.open = Some((r, i, pos, end));
            }
            let (r, i, pos, end) = self.open.as_mut().expect("a window is open");
            if *pos >= *end {
                self.open = None;
                continue;
            }
            self.buf.clear();
            let n = r.read_until(b'\n', &mut self.buf)?;
            if n == 0 {
                self.open = None;
                continue;
            }
            let at = *pos;
            *pos += n as u64;
            return Ok(Some((*i, at)));
        }
    }
}

impl Iterator for Sample {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        loop {
            let (i, at) = match self.next_line() {
                Ok(Some(l)) => l,
                Ok(None) => return None,
                Err(e) => return self.fail(Error::Invalid(format!("--data: cannot read the tokenizer sample: {e}"))),
            };
            let path = self.sources[i].path.display().to_string();
            let line = match std::str::from_utf8(&self.buf) {
                Ok(l) => l,
                Err(e) => {
                    let at = at + e.valid_up_to() as u64;
                    let why = format!(
                        "--data {path}: invalid UTF-8 at byte offset {at}; convert the file to UTF-8 or remove it"
                    );
                    return self.fail(Error::Invalid(why));
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            *self.taken.lock().expect("not poisoned") += line.len() as u64;
            if self.sources[i].kind == SourceKind::Text {
                return Some(line.to_string());
            }
            match parse_record(line.trim_end(), &format!("{path} (byte offset {at})")) {
                Ok(Record::Text(t)) => return Some(t),
                Ok(_) => continue, // the encoding pass names the record and says what to do
                Err(e) => return self.fail(e),
            }
        }
    }
}
