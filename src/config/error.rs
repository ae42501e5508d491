//! The one error type of config loading: `FILE:LINE: KEY: problem`, on one
//! line, for every stage (read, TOML syntax, types, unknown keys, semantic
//! checks, and certificate loading done later through [`super::Located`]).
//!
//! Also here: turning toml's and serde's errors into that form ([`from_toml`]:
//! the key from serde_path_to_error's path, or from the text for a syntax
//! error; the message in TOML's words rather than Rust's).
//!
//! Not owned here: deciding the key and the line of a semantic error. The
//! validator hands in a byte offset (a `toml::Spanned`), and [`line_of`]
//! turns it into a 1-based line using the source text.
//!
//! Invariant: `problem` never contains a newline, so a log line or the output
//! of `sluice check` is exactly one line and never echoes the file back (the
//! file may hold paths that should not end up in logs).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// What is wrong with a config file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; `None` when the problem has no place in the text (unreadable
    /// file, a required section that is absent).
    pub line: Option<usize>,
    /// Dotted path as an operator would write it: `route[1].limits.message_burst`.
    /// Empty when no key is at fault (unreadable file).
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(
        file: impl Into<PathBuf>,
        line: Option<usize>,
        key: impl Into<String>,
        problem: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: file.into(),
            line,
            key: key.into(),
            problem: one_line(&problem.into()),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line of a byte offset. An offset at the very end of a file that
/// ends in a newline (toml reports "unexpected end of input" there) is put
/// on the last written line rather than on a line the editor does not show.
pub fn line_of(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    if offset == text.len() && text.ends_with('\n') && offset > 0 {
        offset -= 1;
    }
    // A span never splits a UTF-8 sequence, but be safe with bytes anyway.
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// toml's syntax messages are several lines ("invalid table header\nexpected
/// `.`, `]`"); operators get them joined.
fn one_line(problem: &str) -> String {
    problem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

/// toml's error for `text`, with the key serde_path_to_error tracked, as
/// `FILE:LINE: KEY: problem` in words an operator uses.
pub(super) fn from_toml(
    file: &Path,
    text: &str,
    e: serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let mut key = render_path(e.path());
    let inner = e.into_inner();
    let line = inner.span().map(|s| line_of(text, s.start));
    let (problem, missing) = tidy_message(inner.message());
    if let Some(missing) = missing {
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(&missing);
    }
    // An empty path means toml failed before any value was handed out,
    // i.e. a syntax error: name the key from the text instead.
    if key.is_empty() {
        if let Some(line) = line {
            key = syntax_key(text, line);
        }
    }
    ConfigError::new(file, line, key, problem)
}

/// `route[1].websocket.max_frame_bytes` from serde_path_to_error's path,
/// without the private field names `toml::Spanned` adds.
fn render_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if key.starts_with("$__serde_spanned_private") {
                    continue;
                }
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// serde's messages speak Rust ("invalid type: string \"1MB\", expected u64",
/// "missing field `backends`"); operators read TOML. Returns the problem and,
/// for a missing key, the key's name so it can join the path.
fn tidy_message(message: &str) -> (String, Option<String>) {
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some(name) = rest.strip_suffix('`') {
            return ("missing required key".into(), Some(name.to_owned()));
        }
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let rest = rest.replace("there are no fields", "this table has no keys");
        return (format!("unknown key {rest}"), None);
    }
    for prefix in ["invalid type: ", "invalid value: ", "invalid length: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some((found, expected)) = rest.rsplit_once(", expected ") {
                return (
                    format!(
                        "expected {}, found {}",
                        toml_words(expected),
                        toml_words(found)
                    ),
                    None,
                );
            }
        }
    }
    (message.to_owned(), None)
}

fn toml_words(s: &str) -> String {
    match s {
        "a sequence" => "an array".into(),
        "sequence" => "an array".into(),
        "a map" | "map" => "a table".into(),
        // serde derive names the Rust type ("struct RawServer").
        other if other.starts_with("struct ") => "a table".into(),
        other => other.into(),
    }
}

/// Best-effort key for a syntax error, where toml gives a line but no path:
/// the table the line is in (from the headers above it) plus the key written
/// on that line, if any.
fn syntax_key(text: &str, line: usize) -> String {
    let mut arrays: HashMap<String, usize> = HashMap::new();
    let mut table = String::new();
    for (n, raw_line) in text.lines().enumerate().take(line) {
        let l = raw_line.trim();
        let is_error_line = n + 1 == line;
        if let Some(header) = l.strip_prefix('[') {
            let array = header.starts_with('[');
            let name: String = header
                .trim_start_matches('[')
                .chars()
                .take_while(|&c| c != ']' && c != '#')
                .filter(|c| !c.is_whitespace())
                .collect();
            if array {
                *arrays.entry(name.clone()).or_insert(0) += 1;
            }
            table = render_table(&name, &arrays);
            if is_error_line {
                return table;
            }
        } else if is_error_line {
            let key: String = l
                .chars()
                .take_while(|&c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                .collect();
            let looks_like_assignment =
                !key.is_empty() && l[key.len()..].trim_start().starts_with('=');
            return match (looks_like_assignment, table.is_empty()) {
                (false, _) => table,
                (true, true) => key,
                (true, false) => format!("{table}.{key}"),
            };
        }
    }
    table
}

/// `route.limits` → `route[2].limits` when `route` is the third `[[route]]`.
fn render_table(name: &str, arrays: &HashMap<String, usize>) -> String {
    let mut prefix = String::new();
    let mut out = String::new();
    for part in name.split('.') {
        if !prefix.is_empty() {
            prefix.push('.');
            out.push('.');
        }
        prefix.push_str(part);
        out.push_str(part);
        if let Some(n) = arrays.get(&prefix) {
            out.push_str(&format!("[{}]", n - 1));
        }
    }
    out
}

/// Line of a `[name]` header, for errors about a table as a whole.
pub(super) fn header_line(text: &str, name: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim()
                .strip_prefix('[')
                .and_then(|h| h.split(']').next())
                .is_some_and(|h| h.trim() == name)
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_forms() {
        let cases = [
            (
                Some(23),
                "route[0].websocket.max_frame_bytes",
                "config/sluice.toml:23: route[0].websocket.max_frame_bytes: boom",
            ),
            (None, "route", "config/sluice.toml: route: boom"),
            (None, "", "config/sluice.toml: boom"),
            (Some(4), "", "config/sluice.toml:4: boom"),
        ];
        for (line, key, want) in cases {
            let e = ConfigError::new("config/sluice.toml", line, key, "boom");
            assert_eq!(e.to_string(), want);
        }
    }

    #[test]
    fn problem_is_one_line() {
        let e = ConfigError::new(
            "f",
            Some(1),
            "",
            "invalid table header\nexpected `.`, `]`\n",
        );
        assert_eq!(e.problem, "invalid table header: expected `.`, `]`");
    }

    #[test]
    fn lines_from_offsets() {
        let text = "a\nbb\n\nccc\n";
        let cases = [
            (0, 1),
            (1, 1),
            (2, 2),
            (4, 2),
            (5, 3),
            (6, 4),
            (9, 4),
            (10, 4),
            (99, 4),
        ];
        for (offset, want) in cases {
            assert_eq!(line_of(text, offset), want, "offset {offset}");
        }
        assert_eq!(line_of("", 0), 1);
        assert_eq!(line_of("x = [", 5), 1);
    }

    #[test]
    fn syntax_keys_from_text() {
        let text =
            "a = 1\n[server]\nx = 1\n[[route]]\n[[route]]\n[route.limits]\ny = 2\nnot a key\n";
        let cases = [
            (1, "a"),
            (2, "server"),
            (3, "server.x"),
            (4, "route[0]"),
            (5, "route[1]"),
            (6, "route[1].limits"),
            (7, "route[1].limits.y"),
            (8, "route[1].limits"),
        ];
        for (line, want) in cases {
            assert_eq!(syntax_key(text, line), want, "line {line}");
        }
    }
}
