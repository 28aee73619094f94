//! A YAML document as a tree of located nodes.
//!
//! The config is first parsed into this tree (keeping line and column of every node), then read
//! field by field by [`Reader`](super::reader::Reader), which collects every problem instead of
//! stopping at the first, and resolves `${VAR}` inside scalars only.

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

/// Where a node starts in the source file (1-based; 0 when unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loc {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub value: Value,
    pub loc: Loc,
}

#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// A short description for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// Parses a whole YAML document. An empty document is an empty mapping.
    /// Parses YAML text; a syntax error comes back in our words, with where it is.
    pub fn parse(text: &str) -> Result<Node, (String, Option<Loc>)> {
        if text.trim().is_empty() {
            return Ok(Node { value: Value::Map(Vec::new()), loc: Loc { line: 1, column: 1 } });
        }
        // YAML 1.2 booleans only: `y`, `no`, `off` stay strings where strings are expected (a
        // target named `y`, a country code `NO`); boolean fields still accept yes/no/on/off.
        let options = serde_saphyr::options! { strict_booleans: true };
        serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|e| {
            let raw = first_line(&e.to_string()).trim_start_matches("error: ").to_owned();
            let loc = e.location().map(|l| Loc { line: l.line(), column: l.column() });
            (explain(&raw), loc)
        })
    }

    /// The text of a scalar key (keys are always read as text).
    pub fn key_text(&self) -> String {
        match &self.value {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => "null".into(),
            Value::Seq(_) | Value::Map(_) => "<complex key>".into(),
        }
    }
}

/// The parser's message in our words: what is wrong and what to do, with no parser internals
/// (option names, budgets, Debug output). The location goes separately.
fn explain(raw: &str) -> String {
    // "line 3 column 3: duplicate mapping key: host, set DuplicateKeyPolicy in Options ..."
    let text = match raw.strip_prefix("line ") {
        Some(rest) => rest.split_once(": ").map(|(_, t)| t).unwrap_or(rest),
        None => raw,
    };
    if let Some(rest) = text.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(", set ").next().unwrap_or(rest).trim();
        return format!("the key `{key}` appears twice in one mapping: keep one of them");
    }
    if text.contains("budget breached") {
        return "the file is too large for a configuration (over 250,000 YAML nodes, or aliases that expand to \
                that many): remove the repetition"
            .into();
    }
    if text.contains("multiple YAML documents") {
        return "the file holds more than one YAML document (a `---` line): a configuration is one document".into();
    }
    if text.contains("tabs disallowed") {
        return "a tab indents this line: YAML indents with spaces only".into();
    }
    if text.contains("mapping values are not allowed") {
        return "a `key: value` where none can be: check this line's indentation, or quote a value that contains \
                `: `"
            .into();
    }
    if let Some(b) = text.strip_prefix("unclosed bracket ") {
        return format!("the bracket {b} is never closed");
    }
    if text.contains("multiline quoted scalar") || text.contains("unclosed quote") || text.contains("end of stream") {
        return format!("{text}: a quoted string may be missing its closing quote");
    }
    if text.contains("did not find expected") || text.contains("could not find expected") {
        return format!("{text}: check the indentation and the brackets and quotes before this point");
    }
    // whatever else the parser says, without advice meant for programmers
    text.split(", set ").next().unwrap_or(text).split("; use ").next().unwrap_or(text).to_owned()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(d)?;
        Ok(Node {
            value: spanned.value,
            loc: Loc { line: spanned.referenced.line(), column: spanned.referenced.column() },
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        i128::try_from(v).map(Value::Int).map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<Node, Node>()? {
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_locations_and_types() {
        let n = Node::parse("a: 1\nb:\n  c: \"x\"\n  d: [true, 2.5]\ne:\n").unwrap();
        let Value::Map(m) = n.value else { panic!("not a map") };
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].0.key_text(), "a");
        assert!(matches!(m[0].1.value, Value::Int(1)));
        assert_eq!(m[1].1.loc.line, 3);
        let Value::Map(b) = &m[1].1.value else { panic!("b not a map") };
        assert_eq!(b[0].1.loc, Loc { line: 3, column: 6 });
        assert!(matches!(&b[1].1.value, Value::Seq(s) if s.len() == 2));
        assert!(matches!(m[2].1.value, Value::Null));
    }

    #[test]
    fn syntax_error_has_location() {
        let (message, loc) = Node::parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!(message, "illegal placement of ':' indicator");
        assert_eq!(loc.map(|l| l.line), Some(2));
    }
}
