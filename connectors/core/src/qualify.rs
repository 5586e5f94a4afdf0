//! Lead qualification: the named values a target computes from each lead (its `[qualify]`
//! table), and the small condition language they and `[filter] when` are written in.
//!
//! It owns parsing conditions (once, when the configuration is checked) into a syntax tree,
//! checking every name they use, ordering the named values by what they use, and evaluating
//! them for one lead. It is pure: no I/O, no logging, no clock. Errors name the rule's key
//! and the field or name at fault, never a lead's values. `docs/qualification.md` is the
//! operator's guide; this is the reference.
//!
//! # The condition language
//!
//! ```text
//! condition  = or
//! or         = and { "or" and }
//! and        = unary { "and" unary }
//! unary      = "not" unary | atom
//! atom       = "(" condition ")"
//!            | "has" FIELD                       -- the lead has a non-blank value
//!            | "free_mail" | "test" | "dnc"      -- e-mail domain in the shipped list; a
//!                                                --  marketplace test lead; a DNC lead
//!            | "true" | "false"
//!            | NAME                              -- a true/false [qualify] value
//!            | SUBJECT ("=" | "!=") VALUE
//!            | SUBJECT ["not"] "in" "[" VALUE { "," VALUE } [","] "]"
//!            | NAME ("<" | "<=" | ">" | ">=") INTEGER
//! VALUE      = a bare word (letters, digits, `_ . - @ + *` ...) or a quoted 'text' / "text"
//! ```
//!
//! `SUBJECT` is `action` (INS, PLT, DNC, Create, StartTestDrive, any case), `origin`
//! (AzureMarketplace, AzurePortal, AppSource or SPZA, TestDrive), `offer` (the offer id
//! `publisher.offer` or its title), `email_domain` (the part after `@`), any lead field of
//! the mapping (`country`, `offer_id`, `lead_source`, `title`, `extra.<Column>`, ...) or an
//! earlier named value (`rating = hot`, `score >= 60`). Comparisons of text ignore case and
//! surrounding blanks; a lead without the value is not `=` to anything and is `!=` to
//! everything. Keywords are lower case; `and` binds tighter than `or`.
//!
//! # Named values
//!
//! `[qualify.<name>]` is one of three forms:
//!
//! - `when = "<condition>"`: true or false;
//! - `cases = [{ when = "<condition>", value = "hot" }, ...]` with an optional `default`: the
//!   value of the first case whose condition holds (strings, integers or booleans, one type
//!   per name), else `default`, else no value;
//! - `base = 10` and `add = [{ when = "<condition>", points = 30 }, ...]`: `base` plus the
//!   points of every condition that holds, clamped to 0–100.
//!
//! A value may use other values; they are computed in dependency order (a value after every
//! value it uses, names in alphabetical order where nothing else decides), so the order of the
//! TOML tables does not matter, and a value that uses itself, directly or through others, is
//! refused. Names are lower case (`[a-z][a-z0-9_]*`) and may not be a lead field's name or a
//! keyword, so `{rating}` in a template and `"rating"` in `[mapping.fields]` are never
//! ambiguous.

use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::sync::{Arc, LazyLock};

use crate::lead::{Action, Lead, Origin};
use crate::lead_field::LeadField;

// ---------------------------------------------------------------------------------------
// Free-mail domains
// ---------------------------------------------------------------------------------------

const FREE_MAIL_LIST: &str = include_str!("free_mail_domains.txt");

struct FreeMail {
    exact: HashSet<&'static str>,
    /// `gmx.*` is kept as `gmx.`.
    prefixes: Vec<&'static str>,
}

static FREE_MAIL: LazyLock<FreeMail> = LazyLock::new(|| {
    let mut exact = HashSet::new();
    let mut prefixes = Vec::new();
    for line in FREE_MAIL_LIST.lines() {
        let d = line.split('#').next().unwrap_or("").trim();
        if d.is_empty() {
            continue;
        }
        match d.strip_suffix('*') {
            Some(prefix) => prefixes.push(prefix),
            None => {
                exact.insert(d);
            }
        }
    }
    FreeMail { exact, prefixes }
});

/// Whether `domain` (any case) is in the shipped list of free and consumer e-mail domains.
pub fn is_free_mail_domain(domain: &str) -> bool {
    let d = domain.trim().trim_end_matches('.').to_lowercase();
    let list = &*FREE_MAIL;
    list.exact.contains(d.as_str())
        || list
            .prefixes
            .iter()
            .any(|p| d.len() > p.len() && d.starts_with(p))
}

/// The number of entries of the shipped free-mail list (for documentation and tests).
pub fn free_mail_domain_count() -> usize {
    FREE_MAIL.exact.len() + FREE_MAIL.prefixes.len()
}

/// The lead's e-mail domain, lower-cased: what follows the last `@`.
fn email_domain(lead: &Lead) -> Option<String> {
    let email = lead.email_normalised()?;
    let (_, domain) = email.rsplit_once('@')?;
    let d = domain.trim().trim_end_matches('.');
    (!d.is_empty()).then(|| d.to_string())
}

// ---------------------------------------------------------------------------------------
// The syntax tree
// ---------------------------------------------------------------------------------------

/// A parsed condition. Build one with [`Qualification::condition`] (or through
/// [`Qualification::from_raw`]); evaluate it with [`Condition::holds`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Const(bool),
    /// `has <field>`: the lead has a non-blank value.
    Has(LeadField),
    /// `free_mail`: the e-mail's domain is in the shipped list.
    FreeMail,
    /// `test`: a marketplace test lead (`MSFT_TEST…`).
    Test,
    /// `dnc`: a do-not-contact lead.
    Dnc,
    /// A true/false named value, by name.
    Named(String),
    Not(Box<Condition>),
    All(Vec<Condition>),
    Any(Vec<Condition>),
    /// `=`, `in` (or, `negated`, `!=` and `not in`): the subject equals one of the values.
    Is {
        test: Match,
        negated: bool,
    },
    /// `<`, `<=`, `>`, `>=` on a numeric named value.
    Compare {
        name: String,
        op: Ordering,
        value: i64,
    },
}

/// What an `=`/`in` comparison compares, with the values it accepts (already normalised).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Action(Vec<Action>),
    Origin(Vec<Origin>),
    /// Lower-cased; the offer id (`publisher.offer`) or the offer title.
    Offer(Vec<String>),
    /// Lower-cased domains.
    EmailDomain(Vec<String>),
    /// Any other lead field, compared as lower-cased trimmed text.
    Field(LeadField, Vec<String>),
    /// A named value and the values it is compared with.
    Named(String, Vec<Value>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Ordering {
    fn holds(self, a: i64, b: i64) -> bool {
        match self {
            Ordering::Lt => a < b,
            Ordering::Le => a <= b,
            Ordering::Gt => a > b,
            Ordering::Ge => a >= b,
        }
    }
}

impl Condition {
    /// Whether the condition holds for `lead`, given the named values computed so far.
    pub fn holds(&self, lead: &Lead, values: &Qualified) -> bool {
        match self {
            Condition::Const(b) => *b,
            Condition::Has(field) => match field.value(lead, "") {
                Some(Value::String(s)) => !s.trim().is_empty(),
                Some(Value::Null) | None => false,
                Some(_) => true,
            },
            Condition::FreeMail => email_domain(lead).is_some_and(|d| is_free_mail_domain(&d)),
            Condition::Test => lead.is_test,
            Condition::Dnc => lead.is_do_not_contact(),
            Condition::Named(name) => values.get(name) == Some(&Value::Bool(true)),
            Condition::Not(c) => !c.holds(lead, values),
            Condition::All(cs) => cs.iter().all(|c| c.holds(lead, values)),
            Condition::Any(cs) => cs.iter().any(|c| c.holds(lead, values)),
            Condition::Is { test, negated } => test.matches(lead, values) != *negated,
            Condition::Compare { name, op, value } => values
                .get(name)
                .and_then(Value::as_i64)
                .is_some_and(|v| op.holds(v, *value)),
        }
    }

    /// The named values this condition uses.
    fn references(&self, out: &mut BTreeSet<String>) {
        match self {
            Condition::Named(n)
            | Condition::Compare { name: n, .. }
            | Condition::Is {
                test: Match::Named(n, _),
                ..
            } => {
                out.insert(n.clone());
            }
            Condition::Not(c) => c.references(out),
            Condition::All(cs) | Condition::Any(cs) => cs.iter().for_each(|c| c.references(out)),
            _ => {}
        }
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_lowercase(),
        other => other.to_string(),
    }
}

impl Match {
    fn matches(&self, lead: &Lead, values: &Qualified) -> bool {
        let among = |v: Option<String>, list: &[String]| v.is_some_and(|v| list.contains(&v));
        match self {
            Match::Action(list) => lead
                .action
                .as_ref()
                .is_some_and(|a| list.iter().any(|x| x.code().eq_ignore_ascii_case(a.code()))),
            Match::Origin(list) => lead.origin().is_some_and(|o| {
                list.iter()
                    .any(|x| x.as_str().eq_ignore_ascii_case(o.as_str()))
            }),
            Match::Offer(list) => {
                let norm = |v: &Option<String>| v.as_deref().map(|s| s.trim().to_lowercase());
                among(norm(&lead.offer.raw), list) || among(norm(&lead.offer.display_title), list)
            }
            Match::EmailDomain(list) => among(email_domain(lead), list),
            Match::Field(field, list) => among(field.value(lead, "").map(|v| text_of(&v)), list),
            Match::Named(name, list) => values
                .get(name)
                .is_some_and(|v| list.iter().any(|x| same_value(v, x))),
        }
    }
}

/// Named values compare text without case, numbers and booleans exactly.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a.trim().to_lowercase() == b.trim().to_lowercase(),
        (Value::Number(a), Value::Number(b)) => a.as_i64() == b.as_i64(),
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Open,
    Close,
    OpenList,
    CloseList,
    Comma,
    Eq,
    Ne,
    Ord(Ordering),
    Word(String),
    Quoted(String),
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Open => "`(`".into(),
            Tok::Close => "`)`".into(),
            Tok::OpenList => "`[`".into(),
            Tok::CloseList => "`]`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Eq => "`=`".into(),
            Tok::Ne => "`!=`".into(),
            Tok::Ord(o) => format!(
                "`{}`",
                match o {
                    Ordering::Lt => "<",
                    Ordering::Le => "<=",
                    Ordering::Gt => ">",
                    Ordering::Ge => ">=",
                }
            ),
            Tok::Word(w) => format!("`{w}`"),
            Tok::Quoted(q) => format!("'{q}'"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// 1-based column (in characters) where the token starts.
    col: usize,
}

const PUNCTUATION: &[char] = &['(', ')', '[', ']', ',', '=', '!', '<', '>', '"', '\''];

fn lex(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let single = match c {
            '(' => Some(Tok::Open),
            ')' => Some(Tok::Close),
            '[' => Some(Tok::OpenList),
            ']' => Some(Tok::CloseList),
            ',' => Some(Tok::Comma),
            _ => None,
        };
        if let Some(tok) = single {
            out.push(Token { tok, col });
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).copied();
        let (tok, len) = match (c, next) {
            ('=', Some('=')) => (Tok::Eq, 2),
            ('=', _) => (Tok::Eq, 1),
            ('!', Some('=')) => (Tok::Ne, 2),
            ('!', _) => {
                return Err(format!(
                    "unexpected `!` at column {col}; write `not` or `!=`"
                ))
            }
            ('<', Some('=')) => (Tok::Ord(Ordering::Le), 2),
            ('<', _) => (Tok::Ord(Ordering::Lt), 1),
            ('>', Some('=')) => (Tok::Ord(Ordering::Ge), 2),
            ('>', _) => (Tok::Ord(Ordering::Gt), 1),
            ('"' | '\'', _) => {
                let close = chars[i + 1..]
                    .iter()
                    .position(|x| *x == c)
                    .ok_or_else(|| format!("the quote {c} at column {col} is never closed"))?;
                let s: String = chars[i + 1..i + 1 + close].iter().collect();
                (Tok::Quoted(s), close + 2)
            }
            _ => {
                let len = chars[i..]
                    .iter()
                    .position(|x| x.is_whitespace() || PUNCTUATION.contains(x))
                    .unwrap_or(chars.len() - i);
                (Tok::Word(chars[i..i + len].iter().collect()), len)
            }
        };
        out.push(Token { tok, col });
        i += len;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------

/// Words with a meaning of their own in conditions: not usable as names.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "in",
    "has",
    "true",
    "false",
    "free_mail",
    "test",
    "dnc",
    "action",
    "origin",
    "offer",
    "email_domain",
];

/// Lead fields a condition cannot read: they are not about the lead.
const NOT_IN_CONDITIONS: &[&str] = &["idempotency_key"];

/// The lead fields a condition may name (without `extra.<Column>`).
fn condition_fields() -> impl Iterator<Item = &'static str> {
    LeadField::NAMES
        .iter()
        .copied()
        .filter(|n| !NOT_IN_CONDITIONS.contains(n) && !n.contains('<'))
}

/// ` (did you mean `email`?)` when one known word is within two edits of `word`.
fn did_you_mean<'a>(word: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|k| (edit_distance(word, k), k))
        .filter(|(d, k)| *d <= 2 && *d < k.chars().count())
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

/// Levenshtein distance, with a swap of two neighbours counted as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// What a named value holds, for checking the conditions that use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    /// `when`: true or false.
    Flag,
    /// `add`: an integer from 0 to 100.
    Score,
    /// `cases`: one of these values (those of its cases and its default).
    Cases(Vec<Value>),
    /// Its own table has a mistake (already reported): accept any use.
    Unchecked,
}

fn describe_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

struct Parser<'a> {
    toks: Vec<Token>,
    pos: usize,
    names: &'a BTreeMap<String, ValueKind>,
}

type PResult<T> = Result<T, String>;

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x == w)
    }
    fn next(&mut self) -> Option<Token> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    /// "at column 12" or "at the end".
    fn here(&self) -> String {
        match self.toks.get(self.pos) {
            Some(t) => format!("{} at column {}", t.tok.describe(), t.col),
            None => "the end".to_string(),
        }
    }
    fn expected(&self, what: &str) -> String {
        format!("expected {what}, found {}", self.here())
    }

    fn or(&mut self) -> PResult<Condition> {
        let mut items = vec![self.and()?];
        while self.peek_word("or") {
            self.pos += 1;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Condition::Any(items)
        })
    }

    fn and(&mut self) -> PResult<Condition> {
        let mut items = vec![self.unary()?];
        while self.peek_word("and") {
            self.pos += 1;
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Condition::All(items)
        })
    }

    fn unary(&mut self) -> PResult<Condition> {
        if self.peek_word("not") {
            self.pos += 1;
            return Ok(Condition::Not(Box::new(self.unary()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> PResult<Condition> {
        let word = match self.peek() {
            Some(Tok::Open) => {
                self.pos += 1;
                let c = self.or()?;
                if self.peek() != Some(&Tok::Close) {
                    return Err(self.expected("`)`"));
                }
                self.pos += 1;
                return Ok(c);
            }
            Some(Tok::Word(w)) if !matches!(w.as_str(), "and" | "or" | "in") => w.clone(),
            _ => return Err(self.expected("a condition")),
        };
        self.pos += 1;
        if self.at_comparison() {
            return self.comparison(&word);
        }
        match word.as_str() {
            "has" => self.has(),
            "true" => Ok(Condition::Const(true)),
            "false" => Ok(Condition::Const(false)),
            "free_mail" => Ok(Condition::FreeMail),
            "test" => Ok(Condition::Test),
            "dnc" => Ok(Condition::Dnc),
            w => match self.names.get(w) {
                Some(ValueKind::Flag | ValueKind::Unchecked) => Ok(Condition::Named(w.into())),
                Some(ValueKind::Cases(values)) if values.iter().all(Value::is_boolean) => {
                    Ok(Condition::Named(w.into()))
                }
                Some(_) => Err(format!(
                    "`{w}` is not true/false: compare it, as in `{w} = <value>`"
                )),
                None if self.subject_exists(w) => Err(format!(
                    "`{w}` needs a comparison, as in `{w} = <value>` or `{w} in [a, b]` \
                     (or `has {w}`)"
                )),
                None => Err(self.unknown(w)),
            },
        }
    }

    fn at_comparison(&self) -> bool {
        match self.peek() {
            Some(Tok::Eq | Tok::Ne | Tok::Ord(_)) => true,
            Some(Tok::Word(w)) if w == "in" => true,
            Some(Tok::Word(w)) if w == "not" => matches!(
                self.toks.get(self.pos + 1).map(|t| &t.tok),
                Some(Tok::Word(x)) if x == "in"
            ),
            _ => false,
        }
    }

    fn subject_exists(&self, w: &str) -> bool {
        matches!(w, "action" | "origin" | "offer" | "email_domain")
            || (LeadField::parse(w).is_some() && !NOT_IN_CONDITIONS.contains(&w))
    }

    fn unknown(&self, w: &str) -> String {
        let names: Vec<&str> = self.names.keys().map(String::as_str).collect();
        let mut known: Vec<&str> = condition_fields().collect();
        known.extend(["email_domain", "free_mail", "test", "dnc"]);
        known.extend(names.iter().copied());
        format!(
            "unknown field `{w}`{}; expected a lead field ({}, email_domain), \
             free_mail, test, dnc{}",
            did_you_mean(w, known.into_iter()),
            LeadField::NAMES
                .iter()
                .filter(|n| !NOT_IN_CONDITIONS.contains(n))
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
            if names.is_empty() {
                " (no [qualify] value is declared)".to_string()
            } else {
                format!(" or a [qualify] value ({})", names.join(", "))
            }
        )
    }

    fn has(&mut self) -> PResult<Condition> {
        match self.next().map(|t| t.tok) {
            Some(Tok::Word(f)) => match LeadField::parse(&f) {
                Some(field) if !NOT_IN_CONDITIONS.contains(&f.as_str()) => {
                    Ok(Condition::Has(field))
                }
                _ => Err(format!(
                    "unknown field `{f}` after `has`{}; expected a lead field ({})",
                    did_you_mean(&f, condition_fields()),
                    LeadField::NAMES
                        .iter()
                        .filter(|n| !NOT_IN_CONDITIONS.contains(n))
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            },
            _ => {
                self.pos -= 1;
                Err(self.expected("a lead field after `has`"))
            }
        }
    }

    /// One value after an operator.
    fn value(&mut self, after: &str) -> PResult<String> {
        match self.peek().cloned() {
            Some(Tok::Word(w)) | Some(Tok::Quoted(w)) => {
                self.pos += 1;
                Ok(w)
            }
            _ => Err(self.expected(&format!("a value after {after}"))),
        }
    }

    fn list(&mut self) -> PResult<Vec<String>> {
        if self.peek() != Some(&Tok::OpenList) {
            return Err(self.expected("a list such as `[a, b]` after `in`"));
        }
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            if self.peek() == Some(&Tok::CloseList) && !out.is_empty() {
                self.pos += 1;
                return Ok(out);
            }
            out.push(self.value("`[` or `,`")?);
            match self.peek() {
                Some(Tok::Comma) => self.pos += 1,
                Some(Tok::CloseList) => {}
                _ => return Err(self.expected("`,` or `]`")),
            }
        }
    }

    fn comparison(&mut self, subject: &str) -> PResult<Condition> {
        let op = self.next().map(|t| t.tok);
        let (values, negated, order) = match op {
            Some(Tok::Eq) => (vec![self.value("`=`")?], false, None),
            Some(Tok::Ne) => (vec![self.value("`!=`")?], true, None),
            Some(Tok::Ord(o)) => (vec![self.value("a comparison")?], false, Some(o)),
            Some(Tok::Word(w)) if w == "in" => (self.list()?, false, None),
            _ => {
                // `not in`
                self.pos += 1;
                (self.list()?, true, None)
            }
        };
        if let Some(op) = order {
            return self.ordering(subject, op, &values[0]);
        }
        let non_empty = |v: &str, what: &str| -> PResult<String> {
            let t = v.trim().to_lowercase();
            if t.is_empty() {
                Err(format!(
                    "`{subject}`: expected {what}, found an empty value"
                ))
            } else {
                Ok(t)
            }
        };
        let test = match subject {
            "action" => Match::Action(
                values
                    .iter()
                    .map(|v| match Action::parse(v) {
                        Action::Other(_) => Err(format!(
                            "`action`: expected an action code, one of INS, PLT, DNC, Create, \
                             StartTestDrive (any case), found {v:?}"
                        )),
                        a => Ok(a),
                    })
                    .collect::<PResult<_>>()?,
            ),
            "origin" => Match::Origin(
                values
                    .iter()
                    .map(|v| match Origin::parse(v) {
                        Origin::Other(_) => Err(format!(
                            "`origin`: expected an origin, one of AzureMarketplace, \
                             AzurePortal, AppSource, TestDrive (any case), found {v:?}"
                        )),
                        o => Ok(o),
                    })
                    .collect::<PResult<_>>()?,
            ),
            "offer" => Match::Offer(
                values
                    .iter()
                    .map(|v| non_empty(v, "an offer id (`publisher.offer`) or title"))
                    .collect::<PResult<_>>()?,
            ),
            "email_domain" => Match::EmailDomain(
                values
                    .iter()
                    .map(|v| {
                        non_empty(v, "a domain such as contoso.com")
                            .map(|d| d.trim_start_matches('@').to_string())
                    })
                    .collect::<PResult<_>>()?,
            ),
            name if self.names.contains_key(name) => {
                let kind = &self.names[name];
                Match::Named(
                    name.to_string(),
                    values
                        .iter()
                        .map(|v| named_literal(name, kind, v))
                        .collect::<PResult<_>>()?,
                )
            }
            f if self.subject_exists(f) => {
                let field = LeadField::parse(f).ok_or_else(|| self.unknown(f))?;
                Match::Field(
                    field,
                    values
                        .iter()
                        .map(|v| non_empty(v, "a value"))
                        .collect::<PResult<_>>()?,
                )
            }
            other => return Err(self.unknown(other)),
        };
        Ok(Condition::Is { test, negated })
    }

    fn ordering(&self, subject: &str, op: Ordering, value: &str) -> PResult<Condition> {
        let numeric = match self.names.get(subject) {
            Some(ValueKind::Score | ValueKind::Unchecked) => true,
            Some(ValueKind::Cases(vs)) => vs.iter().all(|v| v.as_i64().is_some()),
            Some(ValueKind::Flag) => false,
            None if self.subject_exists(subject) => {
                return Err(format!(
                    "`{subject}` is text: `<`, `<=`, `>` and `>=` compare numeric [qualify] \
                     values (scores) only; use `=` or `in`"
                ))
            }
            None => return Err(self.unknown(subject)),
        };
        if !numeric {
            return Err(format!(
                "`{subject}` is not a number: `<`, `<=`, `>` and `>=` compare scores and \
                 integer values only"
            ));
        }
        let n = value.trim().parse::<i64>().map_err(|_| {
            format!("`{subject}` is compared with numbers: expected an integer, found {value:?}")
        })?;
        Ok(Condition::Compare {
            name: subject.to_string(),
            op,
            value: n,
        })
    }
}

/// The value a named value is compared with, checked against what the name can hold.
fn named_literal(name: &str, kind: &ValueKind, v: &str) -> PResult<Value> {
    let t = v.trim();
    match kind {
        ValueKind::Flag => match t {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!(
                "`{name}` is true or false, found {v:?} (write `{name}` or `not {name}`)"
            )),
        },
        ValueKind::Score => t.parse::<i64>().map(Value::from).map_err(|_| {
            format!("`{name}` is a score from 0 to 100: expected an integer, found {v:?}")
        }),
        ValueKind::Cases(values) => {
            let wanted = Value::String(t.to_string());
            values
                .iter()
                .find(|x| match x {
                    Value::String(_) => same_value(x, &wanted),
                    Value::Number(n) => t.parse::<i64>().ok() == n.as_i64(),
                    Value::Bool(b) => t.parse::<bool>().ok() == Some(*b),
                    _ => false,
                })
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "`{name}` is never {v:?}; its values are {}",
                        values
                            .iter()
                            .map(describe_value)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
        }
        ValueKind::Unchecked => Ok(Value::String(t.to_string())),
    }
}

/// Parse one condition against the named values in scope.
fn parse_condition(text: &str, names: &BTreeMap<String, ValueKind>) -> PResult<Condition> {
    let toks = lex(text)?;
    if toks.is_empty() {
        return Err("expected a condition, found an empty string".into());
    }
    let mut p = Parser {
        toks,
        pos: 0,
        names,
    };
    let c = p.or()?;
    if p.pos < p.toks.len() {
        return Err(p.expected("`and`, `or` or the end of the condition"));
    }
    Ok(c)
}

// ---------------------------------------------------------------------------------------
// [qualify]
// ---------------------------------------------------------------------------------------

/// One `[qualify.<name>]` table as written in TOML; exactly one form: `when`, `cases` (with
/// `default`) or `add` (with `base`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQualify {
    pub when: Option<String>,
    pub cases: Option<Vec<RawCase>>,
    pub default: Option<Value>,
    pub base: Option<i64>,
    pub add: Option<Vec<RawPoints>>,
}

/// `{ when = "...", value = "hot" }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCase {
    pub when: String,
    pub value: Value,
}

/// `{ when = "...", points = 30 }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoints {
    pub when: String,
    pub points: i64,
}

/// One step of a key below `qualify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Key(String),
    Index(usize),
}

/// A mistake in `[qualify]` (or a condition elsewhere): the key below the table it is in
/// (`rating.cases[1].when`) and what is wrong. It names fields and values of the
/// configuration, never a lead's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `qualify.{}`: {message}", render_key(path))]
pub struct QualifyError {
    pub path: Vec<KeyPart>,
    pub message: String,
}

/// `rating.cases[1].when`.
pub fn render_key(path: &[KeyPart]) -> String {
    let mut out = String::new();
    for p in path {
        match p {
            KeyPart::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            KeyPart::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// How one named value is computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `when`: true or false.
    Flag(Condition),
    /// `cases`: the first value whose condition holds, else `default`.
    Cases {
        cases: Vec<(Condition, Value)>,
        default: Option<Value>,
    },
    /// `base` plus the points of every condition that holds, clamped to 0–100.
    Score {
        base: i64,
        add: Vec<(Condition, i64)>,
    },
}

/// One named value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedRule {
    pub name: String,
    pub rule: Rule,
}

/// A target's checked `[qualify]` table: its named values in evaluation order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Qualification {
    rules: Vec<NamedRule>,
    kinds: BTreeMap<String, ValueKind>,
}

/// The named values of one lead, in evaluation order. They are computed from the
/// configuration's own constants (and counts), so they are not personal data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Qualified {
    values: Vec<(String, Option<Value>)>,
}

impl Qualified {
    /// The value of `name`; `None` when it has none (a `cases` without a match or default).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_ref())
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&Value>)> {
        self.values.iter().map(|(n, v)| (n.as_str(), v.as_ref()))
    }
}

/// Whether `name` may name a `[qualify]` value.
pub fn valid_name(name: &str) -> Result<(), String> {
    let well_formed = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !well_formed {
        return Err(format!(
            "expected a name of lower-case letters, digits and `_` starting with a letter, \
             found {name:?}"
        ));
    }
    if KEYWORDS.contains(&name) || LeadField::parse(name).is_some() {
        return Err(format!(
            "`{name}` is a lead field or a keyword of conditions; choose another name"
        ));
    }
    Ok(())
}

fn key(name: &str, rest: &[KeyPart]) -> Vec<KeyPart> {
    let mut p = vec![KeyPart::Key(name.to_string())];
    p.extend(rest.iter().cloned());
    p
}

fn k(s: &str) -> KeyPart {
    KeyPart::Key(s.to_string())
}

/// A `cases` value's type, for the one-type rule.
fn value_type(v: &Value) -> Option<&'static str> {
    match v {
        Value::String(_) => Some("a string"),
        Value::Number(n) if n.as_i64().is_some() => Some("an integer"),
        Value::Bool(_) => Some("a boolean"),
        _ => None,
    }
}

impl Qualification {
    /// Check a `[qualify]` table (name → its table), reporting every mistake found with its
    /// key, and order the values by what they use.
    pub fn from_raw(
        table: &BTreeMap<String, RawQualify>,
    ) -> Result<Qualification, Vec<QualifyError>> {
        let mut errors = Vec::new();
        let mut err = |path: Vec<KeyPart>, message: String| {
            errors.push(QualifyError { path, message });
        };

        // 1. Each value's form and kind, so that conditions can use any of them.
        let mut kinds = BTreeMap::new();
        for (name, raw) in table {
            if let Err(m) = valid_name(name) {
                err(key(name, &[]), m);
                kinds.insert(name.clone(), ValueKind::Unchecked);
                continue;
            }
            let kind = match Self::kind_of(name, raw) {
                Ok(kind) => kind,
                Err(e) => {
                    err(e.path, e.message);
                    ValueKind::Unchecked
                }
            };
            kinds.insert(name.clone(), kind);
        }

        // 2. Every condition, against every name.
        let mut rules = Vec::new();
        let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, raw) in table {
            let Some(kind) = kinds.get(name) else {
                continue;
            };
            let mut cond = |text: &str, path: Vec<KeyPart>| -> Option<Condition> {
                match parse_condition(text, &kinds) {
                    Ok(c) => {
                        c.references(uses.entry(name.clone()).or_default());
                        Some(c)
                    }
                    Err(m) => {
                        err(key(name, &path), m);
                        None
                    }
                }
            };
            let rule = match (kind, raw) {
                (ValueKind::Unchecked, _) => None,
                (ValueKind::Flag, RawQualify { when: Some(w), .. }) => {
                    cond(w, vec![k("when")]).map(Rule::Flag)
                }
                (
                    ValueKind::Cases(_),
                    RawQualify {
                        cases: Some(cases),
                        default,
                        ..
                    },
                ) => {
                    let checked: Vec<Option<(Condition, Value)>> = cases
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            cond(&c.when, vec![k("cases"), KeyPart::Index(i), k("when")])
                                .map(|cd| (cd, c.value.clone()))
                        })
                        .collect();
                    checked
                        .into_iter()
                        .collect::<Option<Vec<_>>>()
                        .map(|cases| Rule::Cases {
                            cases,
                            default: default.clone(),
                        })
                }
                (ValueKind::Score, RawQualify { base, add, .. }) => {
                    let checked: Vec<Option<(Condition, i64)>> = add
                        .iter()
                        .flatten()
                        .enumerate()
                        .map(|(i, a)| {
                            cond(&a.when, vec![k("add"), KeyPart::Index(i), k("when")])
                                .map(|cd| (cd, a.points))
                        })
                        .collect();
                    checked
                        .into_iter()
                        .collect::<Option<Vec<_>>>()
                        .map(|add| Rule::Score {
                            base: base.unwrap_or(0),
                            add,
                        })
                }
                _ => None,
            };
            if let Some(rule) = rule {
                rules.push(NamedRule {
                    name: name.clone(),
                    rule,
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        // 3. Dependency order.
        let order = match dependency_order(&uses, kinds.keys()) {
            Ok(order) => order,
            Err(e) => return Err(vec![e]),
        };
        rules.sort_by_key(|r| order.iter().position(|n| *n == r.name));
        Ok(Qualification { rules, kinds })
    }

    /// The kind a table declares, or the mistake in its form.
    fn kind_of(name: &str, raw: &RawQualify) -> Result<ValueKind, QualifyError> {
        let e = |rest: &[KeyPart], message: &str| QualifyError {
            path: key(name, rest),
            message: message.to_string(),
        };
        let forms = [
            raw.when.is_some(),
            raw.cases.is_some() || raw.default.is_some(),
            raw.add.is_some() || raw.base.is_some(),
        ];
        const FORMS: &str = "give exactly one of `when` (true/false), `cases` with an optional \
                             `default` (the first value that matches) or `add` with an \
                             optional `base` (a score from 0 to 100)";
        if forms.iter().filter(|f| **f).count() != 1 {
            return Err(e(&[], FORMS));
        }
        if raw.when.is_some() {
            return Ok(ValueKind::Flag);
        }
        if raw.add.is_some() || raw.base.is_some() {
            if let Some(b) = raw.base {
                if !(0..=100).contains(&b) {
                    return Err(e(
                        &[k("base")],
                        &format!("expected an integer from 0 to 100, found {b}"),
                    ));
                }
            }
            for (i, a) in raw.add.iter().flatten().enumerate() {
                if !(-100..=100).contains(&a.points) {
                    return Err(e(
                        &[k("add"), KeyPart::Index(i), k("points")],
                        &format!("expected an integer from -100 to 100, found {}", a.points),
                    ));
                }
            }
            return Ok(ValueKind::Score);
        }
        let Some(cases) = &raw.cases else {
            return Err(e(&[k("default")], "only with `cases`"));
        };
        if cases.is_empty() {
            return Err(e(
                &[k("cases")],
                "expected at least one `{ when = \"...\", value = ... }`",
            ));
        }
        let mut values: Vec<Value> = Vec::new();
        let mut first_type: Option<&'static str> = None;
        let all = cases
            .iter()
            .enumerate()
            .map(|(i, c)| (vec![k("cases"), KeyPart::Index(i), k("value")], &c.value))
            .chain(raw.default.iter().map(|d| (vec![k("default")], d)));
        for (path, v) in all {
            let Some(t) = value_type(v) else {
                return Err(e(&path, "expected a string, an integer or a boolean"));
            };
            match first_type {
                None => first_type = Some(t),
                Some(f) if f != t => {
                    return Err(e(
                        &path,
                        &format!(
                            "expected {f} like the first value of `{name}`, found {t} \
                             (the values of one name are all of one type)"
                        ),
                    ))
                }
                Some(_) => {}
            }
            if !values.iter().any(|x| same_value(x, v)) {
                values.push(v.clone());
            }
        }
        Ok(ValueKind::Cases(values))
    }

    /// No named values.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The names, in evaluation order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// The rules, in evaluation order.
    pub fn rules(&self) -> &[NamedRule] {
        &self.rules
    }

    /// Parse a condition that may use this table's values (`[filter] when`).
    pub fn condition(&self, text: &str) -> Result<Condition, String> {
        parse_condition(text, &self.kinds)
    }

    /// Compute every named value for one lead, in order.
    pub fn evaluate(&self, lead: &Lead) -> Qualified {
        let mut out = Qualified {
            values: Vec::with_capacity(self.rules.len()),
        };
        for r in &self.rules {
            let v = match &r.rule {
                Rule::Flag(c) => Some(Value::Bool(c.holds(lead, &out))),
                Rule::Cases { cases, default } => cases
                    .iter()
                    .find(|(c, _)| c.holds(lead, &out))
                    .map(|(_, v)| v.clone())
                    .or_else(|| default.clone()),
                Rule::Score { base, add } => {
                    let total = add
                        .iter()
                        .filter(|(c, _)| c.holds(lead, &out))
                        .fold(*base, |sum, (_, p)| sum.saturating_add(*p));
                    Some(Value::from(total.clamp(0, 100)))
                }
            };
            out.values.push((r.name.clone(), v));
        }
        out
    }
}

/// Values after the values they use; among values free to go, alphabetical order. A value
/// that uses itself, directly or through others, is an error naming the chain.
fn dependency_order<'a>(
    uses: &BTreeMap<String, BTreeSet<String>>,
    names: impl Iterator<Item = &'a String>,
) -> Result<Vec<String>, QualifyError> {
    let mut pending: BTreeMap<&str, BTreeSet<&str>> = names
        .map(|n| {
            let deps = uses
                .get(n)
                .map(|d| d.iter().map(String::as_str).collect())
                .unwrap_or_default();
            (n.as_str(), deps)
        })
        .collect();
    let mut order = Vec::new();
    while !pending.is_empty() {
        let ready = pending
            .iter()
            .find(|(_, deps)| deps.is_empty())
            .map(|(n, _)| *n);
        match ready {
            Some(n) => {
                pending.remove(n);
                for deps in pending.values_mut() {
                    deps.remove(n);
                }
                order.push(n.to_string());
            }
            None => {
                // Every pending value waits for another: follow the first one's chain
                // until it comes back on itself.
                let start = *pending.keys().next().unwrap_or(&"");
                let mut chain = vec![start];
                let mut at = start;
                loop {
                    let next = pending
                        .get(at)
                        .and_then(|d| d.iter().next())
                        .copied()
                        .unwrap_or(start);
                    if let Some(i) = chain.iter().position(|c| *c == next) {
                        chain.drain(..i);
                        chain.push(next);
                        break;
                    }
                    chain.push(next);
                    at = next;
                }
                let first = chain[0];
                let message = if chain.len() == 2 {
                    format!("`{first}` uses itself")
                } else {
                    format!(
                        "`{first}` uses itself through {}; a value may use only values that \
                         do not use it",
                        chain
                            .iter()
                            .map(|c| format!("`{c}`"))
                            .collect::<Vec<_>>()
                            .join(" → ")
                    )
                };
                return Err(QualifyError {
                    path: vec![KeyPart::Key(first.to_string())],
                    message,
                });
            }
        }
    }
    Ok(order)
}

/// A condition with the qualification it may use: what `[filter] when` checks per lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Predicate {
    qualification: Arc<Qualification>,
    condition: Condition,
}

impl Predicate {
    /// Parse `text` against `qualification`'s values.
    pub fn parse(qualification: Arc<Qualification>, text: &str) -> Result<Predicate, String> {
        let condition = qualification.condition(text)?;
        Ok(Predicate {
            qualification,
            condition,
        })
    }

    /// Whether the condition holds for `lead`.
    pub fn holds(&self, lead: &Lead) -> bool {
        let values = self.qualification.evaluate(lead);
        self.condition.holds(lead, &values)
    }
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Key(k) => f.write_str(k),
            KeyPart::Index(i) => write!(f, "[{i}]"),
        }
    }
}

#[cfg(test)]
mod tests;
