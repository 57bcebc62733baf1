//! `/api/knowledge`: the document collections. Reading and searching are
//! open like the other read endpoints; writing needs the admin token.
//! Limits (batch size, topK, query length, text and metadata sizes) are the
//! knowledge service's own, so the API and plugins are held to the same.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use bsm_platform::knowledge::{DocumentInput, KnowledgeError, SearchMode, SearchRequest};
use bsm_platform::runtime::capabilities::Caller;

use crate::error::{ApiError, ApiJson, correlation_id};
use crate::state::AppState;

impl From<KnowledgeError> for ApiError {
    fn from(e: KnowledgeError) -> Self {
        let status = match e {
            KnowledgeError::UnknownCollection(_) => StatusCode::NOT_FOUND,
            KnowledgeError::Invalid(_) => StatusCode::BAD_REQUEST,
            KnowledgeError::EmbedderMismatch(_) | KnowledgeError::ReadOnly(_) => {
                StatusCode::CONFLICT
            }
            KnowledgeError::Embedding(_) => StatusCode::SERVICE_UNAVAILABLE,
            KnowledgeError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

fn caller() -> Caller {
    Caller {
        plugin_id: "api".into(),
        correlation_id: correlation_id().into(),
    }
}

/// `GET /api/knowledge`: collections with their sizes and embedders.
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let knowledge = state.platform.knowledge();
    Json(json!({
        "collections": knowledge.collections(),
        "embedder": knowledge.embedder().name(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentBody {
    id: String,
    text: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsertBody {
    documents: Vec<DocumentBody>,
}

/// `POST /api/knowledge/{collection}/documents` (admin): batch upsert.
pub async fn upsert(
    State(state): State<AppState>,
    Path(collection): Path<String>,
    ApiJson(body): ApiJson<UpsertBody>,
) -> Result<Json<Value>, ApiError> {
    let documents = body
        .documents
        .into_iter()
        .map(|d| DocumentInput {
            id: d.id,
            text: d.text,
            metadata: d.metadata.into_iter().collect(),
            source: d.source,
        })
        .collect();
    let knowledge = state.platform.knowledge();
    let written = knowledge.upsert(&caller(), &collection, documents).await?;
    Ok(Json(
        json!({ "collection": collection, "upserted": written }),
    ))
}

/// `DELETE /api/knowledge/{collection}/documents/{id}` (admin).
pub async fn delete(
    State(state): State<AppState>,
    Path((collection, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let deleted = state
        .platform
        .knowledge()
        .delete(&collection, vec![id.clone()])
        .await?;
    if deleted == 0 {
        return Err(ApiError::not_found(
            "DOCUMENT_NOT_FOUND",
            format!("collection {collection:?} has no document {id:?}"),
        ));
    }
    Ok(Json(json!({ "collection": collection, "deleted": id })))
}

/// `GET /api/knowledge/{collection}/documents/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Path((collection, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let doc = state.platform.knowledge().get(&collection, &id).await?;
    match doc {
        Some(d) => Ok(Json(json!({
            "id": d.id,
            "text": d.text,
            "metadata": d.metadata.into_iter().collect::<BTreeMap<_, _>>(),
            "source": d.source,
        }))),
        None => Err(ApiError::not_found(
            "DOCUMENT_NOT_FOUND",
            format!("collection {collection:?} has no document {id:?}"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SearchBody {
    query: String,
    #[serde(default = "default_top_k")]
    top_k: usize,
    #[serde(default)]
    filter: BTreeMap<String, String>,
    #[serde(default)]
    mode: SearchMode,
}

fn default_top_k() -> usize {
    5
}

/// `POST /api/knowledge/{collection}/search`.
pub async fn search(
    State(state): State<AppState>,
    Path(collection): Path<String>,
    ApiJson(body): ApiJson<SearchBody>,
) -> Result<Json<Value>, ApiError> {
    let request = SearchRequest {
        query: body.query,
        top_k: body.top_k,
        filter: body.filter.into_iter().collect(),
        mode: body.mode,
    };
    let hits = state
        .platform
        .knowledge()
        .search(&caller(), &collection, &request)
        .await?;
    let hits: Vec<Value> = hits
        .into_iter()
        .map(|h| {
            json!({
                "id": h.id,
                "text": h.text,
                "score": h.score,
                "metadata": h.metadata.into_iter().collect::<BTreeMap<_, _>>(),
                "source": h.source,
            })
        })
        .collect();
    Ok(Json(
        json!({ "collection": collection, "mode": request.mode, "hits": hits }),
    ))
}
