//! A small, allocation-free JSON reader for `$body` queries.
//!
//! [`validate`] checks a whole document once (RFC 8259 syntax, nesting up to
//! [`MAX_NESTING`]); [`lookup`] then walks the validated text along a [`Step`] path and returns
//! the value there, borrowing strings from the document (a string that contains escapes is
//! decoded into an owned `String`, the only allocation). Duplicate keys: the last one wins.

use std::borrow::Cow;

/// Deepest object/array nesting [`validate`] accepts; deeper documents count as invalid.
pub(crate) const MAX_NESTING: usize = 128;

/// One step of a body path: `.name` or `[index]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Key(Box<str>),
    Index(usize),
}

/// What a path leads to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Found<'a> {
    Missing,
    Container,
    Null,
    Bool(bool),
    Number(f64),
    Str(Cow<'a, str>),
}

/// Parses a body query path (the text after `$body.`): dotted names, each optionally followed
/// by one `[index]` (Azure's `JsonPath.g4` subset).
pub(crate) fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    if path.is_empty() {
        return Err("the path after `$body.` is empty".to_owned());
    }
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (name, index) = match part.find('[') {
            Some(open) => {
                let Some(inner) = part[open + 1..].strip_suffix(']') else {
                    return Err(format!("`{part}`: expected `[<index>]` at the end"));
                };
                let index = if !inner.is_empty() && inner.bytes().all(|c| c.is_ascii_digit()) {
                    inner.parse::<usize>().ok()
                } else {
                    None
                };
                let Some(index) = index else {
                    return Err(format!(
                        "`{part}`: the index must be a non-negative integer"
                    ));
                };
                (&part[..open], Some(index))
            }
            None => (part, None),
        };
        if name.is_empty() {
            return Err(format!("`{path}` has an empty name"));
        }
        if name.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!("`{name}`: a name cannot be all digits"));
        }
        if let Some(c) = name.chars().find(|c| {
            matches!(
                c,
                '(' | ')'
                    | '<'
                    | '>'
                    | '@'
                    | ','
                    | ';'
                    | ':'
                    | '\\'
                    | '"'
                    | '/'
                    | '['
                    | ']'
                    | '?'
                    | '='
                    | '{'
                    | '}'
            ) || c.is_whitespace()
        }) {
            return Err(format!("`{name}`: `{c}` is not allowed in a name"));
        }
        steps.push(Step::Key(name.into()));
        if let Some(i) = index {
            steps.push(Step::Index(i));
        }
    }
    Ok(steps)
}

/// Whether `doc` is one complete JSON value (with optional surrounding whitespace).
pub(crate) fn validate(doc: &str) -> bool {
    let b = doc.as_bytes();
    let i = ws(b, 0);
    match value_end(b, i, 0) {
        Some(end) => ws(b, end) == b.len(),
        None => false,
    }
}

/// The value at `path` in a document that passed [`validate`].
pub(crate) fn lookup<'a>(doc: &'a str, path: &[Step]) -> Found<'a> {
    let b = doc.as_bytes();
    let mut i = ws(b, 0);
    for step in path {
        let next = match (step, b.get(i)) {
            (Step::Key(k), Some(b'{')) => member(doc, i, k),
            (Step::Index(n), Some(b'[')) => element(b, i, *n),
            _ => None,
        };
        match next {
            Some(n) => i = n,
            None => return Found::Missing,
        }
    }
    scalar(doc, i)
}

fn scalar(doc: &str, i: usize) -> Found<'_> {
    let b = doc.as_bytes();
    match b.get(i) {
        Some(b'{' | b'[') => Found::Container,
        Some(b'"') => match string_end(b, i) {
            Some(end) => Found::Str(decode(&doc[i + 1..end - 1])),
            None => Found::Missing,
        },
        Some(b't') => Found::Bool(true),
        Some(b'f') => Found::Bool(false),
        Some(b'n') => Found::Null,
        Some(_) => match number_end(b, i).and_then(|end| doc[i..end].parse::<f64>().ok()) {
            Some(n) => Found::Number(n),
            None => Found::Missing,
        },
        None => Found::Missing,
    }
}

/// In the object starting at `i`, the start of the last value whose key is `key`.
fn member(doc: &str, i: usize, key: &str) -> Option<usize> {
    let b = doc.as_bytes();
    let mut i = ws(b, i + 1);
    let mut found = None;
    if b.get(i) == Some(&b'}') {
        return None;
    }
    loop {
        let key_end = string_end(b, i)?;
        let raw = &doc[i + 1..key_end - 1];
        i = ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = ws(b, i + 1);
        if key_matches(raw, key) {
            found = Some(i);
        }
        i = ws(b, value_end(b, i, 0)?);
        match b.get(i) {
            Some(b',') => i = ws(b, i + 1),
            Some(b'}') => return found,
            _ => return None,
        }
    }
}

/// In the array starting at `i`, the start of element `n`.
fn element(b: &[u8], i: usize, n: usize) -> Option<usize> {
    let mut i = ws(b, i + 1);
    if b.get(i) == Some(&b']') {
        return None;
    }
    let mut k = 0;
    loop {
        if k == n {
            return Some(i);
        }
        i = ws(b, value_end(b, i, 0)?);
        match b.get(i) {
            Some(b',') => i = ws(b, i + 1),
            _ => return None,
        }
        k += 1;
    }
}

fn key_matches(raw: &str, key: &str) -> bool {
    if raw.contains('\\') {
        decode(raw) == key
    } else {
        raw == key
    }
}

fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end (exclusive) of the value starting at `i`, validating it.
fn value_end(b: &[u8], i: usize, depth: usize) -> Option<usize> {
    match *b.get(i)? {
        b'{' => {
            if depth >= MAX_NESTING {
                return None;
            }
            let mut i = ws(b, i + 1);
            if b.get(i) == Some(&b'}') {
                return Some(i + 1);
            }
            loop {
                if b.get(i) != Some(&b'"') {
                    return None;
                }
                i = ws(b, string_end(b, i)?);
                if b.get(i) != Some(&b':') {
                    return None;
                }
                i = ws(b, value_end(b, ws(b, i + 1), depth + 1)?);
                match b.get(i)? {
                    b',' => i = ws(b, i + 1),
                    b'}' => return Some(i + 1),
                    _ => return None,
                }
            }
        }
        b'[' => {
            if depth >= MAX_NESTING {
                return None;
            }
            let mut i = ws(b, i + 1);
            if b.get(i) == Some(&b']') {
                return Some(i + 1);
            }
            loop {
                i = ws(b, value_end(b, i, depth + 1)?);
                match b.get(i)? {
                    b',' => i = ws(b, i + 1),
                    b']' => return Some(i + 1),
                    _ => return None,
                }
            }
        }
        b'"' => string_end(b, i),
        b't' => word(b, i, b"true"),
        b'f' => word(b, i, b"false"),
        b'n' => word(b, i, b"null"),
        _ => number_end(b, i),
    }
}

fn word(b: &[u8], i: usize, w: &[u8]) -> Option<usize> {
    b[i..].starts_with(w).then_some(i + w.len())
}

/// The end (exclusive, after the closing quote) of the string starting at `i`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut i = i + 1;
    loop {
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' if b.len() >= i + 6 && b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit) => {
                    i += 6;
                }
                _ => return None,
            },
            c if c < 0x20 => return None,
            _ => i += 1,
        }
    }
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
fn number_end(b: &[u8], i: usize) -> Option<usize> {
    let digits = |j: usize| {
        b[j.min(b.len())..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let mut j = i;
    if b.get(j) == Some(&b'-') {
        j += 1;
    }
    match b.get(j)? {
        b'0' => j += 1,
        b'1'..=b'9' => j += digits(j),
        _ => return None,
    }
    if b.get(j) == Some(&b'.') {
        let n = digits(j + 1);
        if n == 0 {
            return None;
        }
        j += 1 + n;
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        j += 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let n = digits(j);
        if n == 0 {
            return None;
        }
        j += n;
    }
    Some(j)
}

/// Decodes the inside of a validated JSON string; borrows when there is no escape.
fn decode(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    let mut pending_high: Option<u32> = None;
    while let Some(c) = chars.next() {
        if c != '\\' {
            if pending_high.take().is_some() {
                out.push('\u{FFFD}');
            }
            out.push(c);
            continue;
        }
        let e = chars.next().unwrap_or('\\');
        if e == 'u' {
            let hex: String = chars.by_ref().take(4).collect();
            let unit = u32::from_str_radix(&hex, 16).unwrap_or(0xFFFD);
            if let Some(high) = pending_high.take() {
                if (0xDC00..0xE000).contains(&unit) {
                    let c = 0x10000 + ((high - 0xD800) << 10) + (unit - 0xDC00);
                    out.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
                    continue;
                }
                out.push('\u{FFFD}');
            }
            if (0xD800..0xDC00).contains(&unit) {
                pending_high = Some(unit);
            } else {
                out.push(char::from_u32(unit).unwrap_or('\u{FFFD}'));
            }
            continue;
        }
        if pending_high.take().is_some() {
            out.push('\u{FFFD}');
        }
        out.push(match e {
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            other => other,
        });
    }
    if pending_high.is_some() {
        out.push('\u{FFFD}');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<Step> {
        parse_path(p).unwrap()
    }

    #[test]
    fn validates_like_a_json_parser() {
        for ok in [
            "{}",
            "[]",
            " {\"a\": [1, -2.5e3, true, false, null, \"x\\u00e9\\n\"]} ",
            "0",
            "\"s\"",
        ] {
            assert!(validate(ok), "{ok}");
        }
        for bad in [
            "",
            "{",
            "{\"a\" 1}",
            "[1,]",
            "01",
            "1.",
            "-",
            "tru",
            "\"\u{1}\"",
            "{} x",
            "\"\\x\"",
            "{'a':1}",
        ] {
            assert!(!validate(bad), "{bad}");
        }
        let deep = "[".repeat(MAX_NESTING + 1) + &"]".repeat(MAX_NESTING + 1);
        assert!(!validate(&deep));
        let ok_deep = "[".repeat(MAX_NESTING) + &"]".repeat(MAX_NESTING);
        assert!(validate(&ok_deep));
    }

    #[test]
    fn lookup_walks_paths() {
        let doc = r#"{"a": {"b": [10, {"c": "x\"y"}, "plain"]}, "n": null, "t": true, "a2": 1, "d": 1, "d": 2, "k\u0065y": 5}"#;
        assert!(validate(doc));
        assert_eq!(lookup(doc, &path("a.b[0]")), Found::Number(10.0));
        assert_eq!(lookup(doc, &path("a.b[1].c")), Found::Str("x\"y".into()));
        assert_eq!(
            lookup(doc, &path("a.b[2]")),
            Found::Str(Cow::Borrowed("plain"))
        );
        assert_eq!(lookup(doc, &path("a.b[3]")), Found::Missing);
        assert_eq!(lookup(doc, &path("a.b")), Found::Container);
        assert_eq!(lookup(doc, &path("a")), Found::Container);
        assert_eq!(lookup(doc, &path("n")), Found::Null);
        assert_eq!(lookup(doc, &path("t")), Found::Bool(true));
        assert_eq!(lookup(doc, &path("d")), Found::Number(2.0));
        assert_eq!(lookup(doc, &path("key")), Found::Number(5.0));
        assert_eq!(lookup(doc, &path("t.x")), Found::Missing);
        assert_eq!(lookup(doc, &path("zz")), Found::Missing);
        assert_eq!(lookup("[1]", &path("a")), Found::Missing);
    }

    #[test]
    fn path_syntax() {
        assert_eq!(
            path("a.b[2].c"),
            vec![
                Step::Key("a".into()),
                Step::Key("b".into()),
                Step::Index(2),
                Step::Key("c".into())
            ]
        );
        for bad in ["", "a..b", "a[x]", "a[1", "a[1][2]", "0", "[1]", "a[-1]"] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
    }
}
