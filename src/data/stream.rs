//! A corpus read as a stream of documents and encoded on every core in bounded memory: a reader
//! thread cuts the files into batches of whole documents (long ones at safe points), workers
//! encode them, and the caller's sink receives the ids in corpus order.

use super::jsonl::parse_record;
use super::sources::{Source, SourceKind};
use super::Record;
use crate::{bail, Error, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::sync::mpsc::{channel, sync_channel, Receiver};
use std::sync::Mutex;

/// How a corpus is cut and split.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// Text per unit of work handed to a worker.
    pub batch_bytes: usize,
    /// Longest piece of one document encoded at once, where `cut_documents` allows cutting.
    pub max_piece: usize,
    /// Whether a long document may be cut at a newline or space that byte-level pre-tokenizers
    /// always split at (encoding the pieces then gives the ids of the whole).
    pub cut_documents: bool,
    /// Every `val_every`th document (the last of each run of that many) goes to validation.
    pub val_every: u64,
    /// Encoding threads.
    pub threads: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            batch_bytes: 1 << 20,
            max_piece: 1 << 20,
            cut_documents: true,
            val_every: 10,
            threads: rayon::current_num_threads(),
        }
    }
}

/// Counts so far, handed to the progress callback after each batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamStats {
    /// Bytes of the corpus read.
    pub bytes: u64,
    pub documents: u64,
    pub val_documents: u64,
    pub train_tokens: u64,
    pub val_tokens: u64,
    /// Characters of all documents, and of the validation documents.
    pub chars: u64,
    pub val_chars: u64,
}

/// Part or all of one document, as bytes of its batch.
struct Piece {
    source: usize,
    /// Byte offset in its file and the line it starts on (1-based), for errors.
    offset: u64,
    line: u64,
    doc: u64,
    ends_doc: bool,
    range: Range<usize>,
}

struct Batch {
    index: u64,
    bytes: Vec<u8>,
    pieces: Vec<Piece>,
    /// Corpus bytes read once this batch is done.
    read: u64,
}

/// Where the ids go, batch by batch in corpus order: (train ids, validation ids).
pub type Sink<'a> = dyn FnMut(&[u32], &[u32]) -> Result<()> + 'a;

/// A batch's ids and counts.
struct Encoded {
    index: u64,
    train: Vec<u32>,
    val: Vec<u32>,
    stats: StreamStats,
}

/// Reads `sources` as documents (text: separated by blank lines; JSONL: one `{"text"}` record a
/// line; a file's end ends its last document), encodes them with `encode` on `o.threads`
/// threads, and hands `sink` each batch's (train ids, validation ids) in corpus order, `eos`
/// after every document. Memory holds a few batches per thread, whatever the corpus size.
pub fn encode_stream(
    sources: &[Source],
    o: &StreamOptions,
    encode: &(dyn Fn(&str) -> Vec<u32> + Sync),
    eos: u32,
    sink: &mut Sink,
    progress: &mut dyn FnMut(&StreamStats),
) -> Result<StreamStats> {
    let threads = o.threads.max(1);
    let in_flight = 2 * threads + 2;
    let (batch_tx, batch_rx) = sync_channel::<Batch>(in_flight);
    let batch_rx = Mutex::new(batch_rx);
    let (done_tx, done_rx) = channel::<Result<Encoded>>();
    // Permits bound the batches between the reader and the sink, the reordering ones included.
    let (permit_tx, permit_rx) = sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        permit_tx.send(()).expect("the channel has room");
    }
    std::thread::scope(|scope| {
        let reader_tx = done_tx.clone();
        scope.spawn(move || {
            let mut send = |b: Batch| permit_rx.recv().is_ok() && batch_tx.send(b).is_ok();
            if let Err(e) = read_batches(sources, o, &mut send) {
                let _ = reader_tx.send(Err(e));
            }
        });
        for _ in 0..threads {
            let (rx, tx) = (&batch_rx, done_tx.clone());
            scope.spawn(move || loop {
                let next = rx.lock().expect("no worker panics holding it").recv();
                let Ok(batch) = next else { return };
                if tx.send(encode_batch(batch, sources, o, encode, eos)).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        let result = write_in_order(&done_rx, &permit_tx, sink, progress);
        // Dropping the permits stops the reader, which stops the workers.
        drop(permit_tx);
        drop(done_rx);
        result
    })
}

/// Receives encoded batches, and hands them to `sink` in order.
fn write_in_order(
    done: &Receiver<Result<Encoded>>,
    permits: &std::sync::mpsc::SyncSender<()>,
    sink: &mut Sink,
    progress: &mut dyn FnMut(&StreamStats),
) -> Result<StreamStats> {
    let mut waiting = BTreeMap::new();
    let mut total = StreamStats::default();
    let mut next = 0;
    while let Ok(e) = done.recv() {
        let e = e?;
        waiting.insert(e.index, e);
        while let Some(e) = waiting.remove(&next) {
            sink(&e.train, &e.val)?;
            let s = &e.stats;
            total.bytes = total.bytes.max(s.bytes);
            total.documents += s.documents;
            total.val_documents += s.val_documents;
            total.train_tokens += s.train_tokens;
            total.val_tokens += s.val_tokens;
            total.chars += s.chars;
            total.val_chars += s.val_chars;
            progress(&total);
            next += 1;
            let _ = permits.send(());
        }
    }
    Ok(total)
}

/// Encodes one batch: each piece checked as UTF-8 (and parsed, for JSONL), `eos` after each document.
fn encode_batch(
    b: Batch,
    sources: &[Source],
    o: &StreamOptions,
    encode: &(dyn Fn(&str) -> Vec<u32> + Sync),
    eos: u32,
) -> Result<Encoded> {
    let mut e = Encoded { index: b.index, train: Vec::new(), val: Vec::new(), stats: StreamStats::default() };
    e.stats.bytes = b.read;
    for p in &b.pieces {
        let src = &sources[p.source];
        let bytes = &b.bytes[p.range.clone()];
        let text = std::str::from_utf8(bytes).map_err(|err| {
            let at = p.offset + err.valid_up_to() as u64;
            let line = p.line + bytes[..err.valid_up_to()].iter().filter(|&&c| c == b'\n').count() as u64;
            Error::Invalid(format!(
                "--data {}: invalid UTF-8 at byte offset {at} (line {line}); convert the file to UTF-8 or remove it",
                src.path.display()
            ))
        })?;
        let text = match src.kind {
            SourceKind::Text => std::borrow::Cow::Borrowed(text),
            SourceKind::Jsonl => match parse_record(text.trim_end(), &format!("{}:{}", src.path.display(), p.line))? {
                Record::Text(t) => std::borrow::Cow::Owned(t),
                _ => bail!(
                    Invalid,
                    "{}:{}: a prompt/completion or messages record is fine-tuning data: pass one such .jsonl file \
                     to `train --data` (with --init MODEL to fine-tune a model), or give {{\"text\": ...}} records to pretrain",
                    src.path.display(),
                    p.line
                ),
            },
        };
        let is_val = o.val_every > 0 && p.doc % o.val_every == o.val_every - 1;
        let out = if is_val { &mut e.val } else { &mut e.train };
        let before = out.len();
        out.extend(encode(&text));
        if p.ends_doc && !text.is_empty() {
            out.push(eos);
        }
        let (n, chars) = ((out.len() - before) as u64, text.chars().count() as u64);
        let s = &mut e.stats;
        s.chars += chars;
        if p.ends_doc {
            s.documents += 1;
            s.val_documents += is_val as u64;
        }
        if is_val {
            (s.val_tokens, s.val_chars) = (s.val_tokens + n, s.val_chars + chars);
        } else {
            s.train_tokens += n;
        }
    }
    Ok(e)
}

/// Where a long document may be cut within `text`: after the last newline that a non-space
/// byte follows, else before the last space that a non-space byte precedes. Byte-level
/// pre-tokenizers (GPT-2's, Llama 3's, Qwen2's) split there whatever surrounds it.
fn safe_cut(text: &[u8]) -> Option<usize> {
    let after_newline = text.windows(2).rposition(|w| w[0] == b'\n' && !w[1].is_ascii_whitespace());
    let before_space = || text.windows(2).rposition(|w| !w[0].is_ascii_whitespace() && w[1] == b' ');
    after_newline.map(|i| i + 1).or_else(|| before_space().map(|i| i + 1)).filter(|&c| c > 0 && c < text.len())
}

/// The reader: files in order, cut into batches of whole documents (or safe pieces of long
/// ones), each handed to `send`, which says false to stop early.
fn read_batches(sources: &[Source], o: &StreamOptions, send: &mut dyn FnMut(Batch) -> bool) -> Result<()> {
    let mut r = BatchMaker { batch: new_batch(0), docs: 0, read_before: 0, o };
    for (si, src) in sources.iter().enumerate() {
        if !r.read_file(si, src, send)? {
            return Ok(());
        }
        r.read_before += src.bytes;
    }
    let mut last = std::mem::replace(&mut r.batch, new_batch(0));
    last.read = r.read_before;
    if !last.pieces.is_empty() {
        send(last);
    }
    Ok(())
}

fn new_batch(index: u64) -> Batch {
    Batch { index, bytes: Vec::new(), pieces: Vec::new(), read: 0 }
}

struct BatchMaker<'a> {
    batch: Batch,
    /// Documents begun so far: the next one's number.
    docs: u64,
    /// Bytes of the files before the current one.
    read_before: u64,
    o: &'a StreamOptions,
}

/// A document being read: where it starts in the pending bytes, its line and number.
struct Open {
    start: usize,
    line: u64,
    doc: u64,
}

impl BatchMaker<'_> {
    /// Adds `bytes` as a piece; sends the batch once it is full. False when the receiver stopped.
    fn emit(
        &mut self,
        bytes: &[u8],
        piece: (usize, u64, u64, u64, bool),
        read: u64,
        send: &mut dyn FnMut(Batch) -> bool,
    ) -> bool {
        let (source, offset, line, doc, ends_doc) = piece;
        let start = self.batch.bytes.len();
        self.batch.bytes.extend_from_slice(bytes);
        let range = start..self.batch.bytes.len();
        self.batch.pieces.push(Piece { source, offset, line, doc, ends_doc, range });
        if self.batch.bytes.len() < self.o.batch_bytes {
            return true;
        }
        let next = new_batch(self.batch.index + 1);
        let mut full = std::mem::replace(&mut self.batch, next);
        full.read = read;
        send(full)
    }

    /// Reads one file in blocks; false when the receiver stopped.
    fn read_file(&mut self, si: usize, src: &Source, send: &mut dyn FnMut(Batch) -> bool) -> Result<bool> {
        let read_err = |e: std::io::Error| Error::Invalid(format!("--data: cannot read {}: {e}", src.path.display()));
        let mut file = File::open(&src.path).map_err(read_err)?;
        let jsonl = src.kind == SourceKind::Jsonl;
        // pending[0] is byte `base` of the file; lines before `scan` are handled.
        let (mut pending, mut base, mut scan, mut line) = (Vec::<u8>::new(), 0u64, 0usize, 1u64);
        let mut open: Option<Open> = None;
        let mut block = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut block).map_err(read_err)?;
            pending.extend_from_slice(&block[..n]);
            let eof = n == 0;
            while scan < pending.len() {
                let end = match pending[scan..].iter().position(|&c| c == b'\n') {
                    Some(i) => scan + i + 1,
                    None if eof => pending.len(),
                    None => break,
                };
                let blank = pending[scan..end].iter().all(|c| c.is_ascii_whitespace());
                if jsonl && !blank {
                    let piece = (si, base + scan as u64, line, self.docs, true);
                    self.docs += 1;
                    if !self.emit(&pending[scan..end], piece, self.read_before + base + end as u64, send) {
                        return Ok(false);
                    }
                } else if !jsonl && blank {
                    if let Some(d) = open.take() {
                        let piece = (si, base + d.start as u64, d.line, d.doc, true);
                        if !self.emit(&pending[d.start..scan], piece, self.read_before + base + end as u64, send) {
                            return Ok(false);
                        }
                    }
                } else if !jsonl && open.is_none() {
                    open = Some(Open { start: scan, line, doc: self.docs });
                    self.docs += 1;
                }
                scan = end;
                line += 1;
            }
            if eof {
                if let Some(d) = open.take() {
                    let piece = (si, base + d.start as u64, d.line, d.doc, true);
                    if !self.emit(&pending[d.start..scan], piece, self.read_before + src.bytes, send) {
                        return Ok(false);
                    }
                }
                return Ok(true);
            }
            // A long document goes out in pieces, where the tokenizer allows cutting it.
            if let Some(d) = open.as_mut().filter(|d| self.o.cut_documents && scan - d.start > self.o.max_piece) {
                if let Some(cut) = safe_cut(&pending[d.start..scan]).map(|c| d.start + c) {
                    let piece = (si, base + d.start as u64, d.line, d.doc, false);
                    let lines = pending[d.start..cut].iter().filter(|&&c| c == b'\n').count() as u64;
                    let (start, line) = (cut, d.line + lines);
                    let read = self.read_before + base + scan as u64;
                    let bytes = &pending[d.start..cut];
                    (d.start, d.line) = (start, line);
                    if !self.emit(bytes, piece, read, send) {
                        return Ok(false);
                    }
                }
            }
            // Bytes before the open document (or the unhandled line) are done with.
            let keep = open.as_ref().map_or(scan, |d| d.start);
            pending.drain(..keep);
            base += keep as u64;
            scan -= keep;
            if let Some(d) = open.as_mut() {
                d.start -= keep;
            }
        }
    }
}
