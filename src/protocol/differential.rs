//! The envelope scanner against serde_json's derived [`Envelope`], the reference it must
//! match: on a hand-written list of tricky messages and on ~120k generated ones (valid
//! envelopes and mutations of them), both must accept or both refuse, and on acceptance give
//! the same slices of the message for `op`, `id`, `topic`, `data` and `token`. `decode` as a whole must
//! also give what the serde_json-only path gives, and no input may panic.
//!
//! The generator is a fixed-seed xorshift, so a failure reproduces; the message that failed
//! is in the panic.

use std::panic;

use super::scan::{self, Refusal, MAX_OPEN};
use super::{decode, decode_by_serde, envelope_by_serde, BadRequest, Fields, Raw, Request};

#[derive(Debug, Default)]
struct Tally {
    accepted: usize,
    refused: usize,
    too_deep: usize,
}

impl Tally {
    fn total(&self) -> usize {
        self.accepted + self.refused + self.too_deep
    }
}

/// Checks one message; counts the verdict.
fn check(text: &str, tally: &mut Tally) {
    let ours = panic::catch_unwind(|| scan::envelope(text))
        .unwrap_or_else(|_| panic!("the scanner panicked on {text:?}"));
    let theirs = envelope_by_serde(text).ok();
    match (ours, theirs) {
        (Ok(a), Some(b)) => {
            same_slices(text, a, b);
            tally.accepted += 1;
        }
        (Err(Refusal::Invalid), None) => tally.refused += 1,
        (Err(Refusal::TooDeep), _) => {
            // Handing over is only for nesting past the fixed stack; serde_json decides.
            assert!(
                max_open(text) > MAX_OPEN,
                "too deep at {} brackets: {text:?}",
                max_open(text)
            );
            tally.too_deep += 1;
        }
        (a, b) => panic!("scanner {a:?}, serde_json {b:?} on {text:?}"),
    }
    let new = panic::catch_unwind(|| describe(decode(text)))
        .unwrap_or_else(|_| panic!("decode panicked on {text:?}"));
    let old = describe(decode_by_serde(text));
    assert_eq!(
        new, old,
        "decode differs from the serde_json path on {text:?}"
    );
}

/// The same text and the same place in the message, field by field.
fn same_slices(text: &str, a: Fields<'_>, b: Fields<'_>) {
    let place = |r: Option<Raw<'_>>| r.map(|r| (r.get().as_ptr(), r.get().len()));
    for (name, x, y) in [
        ("op", a.op, b.op),
        ("id", a.id, b.id),
        ("topic", a.topic, b.topic),
        ("data", a.data, b.data),
        ("token", a.token, b.token),
        ("recover", a.recover, b.recover),
        ("since", a.since, b.since),
        ("limit", a.limit, b.limit),
    ] {
        assert_eq!(
            (x.map(Raw::get), place(x)),
            (y.map(Raw::get), place(y)),
            "{name} of {text:?}"
        );
    }
}

fn describe(r: Result<Request<'_>, BadRequest<'_>>) -> String {
    match r {
        Ok(req) => format!("{req:?}"),
        Err(bad) => format!("refused, id {:?}: {}", bad.id, bad.message),
    }
}

/// The most brackets open at once, outside strings. Used only where the scanner has already
/// validated everything before the bracket it stopped at, so this count is the real one.
fn max_open(text: &str) -> u32 {
    let (mut open, mut max, mut in_str, mut escaped) = (0u32, 0u32, false, false);
    for &b in text.as_bytes() {
        if in_str {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_str = true,
                b'{' | b'[' => {
                    open += 1;
                    max = max.max(open);
                }
                b'}' | b']' => open = open.saturating_sub(1),
                _ => {}
            }
        }
    }
    max
}

/// Messages written to hit each rule, and the ones that are easy to get wrong.
const TRICKY: &[&str] = &[
    // Shapes of the envelope.
    "{}",
    " \t\n\r{ \t\n\r} \t\n\r",
    "{",
    "}",
    "{}}",
    "{}{}",
    "{} x",
    "{},",
    "{\"op\":\"echo\",}",
    "{,\"op\":\"echo\"}",
    "{\"op\" \"echo\"}",
    "{\"op\"::\"echo\"}",
    "{\"op\":\"echo\" \"data\":1}",
    "{\"op\":\"echo\",,\"data\":1}",
    "{op:\"echo\"}",
    "{'op':'echo'}",
    "{\"op\":}",
    "{\"op\"}",
    "{\"op\":\"echo\"",
    "{\"op\":\"echo\",\"data\"",
    "{\"op\":\"echo\",\"data\":",
    "{\"op\":\"echo\",\"data\":1",
    "{\"op\":\"echo\",\"data\":1,",
    "{\"op\":\"echo\",\"data\":1}\u{0}",
    "{\"op\":\"echo\",\"data\":1}\u{a0}",
    "\u{a0}{\"op\":\"echo\",\"data\":1}",
    "\u{feff}{\"op\":\"echo\",\"data\":1}",
    "{\u{b}\"op\":\"echo\",\"data\":1}",
    "{\u{c}\"op\":\"echo\",\"data\":1}",
    "[\"echo\"]",
    "[]",
    "\"op\"",
    "null",
    "1",
    "",
    "   ",
    // The four members.
    r#"{"op":"echo","id":1,"data":{"n":[1,2,3]}}"#,
    r#"{"data":1,"topic":"t","op":"publish","id":"x"}"#,
    r#"{ "op" : "echo" , "id" : 7 , "data" : [ 1 , { "a" : null } ] }"#,
    r#"{"op":null,"id":null,"topic":null,"data":null}"#,
    r#"{"id":null,"id":1}"#,
    r#"{"op":"a","op":"b"}"#,
    r#"{"topic":"a","topic":"a"}"#,
    r#"{"data":null,"data":null}"#,
    r#"{"op":"echo","o\u0070":"echo","data":1}"#,
    r#"{"x":1,"x":2,"op":"echo","data":1}"#,
    r#"{"x":[1,],"op":"echo","data":1}"#,
    r#"{"x":{"a":1,"a":2},"op":"echo","data":1}"#,
    r#"{"op":"echo","data":1,"x":tru}"#,
    r#"{"op":"echo","data":{"op":"other","data":2}}"#,
    r#"{"op":"echo","id":{"a":1},"data":1}"#,
    r#"{"op":"echo","id":[1],"data":1}"#,
    r#"{"op":5}"#,
    r#"{"op":"subscribe","topic":7}"#,
    r#"{"op":"subscribe","topic":""}"#,
    r#"{"op":"subscribe","topic":"a\nb"}"#,
    r#"{"op":"subscribe","topic":"a\u0000b"}"#,
    r#"{"op":"subscribe","topic":"n\u00e9ws"}"#,
    // Names with escapes: decoded before they are matched.
    r#"{"o\u0070":"echo","data":1}"#,
    r#"{"\u006f\u0070":"echo","\u0064\u0061\u0074\u0061":1}"#,
    r#"{"\u006Fp":"echo","d\u0061ta":1,"\u0069d":3,"t\u006fpic":"t"}"#,
    r#"{"op\u0000":"echo","data":1}"#,
    r#"{"Op":"echo","data":1}"#,
    r#"{"\/op":"echo","data":1}"#,
    r#"{"o\/p":"echo","data":1}"#,
    r#"{"o\p":"echo","data":1}"#,
    r#"{"o\u007":"echo","data":1}"#,
    r#"{"o\u00g0":"echo","data":1}"#,
    r#"{"opo":"echo","data":1}"#,
    r#"{"topics":"t","data":1}"#,
    r#"{"":1,"op":"echo","data":1}"#,
    "{\"o\tp\":\"echo\"}",
    "{\"op\u{7f}\":\"echo\"}",
    "{\"\u{e9}\":1}",
    // Surrogates: a name must pair them, a skipped string need not.
    r#"{"\ud83d\ude00":1,"op":"echo","data":1}"#,
    r#"{"\uD83D\uDE00":1}"#,
    r#"{"\ud800":1}"#,
    r#"{"\udc00":1}"#,
    r#"{"\udfff\ud800":1}"#,
    r#"{"\ud800\u0041":1}"#,
    r#"{"\ud800\ud800":1}"#,
    r#"{"\ud800\n":1}"#,
    r#"{"\ud800x":1}"#,
    r#"{"\ud800\":1}"#,
    r#"{"\ud800\u":1}"#,
    r#"{"\ud800\udc0":1}"#,
    r#"{"op":"echo","data":"\ud800"}"#,
    r#"{"op":"echo","data":"\udc00\ud800x"}"#,
    r#"{"op":"\ud800","data":1}"#,
    r#"{"op":"echo","data":{"\ud800":"\udfff"}}"#,
    r#"{"x":"\ud800","op":"echo","data":1}"#,
    // Strings.
    r#"{"op":"echo","data":"\"\\\/\b\f\n\r\t\u00e9\u0000"}"#,
    r#"{"op":"echo","data":"\x"}"#,
    r#"{"op":"echo","data":"\'"}"#,
    r#"{"op":"echo","data":"\u12"}"#,
    r#"{"op":"echo","data":"\u12G4"}"#,
    r#"{"op":"echo","data":"\u"}"#,
    r#"{"op":"echo","data":"\"#,
    r#"{"op":"echo","data":"abc"#,
    "{\"op\":\"echo\",\"data\":\"a\u{1}b\"}",
    "{\"op\":\"echo\",\"data\":\"a\tb\"}",
    "{\"op\":\"echo\",\"data\":\"a\u{1f}b\"}",
    "{\"op\":\"echo\",\"data\":\"a\u{7f}b\"}",
    "{\"op\":\"echo\",\"data\":\"h\u{e9}llo \u{1f600} \u{65e5}\"}",
    // Numbers.
    r#"{"op":"echo","data":0}"#,
    r#"{"op":"echo","data":-0}"#,
    r#"{"op":"echo","data":-0.0e+00}"#,
    r#"{"op":"echo","data":1E-5}"#,
    r#"{"op":"echo","data":1e999999999999999}"#,
    r#"{"op":"echo","data":123456789012345678901234567890123456789}"#,
    r#"{"op":"echo","data":-123456789012345678901234567890.123456789e-123456}"#,
    r#"{"op":"echo","data":01}"#,
    r#"{"op":"echo","data":-01}"#,
    r#"{"op":"echo","data":00}"#,
    r#"{"op":"echo","data":1.}"#,
    r#"{"op":"echo","data":.5}"#,
    r#"{"op":"echo","data":1.e5}"#,
    r#"{"op":"echo","data":-}"#,
    r#"{"op":"echo","data":--1}"#,
    r#"{"op":"echo","data":+1}"#,
    r#"{"op":"echo","data":1e}"#,
    r#"{"op":"echo","data":1e+}"#,
    r#"{"op":"echo","data":1e-}"#,
    r#"{"op":"echo","data":0x1}"#,
    r#"{"op":"echo","data":1_000}"#,
    r#"{"op":"echo","data":NaN}"#,
    r#"{"op":"echo","data":Infinity}"#,
    r#"{"op":"echo","data":-Infinity}"#,
    r#"{"op":"echo","data":1 2}"#,
    r#"{"op":"echo","id":-0,"data":1}"#,
    r#"{"op":"echo","id":1e3,"data":1}"#,
    // Literals.
    r#"{"op":"echo","data":[true,false,null]}"#,
    r#"{"op":"echo","data":tru}"#,
    r#"{"op":"echo","data":nul}"#,
    r#"{"op":"echo","data":nulll}"#,
    r#"{"op":"echo","data":True}"#,
    r#"{"op":"echo","data":NULL}"#,
    r#"{"op":"echo","data":falsey}"#,
    r#"{"op":nul}"#,
    r#"{"op":nullx}"#,
    r#"{"op":null }"#,
    // Nesting.
    r#"{"op":"echo","data":[[[[]]]]}"#,
    r#"{"op":"echo","data":[{"a":[{"b":{}}]}]}"#,
    r#"{"op":"echo","data":[}"#,
    r#"{"op":"echo","data":{]}"#,
    r#"{"op":"echo","data":[1}]"#,
    r#"{"op":"echo","data":{"a":1]}"#,
    r#"{"op":"echo","data":{"a"}}"#,
    r#"{"op":"echo","data":{1:2}}"#,
    r#"{"op":"echo","data":{"a":1,}}"#,
    r#"{"op":"echo","data":[,1]}"#,
    r#"{"op":"echo","data":[1,,2]}"#,
    r#"{"op":"echo","data":]}"#,
];

#[test]
fn the_tricky_cases_agree() {
    let mut tally = Tally::default();
    for text in TRICKY {
        check(text, &mut tally);
    }
    assert!(tally.accepted > 30 && tally.refused > 60, "{tally:?}");
}

/// `depth` brackets (arrays, objects or both) around `inner`, and the closers.
fn nest(depth: usize, shape: usize, inner: &str) -> String {
    let mut open = String::new();
    let mut close = Vec::new();
    for level in 0..depth {
        let object = match shape {
            0 => false,
            1 => true,
            _ => level % 3 == 1,
        };
        if object {
            open.push_str("{\"k\":");
            close.push('}');
        } else {
            open.push('[');
            close.push(']');
        }
    }
    close.reverse();
    format!("{open}{inner}{}", close.into_iter().collect::<String>())
}

#[test]
fn nesting_around_the_limit_agrees() {
    let mut tally = Tally::default();
    let limit = MAX_OPEN as usize;
    for depth in (limit - 4..=limit + 3).chain([200, 1000]) {
        for shape in 0..3 {
            let deep = nest(depth, shape, "1");
            for text in [
                format!(r#"{{"op":"echo","data":{deep}}}"#),
                format!(r#"{{"x":{deep},"op":"echo","data":1}}"#),
                format!(r#"{{"op":"echo","id":{deep},"data":1}}"#),
                // Broken inside, at the end, and by a missing closer.
                format!(r#"{{"op":"echo","data":{}}}"#, nest(depth, shape, "01")),
                format!(r#"{{"op":"echo","data":{deep}]}}"#),
                format!(r#"{{"op":"echo","data":{}}}"#, &deep[..deep.len() - 1]),
                format!(r#"{{"op":"echo","data":{deep}}} x"#),
            ] {
                check(&text, &mut tally);
            }
        }
    }
    assert!(
        tally.accepted > 0 && tally.refused > 0 && tally.too_deep > 0,
        "{tally:?}"
    );
}

/// xorshift64: deterministic, and enough to spread cases over the grammar.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const HEX: &[u8] = b"0123456789abcdefABCDEF";

fn ws(r: &mut Rng, out: &mut String) {
    if r.one_in(4) {
        for _ in 0..=r.below(3) {
            out.push(r.pick(&[' ', '\t', '\n', '\r']));
        }
    }
}

fn hex4(r: &mut Rng, out: &mut String, from: u32, to: u32) {
    let unit = from + (r.next() % u64::from(to - from + 1)) as u32;
    let s = format!("{unit:04x}");
    // Mixed case, as clients may write it.
    if r.one_in(2) {
        out.push_str(&s.to_uppercase());
    } else {
        out.push_str(&s);
    }
}

/// The inside of a string: plain text, every escape, surrogates paired and lone.
fn string_body(r: &mut Rng, out: &mut String) {
    for _ in 0..r.below(7) {
        match r.below(11) {
            0..=3 => out.push(r.pick(&['a', 'b', 'z', 'Q', '0', ' ', '-', '.', '\''])),
            4 => out.push_str(r.pick(&["\u{e9}", "\u{1f600}", "\u{7f}", "\u{65e5}", "/"])),
            5 => out.push_str(r.pick(&["\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"])),
            6 => {
                out.push_str("\\u");
                for _ in 0..4 {
                    out.push(char::from(r.pick(HEX)));
                }
            }
            7 => {
                out.push_str("\\u");
                hex4(r, out, 0xD800, 0xDBFF);
                out.push_str("\\u");
                hex4(r, out, 0xDC00, 0xDFFF);
            }
            8 => {
                out.push_str("\\u");
                hex4(r, out, 0xD800, 0xDFFF);
            }
            9 => {
                out.push_str("\\u");
                hex4(r, out, 0x20, 0x7e);
            }
            _ => out.push_str(r.pick(&["\\u0000", "\\u001f", "\\u00e9", "\\uffff"])),
        }
    }
}

fn string(r: &mut Rng, out: &mut String) {
    out.push('"');
    string_body(r, out);
    out.push('"');
}

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "0.5",
    "1e999999999999",
    "-1E-999999999999",
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890123456789012345678901234567890",
    "1.7976931348623157e309",
    "5e-324",
    "0.0000000000000000000000000000001",
];

fn number(r: &mut Rng, out: &mut String) {
    if r.one_in(4) {
        out.push_str(r.pick(NUMBERS));
        return;
    }
    let digit = |r: &mut Rng| char::from(b'0' + r.below(10) as u8);
    if r.one_in(2) {
        out.push('-');
    }
    if r.one_in(3) {
        out.push('0');
    } else {
        out.push(char::from(b'1' + r.below(9) as u8));
        for _ in 0..r.below(25) {
            out.push(digit(r));
        }
    }
    if r.one_in(3) {
        out.push('.');
        for _ in 0..=r.below(5) {
            out.push(digit(r));
        }
    }
    if r.one_in(3) {
        out.push(r.pick(&['e', 'E']));
        if r.one_in(2) {
            out.push(r.pick(&['+', '-']));
        }
        for _ in 0..=r.below(4) {
            out.push(digit(r));
        }
    }
}

/// Any JSON value, `depth` more brackets at most.
fn value(r: &mut Rng, out: &mut String, depth: usize) {
    ws(r, out);
    match r.below(if depth == 0 { 4 } else { 7 }) {
        0 => number(r, out),
        1 | 2 => string(r, out),
        3 => out.push_str(r.pick(&["true", "false", "null"])),
        4 | 5 => {
            out.push('[');
            ws(r, out);
            for k in 0..r.below(4) {
                if k > 0 {
                    out.push(',');
                }
                value(r, out, depth - 1);
            }
            out.push(']');
        }
        _ => {
            out.push('{');
            ws(r, out);
            for k in 0..r.below(4) {
                if k > 0 {
                    out.push(',');
                }
                ws(r, out);
                // Inner names may repeat and may hold lone surrogates: serde_json skips them.
                if r.one_in(4) {
                    out.push_str(r.pick(&["\"op\"", "\"data\"", "\"a\""]));
                } else {
                    string(r, out);
                }
                ws(r, out);
                out.push(':');
                value(r, out, depth - 1);
            }
            out.push('}');
        }
    }
    ws(r, out);
}

/// How a top-level name may be spelled; escapes included.
const SPELLINGS: [&[&str]; 9] = [
    &["op", "op", "op", "o\\u0070", "\\u006f\\u0070", "\\u006Fp"],
    &["id", "id", "\\u0069d", "i\\u0064"],
    &["topic", "topic", "t\\u006fpic", "\\u0074opic"],
    &["data", "data", "d\\u0061ta", "\\u0064\\u0061\\u0074\\u0061"],
    &["token", "token", "t\\u006fken", "\\u0074oke\\u006e"],
    &["recover", "recover", "rec\\u006fver"],
    &["since", "since", "\\u0073ince"],
    &["limit", "limit", "limi\\u0074"],
    &[
        "x",
        "opx",
        "Op",
        "o",
        "datum",
        "op\\u0000",
        "\\ud83d\\ude00",
        "\\/op",
        "",
        "\u{ef}d",
        "top\\u0069c!",
        "tokens",
        "toke",
        "\\ud800",
        "\\udc00x",
        "\\ud800\\u0041",
        "a\\ud800",
    ],
];

fn op_value(r: &mut Rng, out: &mut String) {
    if r.one_in(5) {
        value(r, out, 1);
    } else {
        out.push_str(r.pick(&[
            "\"echo\"",
            "\"publish\"",
            "\"subscribe\"",
            "\"unsubscribe\"",
            "\"broadcast\"",
            "\"fly\"",
            "\"\\u0065cho\"",
            "\"echo\\ud800\"",
            "null",
        ]));
    }
}

/// An envelope: some of the eight members (now and then one twice), some others, any order.
fn envelope(r: &mut Rng) -> String {
    let mut names: Vec<usize> = (0..8).filter(|_| !r.one_in(4)).collect();
    let others = r.below(3);
    names.extend(std::iter::repeat_n(8, others));
    if r.one_in(8) && !names.is_empty() {
        let again = r.pick(&names);
        names.push(again);
    }
    for i in (1..names.len()).rev() {
        names.swap(i, r.below(i + 1));
    }
    let mut out = String::new();
    ws(r, &mut out);
    out.push('{');
    ws(r, &mut out);
    for (k, &name) in names.iter().enumerate() {
        if k > 0 {
            out.push(',');
            ws(r, &mut out);
        }
        out.push('"');
        out.push_str(r.pick(SPELLINGS[name]));
        out.push('"');
        ws(r, &mut out);
        out.push(':');
        ws(r, &mut out);
        match name {
            0 => op_value(r, &mut out),
            1 => match r.below(4) {
                0 => number(r, &mut out),
                1 => string(r, &mut out),
                2 => out.push_str("null"),
                _ => value(r, &mut out, 1),
            },
            2 => match r.below(5) {
                0 => value(r, &mut out, 1),
                1 => out.push_str("null"),
                _ => string(r, &mut out),
            },
            4 => match r.below(4) {
                0 => value(r, &mut out, 1),
                1 => out.push_str("null"),
                _ => string(r, &mut out),
            },
            6 | 7 => match r.below(4) {
                0 => value(r, &mut out, 1),
                1 => out.push_str("null"),
                _ => number(r, &mut out),
            },
            3 if r.one_in(40) => {
                let depth = MAX_OPEN as usize - 3 + r.below(6);
                let mut inner = String::new();
                value(r, &mut inner, 1);
                out.push_str(&nest(depth, r.below(3), &inner));
            }
            _ => value(r, &mut out, 3),
        }
        ws(r, &mut out);
    }
    out.push('}');
    ws(r, &mut out);
    out
}

/// Bytes that change what JSON means where they land.
const ALPHABET: &[u8] = b"{}[]\":,\\ \t\n\r0123456789abcdefABCDEFu+-.eEntrulsx\x00\x01\x1f\x7f/'";

/// One to three edits: truncation, a byte replaced, inserted or deleted, a run copied
/// elsewhere. The result may not be UTF-8; the caller skips those.
fn mutate(r: &mut Rng, text: &str) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    for _ in 0..=r.below(3) {
        if b.is_empty() {
            break;
        }
        let at = r.below(b.len());
        match r.below(7) {
            0 => b.truncate(at),
            1 | 2 => b[at] = r.pick(ALPHABET),
            3 => b.insert(at, r.pick(ALPHABET)),
            4 => {
                b.remove(at);
            }
            5 => {
                let end = (at + 1 + r.below(8)).min(b.len());
                let run = b[at..end].to_vec();
                let to = r.below(b.len() + 1);
                b.splice(to..to, run);
            }
            _ => b[at] = (r.next() & 0x7f) as u8,
        }
    }
    b
}

#[test]
fn generated_envelopes_and_their_mutations_agree() {
    const CASES: usize = 120_000;
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut tally = Tally::default();
    while tally.total() < CASES {
        let text = envelope(&mut r);
        check(&text, &mut tally);
        let broken = mutate(&mut r, &text);
        if let Ok(broken) = std::str::from_utf8(&broken) {
            check(broken, &mut tally);
        }
    }
    eprintln!("differential: {tally:?}");
    // Both verdicts must be well represented, or the generator has drifted.
    assert!(
        tally.accepted > CASES / 5 && tally.refused > CASES / 5 && tally.too_deep > 0,
        "{tally:?}"
    );
}
