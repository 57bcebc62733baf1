//! `{{placeholder}}` templates, as the original BSM agents used them.
//!
//! Known placeholders: `{{input}}`, `{{knowledge}}`, `{{payload}}` (the whole
//! payload as JSON), `{{payload.a.b}}` (a field of it; strings verbatim,
//! other values as JSON), `{{name}}`, `{{role}}`, `{{instructions}}`,
//! `{{actions}}`. Unknown or missing values render as empty text and are
//! reported, so a typo in a template is visible in the logs.

use serde_json::Value;

/// The values a template can refer to.
#[derive(Debug, Default)]
pub struct Vars<'a> {
    pub input: &'a str,
    pub payload: Option<&'a Value>,
    pub knowledge: &'a str,
    pub name: &'a str,
    pub role: &'a str,
    pub instructions: &'a str,
    pub actions: &'a str,
}

/// A rendered template and the placeholders that had no value.
#[derive(Debug, PartialEq)]
pub struct Rendered {
    pub text: String,
    pub missing: Vec<String>,
}

/// Renders `template`, replacing each `{{ key }}` (spaces allowed).
pub fn render(template: &str, vars: &Vars<'_>) -> Rendered {
    let mut text = String::with_capacity(template.len());
    let mut missing = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        text.push_str(&rest[..start]);
        let key = rest[start + 2..start + 2 + len].trim();
        match lookup(key, vars) {
            Some(value) => text.push_str(&value),
            None => missing.push(key.to_string()),
        }
        rest = &rest[start + 2 + len + 2..];
    }
    text.push_str(rest);
    Rendered { text, missing }
}

fn lookup(key: &str, vars: &Vars<'_>) -> Option<String> {
    match key {
        "input" => Some(vars.input.to_string()),
        "knowledge" => Some(vars.knowledge.to_string()),
        "name" => Some(vars.name.to_string()),
        "role" => Some(vars.role.to_string()),
        "instructions" => Some(vars.instructions.to_string()),
        "actions" => Some(vars.actions.to_string()),
        "payload" => vars.payload.map(|p| p.to_string()),
        _ => {
            let path = key.strip_prefix("payload.")?;
            let mut value = vars.payload?;
            for part in path.split('.') {
                value = match value {
                    Value::Object(map) => map.get(part)?,
                    Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            Some(match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replaces_known_placeholders() {
        let payload =
            json!({"pr": {"title": "Fix login", "number": 42, "files": ["a.rs", "b.rs"]}});
        let vars = Vars {
            input: "review",
            payload: Some(&payload),
            knowledge: "K",
            ..Vars::default()
        };
        let r = render(
            "{{input}}: {{ payload.pr.title }} #{{payload.pr.number}} {{payload.pr.files.1}} [{{knowledge}}]",
            &vars,
        );
        assert_eq!(r.text, "review: Fix login #42 b.rs [K]");
        assert!(r.missing.is_empty());
    }

    #[test]
    fn whole_payload_renders_as_json() {
        let payload = json!({"a": 1});
        let vars = Vars {
            payload: Some(&payload),
            ..Vars::default()
        };
        assert_eq!(render("{{payload}}", &vars).text, "{\"a\":1}");
    }

    #[test]
    fn missing_values_render_empty_and_are_reported() {
        let payload = json!({"a": {}});
        let vars = Vars {
            payload: Some(&payload),
            ..Vars::default()
        };
        let r = render("x{{payload.a.b}}y{{nope}}z", &vars);
        assert_eq!(r.text, "xyz");
        assert_eq!(r.missing, ["payload.a.b", "nope"]);
    }

    #[test]
    fn unterminated_and_non_ascii_text_is_kept() {
        let vars = Vars {
            input: "سؤال",
            ..Vars::default()
        };
        assert_eq!(
            render("أنت {{input}} {{ open", &vars).text,
            "أنت سؤال {{ open"
        );
    }
}
