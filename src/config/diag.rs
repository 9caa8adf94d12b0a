//! Diagnostics that point at the file, line and key of a config mistake.
//!
//! serde stops at the first error and knows no line numbers for the keys it ignores, so
//! each file is parsed twice: once by `toml_edit` (which keeps the span of every key and
//! value) to locate keys, and once by serde through `serde_ignored` to build the typed
//! config while collecting every unknown key instead of stopping at the first.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// One mistake in one config file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the mistake is about the file as a whole.
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `server.listen.0.addr` or `site.1.root`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The text of one config file, with what is needed to point into it.
pub struct Source {
    pub path: PathBuf,
    text: String,
    doc: Option<toml_edit::Document<String>>,
}

impl Source {
    pub fn read(path: &Path) -> Result<Self, Diagnostic> {
        let text = std::fs::read_to_string(path).map_err(|e| Diagnostic {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read file: {e}"),
        })?;
        Ok(Self::from_text(path, text))
    }

    pub fn from_text(path: &Path, text: String) -> Self {
        let doc = toml_edit::Document::parse(text.clone()).ok();
        Self {
            path: path.to_path_buf(),
            text,
            doc,
        }
    }

    /// Deserialize the whole file. Unknown keys become diagnostics rather than being
    /// silently dropped, all of them, not only the first; the value is still returned
    /// when only unknown keys were wrong, so the rest of the file can be checked too.
    pub fn deserialize<T: DeserializeOwned>(&self) -> (Option<T>, Vec<Diagnostic>) {
        let de = match toml::Deserializer::parse(&self.text) {
            Ok(de) => de,
            Err(e) => return (None, vec![self.error_at(e.span(), "", e.message())]),
        };
        let mut unknown = Vec::new();
        let value: Result<T, _> =
            serde_ignored::deserialize(de, |path| unknown.push(path.to_string()));
        let mut diags: Vec<Diagnostic> = unknown
            .iter()
            .map(|key| match super::keys::suggest(key) {
                Some(known) => self.error(key, format!("unknown key; did you mean `{known}`?")),
                None => self.error(
                    key,
                    "unknown key (check the spelling; `man condo.toml` lists every key)",
                ),
            })
            .collect();
        match value {
            Ok(v) => (Some(v), diags),
            Err(e) => {
                diags.push(self.error_at(e.span(), "", e.message()));
                (None, diags)
            }
        }
    }

    /// A diagnostic for `key` (dotted path, array indices as numbers), located at that
    /// key in the file when it is there, else at the nearest enclosing key.
    pub fn error(&self, key: &str, message: impl Into<String>) -> Diagnostic {
        let span = self.locate(key);
        let mut d = self.error_at(span, key, message);
        d.key = key.to_string();
        d
    }

    fn error_at(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> Diagnostic {
        let (line, column) = span
            .map(|s| line_col(&self.text, s.start))
            .unwrap_or((0, 0));
        Diagnostic {
            file: self.path.clone(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn locate(&self, key: &str) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Table(doc.as_table());
        let mut best = None;
        for segment in key.split('.') {
            let next = match (node, segment.parse::<usize>()) {
                (Node::Table(t), _) => t.get_key_value(segment).map(|(k, v)| {
                    best = k.span().or(best.take());
                    Node::from_item(v)
                }),
                (Node::Array(a), Ok(i)) => a.get(i).map(|v| {
                    best = v.span().or(best.take());
                    Node::from_value(v)
                }),
                (Node::Tables(a), Ok(i)) => a.get(i).map(|t| {
                    best = t.span().or(best.take());
                    Node::Table(t)
                }),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        best
    }
}

/// Where the walk in [`Source::locate`] stands.
#[derive(Clone, Copy)]
enum Node<'a> {
    Table(&'a dyn toml_edit::TableLike),
    Array(&'a toml_edit::Array),
    Tables(&'a toml_edit::ArrayOfTables),
    Leaf,
}

impl<'a> Node<'a> {
    fn from_item(item: &'a toml_edit::Item) -> Self {
        match item {
            toml_edit::Item::Table(t) => Node::Table(t),
            toml_edit::Item::ArrayOfTables(a) => Node::Tables(a),
            toml_edit::Item::Value(v) => Node::from_value(v),
            toml_edit::Item::None => Node::Leaf,
        }
    }

    fn from_value(value: &'a toml_edit::Value) -> Self {
        match value {
            toml_edit::Value::Array(a) => Node::Array(a),
            toml_edit::Value::InlineTable(t) => Node::Table(t),
            _ => Node::Leaf,
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Top {
        server: Server,
        #[serde(default)]
        site: Vec<Site>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Server {
        user: String,
    }
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Site {
        name: String,
    }

    fn source(text: &str) -> Source {
        Source::from_text(Path::new("t.toml"), text.to_string())
    }

    #[test]
    fn reports_every_unknown_key_with_its_line() {
        let s = source(
            "[server]\nuser = \"x\"\nusr = 1\n\n[[site]]\nname = \"a\"\n\n[[site]]\nname = \"b\"\nroots = \"/x\"\n",
        );
        let (value, diags) = s.deserialize::<Top>();
        assert!(value.is_some());
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert_eq!((diags[0].line, diags[0].key.as_str()), (3, "server.usr"));
        assert_eq!((diags[1].line, diags[1].key.as_str()), (10, "site.1.roots"));
    }

    #[test]
    fn type_errors_point_at_the_value() {
        let s = source("[server]\nuser = 5\n");
        let (value, diags) = s.deserialize::<Top>();
        assert!(value.is_none());
        assert_eq!(diags[0].line, 2, "{diags:?}");
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let s = source("[server]\nuser = \"x\n");
        let diags = s.deserialize::<Top>().1;
        assert_eq!(diags[0].line, 2, "{diags:?}");
    }

    #[test]
    fn semantic_errors_locate_keys_in_arrays_of_tables() {
        let s =
            source("[server]\nuser = \"x\"\n[[site]]\nname = \"a\"\n[[site]]\n\nname = \"b\"\n");
        assert_eq!(s.error("site.1.name", "dup").line, 7);
        assert_eq!(s.error("server.user", "x").line, 2);
        // A key that is absent points at its table.
        assert_eq!(s.error("site.0.root", "missing").line, 3);
    }
}
