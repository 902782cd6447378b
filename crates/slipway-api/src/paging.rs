//! Heroku's Range-header paging for list endpoints.
//!
//! `Range: <field> [<start>|]<start>]..[<end>][; max=<n>][, order=asc|desc]`. A page that
//! leaves items out answers 206 with `Next-Range` (the CLI follows it); the last page never
//! carries `Next-Range`.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::ApiError;

pub const DEFAULT_MAX: usize = 200;
pub const MAX_MAX: usize = 1000;

/// A sort key: numbers sort as numbers (release versions), everything else as text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Num(i64),
    Text(String),
}

impl Key {
    fn parse_like(&self, raw: &str) -> Key {
        match self {
            Key::Num(_) => raw
                .parse()
                .map(Key::Num)
                .unwrap_or(Key::Text(raw.to_string())),
            Key::Text(_) => Key::Text(raw.to_string()),
        }
    }

    fn render(&self) -> String {
        match self {
            Key::Num(n) => n.to_string(),
            Key::Text(t) => t.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub field: String,
    pub start: Option<String>,
    pub start_exclusive: bool,
    pub end: Option<String>,
    pub max: usize,
    pub descending: bool,
}

impl Range {
    pub fn parse(raw: &str, fields: &[&str]) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::bad_request(format!(
                "Invalid Range header {raw:?}; expected `<field> [start]..[end]; max=<n>, order=asc|desc` with field one of {}",
                fields.join(", ")
            ))
        };
        let (spec, options) = raw.split_once(';').unwrap_or((raw, ""));
        let spec = spec.trim();
        let (field, bounds) = spec.split_once(' ').unwrap_or((spec, ""));
        if !fields.contains(&field) {
            return Err(bad());
        }
        let bounds = bounds.trim();
        let (start, end) = if bounds.is_empty() {
            ("", "")
        } else {
            bounds.split_once("..").ok_or_else(bad)?
        };
        let (start, start_exclusive) = match start.strip_prefix(']') {
            Some(s) => (s, true),
            None => (start, false),
        };
        let mut range = Range {
            field: field.to_string(),
            start: (!start.is_empty()).then(|| start.to_string()),
            start_exclusive,
            end: (!end.is_empty()).then(|| end.to_string()),
            max: DEFAULT_MAX,
            descending: false,
        };
        for option in options.split([',', ';']) {
            let option = option.trim();
            if option.is_empty() {
                continue;
            }
            match option.split_once('=') {
                Some(("max", n)) => {
                    range.max = n
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| bad())?
                        .clamp(1, MAX_MAX)
                }
                Some(("order", "asc")) => range.descending = false,
                Some(("order", "desc")) => range.descending = true,
                _ => return Err(bad()),
            }
        }
        Ok(range)
    }
}

/// One page of rendered items, and the Range that fetches the next page, if any.
pub struct Page {
    pub items: Vec<Value>,
    pub next_range: Option<String>,
}

/// Sorts and cuts `items` (each an item and its rendered JSON) by the request's Range, or by
/// `default_field` ascending. `keys(item, field)` gives an item's key for a field.
pub fn paginate<T>(
    mut items: Vec<(T, Value)>,
    headers: &HeaderMap,
    fields: &[&str],
    default_field: &str,
    keys: impl Fn(&T, &str) -> Key,
) -> Result<Page, ApiError> {
    let range = match headers.get(axum::http::header::RANGE) {
        Some(v) => Range::parse(
            v.to_str()
                .map_err(|_| ApiError::bad_request("Range header is not text"))?,
            fields,
        )?,
        None => Range {
            field: default_field.to_string(),
            start: None,
            start_exclusive: false,
            end: None,
            max: DEFAULT_MAX,
            descending: false,
        },
    };
    let field = range.field.as_str();
    items.sort_by_key(|(item, _)| keys(item, field));
    if range.descending {
        items.reverse();
    }
    let in_range = |k: &Key| {
        let after_start = match &range.start {
            None => true,
            Some(s) => {
                let s = k.parse_like(s);
                match (range.descending, range.start_exclusive) {
                    (false, false) => *k >= s,
                    (false, true) => *k > s,
                    (true, false) => *k <= s,
                    (true, true) => *k < s,
                }
            }
        };
        let before_end = match &range.end {
            None => true,
            Some(e) => {
                let e = k.parse_like(e);
                if range.descending {
                    *k >= e
                } else {
                    *k <= e
                }
            }
        };
        after_start && before_end
    };
    let selected: Vec<(T, Value)> = items
        .into_iter()
        .filter(|(item, _)| in_range(&keys(item, field)))
        .collect();
    let more = selected.len() > range.max;
    let page: Vec<(T, Value)> = selected.into_iter().take(range.max).collect();
    let next_range = match (more, page.last()) {
        (true, Some((last, _))) => Some(format!(
            "{field} ]{}..; max={}, order={}",
            keys(last, field).render(),
            range.max,
            if range.descending { "desc" } else { "asc" }
        )),
        _ => None,
    };
    Ok(Page {
        items: page.into_iter().map(|(_, json)| json).collect(),
        next_range,
    })
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let status = if self.next_range.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        let mut response = (status, axum::Json(Value::Array(self.items))).into_response();
        if let Some(next) = self.next_range.and_then(|n| HeaderValue::from_str(&n).ok()) {
            response.headers_mut().insert("next-range", next);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(headers: &HeaderMap) -> (Vec<i64>, Option<String>) {
        let page = paginate(
            (1..=20i64).map(|v| (v, Value::from(v))).collect(),
            headers,
            &["id", "version"],
            "version",
            |v, _| Key::Num(*v),
        )
        .expect("page");
        (
            page.items.iter().filter_map(Value::as_i64).collect(),
            page.next_range,
        )
    }

    fn range(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("range", value.parse().expect("header"));
        h
    }

    #[test]
    fn without_a_range_everything_comes_in_order() {
        let (items, next) = versions(&HeaderMap::new());
        assert_eq!(items, (1..=20).collect::<Vec<_>>());
        assert_eq!(next, None);
    }

    #[test]
    fn pages_follow_next_range_until_the_end() {
        let (items, next) = versions(&range("version ..; max=15, order=desc"));
        assert_eq!(items, (6..=20).rev().collect::<Vec<_>>());
        let next = next.expect("more pages");
        assert_eq!(next, "version ]6..; max=15, order=desc");
        let (items, next) = versions(&range(&next));
        assert_eq!(items, vec![5, 4, 3, 2, 1]);
        assert_eq!(next, None, "the last page carries no Next-Range");
        let (items, _) = versions(&range("version 3..5"));
        assert_eq!(items, vec![3, 4, 5]);
    }

    #[test]
    fn bad_ranges_are_rejected_with_the_fields_allowed() {
        for bad in [
            "color ..",
            "version 1-2",
            "version ..; max=x",
            "version ..; order=sideways",
        ] {
            let err = Range::parse(bad, &["id", "version"]).expect_err(bad);
            assert!(err.message.contains("id, version"), "{}", err.message);
        }
    }
}
