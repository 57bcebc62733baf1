//! Finding the actions an LLM reply asks for.
//!
//! Two explicit forms are recognised (the system prompt tells the model to use
//! them), so that merely *mentioning* an action ("do not auto_merge") never
//! triggers it:
//! - a line `ACTION: <name>` optionally followed by a JSON object of arguments;
//! - a JSON object with an `"actions"` list (`[{"name", "args"}]` or names),
//!   bare or in a fenced ```json block.
//!
//! Only names the agent declares are returned; the host still checks them
//! against the plugin's allow-list.

use serde_json::Value;

/// An action found in a reply: name and JSON arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub name: String,
    pub args: Value,
}

/// Extracts the declared actions the reply asks for, in order, without duplicates.
pub fn extract(reply: &str, declared: &[String]) -> Vec<Found> {
    let mut found: Vec<Found> = Vec::new();
    let mut push = |name: &str, args: Value| {
        let name = name.trim().trim_matches('`').trim();
        if declared.iter().any(|d| d == name) && !found.iter().any(|f| f.name == name) {
            found.push(Found {
                name: name.to_string(),
                args,
            });
        }
    };
    for line in reply.lines() {
        let line = line.trim().trim_start_matches(['-', '*']).trim();
        let Some(rest) = strip_prefix_ci(line, "action:") else {
            continue;
        };
        let rest = rest.trim();
        let (name, args) = match rest.find('{') {
            Some(i) => (
                &rest[..i],
                serde_json::from_str(&rest[i..]).unwrap_or_else(|_| empty()),
            ),
            None => (rest, empty()),
        };
        push(name, args);
    }
    for block in json_candidates(reply) {
        let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(block) else {
            continue;
        };
        let Some(Value::Array(items)) = obj.get("actions") else {
            continue;
        };
        for item in items {
            match item {
                Value::String(name) => push(name, empty()),
                Value::Object(a) => {
                    if let Some(Value::String(name)) = a.get("name") {
                        push(name, a.get("args").cloned().unwrap_or_else(empty));
                    }
                }
                _ => {}
            }
        }
    }
    found
}

fn empty() -> Value {
    Value::Object(Default::default())
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The reply itself and the contents of its fenced code blocks.
fn json_candidates(reply: &str) -> Vec<&str> {
    let mut out = vec![reply.trim()];
    let mut rest = reply;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let body_start = after.find('\n').map_or(after.len(), |i| i + 1);
        let body = &after[body_start..];
        let Some(end) = body.find("```") else { break };
        out.push(body[..end].trim());
        rest = &body[end + 3..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declared() -> Vec<String> {
        ["review_pr", "request_changes", "create_review_comment"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn action_lines_with_and_without_args() {
        let reply = "Looks risky.\nACTION: request_changes {\"reason\": \"no tests\"}\n- action: review_pr\n";
        let found = extract(reply, &declared());
        assert_eq!(
            found,
            vec![
                Found {
                    name: "request_changes".into(),
                    args: json!({"reason": "no tests"})
                },
                Found {
                    name: "review_pr".into(),
                    args: json!({})
                },
            ]
        );
    }

    #[test]
    fn json_block_in_a_fence() {
        let reply = "Summary\n```json\n{\"actions\": [{\"name\": \"create_review_comment\", \"args\": {\"line\": 3}}, \"review_pr\"]}\n```";
        let names: Vec<_> = extract(reply, &declared())
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["create_review_comment", "review_pr"]);
    }

    #[test]
    fn mentions_and_undeclared_names_are_ignored() {
        let reply = "Do not request_changes yet.\nACTION: deploy_prod\nACTION: review_pr\nACTION: review_pr";
        let names: Vec<_> = extract(reply, &declared())
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["review_pr"]);
    }
}
