//! Pages of list endpoints: newest first, at most a bounded number of items
//! per page, continued by an opaque cursor (the position after the last
//! item: its creation time and id), so that a page stays correct while new
//! items arrive, and no response grows with the size of the history.

/// Items per page when the caller does not say.
pub const DEFAULT_LIMIT: usize = 50;
/// The largest page a caller may ask for.
pub const MAX_LIMIT: usize = 500;

/// Where a page starts and how long it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: usize,
    /// Items strictly after this position (newest first).
    pub after: Option<Cursor>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

/// The position of an item in a newest-first listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: String,
    pub id: String,
}

/// Why a page cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("limit must be between 1 and {MAX_LIMIT}")]
    Limit,
    #[error("the cursor is not one this server gave out")]
    Cursor,
}

impl PageRequest {
    /// A request from the API's `limit` and `cursor` parameters.
    pub fn parse(limit: Option<usize>, cursor: Option<&str>) -> Result<Self, PageError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(PageError::Limit);
        }
        let after = cursor.map(Cursor::decode).transpose()?;
        Ok(Self { limit, after })
    }
}

impl Cursor {
    /// Hex of `created_at \n id`: opaque and safe in a URL.
    pub fn encode(&self) -> String {
        hex::encode(format!("{}\n{}", self.created_at, self.id))
    }

    pub fn decode(text: &str) -> Result<Self, PageError> {
        let bytes = hex::decode(text).map_err(|_| PageError::Cursor)?;
        let text = String::from_utf8(bytes).map_err(|_| PageError::Cursor)?;
        let (created_at, id) = text.split_once('\n').ok_or(PageError::Cursor)?;
        Ok(Self {
            created_at: created_at.to_string(),
            id: id.to_string(),
        })
    }
}

/// One page, and the cursor of the next if there is more.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

/// Pages `items` newest first by `(created_at, id)`; `keep` can drop items
/// on the way (they then do not count towards the limit).
pub fn page<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> (&str, &str),
    request: &PageRequest,
    mut keep: impl FnMut(&T) -> bool,
) -> Page<T> {
    items.sort_by(|a, b| key(b).cmp(&key(a)));
    let start = match &request.after {
        None => 0,
        Some(c) => items.partition_point(|i| key(i) >= (c.created_at.as_str(), c.id.as_str())),
    };
    let mut out = Vec::with_capacity(request.limit.min(items.len()));
    let mut more = false;
    for item in items.into_iter().skip(start) {
        if !keep(&item) {
            continue;
        }
        if out.len() == request.limit {
            more = true;
            break;
        }
        out.push(item);
    }
    let next = if more {
        out.last().map(|last| {
            let (created_at, id) = key(last);
            Cursor {
                created_at: created_at.to_string(),
                id: id.to_string(),
            }
        })
    } else {
        None
    };
    Page { items: out, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| {
                (
                    format!("2026-11-28T00:00:{:02}Z", i / 2),
                    format!("id{i:02}"),
                )
            })
            .collect()
    }

    #[test]
    fn pages_walk_every_item_once_newest_first() {
        let all = items(23);
        let mut seen = Vec::new();
        let mut request = PageRequest {
            limit: 5,
            after: None,
        };
        loop {
            let p = page(all.clone(), |i| (&i.0, &i.1), &request, |_| true);
            assert!(p.items.len() <= 5);
            seen.extend(p.items.iter().map(|i| i.1.clone()));
            match p.next {
                Some(c) => request.after = Some(Cursor::decode(&c.encode()).unwrap()),
                None => break,
            }
        }
        let mut expected: Vec<String> = all.iter().map(|i| i.1.clone()).collect();
        expected.reverse();
        assert_eq!(seen, expected);
    }

    #[test]
    fn dropped_items_do_not_count_and_a_full_last_page_has_no_cursor() {
        let all = items(6);
        let p = page(
            all.clone(),
            |i| (&i.0, &i.1),
            &PageRequest {
                limit: 3,
                after: None,
            },
            |i| i.1 != "id05",
        );
        assert_eq!(
            p.items.iter().map(|i| i.1.as_str()).collect::<Vec<_>>(),
            ["id04", "id03", "id02"]
        );
        let last = page(
            all,
            |i| (&i.0, &i.1),
            &PageRequest {
                limit: 6,
                after: None,
            },
            |_| true,
        );
        assert_eq!((last.items.len(), last.next), (6, None));
    }

    #[test]
    fn bad_limits_and_cursors_are_refused() {
        assert_eq!(PageRequest::parse(Some(0), None), Err(PageError::Limit));
        assert_eq!(
            PageRequest::parse(Some(MAX_LIMIT + 1), None),
            Err(PageError::Limit)
        );
        assert_eq!(PageRequest::parse(None, Some("zz")), Err(PageError::Cursor));
        assert_eq!(
            PageRequest::parse(None, Some("6869")),
            Err(PageError::Cursor)
        );
        assert_eq!(PageRequest::parse(None, None).unwrap().limit, DEFAULT_LIMIT);
    }
}
