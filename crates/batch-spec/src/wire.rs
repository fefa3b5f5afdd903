//! Wire-level pieces of the Batch data-plane protocol shared by the strict [`TestServer`]
//! and `shipyard serve`: decoded query strings, OData `$filter`/`$select`, list paging with
//! `odata.nextLink`, `ocp-range` parsing and the service's error body.
//!
//! [`TestServer`]: crate::server::TestServer

use serde_json::{json, Map, Value};

use crate::schema::percent_decode;

/// A request after authentication and validation, as both servers hand it to their
/// operations: the operation id, path parameters, query, headers and the parsed body.
#[derive(Debug)]
pub struct OpRequest<'a> {
    /// The spec's operation id (`Task_List`, ...).
    pub op: &'a str,
    /// Path parameters, by name.
    pub params: &'a [(String, String)],
    /// The decoded query.
    pub query: &'a Query,
    /// The request headers.
    pub headers: &'a hyper::HeaderMap,
    /// The body, validated against the operation's definition.
    pub body: Option<Value>,
    /// Answer file GETs with the whole file, ignoring `ocp-range` (the test server's fault
    /// injection; `false` everywhere else).
    pub ignore_range: bool,
}

impl OpRequest<'_> {
    /// The path parameter `name` (empty when absent).
    pub fn param(&self, name: &str) -> &str {
        path_param(self.params, name)
    }

    /// Whether `recursive=true` is in the query.
    pub fn recursive(&self) -> bool {
        self.query
            .get("recursive")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// Decoded query parameters, in request order (`+` is a space).
#[derive(Debug, Clone, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Decodes a raw query string (without `?`).
    pub fn parse(raw: &str) -> Query {
        Query(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (n, v) = p.split_once('=').unwrap_or((p, ""));
                    (
                        percent_decode(&n.replace('+', " ")),
                        percent_decode(&v.replace('+', " ")),
                    )
                })
                .collect(),
        )
    }

    /// The first value of a parameter; names compare case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The value of path parameter `name` among a matched route's (name, value) pairs; `""`
/// when the route has no such parameter.
pub fn path_param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// The Batch error body: `{"odata.metadata", code, message: {lang, value}, values: [{key, value}]}`.
pub fn error_body(code: &str, message: &str, values: &[(&str, String)]) -> Value {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut body = json!({
        "odata.metadata": "https://batch.local/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element",
        "code": code,
        "message": {"lang": "en-US", "value": format!("{message}\nRequestId:{}\nTime:{now}", uuid::Uuid::new_v4())},
    });
    if !values.is_empty() {
        body["values"] = Value::Array(
            values
                .iter()
                .map(|(k, v)| json!({"key": k, "value": v}))
                .collect(),
        );
    }
    body
}

/// The `values` of the service's 400 `InvalidQueryParameterValue` for `name=value`.
pub fn bad_query_value(name: &str, value: &str) -> (u16, Value) {
    (
        400,
        error_body(
            "InvalidQueryParameterValue",
            "Value for one of the query parameters specified in the request URI is invalid.",
            &[
                ("QueryParameterName", name.to_owned()),
                ("QueryParameterValue", value.to_owned()),
            ],
        ),
    )
}

/// One comparison of a `$filter`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Clause {
    path: Vec<String>,
    negate: bool,
    value: String,
}

/// A parsed OData `$filter`: `field eq 'value'` / `field ne 'value'` clauses (nested fields
/// with `/`) joined by `and`; string comparison is case-insensitive as in the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter(Vec<Clause>);

impl Filter {
    /// Parses a filter; `None` if it uses anything beyond `eq`/`ne` and `and`.
    pub fn parse(f: &str) -> Option<Filter> {
        let mut out = Vec::new();
        for clause in f.split(" and ") {
            let clause = clause.trim();
            let (field, negate, value) = if let Some((a, b)) = clause.split_once(" eq ") {
                (a, false, b)
            } else {
                let (a, b) = clause.split_once(" ne ")?;
                (a, true, b)
            };
            let value = value.trim();
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(value);
            out.push(Clause {
                path: field.trim().split('/').map(str::to_owned).collect(),
                negate,
                value: value.to_owned(),
            });
        }
        Some(Filter(out))
    }

    /// Whether a JSON item satisfies every clause.
    pub fn matches(&self, item: &Value) -> bool {
        self.0.iter().all(|c| {
            let mut v = Some(item);
            for p in &c.path {
                v = v.and_then(|x| x.get(p));
            }
            let eq = match v {
                Some(Value::String(s)) => s.eq_ignore_ascii_case(&c.value),
                Some(Value::Number(n)) => n.to_string() == c.value,
                Some(Value::Bool(b)) => b.to_string() == c.value,
                _ => false,
            };
            eq != c.negate
        })
    }
}

/// Applies `$select` (comma-separated top-level properties) to an item.
pub fn select(item: Value, select: Option<&str>) -> Value {
    let Some(sel) = select else {
        return item;
    };
    let keep: Vec<&str> = sel.split(',').map(str::trim).collect();
    match item {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| keep.contains(&k.as_str()))
                .collect::<Map<String, Value>>(),
        ),
        other => other,
    }
}

/// List paging as the service does it: `maxresults` (1..=1000, default 1000), `$filter`,
/// `$select`, and an `odata.nextLink` carrying `$skiptoken` (the key of the last item).
#[derive(Debug, Clone)]
pub struct Paging {
    /// Page size.
    pub max: usize,
    /// Parsed `$filter`.
    pub filter: Option<Filter>,
    /// Skip items whose key is `<=` this.
    pub after: Option<String>,
}

impl Paging {
    /// Reads `maxresults`, `$filter` and `$skiptoken`; the error is (status, Batch error body).
    pub fn from_query(query: &Query) -> Result<Paging, (u16, Value)> {
        let max = match query.get("maxresults") {
            None => 1000,
            Some(m) => match m.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => return Err(bad_query_value("maxresults", m)),
            },
        };
        let filter = match query.get("$filter") {
            None => None,
            Some(f) => Some(Filter::parse(f).ok_or_else(|| bad_query_value("$filter", f))?),
        };
        Ok(Paging {
            max,
            filter,
            after: query.get("$skiptoken").map(str::to_owned),
        })
    }

    /// Builds one page from `(key, item)` pairs sorted by key. `base` is the URL of the list
    /// (scheme, host and path) that the `odata.nextLink` points at.
    pub fn page<K, I>(&self, query: &Query, base: &str, items: I) -> Value
    where
        K: AsRef<str>,
        I: IntoIterator<Item = (K, Value)>,
    {
        let mut value = Vec::new();
        let mut last_key: Option<String> = None;
        let mut more = false;
        for (k, item) in items {
            let k = k.as_ref();
            if self.after.as_deref().is_some_and(|a| k <= a) {
                continue;
            }
            if self.filter.as_ref().is_some_and(|f| !f.matches(&item)) {
                continue;
            }
            if value.len() == self.max {
                more = true;
                break;
            }
            value.push(select(item, query.get("$select")));
            last_key = Some(k.to_owned());
        }
        let mut out = json!({ "value": value });
        if let (true, Some(k)) = (more, last_key) {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            q.append_pair("api-version", query.get("api-version").unwrap_or(""));
            q.append_pair("maxresults", &self.max.to_string());
            for name in ["$filter", "$select", "$expand"] {
                if let Some(v) = query.get(name) {
                    q.append_pair(name, v);
                }
            }
            q.append_pair("$skiptoken", &k);
            out["odata.nextLink"] = json!(format!("{base}?{}", q.finish()));
        }
        out
    }
}

/// Parses `ocp-range: bytes=a-b` (or `bytes=a-`) against a file of `total` bytes into an
/// inclusive byte range; `None` when the range is malformed or unsatisfiable (416).
pub fn parse_range(range: &str, total: u64) -> Option<(u64, u64)> {
    let r = range.trim().strip_prefix("bytes=")?;
    let (a, b) = r.split_once('-')?;
    let a: u64 = a.trim().parse().ok()?;
    let b: u64 = if b.trim().is_empty() {
        total.checked_sub(1)?
    } else {
        b.trim().parse().ok()?
    };
    (a <= b && a < total).then_some((a, b.min(total - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_eq_ne_and_nested() {
        let f =
            Filter::parse("state eq 'Completed' and executionInfo/exitCode ne 0").expect("parses");
        assert!(f.matches(&json!({"state": "completed", "executionInfo": {"exitCode": 3}})));
        assert!(!f.matches(&json!({"state": "completed", "executionInfo": {"exitCode": 0}})));
        assert!(!f.matches(&json!({"state": "active"})));
        assert!(Filter::parse("startswith(id, 'a')").is_none());
    }

    #[test]
    fn paging_links_and_select() {
        let q = Query::parse("api-version=v&maxresults=2&%24select=id");
        let p = Paging::from_query(&q).expect("ok");
        let items = (0..5).map(|i| (format!("t{i}"), json!({"id": format!("t{i}"), "x": i})));
        let page = p.page(&q, "http://h/jobs/j/tasks", items);
        assert_eq!(page["value"], json!([{"id": "t0"}, {"id": "t1"}]));
        let link = page["odata.nextLink"].as_str().expect("link");
        assert!(link.starts_with("http://h/jobs/j/tasks?api-version=v&maxresults=2"));
        assert!(link.ends_with("&%24skiptoken=t1"), "{link}");
        let q2 = Query::parse(link.split_once('?').expect("query").1);
        let p2 = Paging::from_query(&q2).expect("ok");
        let items = (0..5).map(|i| (format!("t{i}"), json!({"id": format!("t{i}")})));
        assert_eq!(p2.page(&q2, "b", items)["value"][0]["id"], "t2");
        assert!(Paging::from_query(&Query::parse("maxresults=0")).is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=2-4", 10), Some((2, 4)));
        assert_eq!(parse_range("bytes=2-", 10), Some((2, 9)));
        assert_eq!(parse_range("bytes=8-100", 10), Some((8, 9)));
        assert_eq!(parse_range("bytes=10-11", 10), None);
        assert_eq!(parse_range("items=1-2", 10), None);
    }
}
