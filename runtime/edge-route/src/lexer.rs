//! The tokenizer: Azure's `GrammarLexer.g4` rules with ANTLR's selection rule (the longest
//! match wins; on a tie the rule listed first wins).
//!
//! Consequences users meet (all as in Azure): operator characters `+ - * % ! | . ' $ &` are
//! legal inside names, so `a+b`, `a!` and `'x'||'y'` are single names and operators need
//! spaces around them; `-5` directly attached is a negative literal; keywords `AND OR NOT SELECT
//! FROM WHERE INTO` are case-insensitive while `true false null undefined` are lower-case only.

/// Token kinds, in the lexer's rule order (which decides ties).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    LBrace,
    RBrace,
    Select,
    From,
    Where,
    Into,
    Str,
    UnterminatedStr,
    Integer,
    Hex,
    Real,
    True,
    False,
    Null,
    Undefined,
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    And,
    Or,
    Not,
    Eq,
    Ne1,
    Ne2,
    Le,
    Ge,
    Gt,
    Lt,
    Concat,
    Coalesce,
    SysProp,
    Id,
    QueryPath,
    Ws,
    Comment,
    Unknown,
    Eof,
}

/// A token: kind, text and where it starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Token<'s> {
    pub kind: Kind,
    pub text: &'s str,
    /// 1-based character column.
    pub column: usize,
}

impl Token<'_> {
    /// How an error message names this token.
    pub fn describe(&self) -> String {
        match self.kind {
            Kind::Eof => "end of input".to_owned(),
            Kind::Ws => "whitespace".to_owned(),
            Kind::UnterminatedStr => format!("unterminated string `{}`", self.text),
            _ => format!("`{}`", self.text),
        }
    }
}

/// Characters that end a name (`ID`); `QUERY_PATH` and `$` properties also allow `[` `]`.
fn is_id_char(c: char) -> bool {
    is_query_path_char(c) && c != '[' && c != ']'
}

fn is_query_path_char(c: char) -> bool {
    !matches!(
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
            | '?'
            | '='
            | '{'
            | '}'
            | ' '
            | '\t'
            | '\n'
            | '\r'
    )
}

/// An on-demand lexer over the route text.
pub(crate) struct Lexer<'s> {
    src: &'s str,
    pos: usize,
    column: usize,
}

impl<'s> Lexer<'s> {
    pub fn new(src: &'s str) -> Self {
        Self {
            src,
            pos: 0,
            column: 1,
        }
    }

    fn advance(&mut self, len: usize) -> Token<'s> {
        let text = &self.src[self.pos..self.pos + len];
        let column = self.column;
        self.pos += len;
        self.column += text.chars().count();
        Token {
            kind: Kind::Eof,
            text,
            column,
        }
    }

    /// The next significant token (whitespace and comments skipped).
    pub fn next_token(&mut self) -> Token<'s> {
        loop {
            let rest = &self.src[self.pos..];
            if rest.is_empty() {
                return Token {
                    kind: Kind::Eof,
                    text: "",
                    column: self.column,
                };
            }
            let (kind, len) = longest_match(rest);
            let mut tok = self.advance(len);
            tok.kind = kind;
            if !matches!(kind, Kind::Ws | Kind::Comment) {
                return tok;
            }
        }
    }

    /// The source path after `FROM`: `('/' item)+` with no whitespace inside, where an item is
    /// any run of name characters (so `*`, `m*`, `123` all work). `/*` here is a wildcard,
    /// never the start of a comment. Returns the path text, or the offending token and whether
    /// it follows a `/`.
    pub fn source_path(&mut self) -> Result<&'s str, (Token<'s>, bool)> {
        // Only whitespace may precede the path: `FROM /**/a` is the path `/**/a`.
        let ws = self
            .rest()
            .bytes()
            .take_while(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
            .count();
        self.advance(ws);
        let start = self.pos;
        let mut end = self.pos;
        loop {
            let rest = &self.src[end..];
            if !rest.starts_with('/') {
                break;
            }
            let item: usize = rest[1..]
                .chars()
                .take_while(|c| is_id_char(*c))
                .map(char::len_utf8)
                .sum();
            if item == 0 {
                // A `/` without a segment: report what follows it.
                self.advance(end - start + 1);
                return Err((self.peek_raw(), true));
            }
            end += 1 + item;
        }
        if end == start {
            return Err((self.peek_raw(), false));
        }
        Ok(self.advance(end - start).text)
    }

    /// The text not yet consumed.
    pub fn rest(&self) -> &'s str {
        &self.src[self.pos..]
    }

    /// The next token without skipping trivia or consuming it (for error messages).
    fn peek_raw(&self) -> Token<'s> {
        let rest = &self.src[self.pos..];
        if rest.is_empty() {
            return Token {
                kind: Kind::Eof,
                text: "",
                column: self.column,
            };
        }
        let (kind, len) = longest_match(rest);
        Token {
            kind,
            text: &rest[..len],
            column: self.column,
        }
    }
}

/// Picks the token at the start of `s` (non-empty): the longest candidate, earliest rule on
/// ties. Returns the kind and its length in bytes.
fn longest_match(s: &str) -> (Kind, usize) {
    let mut best = (Kind::Unknown, s.chars().next().map_or(0, char::len_utf8));
    let mut consider = |kind: Kind, len: usize| {
        // Candidates are offered in rule order, so only a strictly longer match replaces an
        // earlier one. `Unknown` (the last rule) is the fallback.
        if len > 0 && (len > best.1 || (len == best.1 && best.0 == Kind::Unknown)) {
            best = (kind, len);
        }
    };
    let b = s.as_bytes();
    consider(Kind::LBrace, usize::from(b[0] == b'{'));
    consider(Kind::RBrace, usize::from(b[0] == b'}'));
    consider(Kind::Select, keyword(s, "select"));
    consider(Kind::From, keyword(s, "from"));
    consider(Kind::Where, keyword(s, "where"));
    consider(Kind::Into, keyword(s, "into"));
    let (string, unterminated) = string_lengths(s);
    consider(Kind::Str, string);
    consider(Kind::UnterminatedStr, unterminated);
    consider(Kind::Integer, integer_len(b));
    consider(Kind::Hex, hex_len(b));
    consider(Kind::Real, real_len(b));
    consider(Kind::True, exact(s, "true"));
    consider(Kind::False, exact(s, "false"));
    consider(Kind::Null, exact(s, "null"));
    consider(Kind::Undefined, exact(s, "undefined"));
    for (kind, sym) in [
        (Kind::LParen, "("),
        (Kind::RParen, ")"),
        (Kind::Comma, ","),
        (Kind::Plus, "+"),
        (Kind::Minus, "-"),
        (Kind::Star, "*"),
        (Kind::Slash, "/"),
        (Kind::Percent, "%"),
    ] {
        consider(kind, exact(s, sym));
    }
    consider(Kind::And, keyword(s, "and"));
    consider(Kind::Or, keyword(s, "or"));
    consider(Kind::Not, keyword(s, "not"));
    for (kind, sym) in [
        (Kind::Eq, "="),
        (Kind::Ne1, "!="),
        (Kind::Ne2, "<>"),
        (Kind::Le, "<="),
        (Kind::Ge, ">="),
        (Kind::Gt, ">"),
        (Kind::Lt, "<"),
        (Kind::Concat, "||"),
        (Kind::Coalesce, "??"),
    ] {
        consider(kind, exact(s, sym));
    }
    if b[0] == b'$' {
        let n = run_len(&s[1..], is_query_path_char);
        if n > 0 {
            consider(Kind::SysProp, 1 + n);
        }
    }
    consider(Kind::Id, run_len(s, is_id_char));
    consider(Kind::QueryPath, run_len(s, is_query_path_char));
    consider(
        Kind::Ws,
        b.iter()
            .take_while(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
            .count(),
    );
    if let Some(rest) = s.strip_prefix("/*")
        && let Some(end) = rest.find("*/")
    {
        consider(Kind::Comment, end + 4);
    }
    best
}

fn run_len(s: &str, class: fn(char) -> bool) -> usize {
    s.chars()
        .take_while(|c| class(*c))
        .map(char::len_utf8)
        .sum()
}

fn exact(s: &str, word: &str) -> usize {
    if s.starts_with(word) { word.len() } else { 0 }
}

fn keyword(s: &str, word: &str) -> usize {
    match s.get(..word.len()) {
        Some(head) if head.eq_ignore_ascii_case(word) => word.len(),
        _ => 0,
    }
}

fn digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

/// `'-'? [0-9]+`
fn integer_len(b: &[u8]) -> usize {
    let sign = usize::from(b.first() == Some(&b'-'));
    let n = digits(&b[sign..]);
    if n == 0 { 0 } else { sign + n }
}

/// `'0' [Xx] HEX_DIGIT+`
fn hex_len(b: &[u8]) -> usize {
    if b.len() > 2 && b[0] == b'0' && (b[1] == b'x' || b[1] == b'X') {
        let n = b[2..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if n > 0 {
            return 2 + n;
        }
    }
    0
}

/// `[Ee] [+-]? [0-9]+`
fn exp_len(b: &[u8]) -> usize {
    if matches!(b.first(), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(1), Some(b'+' | b'-')));
        let n = digits(&b[1 + sign..]);
        if n > 0 {
            return 1 + sign + n;
        }
    }
    0
}

/// `'-'? [0-9]* '.' [0-9]+ EXP?  |  '-'? [0-9]* EXP`
fn real_len(b: &[u8]) -> usize {
    let sign = usize::from(b.first() == Some(&b'-'));
    let int = sign + digits(&b[sign..]);
    let mut best = 0;
    if b.get(int) == Some(&b'.') {
        let frac = digits(&b[int + 1..]);
        if frac > 0 {
            let end = int + 1 + frac;
            best = end + exp_len(&b[end..]);
        }
    }
    let e = exp_len(&b[int..]);
    if e > 0 {
        best = best.max(int + e);
    }
    best
}

/// Lengths of the `STRING` and `UNTERMINATED_STRING` candidates at the start of `s`.
fn string_lengths(s: &str) -> (usize, usize) {
    let Some(quote) = s.chars().next().filter(|c| *c == '"' || *c == '\'') else {
        return (0, 0);
    };
    let b = s.as_bytes();
    let mut i = 1;
    loop {
        let Some(c) = s[i..].chars().next() else {
            return (0, i);
        };
        if c == quote {
            return (i + 1, i);
        }
        if c == '\\' {
            let esc = escape_len(&b[i + 1..]);
            if esc == 0 {
                return (0, i);
            }
            i += 1 + esc;
        } else {
            i += c.len_utf8();
        }
    }
}

/// Length of an escape body after `\`: `["'\\]` or `u` + 4 hex digits; 0 when invalid.
pub(crate) fn escape_len(b: &[u8]) -> usize {
    match b.first() {
        Some(b'"' | b'\'' | b'\\') => 1,
        Some(b'u') if b.len() >= 5 && b[1..5].iter().all(u8::is_ascii_hexdigit) => 5,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<(Kind, String)> {
        let mut l = Lexer::new(s);
        let mut out = Vec::new();
        loop {
            let t = l.next_token();
            if t.kind == Kind::Eof {
                return out;
            }
            out.push((t.kind, t.text.to_owned()));
        }
    }

    #[test]
    fn longest_match_and_rule_order() {
        use Kind::*;
        let k = |s: &str| kinds(s).into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(k("a+b"), [Id]);
        assert_eq!(k("a + b"), [Id, Plus, Id]);
        assert_eq!(k("-5"), [Integer]);
        assert_eq!(k("- 5"), [Minus, Integer]);
        assert_eq!(k("1.5e3 .5 e5 0x1F 1."), [Real, Real, Real, Hex, Id]);
        assert_eq!(k("true TRUE and AND andy"), [True, Id, And, And, Id]);
        assert_eq!(k("$a $body.a[0] $ a[0]"), [SysProp, SysProp, Id, QueryPath]);
        assert_eq!(k("'x'||'y' 'x' || 'y'"), [Id, Str, Concat, Str]);
        assert_eq!(k("a!=b a != b"), [Id, Eq, Id, Id, Ne1, Id]);
        assert_eq!(k("a /* c */ b"), [Id, Id]);
        assert_eq!(k("'abc"), [UnterminatedStr]);
        assert_eq!(k("\"a\\\"b\" \"\\u00e9\""), [Str, Str]);
        assert_eq!(k("@"), [Unknown]);
        assert_eq!(k("{$a}"), [LBrace, SysProp, RBrace]);
    }

    #[test]
    fn source_path_treats_slash_star_as_wildcard() {
        let mut l = Lexer::new("FROM /messages/* WHERE a /* c */ INTO");
        assert_eq!(l.next_token().kind, Kind::From);
        assert_eq!(l.source_path().unwrap(), "/messages/*");
        assert_eq!(l.next_token().kind, Kind::Where);
        assert_eq!(l.next_token().text, "a");
        assert_eq!(l.next_token().kind, Kind::Into);
    }
}
