//! Paths into a configuration document and the locator that maps them to `line:column`.
//!
//! Validation works on clean typed structs and reports each problem with a [`Path`] such as
//! `bus[0].device[2].unit`. The [`Locator`] is built once from the same source text (with the span
//! of every key and array element) and turns those paths into positions, so the structs carry no
//! span noise and every problem still points at the offending key.

use std::collections::HashMap;
use std::fmt;
use std::path::Path as FsPath;

use toml::de::{DeTable, DeValue};

use crate::diagnostic::{Diagnostic, Severity};

/// One step of a [`Path`]: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Where in a document a value sits, e.g. `bus[0].device[2].unit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Path(Vec<Seg>);

impl Path {
    /// The document root.
    pub fn root() -> Self {
        Self::default()
    }

    /// This path extended by a key.
    #[must_use]
    pub fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        Self(segs)
    }

    /// This path extended by an array index.
    #[must_use]
    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }

    /// Shorthand for `.key(key).index(index)`, e.g. `at("bus", 0)`.
    #[must_use]
    pub fn at(&self, key: &str, index: usize) -> Self {
        self.key(key).index(index)
    }

    pub fn segments(&self) -> &[Seg] {
        &self.0
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A validation problem before it is located in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub path: Path,
    pub severity: Severity,
    pub message: String,
    /// Another place the message refers to (the first of two duplicates); its line is appended.
    pub related: Option<Path>,
}

impl Problem {
    pub fn error(path: Path, message: impl Into<String>) -> Self {
        Self {
            path,
            severity: Severity::Error,
            message: message.into(),
            related: None,
        }
    }

    pub fn warning(path: Path, message: impl Into<String>) -> Self {
        Self {
            path,
            severity: Severity::Warning,
            message: message.into(),
            related: None,
        }
    }

    /// Refers to another place, e.g. the first definition of a duplicate.
    #[must_use]
    pub fn related(mut self, path: Path) -> Self {
        self.related = Some(path);
        self
    }
}

/// Maps paths to byte offsets in one parsed source text.
#[derive(Debug, Clone, Default)]
pub struct Locator {
    offsets: HashMap<Path, usize>,
}

impl Locator {
    /// Indexes every key and array element of `source`. Text that does not parse yields an empty
    /// locator (every path then resolves to the start of the file).
    pub fn new(source: &str) -> Self {
        let mut offsets = HashMap::new();
        if let Ok(doc) = DeTable::parse(source) {
            index_table(doc.get_ref(), &Path::root(), &mut offsets);
        }
        Self { offsets }
    }

    /// Byte offset of `path`: the key's position for table entries, the element's position (the
    /// `[[header]]` for arrays of tables) for indices. A path that does not exist in the text (a
    /// missing key) resolves to its nearest existing ancestor.
    pub fn offset(&self, path: &Path) -> usize {
        let mut segs = path.segments().to_vec();
        while !segs.is_empty() {
            if let Some(&offset) = self.offsets.get(&Path(segs.clone())) {
                return offset;
            }
            segs.pop();
        }
        0
    }

    /// Whether `path` is written in the source (not filled in by a default).
    pub fn contains(&self, path: &Path) -> bool {
        self.offsets.contains_key(path)
    }

    /// Locates a problem in `file`, whose text is `source`.
    pub fn diagnostic(&self, file: &FsPath, source: &str, problem: Problem) -> Diagnostic {
        let mut message = problem.message;
        if let Some(related) = &problem.related {
            let (line, _) = crate::diagnostic::line_column(source, self.offset(related));
            message = format!("{message} (see line {line})");
        }
        Diagnostic::at_offset(
            file,
            source,
            self.offset(&problem.path),
            problem.severity,
            message,
        )
    }
}

fn index_table(table: &DeTable<'_>, at: &Path, out: &mut HashMap<Path, usize>) {
    for (key, value) in table.iter() {
        let path = at.key(key.get_ref());
        out.insert(path.clone(), key.span().start);
        index_value(value.get_ref(), &path, out);
    }
}

fn index_value(value: &DeValue<'_>, at: &Path, out: &mut HashMap<Path, usize>) {
    match value {
        DeValue::Table(t) => index_table(t, at, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = at.index(i);
                out.insert(path.clone(), item.span().start);
                index_value(item.get_ref(), &path, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::line_column;

    const SRC: &str = "gateway = \"gw-1\"\n\n[[bus]]\nname = \"a\"\n[[bus.device]]\nid = \"d1\"\n\n[[bus.device]]\nid = \"d2\"\nrange = [1, 2]\n";

    fn pos(path: &Path) -> (usize, usize) {
        line_column(SRC, Locator::new(SRC).offset(path))
    }

    #[test]
    fn paths_display_like_accessors() {
        let p = Path::root().at("bus", 0).at("device", 2).key("unit");
        assert_eq!(p.to_string(), "bus[0].device[2].unit");
    }

    #[test]
    fn keys_elements_and_missing_keys_resolve() {
        let dev1 = Path::root().at("bus", 0).at("device", 1);
        assert_eq!(pos(&Path::root().key("gateway")), (1, 1));
        assert_eq!(pos(&dev1), (8, 1));
        assert_eq!(pos(&dev1.key("id")), (9, 1));
        assert_eq!(pos(&dev1.key("range").index(1)), (10, 13));
        // `unit` is not written: the device header is the nearest thing.
        assert_eq!(pos(&dev1.key("unit")), (8, 1));
        assert_eq!(pos(&Path::root().key("nothing")), (1, 1));
    }
}
