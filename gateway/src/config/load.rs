//! From a TOML file and `FIELDGATE_*` variables to typed sections, collecting *every* error.
//!
//! serde stops at the first error. To report them all at once, each section (and each
//! `[[adapters]]` / `[[uplinks]]` entry) is deserialized on its own from figment's merged
//! value tree, through `serde_path_to_error` for the key path; after an error the offending
//! key is removed from the tree and deserialization is tried again, so one typo does not hide
//! the next. Key paths are mapped back to file lines with `toml_edit`'s spans.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::providers::{Format, Toml};
use figment::value::Value;
use figment::Figment;
use serde::de::DeserializeOwned;

/// One segment of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A key path like `adapters[0].points[2].interval`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// The path plus a key.
    pub fn key(&self, k: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }

    /// The path plus an index.
    pub fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    /// Parses `a.b[2].c` (as written by adapters in their problems).
    pub fn join_str(&self, rel: &str) -> KeyPath {
        let mut p = self.clone();
        for part in rel.split('.').filter(|s| !s.is_empty()) {
            let mut rest = part;
            if let Some(br) = rest.find('[') {
                p.0.push(Seg::Key(rest[..br].to_string()));
                rest = &rest[br..];
                while let Some(end) = rest.find(']') {
                    if let Ok(i) = rest[1..end].parse() {
                        p.0.push(Seg::Index(i));
                    }
                    rest = &rest[end + 1..];
                }
            } else {
                p.0.push(Seg::Key(rest.to_string()));
            }
        }
        p
    }

    fn starts_with(&self, other: &KeyPath) -> bool {
        self.0.len() >= other.0.len() && self.0[..other.0.len()] == other.0[..]
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// One configuration mistake: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the key is in (or would be).
    pub file: Option<PathBuf>,
    /// The line in that file, when known.
    pub line: Option<usize>,
    /// The environment variable that set the key, if one did.
    pub env_var: Option<String>,
    /// The key path.
    pub key: KeyPath,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(var) = &self.env_var {
            write!(f, "environment variable {var}: ")?;
        } else if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            f.write_str(": ")?;
        }
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every mistake found in a config, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors with their locations while a config is loaded.
#[derive(Debug)]
pub struct Collector {
    file: Option<PathBuf>,
    lines: Locator,
    env_keys: Vec<(KeyPath, String)>,
    /// Errors found so far.
    pub errors: Vec<ConfigError>,
}

impl Collector {
    /// Records a problem at `key`.
    pub fn push(&mut self, key: KeyPath, message: impl Into<String>) {
        let env_var = self
            .env_keys
            .iter()
            .find(|(k, _)| key.starts_with(k) || (!key.0.is_empty() && k.starts_with(&key)))
            .map(|(_, v)| v.clone());
        let line = if env_var.is_some() {
            None
        } else {
            self.lines.line_of(&key)
        };
        let mut message = message.into();
        if env_var.is_some() && message.contains("a string in quotes") {
            // FIELDGATE_GATEWAY__ID=1234 is read as a number.
            message.push_str("; in an environment variable, quote it: VAR='\"1234\"'");
        }
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            env_var,
            key,
            message,
        });
    }

    /// Records the problems a section's own validation found (keys relative to `at`).
    /// True if there were none.
    pub fn push_all(
        &mut self,
        at: &KeyPath,
        problems: Vec<fieldgate_adapter::ConfigProblem>,
    ) -> bool {
        let ok = problems.is_empty();
        for p in problems {
            self.push(at.join_str(&p.key), p.message);
        }
        ok
    }

    /// The value a section's validation resolved, or `None` with its problems recorded.
    pub fn relay<T>(
        &mut self,
        at: &KeyPath,
        validated: Result<T, Vec<fieldgate_adapter::ConfigProblem>>,
    ) -> Option<T> {
        validated.map_err(|ps| self.push_all(at, ps)).ok()
    }

    /// Deserializes `T` from `value` (found at `at`), recording every error it can find.
    /// Returns `None` if there was any.
    pub fn extract<T: DeserializeOwned>(&mut self, value: &Value, at: &KeyPath) -> Option<T> {
        self.extract_with(value, at, Extract::default())
    }

    /// [`Collector::extract`] with options.
    pub fn extract_with<T: DeserializeOwned>(
        &mut self,
        value: &Value,
        at: &KeyPath,
        how: Extract,
    ) -> Option<T> {
        let mut value = value.clone();
        let mut removed: Vec<KeyPath> = Vec::new();
        for _ in 0..64 {
            let err = match serde_path_to_error::deserialize::<_, T>(&value) {
                Ok(t) => return (how.lenient || removed.is_empty()).then_some(t),
                Err(e) => e,
            };
            let mut path = at.clone();
            for seg in err.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Seq { index } => path.0.push(Seg::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => path.0.push(Seg::Key(key.clone())),
                    serde_path_to_error::Segment::Enum { .. }
                    | serde_path_to_error::Segment::Unknown => {}
                }
            }
            let inner = err.into_inner();
            let target = match &inner.kind {
                Kind::UnknownField(name, expected) => {
                    if path.0.last() != Some(&Seg::Key(name.clone())) {
                        path.0.push(Seg::Key(name.clone()));
                    }
                    // Keys taken by the enclosing entry (`id`, `type`, an uplink's common
                    // keys) are valid too, and belong in the suggestion.
                    let mut all: Vec<&str> = expected.to_vec();
                    if path.0.len() == at.0.len() + 1 {
                        all.extend_from_slice(how.also_expected);
                    }
                    self.push(path.clone(), unknown_key_message(name, &all));
                    path
                }
                Kind::MissingField(name) => {
                    let missing = path.key(name);
                    if !removed.contains(&missing) {
                        self.push(missing, format!("missing required key `{name}`"));
                    }
                    return None;
                }
                other => {
                    self.push(path.clone(), kind_message(other));
                    // Remove the nearest table key: removing an array element would shift the
                    // indexes of the errors that follow.
                    while matches!(path.0.last(), Some(Seg::Index(_))) {
                        path.0.pop();
                    }
                    path
                }
            };
            let rel = KeyPath(target.0[at.0.len()..].to_vec());
            if rel.0.is_empty() || !remove(&mut value, &rel.0) {
                return None;
            }
            removed.push(target);
        }
        None
    }
}

/// Options of [`Collector::extract_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Extract {
    /// Return the value even after errors (with the bad keys removed and their defaults in
    /// place), so the rest of it can still be checked. The errors are recorded either way.
    pub lenient: bool,
    /// More valid keys at this level, for "expected one of" and "did you mean".
    pub also_expected: &'static [&'static str],
}

fn unknown_key_message(name: &str, expected: &[&str]) -> String {
    let close = expected
        .iter()
        .map(|e| (edit_distance(name, e), *e))
        .filter(|(d, _)| *d <= 2)
        .min();
    match close {
        Some((_, e)) => format!("unknown key `{name}`; did you mean `{e}`?"),
        None if expected.is_empty() => format!("unknown key `{name}`; this section takes no keys"),
        None => format!(
            "unknown key `{name}`; expected one of: {}",
            expected.join(", ")
        ),
    }
}

fn kind_message(kind: &Kind) -> String {
    match kind {
        Kind::InvalidType(actual, expected) => {
            format!("expected {}, found {actual}", human_type(expected))
        }
        Kind::InvalidValue(actual, expected) => {
            format!("invalid value {actual}; expected {expected}")
        }
        Kind::UnknownVariant(v, expected) => {
            format!("unknown value `{v}`; expected one of: {}", quoted(expected))
        }
        Kind::Message(m) => m.clone(),
        other => other.to_string(),
    }
}

/// serde's type names in words a site engineer uses.
fn human_type(expected: &str) -> &str {
    match expected {
        "usize" | "u8" | "u16" | "u32" | "u64" => "a whole number",
        "isize" | "i8" | "i16" | "i32" | "i64" => "an integer",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "true or false",
        "a string" | "string" => "a string in quotes",
        other if other.starts_with("struct ") => "a table (a [section] or { key = value })",
        other if other.starts_with("a sequence") || other == "a sequence" => "a list [ ... ]",
        other => other,
    }
}

fn quoted(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Removes the value at `path` (relative to `value`). Returns false if it was not there.
fn remove(value: &mut Value, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in parents {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Dict(_, map)) => match map.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Seg::Index(i), Value::Array(_, items)) => match items.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Seg::Key(k), Value::Dict(_, map)) => map.remove(k).is_some(),
        _ => false,
    }
}

/// Maps key paths to line numbers in the TOML source.
#[derive(Debug, Default)]
struct Locator {
    source: String,
    doc: Option<toml_edit::ImDocument<String>>,
}

impl Locator {
    fn new(source: String) -> Locator {
        let doc = toml_edit::ImDocument::parse(source.clone()).ok();
        Locator { source, doc }
    }

    /// The line of the deepest part of `path` that exists in the file.
    fn line_of(&self, path: &KeyPath) -> Option<usize> {
        use toml_edit::TableLike;
        enum Node<'a> {
            Item(&'a toml_edit::Item),
            Table(&'a toml_edit::Table),
            Value(&'a toml_edit::Value),
        }
        let doc = self.doc.as_ref()?;
        let mut node = Node::Item(doc.as_item());
        let mut span = None;
        for seg in &path.0 {
            let next = match (seg, &node) {
                (Seg::Key(k), _) => {
                    let table: Option<&dyn TableLike> = match node {
                        Node::Item(item) => item.as_table_like(),
                        Node::Table(t) => Some(t),
                        Node::Value(v) => v.as_inline_table().map(|t| t as &dyn TableLike),
                    };
                    table.and_then(|t| t.get_key_value(k)).map(|(key, item)| {
                        span = key.span().or(span.clone());
                        Node::Item(item)
                    })
                }
                (Seg::Index(i), Node::Item(item)) => {
                    if let Some(aot) = item.as_array_of_tables() {
                        aot.get(*i).map(|t| {
                            span = t.span().or(span.clone());
                            Node::Table(t)
                        })
                    } else {
                        item.as_array().and_then(|a| a.get(*i)).map(|v| {
                            span = v.span().or(span.clone());
                            Node::Value(v)
                        })
                    }
                }
                (Seg::Index(i), Node::Value(v)) => v.as_array().and_then(|a| a.get(*i)).map(|v| {
                    span = v.span().or(span.clone());
                    Node::Value(v)
                }),
                (Seg::Index(_), Node::Table(_)) => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        let start = span?.start;
        Some(
            self.source[..start.min(self.source.len())]
                .matches('\n')
                .count()
                + 1,
        )
    }
}

/// The merged, raw configuration and everything needed to report errors against it.
#[derive(Debug)]
pub struct Loaded {
    /// The merged value tree (file, then environment).
    pub value: Value,
    /// Collects errors.
    pub collector: Collector,
    /// The directory relative paths are resolved against.
    pub base_dir: PathBuf,
}

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "FIELDGATE_";
/// Variables with the prefix that are not config keys.
const ENV_RESERVED: &[&str] = &["FIELDGATE_CONFIG", "FIELDGATE_LOG_FORMAT"];

/// Reads `file` (or the given text, for tests and templates) and applies `FIELDGATE_*`
/// overrides from `env`. Fails only when the file cannot be read or parsed; everything else
/// is reported through the collector.
pub fn load(
    file: &Path,
    text: Option<String>,
    env: &[(String, String)],
) -> Result<Loaded, ConfigErrors> {
    let fail = |line: Option<usize>, message: String| {
        ConfigErrors(vec![ConfigError {
            file: Some(file.to_path_buf()),
            line,
            env_var: None,
            key: KeyPath::default(),
            message,
        }])
    };
    let source = match text {
        Some(t) => t,
        None => std::fs::read_to_string(file)
            .map_err(|e| fail(None, format!("cannot read the config file: {e}")))?,
    };
    let figment = Figment::from(Toml::string(&source));
    let mut value: Value = match figment.extract::<Value>() {
        Ok(v) => v,
        Err(e) => {
            let parsed = toml_edit::ImDocument::parse(source.as_str()).err();
            let line = parsed
                .as_ref()
                .and_then(toml_edit::TomlError::span)
                .map(|s| source[..s.start.min(source.len())].matches('\n').count() + 1);
            let why =
                parsed.map_or_else(|| e.kind.to_string(), |te| te.message().trim().to_string());
            return Err(fail(line, format!("not valid TOML: {why}")));
        }
    };
    let mut env_keys = Vec::new();
    let mut env_errors = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if ENV_RESERVED.contains(&name.as_str()) || rest.is_empty() {
            continue;
        }
        let mut path = KeyPath::default();
        for part in rest.split("__") {
            let part = part.to_ascii_lowercase();
            match part.parse::<usize>() {
                Ok(i) => path.0.push(Seg::Index(i)),
                Err(_) => path.0.push(Seg::Key(part)),
            }
        }
        let parsed: Value = match raw.parse::<Value>() {
            Ok(v) => v,
            Err(never) => match never {},
        };
        if let Err(msg) = set(&mut value, &path.0, parsed) {
            env_errors.push((path.clone(), name.clone(), msg));
        }
        env_keys.push((path, name.clone()));
    }
    let base_dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut collector = Collector {
        file: Some(file.to_path_buf()),
        lines: Locator::new(source),
        env_keys,
        errors: Vec::new(),
    };
    for (path, _, msg) in env_errors {
        collector.push(path, msg);
    }
    Ok(Loaded {
        value,
        collector,
        base_dir,
    })
}

/// Sets `path` in `value` to `new`, creating tables on the way. Array entries must exist.
fn set(value: &mut Value, path: &[Seg], new: Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("an override needs a key".into());
    };
    let mut cur = value;
    for seg in parents {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Dict(_, map)) => map
                .entry(k.clone())
                .or_insert_with(|| Value::from(BTreeMap::<String, Value>::new())),
            (Seg::Index(i), Value::Array(_, items)) => {
                let len = items.len();
                items.get_mut(*i).ok_or_else(|| {
                    format!("there is no entry {i} to override (the file has {len})")
                })?
            }
            (seg, _) => {
                return Err(format!(
                    "cannot override inside a value that is not a table or array (at {seg:?})"
                ))
            }
        };
    }
    match (last, cur) {
        (Seg::Key(k), Value::Dict(_, map)) => {
            map.insert(k.clone(), new);
            Ok(())
        }
        (Seg::Index(i), Value::Array(_, items)) if *i < items.len() => {
            items[*i] = new;
            Ok(())
        }
        _ => Err("cannot override this key".into()),
    }
}
