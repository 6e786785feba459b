//! Data layer: token files (round trip, batches, sampling, corrupt files), the BPE tokenizer, downloads.

use irontensor::data::{download, sha256_file, TokenDataset, Tokenizer};
use irontensor::rng::Rng;
use std::path::{Path, PathBuf};

const SHAKESPEARE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tinyshakespeare.txt");

/// A fresh empty directory for one test, removed when dropped.
struct TmpDir(PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TmpDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp_dir(name: &str) -> TmpDir {
    let dir = std::env::temp_dir().join(format!("irontensor-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TmpDir(dir)
}

fn random_tokens(n: usize, below: u64, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(below) as u32).collect()
}

fn open_err(path: &Path, seq_len: usize) -> String {
    TokenDataset::open(path, seq_len).unwrap_err().to_string()
}

#[test]
fn dataset_round_trip_both_widths() {
    let dir = tmp_dir("round-trip");
    // 65535 fits in 2 bytes; 65536 and u32::MAX need 4.
    for (below, width, extreme) in [(65_536u64, 2, 65_535u32), (1 << 32, 4, u32::MAX)] {
        let mut tokens = random_tokens(1001, below, 7);
        tokens[500] = extreme;
        let path = dir.join(format!("w{width}.bin"));
        TokenDataset::create(&path, &tokens).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(size, 24 + 1001 * width as u64, "file size for width {width}");
        let ds = TokenDataset::open(&path, 33).unwrap();
        assert_eq!(ds.token_width(), width);
        assert_eq!((ds.len(), ds.seq_len(), ds.num_windows()), (1001, 33, 1000 / 33));
        assert_eq!(ds.tokens(0, 1001), tokens, "width {width}");
        assert_eq!(ds.token(500), extreme);
    }
    // The temporary file of the atomic write is gone.
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["w2.bin", "w4.bin"]);
}

#[test]
fn get_batch_windows_are_shifted_by_one() {
    let dir = tmp_dir("get-batch");
    let tokens: Vec<u32> = (0..100).map(|i| i * 3 + 1).collect();
    let path = dir.join("d.bin");
    TokenDataset::create(&path, &tokens).unwrap();
    let ds = TokenDataset::open(&path, 7).unwrap();
    assert_eq!(ds.num_windows(), 14); // 99 / 7
    for idx in [0, 1, 13] {
        let (x, y) = ds.get_batch(idx);
        assert_eq!(x, tokens[idx * 7..idx * 7 + 7]);
        assert_eq!(y, tokens[idx * 7 + 1..idx * 7 + 8]);
    }
    assert_eq!(ds.get_batch(14), ds.get_batch(0), "indices wrap around into the next epoch");
}

#[test]
fn sampling_is_deterministic_and_resumable() {
    let dir = tmp_dir("sample");
    let tokens: Vec<u32> = (0..1000).collect(); // token = its position: windows are easy to check
    let path = dir.join("d.bin");
    TokenDataset::create(&path, &tokens).unwrap();
    let ds = TokenDataset::open(&path, 16).unwrap();
    let (batch, t) = (5, 16);

    let (x, y) = ds.batch_at(3, batch, 42);
    assert_eq!((x.len(), y.len()), (batch * t, batch * t));
    for b in 0..batch {
        let start = x[b * t];
        assert!(start as usize + t < 1000, "window {b} runs past the data");
        for i in 0..t {
            assert_eq!(x[b * t + i], start + i as u32, "inputs of window {b} are contiguous");
            assert_eq!(y[b * t + i], start + i as u32 + 1, "targets of window {b} are inputs shifted by one");
        }
    }
    // A function of (seed, step) alone: the same again, from another handle; other steps or seeds differ.
    let again = TokenDataset::open(&path, 16).unwrap();
    assert_eq!(again.batch_at(3, batch, 42), (x.clone(), y));
    assert_ne!(ds.batch_at(4, batch, 42).0, x);
    assert_ne!(ds.batch_at(3, batch, 43).0, x);
    // A run resumed at step 10 sees the batches of the uninterrupted run.
    let full: Vec<_> = (0..20).map(|s| ds.batch_at(s, batch, 9).0).collect();
    let resumed: Vec<_> = (10..20).map(|s| again.batch_at(s, batch, 9).0).collect();
    assert_eq!(full[10..], resumed[..]);

    // sample_batch follows its Rng: the same seed gives the same batches, and starts cover the data.
    let (mut r1, mut r2) = (Rng::new(5), Rng::new(5));
    let mut seen_late = false;
    for _ in 0..50 {
        let (a, _) = ds.sample_batch(batch, &mut r1);
        assert_eq!(a, ds.sample_batch(batch, &mut r2).0);
        seen_late |= a.iter().step_by(t).any(|&s| s > 900);
    }
    assert!(seen_late, "random starts never reached the end of the data");
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tmp_dir("errors");
    let good = dir.join("good.bin");
    TokenDataset::create(&good, &(0..50).collect::<Vec<u32>>()).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let write = |name: &str, b: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, b).unwrap();
        p
    };

    let p = write("short-header.bin", &bytes[..10]);
    let e = open_err(&p, 4);
    assert!(e.contains("short-header.bin") && e.contains("truncated"), "{e}");

    let p = write("short-data.bin", &bytes[..bytes.len() - 3]);
    let e = open_err(&p, 4);
    assert!(e.contains("short-data.bin") && e.contains("truncated") && e.contains("50 tokens"), "{e}");

    let p = write("foreign.bin", b"PK\x03\x04 this is a zip file, not tokens at all");
    let e = open_err(&p, 4);
    assert!(e.contains("foreign.bin") && e.contains("not an IronTensor token file"), "{e}");

    let mut v = bytes.clone();
    v[8..12].copy_from_slice(&7u32.to_le_bytes());
    let e = open_err(&write("version.bin", &v), 4);
    assert!(e.contains("version.bin") && e.contains("version 7"), "{e}");

    let mut v = bytes.clone();
    v[12..16].copy_from_slice(&3u32.to_le_bytes());
    let e = open_err(&write("width.bin", &v), 4);
    assert!(e.contains("width.bin") && e.contains("width 3"), "{e}");

    // 50 tokens give windows up to seq_len 49; 50 needs 51 tokens.
    assert!(TokenDataset::open(&good, 49).is_ok());
    let e = open_err(&good, 50);
    assert!(e.contains("good.bin") && e.contains("50 tokens") && e.contains("seq_len 50"), "{e}");

    let e = open_err(&dir.join("missing.bin"), 4);
    assert!(e.contains("missing.bin"), "{e}");
}

/// The first 200 KB of TinyShakespeare (cut at a char boundary; the file is ASCII).
fn shakespeare_slice() -> String {
    let text = std::fs::read_to_string(SHAKESPEARE).expect("tests/data/tinyshakespeare.txt");
    text[..200_000].to_string()
}

#[test]
fn tokenizer_trains_saves_loads_and_round_trips() {
    let text = shakespeare_slice();
    let tok = Tokenizer::train(&text, 512).unwrap();
    assert_eq!(tok.vocab_size(), 512);
    assert_eq!(tok.decode(&[tok.eos_id()]), "<|endoftext|>");

    // It learned merges: Shakespeare compresses well below one token per byte.
    let sample = &text[100_000..120_000];
    let ids = tok.encode(sample);
    assert!(ids.len() * 2 < sample.len(), "{} tokens for {} bytes", ids.len(), sample.len());
    assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
    assert_eq!(tok.decode(&ids), sample);

    let odd = [
        "",
        " leading space, trailing space ",
        "naïve café — “quotes” ½ ∑ 日本語のテキスト 🦀🚀 Ωμέγα",
        "tabs\tand\r\nwindows lines\n\n\nand   runs of   spaces",
        "zero\u{0}byte and <|endoftext|> inside text, and a lone <|endof",
        "\u{feff}BOM, combining e\u{301}, emoji family 👩‍👩‍👧",
    ];
    for s in odd {
        assert_eq!(tok.decode(&tok.encode(s)), s, "round trip of {s:?}");
    }
    assert!(tok.encode("a<|endoftext|>b").contains(&tok.eos_id()));

    let dir = tmp_dir("tokenizer");
    let path = dir.join("tokenizer.json");
    tok.save(&path).unwrap();
    let json = std::fs::read_to_string(&path).unwrap();
    assert!(json.contains("\"ByteLevel\"") && json.contains("<|endoftext|>"), "HF tokenizer.json layout");
    let back = Tokenizer::load(&path).unwrap();
    assert_eq!((back.vocab_size(), back.eos_id()), (tok.vocab_size(), tok.eos_id()));
    for s in odd.iter().chain([&sample]) {
        assert_eq!(back.encode(s), tok.encode(s), "loaded tokenizer encodes {s:?} the same");
    }

    // Loading on another thread: the vocabulary size is known at once, the tokenizer the same.
    assert_eq!(Tokenizer::vocab_size_of(&path), Some(tok.vocab_size()));
    let mut lazy = Tokenizer::load_lazily(&path).unwrap();
    assert_eq!(lazy.vocab_size(), tok.vocab_size());
    assert_eq!(lazy.get().unwrap().encode(sample), tok.encode(sample));

    // Load errors name the file.
    assert!(Tokenizer::load_lazily(dir.join("nope.json")).unwrap_err().to_string().contains("nope.json"));
    let e = Tokenizer::load(dir.join("nope.json")).unwrap_err().to_string();
    assert!(e.contains("nope.json"), "{e}");
    std::fs::write(dir.join("bad.json"), "{\"not\": \"a tokenizer\"}").unwrap();
    let e = Tokenizer::load(dir.join("bad.json")).unwrap_err().to_string();
    assert!(e.contains("bad.json"), "{e}");
    assert!(Tokenizer::train("abc", 100).unwrap_err().to_string().contains("vocab_size 100"));
}

fn file_url(p: &Path) -> String {
    format!("file://{}", p.display())
}

#[test]
fn download_checks_size_and_hash() {
    let dir = tmp_dir("download");
    let src = dir.join("source.txt");
    std::fs::write(&src, "hello, curl\n").unwrap();
    let sha = sha256_file(&src).unwrap();
    // SHA-256 of "hello, curl\n" from sha256sum, so the hashing itself is checked.
    assert_eq!(sha, "a04fbd21f62ade6b21786c275f97bea0b86c25f0950ea0b83aa2fbbf8a52c6b9");

    let dest = dir.join("sub/dest.txt");
    download(&file_url(&src), &dest, Some(12), Some(&sha.to_uppercase())).unwrap();
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "hello, curl\n");

    let bad = dir.join("bad.txt");
    let e = download(&file_url(&src), &bad, None, Some(&"0".repeat(64))).unwrap_err().to_string();
    assert!(e.contains("SHA-256 mismatch") && e.contains(&sha), "{e}");
    assert!(!bad.exists() && !dir.join("bad.txt.part").exists(), "a bad download leaves no file");

    let e = download(&file_url(&src), &bad, Some(13), None).unwrap_err().to_string();
    assert!(e.contains("got 12 bytes, expected 13"), "{e}");
    assert!(!bad.exists());

    // Nothing listens on port 1 of this machine: the same failure as no network.
    let e = download("http://127.0.0.1:1/input.txt", &bad, None, None).unwrap_err().to_string();
    assert!(e.contains("--data FILE") && e.contains("127.0.0.1:1"), "{e}");
    let e = download(&file_url(&dir.join("missing.txt")), &bad, None, None).unwrap_err().to_string();
    assert!(e.contains("--data FILE"), "{e}");
    assert!(!bad.exists());
}

#[test]
fn tinyshakespeare_uses_the_file_in_place_and_its_hash_matches() {
    let dir = tmp_dir("shakespeare");
    // The copy in tests/data is the real file: the hard-coded size and hash describe it.
    let src = Path::new(SHAKESPEARE);
    assert_eq!(std::fs::metadata(src).unwrap().len(), irontensor::data::TINYSHAKESPEARE_BYTES);
    assert_eq!(sha256_file(src).unwrap(), irontensor::data::TINYSHAKESPEARE_SHA256);
    // The same checks the real download runs, through file://.
    let dest = dir.join("tinyshakespeare.txt");
    let size = Some(irontensor::data::TINYSHAKESPEARE_BYTES);
    download(&file_url(src), &dest, size, Some(irontensor::data::TINYSHAKESPEARE_SHA256)).unwrap();
    assert_eq!(irontensor::data::tinyshakespeare(&dir).unwrap(), dest, "an existing file is used as is");
}

/// `open_checked` finds the first id outside the vocabulary, in files of both widths, and
/// names the file, the position and the id; files within the vocabulary open.
#[test]
fn token_ids_are_checked_against_the_vocabulary_when_opened() {
    let dir = tmp_dir("vocab");
    for (vocab, below) in [(1000usize, 1000u64), (70_000, 70_000)] {
        let path = dir.0.join(format!("tokens-{vocab}.bin"));
        let mut ids = random_tokens(1237, below, vocab as u64);
        TokenDataset::create(&path, &ids).unwrap();
        let ds = TokenDataset::open_checked(&path, 16, vocab).unwrap();
        assert_eq!(ds.token_width(), if vocab < 65536 { 2 } else { 4 });
        // The reference: the first position whose id is out of range, found by a plain scan.
        for (pos, id) in [(1236, vocab as u32), (611, vocab as u32 + 5), (0, below as u32 * 3 / 2)] {
            ids[pos] = id;
            TokenDataset::create(&path, &ids).unwrap();
            let first = ids.iter().position(|&t| t as usize >= vocab).unwrap();
            let e = TokenDataset::open_checked(&path, 16, vocab).unwrap_err().to_string();
            let want = format!("position {first} is id {}", ids[first]);
            assert!(e.contains(&path.display().to_string()) && e.contains(&want), "{e} (expected {want:?})");
        }
    }
}

/// Encoding in pieces on every core gives the ids of encoding the whole text: TinyShakespeare
/// cut into 4 KB pieces, and text with blank lines, indented lines, end-of-text tokens and
/// multi-byte characters next to the cuts.
#[test]
fn chunked_encoding_equals_whole_encoding() {
    let text = std::fs::read_to_string(SHAKESPEARE).unwrap();
    let tok = Tokenizer::train(&text[..200_000], 600).unwrap();
    let tricky: String = (0..3000)
        .map(|i| match i % 5 {
            0 => format!("Wörld {i}\n\n"),
            1 => format!("  indented 日本 {i}\n"),
            2 => format!("<|endoftext|>doc {i}\n"),
            3 => format!("\n\n\n🦀{i}\r\n"),
            _ => format!("tab\t{i}\n "),
        })
        .collect();
    for (what, t) in [("shakespeare", &text), ("tricky", &tricky)] {
        let whole = tok.encode(t);
        for chunk in [64, 4096, 1 << 20, usize::MAX / 2] {
            assert_eq!(tok.encode_chunked(t, chunk), whole, "{what}, pieces of {chunk} bytes");
        }
    }
}

/// A tokenizer that is not byte-level (Llama 2 / TinyLlama style: "▁" spaces, byte fallback,
/// `</s>` from tokenizer_config.json; tests/fixtures/spm-tokenizer, made by tokenizers itself with
/// dev/make_spm_tokenizer.py) loads, encodes as tokenizers does, whole or in chunks, and decodes back.
#[test]
fn a_sentencepiece_style_tokenizer_encodes_as_tokenizers_does() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm-tokenizer");
    let tok = Tokenizer::load(dir.join("tokenizer.json")).unwrap();
    assert_eq!(tok.inner().id_to_token(tok.eos_id()).as_deref(), Some("</s>"));
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    for case in want["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text), ids, "{text:?}");
        assert_eq!(tok.encode_chunked(text, 64), ids, "{text:?} in chunks");
        assert_eq!(tok.decode(&ids), text, "{text:?} decoded");
    }
}
