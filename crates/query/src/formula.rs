//! Formulas over trend series: `A / B * 100`, `(A - B) / A`.
//!
//! Written by hand: the language is four operators, parentheses, numbers and series
//! names, and it must say exactly where a formula is wrong and give "no value" (not
//! infinity) when a bucket divides by zero. An expression crate would bring a whole
//! scripting language for that.

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Formula {
    Num(f64),
    Series(String),
    Neg(Box<Formula>),
    Bin(Box<Formula>, char, Box<Formula>),
}

impl Formula {
    /// Parses `text`; names must be among `series`.
    pub(crate) fn parse(text: &str, series: &[&str]) -> Result<Self, String> {
        let tokens = tokenize(text)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            series,
        };
        let f = p.expr()?;
        if let Some(t) = p.tokens.get(p.pos) {
            return Err(format!(
                "unexpected {} at character {}",
                t.0.show(),
                t.1 + 1
            ));
        }
        Ok(f)
    }

    /// Evaluates with `value(name)`; `None` where a division by zero happens.
    pub(crate) fn eval(&self, value: &dyn Fn(&str) -> f64) -> Option<f64> {
        Some(match self {
            Formula::Num(n) => *n,
            Formula::Series(s) => value(s),
            Formula::Neg(f) => -f.eval(value)?,
            Formula::Bin(a, op, b) => {
                let (a, b) = (a.eval(value)?, b.eval(value)?);
                match op {
                    '+' => a + b,
                    '-' => a - b,
                    '*' => a * b,
                    _ if b == 0.0 => return None,
                    _ => a / b,
                }
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Name(String),
    Op(char),
    Open,
    Close,
}

impl Tok {
    fn show(&self) -> String {
        match self {
            Tok::Num(n) => format!("number {n}"),
            Tok::Name(n) => format!("name {n:?}"),
            Tok::Op(c) => format!("{c:?}"),
            Tok::Open => "'('".into(),
            Tok::Close => "')'".into(),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<(Tok, usize)>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        match c {
            ' ' | '\t' => {
                i += 1;
                continue;
            }
            '+' | '-' | '*' | '/' => {
                out.push((Tok::Op(c), start));
                i += 1;
            }
            '(' => {
                out.push((Tok::Open, start));
                i += 1;
            }
            ')' => {
                out.push((Tok::Close, start));
                i += 1;
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let s: String = chars[start..i].iter().collect();
                let n = s
                    .parse()
                    .map_err(|_| format!("{s:?} at character {} is not a number", start + 1))?;
                out.push((Tok::Num(n), start));
            }
            c if c.is_ascii_alphabetic() => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push((Tok::Name(chars[start..i].iter().collect()), start));
            }
            other => {
                return Err(format!(
                    "unexpected {other:?} at character {}; a formula uses series names, \
                     numbers, + - * / and parentheses",
                    start + 1
                ))
            }
        }
    }
    if out.is_empty() {
        return Err("is empty".into());
    }
    if out.len() > 200 {
        return Err("is too long (at most 200 tokens)".into());
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: Vec<(Tok, usize)>,
    pos: usize,
    series: &'a [&'a str],
}

impl Parser<'_> {
    fn expr(&mut self) -> Result<Formula, String> {
        let mut left = self.term()?;
        while let Some((Tok::Op(op @ ('+' | '-')), _)) = self.tokens.get(self.pos).cloned() {
            self.pos += 1;
            left = Formula::Bin(Box::new(left), op, Box::new(self.term()?));
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Formula, String> {
        let mut left = self.factor()?;
        while let Some((Tok::Op(op @ ('*' | '/')), _)) = self.tokens.get(self.pos).cloned() {
            self.pos += 1;
            left = Formula::Bin(Box::new(left), op, Box::new(self.factor()?));
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<Formula, String> {
        let Some((tok, at)) = self.tokens.get(self.pos).cloned() else {
            return Err("ends too early: a number, series or '(' is missing".into());
        };
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(Formula::Num(n)),
            Tok::Name(n) if self.series.contains(&n.as_str()) => Ok(Formula::Series(n)),
            Tok::Name(n) => Err(format!(
                "{n:?} at character {} is not a series; the series are {}",
                at + 1,
                self.series.join(", ")
            )),
            Tok::Op('-') => Ok(Formula::Neg(Box::new(self.factor()?))),
            Tok::Open => {
                let inner = self.expr()?;
                match self.tokens.get(self.pos) {
                    Some((Tok::Close, _)) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    _ => Err(format!("the '(' at character {} is never closed", at + 1)),
                }
            }
            other => Err(format!(
                "unexpected {} at character {}",
                other.show(),
                at + 1
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(text: &str, a: f64, b: f64) -> Option<f64> {
        let f = Formula::parse(text, &["A", "B"]).unwrap();
        f.eval(&|n| if n == "A" { a } else { b })
    }

    #[test]
    fn precedence_parentheses_and_unary_minus() {
        assert_eq!(eval("A / B * 100", 1.0, 4.0), Some(25.0));
        assert_eq!(eval("A + B * 2", 1.0, 4.0), Some(9.0));
        assert_eq!(eval("(A + B) * 2", 1.0, 4.0), Some(10.0));
        assert_eq!(eval("-A + B", 1.0, 4.0), Some(3.0));
        assert_eq!(eval("A - B - 1", 10.0, 4.0), Some(5.0));
    }

    #[test]
    fn division_by_zero_is_no_value() {
        assert_eq!(eval("A / B", 1.0, 0.0), None);
        assert_eq!(eval("A / (B - B)", 1.0, 3.0), None);
    }

    #[test]
    fn errors_say_where() {
        let err = Formula::parse("A / C", &["A", "B"]).unwrap_err();
        assert!(err.contains("\"C\" at character 5"), "{err}");
        let err = Formula::parse("(A + B", &["A", "B"]).unwrap_err();
        assert!(err.contains("never closed"), "{err}");
        let err = Formula::parse("A +", &["A", "B"]).unwrap_err();
        assert!(err.contains("ends too early"), "{err}");
        let err = Formula::parse("A ; B", &["A", "B"]).unwrap_err();
        assert!(err.contains("character 3"), "{err}");
        assert!(Formula::parse("", &["A"]).is_err());
    }
}
