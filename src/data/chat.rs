//! Chat templates: a model's Jinja `chat_template` rendered with minijinja as transformers renders it.

use crate::{bail, Error, Result};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::Path;

/// One turn of a conversation: `{"role": "user", "content": "..."}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A compiled chat template with the special-token text it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from, for errors.
    origin: String,
    pub bos_token: String,
    pub eos_token: String,
}

/// `bos_token` / `eos_token` of a tokenizer_config.json: a string or `{"content": ...}`.
fn token_text(config: &serde_json::Value, key: &str) -> Option<String> {
    let v = config.get(key)?;
    v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str())).map(String::from)
}

/// tokenizer_config.json of `dir` as JSON (None when absent).
pub fn tokenizer_config(dir: &Path) -> Result<Option<serde_json::Value>> {
    let path = dir.join("tokenizer_config.json");
    let Ok(bytes) = std::fs::read(&path) else { return Ok(None) };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Invalid(format!("{}: not valid JSON: {e}", path.display())))
}

impl ChatTemplate {
    /// Compiles `source` as transformers does (trim_blocks, lstrip_blocks, `raise_exception`,
    /// Python string methods); `origin` names it in errors.
    pub fn new(source: &str, bos_token: &str, eos_token: &str, origin: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::Invalid(format!("chat template: {e}")))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat_template", source.to_string())
            .map_err(|e| Error::Invalid(format!("chat template of {origin} does not compile: {e}")))?;
        Ok(ChatTemplate { env, origin: origin.into(), bos_token: bos_token.into(), eos_token: eos_token.into() })
    }

    /// The template of model folder `dir`: its chat_template.jinja, else the `chat_template` of its
    /// tokenizer_config.json (whose bos_token / eos_token it is rendered with). None if it has neither.
    pub fn find(dir: &Path) -> Result<Option<ChatTemplate>> {
        let config = tokenizer_config(dir)?.unwrap_or_default();
        let (bos, eos) = (token_text(&config, "bos_token"), token_text(&config, "eos_token"));
        let (bos, eos) = (bos.unwrap_or_default(), eos.unwrap_or_default());
        let file = dir.join("chat_template.jinja");
        if let Ok(source) = std::fs::read_to_string(&file) {
            return ChatTemplate::new(&source, &bos, &eos, &file.display().to_string()).map(Some);
        }
        let origin = dir.join("tokenizer_config.json").display().to_string();
        let source = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            // Several named templates: the one named "default".
            Some(serde_json::Value::Array(list)) => {
                let default = list.iter().find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"));
                match default.and_then(|t| t.get("template")).and_then(|t| t.as_str()) {
                    Some(s) => s.to_string(),
                    None => bail!(Invalid, "{origin}: chat_template is a list without a \"default\" template"),
                }
            }
            Some(_) => bail!(Invalid, "{origin}: chat_template must be a string"),
            None => return Ok(None),
        };
        ChatTemplate::new(&source, &bos, &eos, &origin).map(Some)
    }

    /// The text of `messages`, with the assistant's turn opened after them when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let ctx = minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            add_generation_prompt => add_generation_prompt,
        };
        let template = self.env.get_template("chat_template").expect("added in new");
        template.render(ctx).map_err(|e| {
            let mut why = e.to_string();
            if let Some(detail) = e.detail() {
                why = format!("{why} ({detail})");
            }
            Error::Invalid(format!("chat template of {}: {why}", self.origin))
        })
    }

    /// `render(messages, false)` and the byte ranges of it that are assistant messages: for an
    /// assistant message i, what rendering messages[..=i] adds to rendering messages[..i] with the
    /// generation prompt (its content and end-of-turn text). An error where a template renders a
    /// conversation's start differently once more follows (then the turns cannot be told apart).
    pub fn render_with_assistant_spans(&self, messages: &[Message]) -> Result<(String, Vec<Range<usize>>)> {
        let text = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
            let before = self.render(&messages[..i], true)?;
            let upto = self.render(&messages[..=i], false)?;
            if !(text.starts_with(&upto) && upto.starts_with(&before)) {
                bail!(
                    Invalid,
                    "chat template of {}: the conversation up to message {} (assistant: {:?}) does not render as the start of the \
                     whole one, so its tokens cannot be found (use --train-on-prompt to train on every token)",
                    self.origin,
                    i + 1,
                    m.content.chars().take(40).collect::<String>()
                );
            }
            spans.push(before.len()..upto.len());
        }
        Ok((text, spans))
    }
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("origin", &self.origin).finish()
    }
}
