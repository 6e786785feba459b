//! Fine-tuning records read from JSONL (text, prompt/completion, chat messages) and encoded as
//! token ids with the tokens the loss counts.

use super::chat::{ChatTemplate, Message};
use super::Tokenizer;
use crate::{bail, Error, Result};
use std::path::Path;

/// One line of a JSONL file.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// `{"text": ...}`: every token is learnt.
    Text(String),
    /// `{"prompt": ..., "completion": ...}`: the completion's tokens are learnt.
    Completion { prompt: String, completion: String },
    /// `{"messages": [{"role": ..., "content": ...}, ...]}`: the assistant's tokens are learnt.
    Chat(Vec<Message>),
}

/// A record with the line it came from (1-based), for errors.
#[derive(Clone, Debug)]
pub struct Line {
    pub number: usize,
    pub record: Record,
}

/// A record's token ids, and for each whether the loss counts it as a target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub counted: Vec<bool>,
}

/// The string field `key` of `obj`, or an error naming where.
fn string_field(obj: &serde_json::Map<String, serde_json::Value>, key: &str, at: &str) -> Result<String> {
    match obj.get(key) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(v) => bail!(Invalid, "{at}: \"{key}\" must be a string, got {v}"),
        None => bail!(Invalid, "{at}: \"{key}\" is missing"),
    }
}

/// One line's record; `at` ("FILE:LINE") names it in errors.
pub fn parse_record(line: &str, at: &str) -> Result<Record> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| Error::Invalid(format!("{at}: not valid JSON: {e}")))?;
    let Some(obj) = value.as_object() else {
        bail!(Invalid, "{at}: a record must be a JSON object, got {}", line.chars().take(60).collect::<String>());
    };
    if let Some(list) = obj.get("messages") {
        let Some(list) = list.as_array() else { bail!(Invalid, "{at}: \"messages\" must be a list") };
        if list.is_empty() {
            bail!(Invalid, "{at}: \"messages\" is empty");
        }
        let messages = list
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let at = format!("{at}: message {}", i + 1);
                let Some(m) = m.as_object() else { bail!(Invalid, "{at} must be an object with role and content") };
                Ok(Message { role: string_field(m, "role", &at)?, content: string_field(m, "content", &at)? })
            })
            .collect::<Result<_>>()?;
        return Ok(Record::Chat(messages));
    }
    if obj.contains_key("prompt") || obj.contains_key("completion") {
        let (prompt, completion) = (string_field(obj, "prompt", at)?, string_field(obj, "completion", at)?);
        return Ok(Record::Completion { prompt, completion });
    }
    if obj.contains_key("text") {
        return Ok(Record::Text(string_field(obj, "text", at)?));
    }
    let keys: Vec<&String> = obj.keys().collect();
    bail!(
        Invalid,
        "{at}: expected {{\"text\": ...}}, {{\"prompt\": ..., \"completion\": ...}} or {{\"messages\": [...]}}, got keys {keys:?}"
    )
}

/// Every record of the JSONL file at `path` (blank lines skipped); an error names the file and
/// line of the first bad one, or says the file has none.
pub fn read_jsonl(path: &Path) -> Result<Vec<Line>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Invalid(format!("--data {}: {e} (a UTF-8 JSONL file is needed)", path.display())))?;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        lines.push(Line { number: i + 1, record: parse_record(line, &at)? });
    }
    if lines.is_empty() {
        bail!(Invalid, "--data {}: no records (one JSON object a line is needed)", path.display());
    }
    Ok(lines)
}

/// Turns records into tokens: text through the tokenizer (with the special tokens its
/// post-processor adds, as transformers' `add_special_tokens`), chats through the template.
pub struct Encoder<'a> {
    pub tokenizer: &'a Tokenizer,
    pub template: Option<&'a ChatTemplate>,
    /// Ends every text and completion record.
    pub eos: u32,
    /// Count every token, not only the completion's or the assistant's.
    pub train_on_prompt: bool,
}

impl Encoder<'_> {
    fn ids(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc =
            self.tokenizer.inner().encode(text, special).map_err(|e| Error::Invalid(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `record`'s tokens; `at` names it in errors.
    pub fn encode(&self, record: &Record, at: &str) -> Result<Encoded> {
        let all = self.train_on_prompt;
        match record {
            Record::Text(text) => {
                let mut ids = self.ids(text, true)?;
                ids.push(self.eos);
                Ok(Encoded { counted: vec![true; ids.len()], ids })
            }
            Record::Completion { prompt, completion } => {
                let mut ids = self.ids(prompt, true)?;
                let mut counted = vec![all; ids.len()];
                ids.extend(self.ids(completion, false)?);
                ids.push(self.eos);
                counted.resize(ids.len(), true);
                Ok(Encoded { ids, counted })
            }
            Record::Chat(messages) => {
                let Some(template) = self.template else {
                    bail!(
                        Invalid,
                        "{at}: a \"messages\" record needs the model's chat template, and it has none \
                         (chat_template in tokenizer_config.json, or chat_template.jinja, beside its tokenizer.json)"
                    );
                };
                let (text, spans) = template.render_with_assistant_spans(messages).map_err(|e| match e {
                    Error::Invalid(why) => Error::Invalid(format!("{at}: {why}")),
                    e => e,
                })?;
                // Rendered special tokens are in the text already: none are added (as transformers).
                let enc = self
                    .tokenizer
                    .inner()
                    .encode(text.as_str(), false)
                    .map_err(|e| Error::Invalid(format!("tokenizer: {e}")))?;
                // A token is the assistant's when its bytes overlap an assistant message's.
                let counted = enc
                    .get_offsets()
                    .iter()
                    .map(|&(s, e)| all || spans.iter().any(|r| s < r.end && e > r.start))
                    .collect();
                Ok(Encoded { ids: enc.get_ids().to_vec(), counted })
            }
        }
    }
}
