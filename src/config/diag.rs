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

    /// Deserialize the whole file. Every mistake becomes a diagnostic, not only the
    /// first: unknown keys (never silently dropped), and values of the wrong type, each
    /// with its key and place. A value of the wrong type is taken out and the rest
    /// deserialized again, so one mistake hides no other; the value returned is what is
    /// left (check the diagnostics before using it: a key taken out has its default).
    /// `None` only when the file is not TOML or nothing usable is left.
    pub fn deserialize<T: DeserializeOwned>(&self) -> (Option<T>, Vec<Diagnostic>) {
        let root = match toml::de::DeTable::parse(&self.text) {
            Ok(root) => root,
            Err(e) => return (None, vec![self.error_at(e.span(), "", e.message())]),
        };
        let span = root.span();
        let root = toml::Spanned::new(span, toml::de::DeValue::Table(root.into_inner()));
        self.deserialize_value(root, "")
    }

    /// [`Self::deserialize`] of each element of the array of tables `key` (such as
    /// `[[site]]`) on its own, so that a mistake in one element (even a missing field)
    /// hides nothing of the others and their keys keep their indices. Top-level keys
    /// other than `key` are unknown keys.
    pub fn deserialize_each<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> (Option<Vec<Option<T>>>, Vec<Diagnostic>) {
        let root = match toml::de::DeTable::parse(&self.text) {
            Ok(root) => root.into_inner(),
            Err(e) => return (None, vec![self.error_at(e.span(), "", e.message())]),
        };
        let mut diags = Vec::new();
        let mut items = Vec::new();
        for (k, v) in root {
            if k.get_ref() != key {
                diags.push(self.unknown_key(k.get_ref()));
                continue;
            }
            let span = v.span();
            match v.into_inner() {
                toml::de::DeValue::Array(array) => {
                    for (i, element) in array.into_iter().enumerate() {
                        let (value, d) = self.deserialize_value(element, &format!("{key}.{i}"));
                        diags.extend(d);
                        items.push(value);
                    }
                }
                other => diags.push(self.error_at(
                    Some(span),
                    key,
                    format!("must be tables ([[{key}]]), not {}", other.type_str()),
                )),
            }
        }
        diags.sort_by_key(|d| (d.line, d.column));
        (Some(items), diags)
    }

    /// Deserialize `value`, which sits at `prefix` in the file, taking out each value
    /// serde refuses and trying again (at most [`MAX_TYPE_ERRORS`] times).
    fn deserialize_value<T: DeserializeOwned>(
        &self,
        value: toml::Spanned<toml::de::DeValue<'_>>,
        prefix: &str,
    ) -> (Option<T>, Vec<Diagnostic>) {
        let join = |path: &str| match (prefix.is_empty(), path.is_empty()) {
            (true, _) => path.to_string(),
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{path}"),
        };
        let original = value.clone();
        let mut current = value;
        let mut diags = Vec::new();
        let mut unknown: Vec<String> = Vec::new();
        // Keys taken out: the "missing field" that taking out a required one causes
        // is that same mistake, said once already.
        let mut taken: Vec<String> = Vec::new();
        let mut result = None;
        for _ in 0..MAX_TYPE_ERRORS {
            let mut seen = Vec::new();
            let de = toml::de::ValueDeserializer::from(current.clone());
            let value: Result<T, _> =
                serde_ignored::deserialize(de, |path| seen.push(path.to_string()));
            for key in seen {
                if !unknown.contains(&key) {
                    unknown.push(key);
                }
            }
            match value {
                Ok(v) => {
                    result = Some(v);
                    break;
                }
                Err(e) => {
                    let path = e.span().map(|s| path_of(&original, &s)).unwrap_or_default();
                    let message = e.message().to_string();
                    let repeated = message
                        .strip_prefix("missing field `")
                        .and_then(|m| m.strip_suffix('`'))
                        .is_some_and(|field| {
                            let full = if path.is_empty() {
                                field.to_string()
                            } else {
                                format!("{}.{field}", dotted(&path))
                            };
                            taken.contains(&full)
                        });
                    if !repeated {
                        let key = join(&dotted(&path));
                        diags.push(self.error_at(e.span(), &key, message));
                    }
                    // What can be taken out is a table's entry: a bad element takes its
                    // whole array (taking one out would renumber the rest).
                    let Some(cut) = path.iter().rposition(|seg| matches!(seg, Seg::Key(_))) else {
                        break;
                    };
                    let removable = &path[..=cut];
                    if !remove(&mut current, removable) {
                        break;
                    }
                    taken.push(dotted(removable));
                }
            }
        }
        diags.extend(unknown.iter().map(|key| self.unknown_key(&join(key))));
        diags.sort_by_key(|d| (d.line, d.column));
        (result, diags)
    }

    /// An unknown key, with the known key of its section it is closest to.
    fn unknown_key(&self, key: &str) -> Diagnostic {
        match super::keys::suggest(key) {
            Some(known) => self.error(key, format!("unknown key; did you mean `{known}`?")),
            None => self.error(
                key,
                "unknown key (check the spelling; `man condo.toml` lists every key)",
            ),
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

/// The most values of the wrong type reported for one file (or one `[[site]]`): each
/// costs a deserialization of what is left.
const MAX_TYPE_ERRORS: usize = 64;

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn dotted(path: &[Seg]) -> String {
    path.iter()
        .map(|s| match s {
            Seg::Key(k) => k.clone(),
            Seg::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The path of the smallest value whose span holds `span` (the deepest on a tie): the
/// key a serde error is about. Every node is visited: a table made by a `[header]`
/// need not span its keys.
fn path_of(root: &toml::Spanned<toml::de::DeValue<'_>>, span: &Range<usize>) -> Vec<Seg> {
    fn walk(
        node: &toml::Spanned<toml::de::DeValue<'_>>,
        span: &Range<usize>,
        path: &mut Vec<Seg>,
        best: &mut Option<(usize, Vec<Seg>)>,
    ) {
        let here = node.span();
        if here.start <= span.start && span.end <= here.end {
            let len = here.end - here.start;
            if best
                .as_ref()
                .is_none_or(|(l, p)| len < *l || (len == *l && path.len() >= p.len()))
            {
                *best = Some((len, path.clone()));
            }
        }
        match node.get_ref() {
            toml::de::DeValue::Table(t) => {
                for (k, v) in t.iter() {
                    path.push(Seg::Key(k.get_ref().to_string()));
                    walk(v, span, path, best);
                    path.pop();
                }
            }
            toml::de::DeValue::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    path.push(Seg::Index(i));
                    walk(v, span, path, best);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut best = None;
    walk(root, span, &mut Vec::new(), &mut best);
    best.map(|(_, p)| p).unwrap_or_default()
}

/// Take the entry at `path` (ending in a key) out of `root`.
fn remove(root: &mut toml::Spanned<toml::de::DeValue<'_>>, path: &[Seg]) -> bool {
    let Some((Seg::Key(last), parents)) = path.split_last() else {
        return false;
    };
    let mut node = root.get_mut();
    for seg in parents {
        node = match (node, seg) {
            (toml::de::DeValue::Table(t), Seg::Key(k)) => match t.get_mut(k.as_str()) {
                Some(v) => v.get_mut(),
                None => return false,
            },
            (toml::de::DeValue::Array(a), Seg::Index(i)) => match a.get_mut(*i) {
                Some(v) => v.get_mut(),
                None => return false,
            },
            _ => return false,
        };
    }
    match node {
        toml::de::DeValue::Table(t) => t.remove(last.as_str()).is_some(),
        _ => false,
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

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Limits {
        cpu_max: Option<f64>,
        pids_max: Option<u32>,
        name: Option<String>,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[test]
    fn every_value_of_the_wrong_type_is_named_with_its_key_and_place() {
        let s = source(
            "[t.a]\ncpu_max = \"half\"\npids_max = 64\n[t.b]\npids_max = -1\nname = \"ok\"\ntags = [\"x\", 5]\ntypo = 1\n",
        );
        let (value, diags) = s.deserialize::<std::collections::BTreeMap<String, std::collections::BTreeMap<String, Limits>>>();
        let got: Vec<(usize, usize, &str)> = diags
            .iter()
            .map(|d| (d.line, d.column, d.key.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (2, 11, "t.a.cpu_max"),
                (5, 12, "t.b.pids_max"),
                (7, 14, "t.b.tags.1"),
                (8, 1, "t.b.typo"),
            ],
            "{diags:?}"
        );
        assert!(diags[0].message.contains("\"half\""), "{diags:?}");
        // What is left is still there to validate further.
        let value = value.unwrap();
        assert_eq!(value["t"]["a"].pids_max, Some(64));
        assert_eq!(value["t"]["b"].name.as_deref(), Some("ok"));
    }

    #[test]
    fn a_missing_field_in_one_table_of_an_array_hides_nothing_of_the_others() {
        let s =
            source("[[site]]\nname = \"a\"\n[[site]]\nname = 5\n[[site]]\nnme = \"c\"\n[extra]\n");
        let (items, diags) = s.deserialize_each::<Site>("site");
        let items = items.unwrap();
        assert_eq!(items.len(), 3);
        assert!(items[0].is_some() && items[1].is_none() && items[2].is_none());
        let got: Vec<(usize, &str)> = diags.iter().map(|d| (d.line, d.key.as_str())).collect();
        // site.1's wrong `name` is said once (not again as "missing field").
        assert_eq!(
            got,
            [
                (4, "site.1.name"),
                (5, "site.2"),
                (6, "site.2.nme"),
                (7, "extra")
            ],
            "{diags:?}"
        );
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
