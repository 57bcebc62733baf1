//! Carries out the original BSM pull-request decisions on GitHub through
//! its REST API (`config.api-base`, so GitHub Enterprise works too), with
//! the token the host holds (`config.token-secret`, put in the
//! `Authorization` header by the host).
//!
//! Every action first makes sure the pull request has the job's report as
//! one comment (found again by a hidden marker and updated on re-runs,
//! never duplicated), then does its part:
//! `approve_pr` (an approving review), `auto_merge` (merge),
//! `request_changes` (a review requesting changes), `block_pr` (a label and
//! a failed commit status), `manual_review_request` (a label). Retries are
//! safe: each step checks or overwrites rather than adds.

use bsm_sdk::http::{self, Request, Response};
use bsm_sdk::{ActionHandler, ActionRequest, DeliveryError, HandlerInfo, config};
use serde_json::{Value, json};

/// The hidden line that marks the report comment.
pub const MARKER: &str = "<!-- bsm-report -->";

/// The pull request an action is about, from its job's payload (or args).
#[derive(Debug, Clone, PartialEq)]
pub struct PullRequest {
    pub repo: String,
    pub number: u64,
    pub head_sha: Option<String>,
}

impl PullRequest {
    /// Reads `repository.full_name`, `number` / `pull_request.number` and
    /// `pull_request.head.sha` (GitHub's webhook payload); an action's own
    /// `repo` and `number` args win.
    pub fn of(payload: &Value, args: &Value) -> Option<Self> {
        let repo = args["repo"]
            .as_str()
            .or_else(|| payload["repository"]["full_name"].as_str())?
            .to_string();
        let number = args["number"]
            .as_u64()
            .or_else(|| payload["number"].as_u64())
            .or_else(|| payload["pull_request"]["number"].as_u64())?;
        let head_sha = payload["pull_request"]["head"]["sha"]
            .as_str()
            .map(String::from);
        let segments: Vec<&str> = repo.split('/').collect();
        let valid_repo = segments.len() == 2
            && segments.iter().all(|s| {
                !s.is_empty()
                    && *s != "."
                    && *s != ".."
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            });
        valid_repo.then_some(Self {
            repo,
            number,
            head_sha,
        })
    }
}

/// The comment's text: the marker, the decision, the report.
pub fn comment_body(request: &ActionRequest) -> String {
    let decision = request.decision.as_deref().unwrap_or("(no decision)");
    let report = request
        .report
        .as_deref()
        .unwrap_or("(the job wrote no report)");
    format!("{MARKER}\n**BSM decision: `{decision}`**\n\n{report}")
}

struct GitHub {
    api: String,
    secret: String,
}

impl GitHub {
    fn from_config() -> Self {
        Self {
            api: config::get("api-base")
                .unwrap_or_else(|| "https://api.github.com".into())
                .trim_end_matches('/')
                .to_string(),
            secret: config::get("token-secret").unwrap_or_else(|| "github-token".into()),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, DeliveryError> {
        let mut request = Request::new(method, format!("{}{path}", self.api))
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .secret_header("authorization", &self.secret, "Bearer {secret}");
        if let Some(body) = body {
            request = request.json(body.to_string().as_bytes());
        }
        let response = http::send(&request)?;
        response.delivered()?;
        Ok(response)
    }

    fn json(response: &Response) -> Value {
        serde_json::from_slice(&response.body).unwrap_or(Value::Null)
    }

    /// Creates the report comment, or updates the one already there.
    fn upsert_comment(&self, pr: &PullRequest, body: &str) -> Result<&'static str, DeliveryError> {
        let list = self.call(
            "GET",
            &format!(
                "/repos/{}/issues/{}/comments?per_page=100",
                pr.repo, pr.number
            ),
            None,
        )?;
        let existing = Self::json(&list).as_array().and_then(|comments| {
            comments
                .iter()
                .find(|c| c["body"].as_str().is_some_and(|b| b.starts_with(MARKER)))
                .and_then(|c| c["id"].as_u64())
        });
        match existing {
            Some(id) => {
                self.call(
                    "PATCH",
                    &format!("/repos/{}/issues/comments/{id}", pr.repo),
                    Some(&json!({ "body": body })),
                )?;
                Ok("updated the report comment")
            }
            None => {
                self.call(
                    "POST",
                    &format!("/repos/{}/issues/{}/comments", pr.repo, pr.number),
                    Some(&json!({ "body": body })),
                )?;
                Ok("commented the report")
            }
        }
    }

    fn review(&self, pr: &PullRequest, event: &str, body: &str) -> Result<(), DeliveryError> {
        self.call(
            "POST",
            &format!("/repos/{}/pulls/{}/reviews", pr.repo, pr.number),
            Some(&json!({ "event": event, "body": body })),
        )
        .map(drop)
    }

    fn label(&self, pr: &PullRequest, label: &str) -> Result<(), DeliveryError> {
        self.call(
            "POST",
            &format!("/repos/{}/issues/{}/labels", pr.repo, pr.number),
            Some(&json!({ "labels": [label] })),
        )
        .map(drop)
    }
}

struct GitHubActions;

impl ActionHandler for GitHubActions {
    fn describe() -> HandlerInfo {
        HandlerInfo::new(
            "github-actions",
            "GitHub actions",
            env!("CARGO_PKG_VERSION"),
        )
        .with_description("Comments, reviews, merges and labels pull requests on GitHub")
    }

    fn handle(request: ActionRequest) -> Result<String, DeliveryError> {
        let payload: Value = serde_json::from_str(&request.payload).unwrap_or(Value::Null);
        let args: Value = serde_json::from_str(&request.args).unwrap_or(Value::Null);
        let pr = PullRequest::of(&payload, &args).ok_or_else(|| {
            DeliveryError::Permanent(
                "no pull request in the job's payload (repository.full_name and number)".into(),
            )
        })?;
        let github = GitHub::from_config();
        let commented = github.upsert_comment(&pr, &comment_body(&request))?;
        let reason = format!(
            "BSM decision `{}` ({})",
            request.decision.as_deref().unwrap_or("none"),
            request.source_plugin
        );
        let did = match request.name.as_str() {
            "approve_pr" => {
                github.review(&pr, "APPROVE", &reason)?;
                "approved"
            }
            "auto_merge" => {
                let method = config::get("merge-method").unwrap_or_else(|| "squash".into());
                let mut body = json!({ "merge_method": method });
                if let Some(sha) = &pr.head_sha {
                    // Merge only what was reviewed.
                    body["sha"] = json!(sha);
                }
                github.call(
                    "PUT",
                    &format!("/repos/{}/pulls/{}/merge", pr.repo, pr.number),
                    Some(&body),
                )?;
                "merged"
            }
            "request_changes" => {
                github.review(&pr, "REQUEST_CHANGES", &reason)?;
                "requested changes"
            }
            "block_pr" => {
                let label = config::get("blocked-label").unwrap_or_else(|| "bsm-blocked".into());
                github.label(&pr, &label)?;
                if let Some(sha) = &pr.head_sha {
                    github.call(
                        "POST",
                        &format!("/repos/{}/statuses/{sha}", pr.repo),
                        Some(&json!({
                            "state": "failure",
                            "context": "bsm/decision",
                            "description": "blocked by BSM",
                        })),
                    )?;
                }
                "blocked"
            }
            "manual_review_request" => {
                let label = config::get("manual-review-label")
                    .unwrap_or_else(|| "bsm-manual-review".into());
                github.label(&pr, &label)?;
                "asked for manual review"
            }
            other => {
                return Err(DeliveryError::Permanent(format!(
                    "github-actions does not carry out {other:?}"
                )));
            }
        };
        Ok(format!("{commented}; {did} on {}#{}", pr.repo, pr.number))
    }
}

bsm_sdk::export_handler!(GitHubActions);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pull_request_comes_from_the_payload_or_the_args() {
        let payload = json!({
            "number": 7,
            "repository": {"full_name": "acme/app"},
            "pull_request": {"head": {"sha": "abc"}}
        });
        let pr = PullRequest::of(&payload, &json!({})).unwrap();
        assert_eq!(
            pr,
            PullRequest {
                repo: "acme/app".into(),
                number: 7,
                head_sha: Some("abc".into())
            }
        );
        let other = PullRequest::of(&payload, &json!({"repo": "acme/lib", "number": 9})).unwrap();
        assert_eq!((other.repo.as_str(), other.number), ("acme/lib", 9));
        assert!(PullRequest::of(&json!({}), &json!({})).is_none());
        assert!(
            PullRequest::of(
                &json!({"number": 1, "repository": {"full_name": "../x"}}),
                &json!({})
            )
            .is_none(),
            "not a repository name"
        );
    }
}
