//! A YAML (and JSON) document as a tree whose every node knows its line and column.
//!
//! Built from `saphyr-parser`'s event stream (pure Rust, YAML 1.2, maintained). Scalars are
//! resolved like PyYAML (which Batch Shipyard used): `true/false/yes/no/on/off`, `null`/`~`,
//! integers, floats; quoted scalars stay strings. Each scalar keeps its raw text, so a SKU
//! written `7.5` reads back as the string `7.5`.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A 1-based line and column (characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// A node's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`, `~` or nothing.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order; keys are the raw key text with their own node.
    Map(Vec<(Node, Node)>),
}

/// A value and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where it starts.
    pub pos: Pos,
    /// Its width on its first line (characters, at least 1).
    pub width: usize,
    /// A scalar's text as written (`None` for collections).
    pub raw: Option<String>,
}

impl Node {
    /// The scalar as text (strings as is, numbers and booleans as written).
    pub fn as_text(&self) -> Option<&str> {
        match self.value {
            Value::Seq(_) | Value::Map(_) | Value::Null => None,
            _ => self.raw.as_deref(),
        }
    }

    /// The mapping entries, when this is a mapping.
    pub fn entries(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value under `key`, when this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries()?
            .iter()
            .find(|(k, _)| k.raw.as_deref() == Some(key))
            .map(|(_, v)| v)
    }

    /// A short name of the node's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A syntax error: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Where.
    pub pos: Pos,
    /// What.
    pub message: String,
}

fn pos(span: &Span) -> Pos {
    Pos {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

fn resolve(raw: &str, style: ScalarStyle) -> Value {
    if style != ScalarStyle::Plain {
        return Value::Str(raw.to_string());
    }
    match raw {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => {
            return Value::Bool(true)
        }
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
            return Value::Bool(false)
        }
        _ => {}
    }
    let digits = raw.strip_prefix(['-', '+']).unwrap_or(raw);
    if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || c == '_') {
        if let Ok(i) = raw.replace('_', "").parse::<i64>() {
            return Value::Int(i);
        }
    }
    let looks_float = digits.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && digits.chars().any(|c| c.is_ascii_digit())
        && digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+' | '_'));
    if looks_float {
        if let Ok(f) = raw.replace('_', "").parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Str(raw.to_string())
}

enum Frame {
    Seq(Node, Vec<Node>, usize),
    Map(Node, Vec<(Node, Node)>, Option<Node>, usize),
}

/// Parses the first document of `text`; `Ok(None)` for an empty file.
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| SyntaxError {
            pos: Pos {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            },
            message: e.info().to_string(),
        })?;
        let done = match event {
            Event::Scalar(raw, style, anchor, _) => {
                let node = Node {
                    value: resolve(&raw, style),
                    pos: pos(&span),
                    width: span.len().max(1),
                    raw: Some(raw.into_owned()),
                };
                if anchor != 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::Alias(id) => Some(anchors.get(&id).cloned().ok_or_else(|| SyntaxError {
                pos: pos(&span),
                message: "unknown alias".into(),
            })?),
            Event::SequenceStart(anchor, _) => {
                let n = Node {
                    value: Value::Null,
                    pos: pos(&span),
                    width: 1,
                    raw: None,
                };
                stack.push(Frame::Seq(n, Vec::new(), anchor));
                None
            }
            Event::MappingStart(anchor, _) => {
                let n = Node {
                    value: Value::Null,
                    pos: pos(&span),
                    width: 1,
                    raw: None,
                };
                stack.push(Frame::Map(n, Vec::new(), None, anchor));
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq(mut n, items, a)) => {
                        n.value = Value::Seq(items);
                        (n, a)
                    }
                    Some(Frame::Map(mut n, entries, _, a)) => {
                        n.value = Value::Map(entries);
                        (n, a)
                    }
                    None => continue,
                };
                if anchor != 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::DocumentEnd => {
                if root.is_some() {
                    break;
                }
                None
            }
            _ => None,
        };
        let Some(node) = done else { continue };
        match stack.last_mut() {
            Some(Frame::Seq(_, items, _)) => items.push(node),
            Some(Frame::Map(_, entries, pending, _)) => match pending.take() {
                Some(key) => entries.push((key, node)),
                None => {
                    if node.as_text().is_none() && node.value != Value::Null {
                        return Err(SyntaxError {
                            pos: node.pos,
                            message: "mapping keys must be plain scalars".into(),
                        });
                    }
                    if let Some((k, _)) = entries.iter().find(|(k, _)| k.raw == node.raw) {
                        return Err(SyntaxError {
                            pos: node.pos,
                            message: format!(
                                "duplicate key `{}` (first at line {})",
                                node.raw.as_deref().unwrap_or(""),
                                k.pos.line
                            ),
                        });
                    }
                    *pending = Some(node);
                }
            },
            None => root = Some(node),
        }
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_know_their_positions() {
        let doc = parse("a:\n  b: 1\n  c: [x, 'y']\nd: 7.5\ne: yes\n")
            .unwrap()
            .unwrap();
        let b = doc.get("a").unwrap().get("b").unwrap();
        assert_eq!((b.pos.line, b.pos.column, &b.value), (2, 6, &Value::Int(1)));
        let Value::Seq(c) = &doc.get("a").unwrap().get("c").unwrap().value else {
            panic!()
        };
        assert_eq!((c[1].pos.line, c[1].pos.column), (3, 10));
        assert_eq!(c[1].value, Value::Str("y".into()));
        let d = doc.get("d").unwrap();
        assert_eq!(
            (d.value.clone(), d.as_text()),
            (Value::Float(7.5), Some("7.5"))
        );
        assert_eq!(doc.get("e").unwrap().value, Value::Bool(true));
    }

    #[test]
    fn json_is_read_with_positions_and_errors_have_them() {
        let doc = parse("{\n  \"a\": {\"b\": \"x\"}\n}").unwrap().unwrap();
        assert_eq!(doc.get("a").unwrap().get("b").unwrap().pos.line, 2);
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.line >= 1, "{e:?}");
        let dup = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(dup.pos, Pos { line: 2, column: 1 });
    }

    #[test]
    fn anchors_and_aliases_are_resolved() {
        let doc = parse("x: &v {k: 1}\ny: *v\n").unwrap().unwrap();
        assert_eq!(doc.get("y").unwrap().get("k").unwrap().value, Value::Int(1));
    }
}
