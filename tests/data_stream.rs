//! Corpora streamed into token shards: many files, JSONL, documents and records cut across
//! batch and read boundaries, empty files, invalid UTF-8, interrupted runs, the tokenizer's sample.

use irontensor::cli::{prepare_data, DataOptions};
use irontensor::data::{
    encode_stream, find_sources, Sample, Source, StreamOptions, TokenDataset, TokenIndex, Tokenizer, INDEX_FILE,
};
use std::path::{Path, PathBuf};

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("irontensor-stream-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small deterministic generator, so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

const WORDS: [&str; 12] = ["the", "king", "é", "日本", "🦀", "to-day", "  spaced", "'tis", "42", "\tx", "a.b,c", "ÆØÅ"];

/// A document of 1 to `max_lines` lines, each with a non-blank character (so no blank line inside).
fn document(rng: &mut Lcg, max_lines: u64) -> String {
    let mut d = String::new();
    for _ in 0..1 + rng.below(max_lines) {
        d.push_str(&format!("L{}", rng.below(1000)));
        for _ in 0..rng.below(15) {
            d.push(' ');
            d.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
        }
        d.push('\n');
    }
    d
}

/// A tokenizer trained on text like the documents'.
fn tokenizer() -> Tokenizer {
    let mut rng = Lcg(7);
    let text: String = (0..200).map(|_| document(&mut rng, 3)).collect();
    Tokenizer::train(&text, 320).unwrap()
}

/// The ids the stream must give: each document's ids then <|endoftext|>, every 10th to validation.
fn reference(tok: &Tokenizer, docs: &[String]) -> (Vec<u32>, Vec<u32>) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, d) in docs.iter().enumerate() {
        let out = if i % 10 == 9 { &mut val } else { &mut train };
        out.extend(tok.encode(d));
        out.push(tok.eos_id());
    }
    (train, val)
}

/// `encode_stream` over `sources` into memory.
fn stream(sources: &[Source], tok: &Tokenizer, o: &StreamOptions) -> irontensor::Result<(Vec<u32>, Vec<u32>)> {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let mut sink = |t: &[u32], v: &[u32]| {
        train.extend_from_slice(t);
        val.extend_from_slice(v);
        Ok(())
    };
    let encode = |s: &str| tok.encode(s);
    encode_stream(sources, o, &encode, tok.eos_id(), &mut sink, &mut |_| {})?;
    Ok((train, val))
}

/// A directory of text files (documents between blank lines), JSONL files, an empty file and a
/// nested folder, found as a directory and as a glob, and encoded with small batches and pieces:
/// the same ids as each document encoded whole, in sorted file order.
#[test]
fn many_files_stream_as_their_documents() {
    let dir = tmp_dir("many");
    let tok = tokenizer();
    let mut rng = Lcg(1);
    let mut files: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for f in 0..9 {
        let docs: Vec<String> = (0..rng.below(13)).map(|_| document(&mut rng, 6)).collect();
        let path = match f % 3 {
            0 => dir.join(format!("part-{f}.txt")),
            1 => dir.join(format!("part-{f}.jsonl")),
            _ => dir.join("nested").join(format!("part-{f}.txt")),
        };
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let body: String = if f % 3 == 1 {
            docs.iter().map(|d| format!("{}\n{}", serde_json::json!({ "text": d }), "\n".repeat(f % 2))).collect()
        } else {
            // Blank lines of several kinds between documents, and before the first.
            let seps = ["\n", "\n\n", " \t\n", "\r\n\n"];
            docs.iter().enumerate().map(|(i, d)| format!("{}{d}", seps[(i + f) % 4])).collect()
        };
        std::fs::write(&path, body).unwrap();
        files.push((path, docs));
    }
    std::fs::write(dir.join("empty.txt"), "").unwrap();
    std::fs::write(dir.join("notes.md"), "not data").unwrap();
    files.sort();
    let docs: Vec<String> = files.iter().flat_map(|(_, d)| d.clone()).collect();
    let want = reference(&tok, &docs);
    let sources = find_sources(&dir).unwrap();
    assert_eq!(sources.len(), 10, "9 data files and the empty one: {sources:?}");
    for (batch_bytes, max_piece) in [(1 << 20, 1 << 20), (1, 64), (300, 7)] {
        let o = StreamOptions { batch_bytes, max_piece, threads: 3, ..Default::default() };
        assert_eq!(stream(&sources, &tok, &o).unwrap(), want, "batches of {batch_bytes}, pieces of {max_piece}");
    }
    // A glob across folders finds the same files but the .txt ones only.
    let glob = find_sources(&dir.join("**").join("part-*.txt")).unwrap();
    let txt: Vec<&PathBuf> = files.iter().map(|(p, _)| p).filter(|p| p.extension().unwrap() == "txt").collect();
    assert_eq!(glob.iter().map(|s| &s.path).collect::<Vec<_>>(), txt);
    assert!(find_sources(&dir.join("*.csv")).unwrap_err().to_string().contains("no .txt or .jsonl files"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A JSONL file of over 1 MiB (records cross the reader's 1 MiB blocks and the batches) and a
/// long text document without blank lines (cut into pieces): the ids of the whole.
#[test]
fn records_and_documents_across_read_boundaries() {
    let dir = tmp_dir("boundary");
    let tok = tokenizer();
    let mut rng = Lcg(3);
    let mut docs = Vec::new();
    let mut body = String::new();
    while body.len() < (1 << 20) + 5000 {
        let d = document(&mut rng, 40);
        body.push_str(&format!("{}\n", serde_json::json!({ "text": d })));
        docs.push(d);
    }
    std::fs::write(dir.join("a.jsonl"), &body).unwrap();
    let long: String = (0..3000).map(|_| document(&mut rng, 1)).collect();
    std::fs::write(dir.join("b.txt"), &long).unwrap();
    docs.push(long);
    let sources = find_sources(&dir).unwrap();
    let o = StreamOptions { batch_bytes: 100_000, max_piece: 5000, threads: 2, ..Default::default() };
    assert_eq!(stream(&sources, &tok, &o).unwrap(), reference(&tok, &docs));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Invalid UTF-8 in one file stops the stream with its name, byte offset and line; so does a
/// fine-tuning record in a corpus to pretrain on.
#[test]
fn bad_files_are_named_with_where() {
    let dir = tmp_dir("bad");
    let tok = tokenizer();
    std::fs::write(dir.join("a.txt"), "fine text\n\nmore\n").unwrap();
    let mut bad = b"good line\n\nsecond doc\nthird line \xff\xfe here\n".to_vec();
    bad.extend_from_slice(b"\nafter\n");
    std::fs::write(dir.join("b.txt"), &bad).unwrap();
    let sources = find_sources(&dir).unwrap();
    let e = stream(&sources, &tok, &StreamOptions::default()).unwrap_err().to_string();
    assert!(e.contains("b.txt") && e.contains("byte offset 33") && e.contains("line 4"), "{e}");
    // The tokenizer's sample stops there too, with the same words.
    let sample = Sample::new(&sources, 1 << 30);
    let slot = sample.error_slot();
    sample.for_each(drop);
    let e = slot.lock().unwrap().take().unwrap().to_string();
    assert!(e.contains("b.txt") && e.contains("byte offset 33"), "{e}");
    std::fs::remove_file(dir.join("b.txt")).unwrap();
    std::fs::write(dir.join("c.jsonl"), "{\"text\": \"ok\"}\n\n{\"prompt\": \"a\", \"completion\": \"b\"}\n").unwrap();
    let e = stream(&find_sources(&dir).unwrap(), &tok, &StreamOptions::default()).unwrap_err().to_string();
    assert!(e.contains("c.jsonl:3") && e.contains("--init"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The tokenizer's sample: all of a small corpus, and of a large one windows from its head,
/// middle and tail (not only the head), about as many bytes as asked.
#[test]
fn the_tokenizer_sample_spans_the_corpus() {
    let dir = tmp_dir("sample");
    for f in 0..5 {
        let lines: String = (0..40_000).map(|i| format!("file{f} line {i}\n")).collect();
        std::fs::write(dir.join(format!("{f}.txt")), lines).unwrap();
    }
    let sources = find_sources(&dir).unwrap();
    let total: u64 = sources.iter().map(|s| s.bytes).sum();
    let all: Vec<String> = Sample::new(&sources, total).collect();
    assert_eq!(all.len(), 5 * 40_000);
    assert_eq!(all.concat().len() as u64, total);
    let sample = Sample::new(&sources, 3 << 20);
    let taken = sample.taken.clone();
    let lines: Vec<String> = sample.collect();
    let got = *taken.lock().unwrap();
    assert!(got.abs_diff(3 << 20) < 1000, "{got} bytes of {total}");
    assert!(lines.iter().all(|l| l.starts_with("file") && l.ends_with('\n')), "whole lines only");
    for f in 0..5 {
        assert!(lines.iter().any(|l| l.starts_with(&format!("file{f} "))), "nothing from file {f}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Shards of a few tokens read as one sequence, equal to the reference; an interrupted run (a
/// partial shard and finished ones without tokens.json) is cleared and made again the same.
#[test]
fn shards_read_as_one_sequence_and_an_interrupted_run_restarts_cleanly() {
    let dir = tmp_dir("shards");
    let tok = tokenizer();
    let mut rng = Lcg(11);
    let docs: Vec<String> = (0..57).map(|_| document(&mut rng, 4)).collect();
    let data = dir.join("corpus.txt");
    std::fs::write(&data, docs.join("\n")).unwrap();
    let out = dir.join("run");
    let o = DataOptions { shard_tokens: 97, ..DataOptions::new(320) };
    let open = |o: &DataOptions| prepare_data(Some(&data), o, &out, 4, Some(&tok)).unwrap();
    let p = open(&o);
    let (train, val) = reference(&tok, &docs);
    assert_eq!(p.train.tokens(0, p.train.len()), train);
    assert_eq!(p.val.tokens(0, p.val.len()), val);
    assert_eq!(p.train.num_shards(), train.len().div_ceil(97));
    // A window across a shard boundary: tokens 96..101 come from two files.
    let (x, y) = p.train.get_batch(24);
    assert_eq!((x, y), (train[96..100].to_vec(), train[97..101].to_vec()));
    let index = TokenIndex::read(&out).unwrap().unwrap();
    assert!(index.validation.contains("every 10th document (5 of 57)"), "{}", index.validation);
    // Interrupted: the index gone, a partial shard left behind.
    std::fs::remove_file(out.join(INDEX_FILE)).unwrap();
    std::fs::write(out.join("train-00001.bin.partial"), b"half a shard").unwrap();
    std::fs::write(out.join("train-00099.bin"), b"from another run").unwrap();
    let again = open(&o);
    assert_eq!(again.train.tokens(0, again.train.len()), train);
    assert!(!out.join("train-00099.bin").exists() && !out.join("train-00001.bin.partial").exists());
    assert_eq!(TokenIndex::read(&out).unwrap().unwrap(), index);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A corpus of fewer than 10 documents validates on the tail of its tokens.
#[test]
fn a_corpus_of_few_documents_validates_on_its_tail() {
    let dir = tmp_dir("few");
    let tok = tokenizer();
    let mut rng = Lcg(5);
    let docs: Vec<String> = (0..3).map(|_| document(&mut rng, 30)).collect();
    let data = dir.join("few.txt");
    std::fs::write(&data, docs.join("\n")).unwrap();
    let out = dir.join("run");
    let p = prepare_data(Some(&data), &DataOptions::new(320), &out, 4, Some(&tok)).unwrap();
    let (all, _) = reference(&tok, &docs);
    let n = all.len() / 10;
    assert_eq!(p.train.tokens(0, p.train.len()), all[..all.len() - n]);
    assert_eq!(p.val.tokens(0, p.val.len()), all[all.len() - n..]);
    let index = TokenIndex::read(&out).unwrap().unwrap();
    assert!(index.validation.contains(&format!("the last {n} tokens")), "{}", index.validation);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `irontensor tokenize` on a glob: the tokenizer, shards and index, and what it says.
#[test]
fn tokenize_takes_a_glob_through_the_cli() {
    let dir = tmp_dir("cli");
    let mut rng = Lcg(9);
    for f in 0..3 {
        let docs: Vec<String> = (0..20).map(|_| document(&mut rng, 3)).collect();
        std::fs::write(dir.join(format!("{f}.txt")), docs.join("\n")).unwrap();
    }
    let out = dir.join("run");
    let glob = dir.join("*.txt");
    let args = ["tokenize", "--data", glob.to_str().unwrap(), "--vocab", "300", "--out", out.to_str().unwrap()];
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_irontensor")).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{text}");
    assert!(
        text.contains("3 files") && text.contains("60 documents") && text.contains("every 10th document"),
        "{text}"
    );
    assert!(text.contains("MB/s"), "{text}");
    let index = TokenIndex::read(&out).unwrap().unwrap();
    let tok = Tokenizer::load(out.join("tokenizer.json")).unwrap();
    let ds = TokenDataset::open_shards(&TokenIndex::paths(&out, &index.train), 1).unwrap().checked(tok.vocab_size());
    assert_eq!(ds.unwrap().len() as u64, TokenIndex::tokens(&index.train));
    assert!(Path::new(&out.join("train-00000.bin")).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Our encoder of byte-level BPE gives `tokenizers`' ids on random text of awkward characters
/// (Unicode spaces, marks, digits of other scripts, contractions, the end-of-text token and
/// pieces of it, runs of whitespace before words and at the end) and on Shakespeare.
#[test]
fn the_fast_encoder_matches_tokenizers() {
    let shakespeare =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tinyshakespeare.txt")).unwrap();
    let tok = Tokenizer::train(&shakespeare[..200_000], 500).unwrap();
    assert!(tok.fast_encoding());
    let pool = [
        "a",
        "Z",
        "é",
        "e\u{301}",
        "日本",
        "🦀",
        "٣",
        "Ⅻ",
        "½",
        "7",
        "42",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\u{a0}",
        "\u{3000}",
        "\u{2028}",
        "\u{85}",
        "'s",
        "'ll",
        "'",
        "’",
        ".",
        ",!?",
        "<|endoftext|>",
        "<|endof",
        "|>",
        "\u{0}",
        "word",
        " the",
        "\u{200b}",
        "ſ",
    ];
    let mut rng = Lcg(21);
    for n in [0, 1, 2, 3, 7, 33, 257] {
        for _ in 0..40 {
            let text: String = (0..n).map(|_| pool[rng.below(pool.len() as u64) as usize]).collect();
            assert_eq!(tok.encode(&text), tok.encode_reference(&text), "{text:?}");
        }
    }
    let tail = &shakespeare[900_000..];
    assert_eq!(tok.encode(tail), tok.encode_reference(tail));
    // Tokenizers of another kind (a Split pre-tokenizer, as Llama 3's) use tokenizers' own encoding.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm-tokenizer");
    assert!(!Tokenizer::load(dir.join("tokenizer.json")).unwrap().fast_encoding());
}
