//! The one error type of config loading: `FILE:LINE: KEY: problem`, on one
//! line, for every stage (read, TOML syntax, types, unknown keys, semantic
//! checks, and certificate loading done later through [`super::Located`]).
//!
//! Not owned here: deciding the key and the line. The parser hands in a byte
//! offset (toml's `span()` or a `toml::Spanned`), and [`line_of`] turns it
//! into a 1-based line using the source text.
//!
//! Invariant: `problem` never contains a newline, so a log line or the output
//! of `sluice check` is exactly one line and never echoes the file back (the
//! file may hold paths that should not end up in logs).

use std::fmt;
use std::path::PathBuf;

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
}
