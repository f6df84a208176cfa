//! JSON pointers (RFC 6901) and where a pointer's value sits in the manifest text.
//!
//! `serde_json::Value` forgets positions, so problems are found on the value and then located
//! by walking the text again to the pointer. The walker only runs on text that `serde_json`
//! already accepted, so it trusts the syntax and stays small.

use std::collections::HashSet;

/// Escapes one reference token: `~` becomes `~0`, `/` becomes `~1`.
pub(crate) fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// `pointer` extended by one (unescaped) token.
pub(crate) fn child(pointer: &str, token: &str) -> String {
    format!("{pointer}/{}", escape(token))
}

/// The unescaped reference tokens of a pointer; `None` when it does not start with `/`.
pub(crate) fn tokens(pointer: &str) -> Option<Vec<String>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    let rest = pointer.strip_prefix('/')?;
    // `~1` first, then `~0`, so that `~01` decodes to `~1` and not to `/`.
    Some(
        rest.split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Line and column of the value `pointer` names, or `None` when the text has no such value.
/// With duplicate keys the last one is found, as it is the one `serde_json` keeps.
pub(crate) fn locate(text: &str, pointer: &str) -> Option<(usize, usize)> {
    locate_offset(text, pointer).map(|o| line_col(text, o))
}

fn locate_offset(text: &str, pointer: &str) -> Option<usize> {
    let mut s = Scanner { text, i: 0 };
    s.ws();
    for token in tokens(pointer)? {
        match s.peek()? {
            b'{' => {
                s.i += 1;
                let mut found = None;
                loop {
                    s.ws();
                    match s.peek()? {
                        b'}' => break,
                        b',' => s.i += 1,
                        b'"' => {
                            let key = s.key()?;
                            if key == token {
                                found = Some(s.i);
                            }
                            s.skip_value()?;
                        }
                        _ => return None,
                    }
                }
                s.i = found?;
            }
            b'[' => {
                let index: usize = token.parse().ok()?;
                s.i += 1;
                let mut n = 0;
                loop {
                    s.ws();
                    match s.peek()? {
                        b']' => return None,
                        b',' => s.i += 1,
                        _ if n == index => break,
                        _ => {
                            s.skip_value()?;
                            n += 1;
                        }
                    }
                }
            }
            _ => return None,
        }
    }
    Some(s.i)
}

/// Pointers of every object member whose key already occurred earlier in the same object
/// (in document order, each repeat once).
pub(crate) fn duplicate_keys(text: &str) -> Vec<String> {
    let mut s = Scanner { text, i: 0 };
    let mut out = Vec::new();
    s.ws();
    // The text was accepted by serde_json, so a failed walk only loses duplicates.
    let _ = walk_duplicates(&mut s, "", &mut out);
    out
}

fn walk_duplicates(s: &mut Scanner<'_>, pointer: &str, out: &mut Vec<String>) -> Option<()> {
    match s.peek()? {
        b'{' => {
            s.i += 1;
            let mut seen = HashSet::new();
            loop {
                s.ws();
                match s.peek()? {
                    b'}' => {
                        s.i += 1;
                        return Some(());
                    }
                    b',' => s.i += 1,
                    b'"' => {
                        let key = s.key()?;
                        let p = child(pointer, &key);
                        if !seen.insert(key) && !out.contains(&p) {
                            out.push(p.clone());
                        }
                        walk_duplicates(s, &p, out)?;
                    }
                    _ => return None,
                }
            }
        }
        b'[' => {
            s.i += 1;
            let mut n = 0usize;
            loop {
                s.ws();
                match s.peek()? {
                    b']' => {
                        s.i += 1;
                        return Some(());
                    }
                    b',' => s.i += 1,
                    _ => {
                        walk_duplicates(s, &child(pointer, &n.to_string()), out)?;
                        n += 1;
                    }
                }
            }
        }
        _ => s.skip_value(),
    }
}

/// A cursor over JSON text already known to be well-formed.
struct Scanner<'a> {
    text: &'a str,
    /// Byte offset; always on an ASCII byte between tokens.
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// Skips a string starting at `"`, returning it with its quotes.
    fn string(&mut self) -> Option<&'a str> {
        let start = self.i;
        self.i += 1;
        loop {
            match self.peek()? {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return self.text.get(start..self.i);
                }
                _ => self.i += 1,
            }
        }
    }

    /// Reads `"key" :` and leaves the cursor on the value; returns the decoded key.
    fn key(&mut self) -> Option<String> {
        let raw = self.string()?;
        let key: String = serde_json::from_str(raw).ok()?;
        self.ws();
        if self.peek()? != b':' {
            return None;
        }
        self.i += 1;
        self.ws();
        Some(key)
    }

    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                        }
                        b'{' | b'[' => {
                            depth += 1;
                            self.i += 1;
                        }
                        b'}' | b']' => {
                            depth = depth.checked_sub(1)?;
                            self.i += 1;
                            if depth == 0 {
                                return Some(());
                            }
                        }
                        _ => self.i += 1,
                    }
                }
            }
            _ => {
                while let Some(c) = self.peek() {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
                Some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_follows_rfc_6901() {
        assert_eq!(escape("a/b~c"), "a~1b~0c");
        assert_eq!(child("/x", "properties.desired"), "/x/properties.desired");
        assert_eq!(child("", "a/b"), "/a~1b");
        assert_eq!(tokens("/a~1b/~01/m~0n").unwrap(), vec!["a/b", "~1", "m~n"]);
        assert_eq!(tokens("").unwrap(), Vec::<String>::new());
        assert_eq!(tokens("/").unwrap(), vec![""]);
        assert!(tokens("a").is_none());
        for t in ["plain", "a/b", "~", "~1", "/~0/", ""] {
            assert_eq!(tokens(&child("", t)).unwrap(), vec![t.to_owned()]);
        }
    }

    #[test]
    fn line_col_counts_characters_from_one() {
        let t = "ab\ncdé\nf";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 1), (1, 2));
        assert_eq!(line_col(t, 3), (2, 1));
        // `f` is after a two-byte `é`: byte 9, column 1 of line 3.
        assert_eq!(line_col(t, t.find('f').unwrap()), (3, 1));
        assert_eq!(line_col("é:x", "é:".len()), (1, 3));
    }

    const DOC: &str = r#"{
  "a": {"b": [10, {"c": "x"}, [1, 2]]},
  "we/ird~key": true,
  "esc\"aped": null,
  "unicode\u00e9": 1,
  "str": "}{][,\"",
  "n": -1.5e3 ,
  "after": "y"
}"#;

    #[test]
    fn locates_values_by_pointer() {
        assert_eq!(locate(DOC, ""), Some((1, 1)));
        assert_eq!(locate(DOC, "/a"), Some((2, 8)));
        assert_eq!(locate(DOC, "/a/b"), Some((2, 14)));
        assert_eq!(locate(DOC, "/a/b/0"), Some((2, 15)));
        assert_eq!(locate(DOC, "/a/b/1"), Some((2, 19)));
        assert_eq!(locate(DOC, "/a/b/1/c"), Some((2, 25)));
        assert_eq!(locate(DOC, "/a/b/2/1"), Some((2, 35)));
        assert_eq!(locate(DOC, "/we~1ird~0key"), Some((3, 17)));
        assert_eq!(locate(DOC, "/esc\"aped"), Some((4, 16)));
        assert_eq!(locate(DOC, "/unicodeé"), Some((5, 20)));
        assert_eq!(locate(DOC, "/n"), Some((7, 8)));
        assert_eq!(locate(DOC, "/after"), Some((8, 12)));
    }

    #[test]
    fn missing_values_are_not_located() {
        assert_eq!(locate(DOC, "/nope"), None);
        assert_eq!(locate(DOC, "/a/b/3"), None);
        assert_eq!(locate(DOC, "/a/b/x"), None);
        assert_eq!(locate(DOC, "/after/deeper"), None);
        assert_eq!(locate(DOC, "no-slash"), None);
    }

    #[test]
    fn duplicate_keys_locate_the_last_and_are_listed() {
        let t = "{\"m\": {\"x\": 1, \"y\": 2, \"x\": 3, \"x\": 4}, \"l\": [{\"k\": 1, \"k\": 2}]}";
        assert_eq!(locate(t, "/m/x"), Some((1, 37)));
        assert_eq!(duplicate_keys(t), vec!["/m/x", "/l/0/k"]);
        assert!(duplicate_keys(DOC).is_empty());
    }
}
