//! Drives the host cache from its input: `set KEY VALUE [TTL_MS]`,
//! `get KEY`, `del KEY`. Answers what happened, errors included.

use bsm_sdk::{Agent, AgentError, AgentInfo, Input, Output, cache};

struct CacheUser;

impl Agent for CacheUser {
    fn describe() -> AgentInfo {
        AgentInfo::new("cache-user", "Cache user", "0.1.0")
    }

    fn run(input: Input) -> Result<Output, AgentError> {
        let words: Vec<&str> = input.input.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["set", key, value, rest @ ..] => {
                let ttl = rest.first().and_then(|t| t.parse().ok());
                match cache::set(key, value.as_bytes(), ttl) {
                    Ok(()) => "stored".to_string(),
                    Err(e) => format!("error: {e:?}"),
                }
            }
            ["big", key, size] => {
                let size: usize = size
                    .parse()
                    .map_err(|_| AgentError::InvalidInput("size".into()))?;
                match cache::set(key, &vec![b'x'; size], None) {
                    Ok(()) => "stored".to_string(),
                    Err(e) => format!("error: {e:?}"),
                }
            }
            ["get", key] => match cache::get(key) {
                Ok(Some(v)) => format!("hit: {}", String::from_utf8_lossy(&v)),
                Ok(None) => "miss".to_string(),
                Err(e) => format!("error: {e:?}"),
            },
            ["del", key] => match cache::delete(key) {
                Ok(()) => "deleted".to_string(),
                Err(e) => format!("error: {e:?}"),
            },
            _ => return Err(AgentError::InvalidInput("expected set/get/del/big".into())),
        };
        Ok(Output::text(answer))
    }
}

bsm_sdk::export_agent!(CacheUser);
