//! Drives the knowledge capability from a JSON input and answers JSON:
//! `{"op": "upsert", "collection", "documents": [{"id", "text", "metadata": {}}]}`,
//! `{"op": "search", "collection", "query", "topK", "mode", "filter": {}}`,
//! `{"op": "get", "collection", "id"}`, `{"op": "delete", "collection", "ids"}`.
//! Capability errors are answered as `{"error": "..."}`, not failures.

use bsm_sdk::knowledge::{self, Document, Query, SearchMode};
use bsm_sdk::{Agent, AgentError, AgentInfo, Input, Output};
use serde_json::{Value, json};

struct KnowledgeUser;

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

impl Agent for KnowledgeUser {
    fn describe() -> AgentInfo {
        AgentInfo::new("knowledge-user", "Knowledge user", "0.1.0")
    }

    fn run(input: Input) -> Result<Output, AgentError> {
        let request: Value = serde_json::from_str(&input.input)
            .map_err(|e| AgentError::InvalidInput(format!("input is not JSON: {e}")))?;
        let collection = text(&request, "collection");
        let answer = match request["op"].as_str() {
            Some("upsert") => {
                let docs: Vec<Document> = request["documents"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        pairs(&d["metadata"]).into_iter().fold(
                            Document::new(text(d, "id"), text(d, "text")),
                            |doc, (k, v)| doc.with(k, v),
                        )
                    })
                    .collect();
                knowledge::upsert(&collection, &docs).map(|()| json!({"upserted": docs.len()}))
            }
            Some("search") => {
                let mode = match request["mode"].as_str() {
                    Some("vector") => SearchMode::Vector,
                    Some("keyword") => SearchMode::Keyword,
                    _ => SearchMode::Hybrid,
                };
                let query = pairs(&request["filter"]).into_iter().fold(
                    Query::new(text(&request, "query"))
                        .top_k(request["topK"].as_u64().unwrap_or(5) as u32)
                        .mode(mode),
                    |q, (k, v)| q.filter(k, v),
                );
                knowledge::query(&collection, &query).map(|hits| {
                    json!({"hits": hits.iter().map(|h| json!({
                        "id": h.id, "score": h.score, "text": h.text,
                        "team": h.meta("team"), "source": h.source,
                    })).collect::<Vec<_>>()})
                })
            }
            Some("get") => knowledge::get(&collection, &text(&request, "id"))
                .map(|d| json!({"document": d.map(|d| json!({"id": d.id, "text": d.text}))})),
            Some("delete") => {
                let ids: Vec<String> = request["ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect();
                knowledge::delete(&collection, &ids).map(|n| json!({"deleted": n}))
            }
            _ => return Err(AgentError::InvalidInput("unknown op".into())),
        };
        let answer = answer.unwrap_or_else(|e| json!({"error": format!("{e:?}")}));
        Ok(Output::text(answer.to_string()))
    }
}

bsm_sdk::export_agent!(KnowledgeUser);
