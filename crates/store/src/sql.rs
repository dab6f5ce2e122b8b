//! The one place that turns a value into SQL text.
//!
//! Values from users go through bound parameters wherever the database allows it. Where
//! it does not (a JSON path inside a function call that must be constant for the planner),
//! text goes through [`quote_str`], which the tests below attack with injections.

/// `s` as a single-quoted SQL string literal: quotes doubled, NUL refused.
pub fn quote_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            // A NUL would end the string early in C APIs; it never belongs in a name.
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A JSON path literal (`'$."name"'`) selecting the top-level key `key`.
pub fn json_key_path(key: &str) -> String {
    let mut path = String::with_capacity(key.len() + 5);
    path.push_str("$.\"");
    for c in key.chars() {
        match c {
            '"' | '\\' => {
                path.push('\\');
                path.push(c);
            }
            c => path.push(c),
        }
    }
    path.push('"');
    quote_str(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_doubled_so_injection_stays_inside_the_literal() {
        assert_eq!(quote_str("plan"), "'plan'");
        assert_eq!(
            quote_str("x'; DROP TABLE events; --"),
            "'x''; DROP TABLE events; --'"
        );
        assert_eq!(quote_str("''"), "''''''");
        assert_eq!(quote_str("a\0b"), "'a\u{FFFD}b'");
    }

    #[test]
    fn json_paths_escape_quotes_and_backslashes() {
        assert_eq!(json_key_path("plan"), r#"'$."plan"'"#);
        assert_eq!(json_key_path(r#"a"b\c"#), r#"'$."a\"b\\c"'"#);
        assert_eq!(json_key_path("x'y"), r#"'$."x''y"'"#);
    }
}
