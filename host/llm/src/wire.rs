//! The OpenAI wire format, parsed tolerantly: optional fields may be missing,
//! and a provider's error body (`{"error": {message, type, code}}`) is kept.

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use bsm_runtime::bindings::llm::{ChatRequest, ChatResponse, Message, ProviderError, Role, Usage};

/// Body of `POST {base}/chat/completions`; borrows the plugin's messages
/// (a review's prompt is kilobytes, serialised once).
#[derive(Debug, Serialize)]
pub struct WireChatRequest<'a> {
    pub model: String,
    pub messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// `{"type": "json_object"}` when the plugin asks for JSON and the
    /// provider supports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct StreamOptions {
    pub include_usage: bool,
}

#[derive(Debug, Serialize)]
pub struct WireMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

impl<'a> WireChatRequest<'a> {
    pub fn new(
        request: &'a ChatRequest,
        model: String,
        max_tokens: Option<u32>,
        stream: bool,
        json_mode: bool,
    ) -> Self {
        Self {
            model,
            messages: request.messages.iter().map(wire_message).collect(),
            max_tokens,
            temperature: request.temperature,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
            response_format: (request.json && json_mode)
                .then(|| serde_json::json!({ "type": "json_object" })),
        }
    }
}

fn wire_message(m: &Message) -> WireMessage<'_> {
    WireMessage {
        role: match m.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        },
        content: &m.content,
    }
}

/// Body of `POST {base}/embeddings`.
#[derive(Debug, Serialize)]
pub struct WireEmbeddingsRequest<'a> {
    pub model: String,
    pub input: &'a [String],
}

// The answer's strings borrow from the body or the event where they need no
// unescaping: a streamed answer is parsed chunk by chunk, and each chunk's
// model name, content and finish reason were three allocations of their own.

#[derive(Debug, Default, Deserialize)]
struct WireContent<'a> {
    #[serde(default, borrow, deserialize_with = "borrowed_str")]
    content: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct WireChoice<'a> {
    #[serde(default, borrow)]
    message: Option<WireContent<'a>>,
    #[serde(default, borrow)]
    delta: Option<WireContent<'a>>,
    #[serde(default, borrow, deserialize_with = "borrowed_str")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u32>,
    #[serde(default)]
    completion_tokens: Option<u32>,
}

/// A whole response or one streamed chunk: the same shape.
#[derive(Debug, Deserialize)]
struct WireChatResponse<'a> {
    #[serde(default, borrow, deserialize_with = "borrowed_str")]
    model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    choices: Vec<WireChoice<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// An optional string, borrowed unless it has escapes (serde borrows a
/// `Cow<str>` only as a field of its own, not inside an `Option`).
fn borrowed_str<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

#[derive(Debug, Deserialize)]
struct WireEmbedding {
    #[serde(default)]
    index: Option<usize>,
    embedding: Vec<f32>,
}

#[derive(Debug, Deserialize)]
struct WireEmbeddingsResponse {
    data: Vec<WireEmbedding>,
}

/// Parses a non-streamed chat completion.
pub fn parse_chat(body: &[u8], requested_model: &str) -> Result<ChatResponse, String> {
    let r: WireChatResponse =
        serde_json::from_slice(body).map_err(|e| format!("malformed chat completion: {e}"))?;
    let choice = r.choices.into_iter().next();
    let finish_reason = choice
        .as_ref()
        .and_then(|c| c.finish_reason.as_deref().map(String::from));
    let content = choice
        .and_then(|c| c.message.or(c.delta))
        .and_then(|m| m.content)
        .map(Cow::into_owned)
        .unwrap_or_default();
    let usage = r.usage.unwrap_or_default();
    Ok(ChatResponse {
        content,
        model: r
            .model
            .map_or_else(|| requested_model.to_string(), Cow::into_owned),
        usage: Usage {
            prompt_tokens: usage.prompt_tokens.unwrap_or(0),
            completion_tokens: usage.completion_tokens.unwrap_or(0),
        },
        finish_reason,
    })
}

/// Accumulates a streamed completion chunk by chunk.
#[derive(Debug)]
pub struct StreamAccumulator {
    content: String,
    model: String,
    usage: Usage,
    finish_reason: Option<String>,
    /// Time from sending the request to the first content (or first chunk).
    pub first_token: Option<Duration>,
    pub done: bool,
}

impl StreamAccumulator {
    pub fn new(requested_model: &str) -> Self {
        Self {
            content: String::new(),
            model: requested_model.to_string(),
            usage: Usage {
                prompt_tokens: 0,
                completion_tokens: 0,
            },
            finish_reason: None,
            first_token: None,
            done: false,
        }
    }

    /// Feeds the data of one server-sent event; `[DONE]` ends the stream.
    pub fn push(&mut self, data: &str, elapsed: Duration) -> Result<(), String> {
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let chunk: WireChatResponse =
            serde_json::from_str(data).map_err(|e| format!("malformed stream chunk: {e}"))?;
        if let Some(model) = chunk.model
            && model != self.model
        {
            self.model = model.into_owned();
        }
        if let Some(u) = chunk.usage {
            self.usage.prompt_tokens = u.prompt_tokens.unwrap_or(self.usage.prompt_tokens);
            self.usage.completion_tokens =
                u.completion_tokens.unwrap_or(self.usage.completion_tokens);
        }
        for choice in chunk.choices {
            if let Some(text) = choice.delta.or(choice.message).and_then(|d| d.content)
                && !text.is_empty()
            {
                self.first_token.get_or_insert(elapsed);
                self.content.push_str(&text);
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason.into_owned());
            }
        }
        Ok(())
    }

    pub fn finish(self) -> ChatResponse {
        ChatResponse {
            content: self.content,
            model: self.model,
            usage: self.usage,
            finish_reason: self.finish_reason,
        }
    }
}

/// Parses an embeddings response, in input order.
pub fn parse_embeddings(body: &[u8], expected: usize) -> Result<Vec<Vec<f32>>, String> {
    let r: WireEmbeddingsResponse =
        serde_json::from_slice(body).map_err(|e| format!("malformed embeddings response: {e}"))?;
    let mut data = r.data;
    data.sort_by_key(|d| d.index.unwrap_or(usize::MAX));
    if data.len() != expected {
        return Err(format!(
            "asked for {expected} embeddings, got {}",
            data.len()
        ));
    }
    Ok(data.into_iter().map(|d| d.embedding).collect())
}

/// The provider's error body, or the raw text when it is not the usual shape.
pub fn parse_error(status: u16, body: &[u8]) -> ProviderError {
    #[derive(Deserialize)]
    struct Body {
        error: ErrorBody,
    }
    #[derive(Deserialize)]
    struct ErrorBody {
        #[serde(default)]
        message: Option<String>,
        #[serde(default, rename = "type")]
        kind: Option<String>,
        #[serde(default)]
        code: Option<Value>,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(Body { error }) => ProviderError {
            status: Some(status),
            message: error.message.unwrap_or_else(|| format!("HTTP {status}")),
            type_: error.kind,
            code: error.code.and_then(|c| match c {
                Value::String(s) => Some(s),
                Value::Null => None,
                other => Some(other.to_string()),
            }),
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            ProviderError {
                status: Some(status),
                message: if text.is_empty() {
                    format!("HTTP {status}")
                } else {
                    text.chars().take(500).collect()
                },
                type_: None,
                code: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_answers_are_asked_for_only_where_the_provider_takes_the_field() {
        let mut request = ChatRequest {
            messages: vec![],
            model: None,
            max_tokens: None,
            temperature: None,
            json: true,
        };
        let on = WireChatRequest::new(&request, "m".into(), None, false, true);
        assert_eq!(
            serde_json::to_value(&on).unwrap()["response_format"]["type"],
            "json_object"
        );
        let off = WireChatRequest::new(&request, "m".into(), None, false, false);
        assert!(
            serde_json::to_value(&off)
                .unwrap()
                .get("response_format")
                .is_none()
        );
        request.json = false;
        let plain = WireChatRequest::new(&request, "m".into(), None, false, true);
        assert!(
            serde_json::to_value(&plain)
                .unwrap()
                .get("response_format")
                .is_none()
        );
    }

    use super::*;

    #[test]
    fn tolerates_missing_optional_fields() {
        let r = parse_chat(br#"{"choices":[{"message":{"content":"hi"}}]}"#, "m").unwrap();
        assert_eq!(
            (r.content.as_str(), r.model.as_str(), r.usage.prompt_tokens),
            ("hi", "m", 0)
        );
        let r = parse_chat(br#"{"choices":[]}"#, "m").unwrap();
        assert_eq!(r.content, "");
        assert!(parse_chat(b"{not json", "m").is_err());
    }

    #[test]
    fn accumulates_a_stream_and_measures_the_first_token() {
        let mut acc = StreamAccumulator::new("m");
        acc.push(
            r#"{"model":"m-1","choices":[{"delta":{"role":"assistant"}}]}"#,
            Duration::from_millis(5),
        )
        .unwrap();
        assert!(
            acc.first_token.is_none(),
            "a role-only chunk is not a token"
        );
        acc.push(
            r#"{"choices":[{"delta":{"content":"Hel"}}]}"#,
            Duration::from_millis(9),
        )
        .unwrap();
        acc.push(
            r#"{"choices":[{"delta":{"content":"lo"},"finish_reason":"stop"}]}"#,
            Duration::from_millis(12),
        )
        .unwrap();
        acc.push(
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
            Duration::from_millis(13),
        )
        .unwrap();
        acc.push("[DONE]", Duration::from_millis(14)).unwrap();
        assert!(acc.done);
        assert_eq!(acc.first_token, Some(Duration::from_millis(9)));
        let r = acc.finish();
        assert_eq!((r.content.as_str(), r.model.as_str()), ("Hello", "m-1"));
        assert_eq!((r.usage.prompt_tokens, r.usage.completion_tokens), (3, 2));
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn escaped_and_plain_strings_are_read_alike() {
        let body = br#"{"model":"m\u002d2","choices":[{"message":{"content":"a \"quoted\"\nline"},"finish_reason":"stop"}]}"#;
        let r = parse_chat(body, "m").unwrap();
        assert_eq!(
            (r.content.as_str(), r.model.as_str()),
            ("a \"quoted\"\nline", "m-2")
        );
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));

        let mut acc = StreamAccumulator::new("m");
        for chunk in [
            r#"{"model":"m-2","choices":[{"delta":{"content":"one\ttwo"}}]}"#,
            r#"{"model":"m-2","choices":[{"delta":{"content":" three"},"finish_reason":"len\u0067th"}]}"#,
        ] {
            acc.push(chunk, Duration::ZERO).unwrap();
        }
        let r = acc.finish();
        assert_eq!(
            (r.content.as_str(), r.model.as_str()),
            ("one\ttwo three", "m-2")
        );
        assert_eq!(r.finish_reason.as_deref(), Some("length"));

        // Plain strings are borrowed from the chunk, escaped ones copied.
        let chunk: WireChatResponse = serde_json::from_str(
            r#"{"model":"m-2","choices":[{"delta":{"content":"a\nb"},"finish_reason":"stop"}]}"#,
        )
        .unwrap();
        assert!(matches!(chunk.model, Some(Cow::Borrowed("m-2"))));
        assert!(matches!(
            chunk.choices[0].finish_reason,
            Some(Cow::Borrowed("stop"))
        ));
        let content = chunk.choices[0].delta.as_ref().unwrap().content.as_ref();
        assert!(matches!(content, Some(Cow::Owned(s)) if s == "a\nb"));
    }

    #[test]
    fn keeps_the_providers_error_body() {
        let e = parse_error(429, br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#);
        assert_eq!(e.status, Some(429));
        assert_eq!(e.code.as_deref(), Some("insufficient_quota"));
        assert_eq!(e.type_.as_deref(), Some("insufficient_quota"));
        let e = parse_error(500, br#"{"error":{"message":"boom","code":500}}"#);
        assert_eq!(e.code.as_deref(), Some("500"));
        let e = parse_error(502, b"<html>Bad Gateway</html>");
        assert_eq!(e.message, "<html>Bad Gateway</html>");
    }

    #[test]
    fn embeddings_come_back_in_input_order() {
        let body = br#"{"data":[{"index":1,"embedding":[2.0]},{"index":0,"embedding":[1.0]}]}"#;
        assert_eq!(
            parse_embeddings(body, 2).unwrap(),
            vec![vec![1.0], vec![2.0]]
        );
        assert!(parse_embeddings(body, 3).is_err());
    }
}
