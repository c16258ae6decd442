//! Diagnostics: one problem in one configuration file, located at `file:line:column` for the installer.
//!
//! Loading produces diagnostics from three sources: TOML syntax errors, serde type errors (both carry a
//! byte span) and validation problems (which carry a [`Path`](crate::locate::Path) that the
//! [`Locator`](crate::locate::Locator) turns into a position). All of them end up here.

use std::fmt;
use std::path::{Path as FsPath, PathBuf};

/// How bad a problem is: errors stop the agent from starting, warnings are reported and tolerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One located problem. `line` and `column` are 1-based (the column counts characters); both are 0
/// when the problem concerns the file as a whole (it cannot be read, or it is missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    /// An error about the whole file (no position).
    pub fn file_error(file: &FsPath, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: 0,
            column: 0,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    /// A problem at byte `offset` of `source`.
    pub fn at_offset(
        file: &FsPath,
        source: &str,
        offset: usize,
        severity: Severity,
        message: String,
    ) -> Self {
        let (line, column) = line_column(source, offset);
        Self {
            file: file.to_owned(),
            line,
            column,
            severity,
            message,
        }
    }

    /// Converts a TOML syntax or serde error, using its byte span.
    pub fn from_toml(file: &FsPath, source: &str, err: &toml::de::Error) -> Self {
        let offset = err.span().map_or(0, |s| s.start);
        let mut message = err.message().trim_end().to_owned();
        // Integer keys (enum codes) that do not parse get only the standard library's wording.
        if message == "invalid digit found in string" {
            message += ": expected an integer";
        }
        Self::at_offset(file, source, offset, Severity::Error, message)
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// `file:line:column: severity: message`, the format compilers use, so editors can jump to it.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.severity,
                self.message
            )
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.severity,
                self.message
            )
        }
    }
}

/// True when any diagnostic is an error.
pub fn has_errors(diagnostics: &[Diagnostic]) -> bool {
    diagnostics.iter().any(Diagnostic::is_error)
}

/// 1-based line and character column of byte `offset` in `source` (clamped to the end).
pub fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Every diagnostic on its own line, for an error that stops a program.
pub fn report(diagnostics: &[Diagnostic]) -> String {
    let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    format!("invalid configuration:\n{}", lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_is_one_based_and_counts_characters() {
        let src = "a = 1\n路灯 = 2\n";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 4), (1, 5));
        assert_eq!(line_column(src, 6), (2, 1));
        // After the two 3-byte characters and the space: column 4.
        assert_eq!(line_column(src, 13), (2, 4));
        assert_eq!(line_column(src, 999), (3, 1));
    }

    #[test]
    fn display_is_file_line_column() {
        let d = Diagnostic {
            file: "gw.toml".into(),
            line: 3,
            column: 7,
            severity: Severity::Error,
            message: "unknown field `foo`".into(),
        };
        assert_eq!(d.to_string(), "gw.toml:3:7: error: unknown field `foo`");
        let whole = Diagnostic::file_error(FsPath::new("gw.toml"), "cannot read: not found");
        assert_eq!(whole.to_string(), "gw.toml: error: cannot read: not found");
    }
}
