//! The files behind `--data`: one file, a directory (searched recursively), or a glob pattern.

use crate::{bail, Error, Result};
use std::path::{Path, PathBuf};

/// How a source file holds its documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// Plain UTF-8 text; blank lines separate documents.
    Text,
    /// One JSON record a line; each `{"text": ...}` is a document.
    Jsonl,
}

/// One file of a corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub path: PathBuf,
    pub kind: SourceKind,
    pub bytes: u64,
}

/// The kind of `path` by its extension: `.jsonl` is JSONL, anything else text.
fn kind_of(path: &Path) -> SourceKind {
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => SourceKind::Jsonl,
        _ => SourceKind::Text,
    }
}

/// Whether a file found in a directory or by a glob is data (`.txt` or `.jsonl`).
fn is_data_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("txt" | "jsonl"))
}

/// Whether `pattern` holds glob characters.
fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// The files of `spec`, sorted by path: the file itself (any extension; `.jsonl` is JSONL), the
/// `.txt` and `.jsonl` files under a directory, or those a glob matches (`*`, `?`, `[abc]` within a
/// name, `**` across folders). An error names `--data` when nothing is found.
pub fn find_sources(spec: &Path) -> Result<Vec<Source>> {
    let text = spec.to_string_lossy();
    let mut paths = if spec.is_file() {
        vec![spec.to_path_buf()]
    } else if spec.is_dir() {
        let mut found = Vec::new();
        walk(spec, &mut found)?;
        found.retain(|p| is_data_file(p));
        found
    } else if is_glob(&text) {
        glob(&text)?
    } else {
        bail!(Invalid, "--data {}: no such file, directory or glob pattern", spec.display());
    };
    paths.sort();
    if paths.is_empty() {
        bail!(Invalid, "--data {}: no .txt or .jsonl files found", spec.display());
    }
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::metadata(&path)
                .map_err(|e| Error::Invalid(format!("--data: cannot read {}: {e}", path.display())))?
                .len();
            Ok(Source { kind: kind_of(&path), path, bytes })
        })
        .collect()
}

/// Every file under `dir`, recursively (hidden entries skipped).
fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::Invalid(format!("--data: cannot list {}: {e}", dir.display())))?;
    for entry in entries {
        let path = entry?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        if path.is_dir() {
            walk(&path, found)?;
        } else if path.is_file() {
            found.push(path);
        }
    }
    Ok(())
}

/// The data files a glob pattern matches, searched from its longest folder without wildcards.
fn glob(pattern: &str) -> Result<Vec<PathBuf>> {
    let parts: Vec<&str> = pattern.split('/').collect();
    let fixed = parts.iter().take_while(|p| !is_glob(p)).count();
    let base = match parts[..fixed].join("/") {
        b if b.is_empty() && pattern.starts_with('/') => "/".to_string(),
        b if b.is_empty() => ".".to_string(),
        b => b,
    };
    let mut files = Vec::new();
    if Path::new(&base).is_dir() {
        walk(Path::new(&base), &mut files)?;
    }
    let rest = &parts[fixed..];
    files.retain(|f| {
        let rel = f.strip_prefix(&base).unwrap_or(f);
        let names: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
        let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        match_parts(rest, &names) && (is_data_file(f) || !rest.last().is_some_and(|l| is_glob(l)))
    });
    Ok(files)
}

/// Whether path components `names` match pattern components `pats` (`**` matches any number).
fn match_parts(pats: &[&str], names: &[&str]) -> bool {
    match (pats.first(), names.first()) {
        (None, None) => true,
        (Some(&"**"), _) => match_parts(&pats[1..], names) || (!names.is_empty() && match_parts(pats, &names[1..])),
        (Some(p), Some(n)) => match_name(p.as_bytes(), n.as_bytes()) && match_parts(&pats[1..], &names[1..]),
        _ => false,
    }
}

/// Whether one file name matches a pattern of `*`, `?` and `[...]` (byte-wise).
fn match_name(pat: &[u8], name: &[u8]) -> bool {
    match pat.first() {
        None => name.is_empty(),
        Some(b'*') => (0..=name.len()).any(|i| match_name(&pat[1..], &name[i..])),
        Some(b'?') => !name.is_empty() && match_name(&pat[1..], &name[1..]),
        Some(b'[') => {
            let Some(close) = pat.iter().position(|&c| c == b']') else {
                return name.first() == Some(&b'[') && match_name(&pat[1..], &name[1..]);
            };
            let set = &pat[1..close];
            let Some(&c) = name.first() else { return false };
            let hit = set.windows(3).any(|w| w[1] == b'-' && w[0] <= c && c <= w[2]) || set.contains(&c);
            hit && match_name(&pat[close + 1..], &name[1..])
        }
        Some(&p) => name.first() == Some(&p) && match_name(&pat[1..], &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_globs() {
        let yes = [("*.txt", "a.txt"), ("part-??.jsonl", "part-07.jsonl"), ("[a-c]x*", "bx"), ("*", "")];
        for (p, n) in yes {
            assert!(match_name(p.as_bytes(), n.as_bytes()), "{p} {n}");
        }
        let no = [("*.txt", "a.jsonl"), ("part-??.jsonl", "part-7.jsonl"), ("[a-c]x*", "dx"), ("a", "ab")];
        for (p, n) in no {
            assert!(!match_name(p.as_bytes(), n.as_bytes()), "{p} {n}");
        }
        assert!(match_parts(&["**", "*.txt"], &["a", "b", "c.txt"]));
        assert!(match_parts(&["**", "*.txt"], &["c.txt"]));
        assert!(!match_parts(&["*", "*.txt"], &["c.txt"]));
    }
}
