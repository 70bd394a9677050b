//! JSON request bodies, read by one extractor ([`Json`]) for every route.
//!
//! JSON has one number type: `5`, `5.0` and `5e0` are the same number, and
//! JSON Schema counts all three as an `integer` (an integer is a number
//! with a zero fractional part). serde refuses `5.0` for an `i64`, so a
//! client whose encoder writes whole numbers with a fraction (JavaScript
//! after arithmetic, Python `float`s, the fuzzer) was refused a body its
//! schema allows. [`integral_floats_as_integers`] rewrites every whole
//! number written with a fraction or an exponent as plain digits before
//! serde reads the body, so every integer field of every body accepts it,
//! and `5.5` is refused exactly as before. The decision is made on the
//! text, digit by digit, never through an `f64`: `1.0000000000000000001`
//! is not a whole number and stays refused, and `9007199254740993.0` is
//! read exactly.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use serde::de::DeserializeOwned;

use super::serde_error;
use crate::error::ApiError;

/// A body parsed as `T` (see the module docs for numbers). Errors are
/// [`ApiError`]s: 400 `malformed_json` for bad syntax, 422 `invalid_input`
/// for a wrong shape, 413 past the body limit.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        // The body middleware (`http::body`) has already read it within
        // BODY_LIMIT_BYTES; `Bytes` is bound by the same limit
        // (`PayloadConfig`) when a test app runs without the middleware.
        let bytes = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            let bytes = bytes.await?;
            parse(&bytes).map(Json).map_err(Into::into)
        })
    }
}

/// `body` as `T`, whole numbers written with a fraction read as integers.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(&integral_floats_as_integers(body)).map_err(serde_error)
}

/// Longest run of integer digits a rewrite writes: past i64/u64 anyway
/// (serde refuses it as out of range); an exponent like `1e999999` is left
/// as written instead of turned into a million zeros.
const MAX_INTEGER_DIGITS: usize = 40;

/// `body` with every number token outside strings that is a whole number
/// but is written with a fraction or an exponent (`5.0`, `-2.50e1`, `1E3`)
/// rewritten as plain integer digits (`5`, `-25`, `1000`). Everything else,
/// bad syntax included, is left byte for byte as it was, for serde to judge.
/// Borrows `body` when there is nothing to rewrite (the common case).
pub fn integral_floats_as_integers(body: &[u8]) -> Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0; // body[..copied] is already in `out`
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => i = string_end(body, i),
            b'-' | b'0'..=b'9' => {
                let end = number_end(body, i);
                if let Some(digits) = whole_number(&body[i..end]) {
                    let out = out.get_or_insert_with(|| Vec::with_capacity(body.len()));
                    out.extend_from_slice(&body[copied..i]);
                    out.extend_from_slice(digits.as_bytes());
                    copied = end;
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    match out {
        None => Cow::Borrowed(body),
        Some(mut out) => {
            out.extend_from_slice(&body[copied..]);
            Cow::Owned(out)
        }
    }
}

/// Index just past the string opening at `start` (or the end of the body).
fn string_end(body: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    body.len()
}

/// Index just past the number-like token starting at `start`.
fn number_end(body: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < body.len() && matches!(body[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
        i += 1;
    }
    i
}

/// The integer digits of `token` when it is a valid JSON number with a
/// fraction or an exponent whose value is whole; `None` for a plain
/// integer (nothing to do), a fraction, or anything that is not a JSON
/// number (serde reports it).
fn whole_number(token: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(token).ok()?;
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (mantissa, None),
    };
    if frac_part.is_none() && exponent.is_none() {
        return None;
    }
    // JSON's grammar: int = 0 / [1-9][0-9]*; frac = . [0-9]+; exp = [eE] [+-]? [0-9]+.
    let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only(int_part) || (int_part.len() > 1 && int_part.starts_with('0')) {
        return None;
    }
    let frac = frac_part.unwrap_or("");
    if frac_part.is_some() && !digits_only(frac) {
        return None;
    }
    let shift: i64 = match exponent {
        None => 0,
        Some(e) => {
            let magnitude = e.strip_prefix(['+', '-']).unwrap_or(e);
            if !digits_only(magnitude) || magnitude.len() > 6 {
                return None;
            }
            let m: i64 = magnitude.parse().ok()?;
            if e.starts_with('-') {
                -m
            } else {
                m
            }
        }
    };
    // The value is 0.DIGITS * 10^point: the digits left of `point` are the
    // integer, the ones right of it must all be zero.
    let all: String = [int_part, frac].concat();
    let point = int_part.len() as i64 + shift;
    let split = point.clamp(0, all.len() as i64) as usize;
    if all[split..].bytes().any(|b| b != b'0') {
        return None;
    }
    let zeros = (point - split as i64).max(0) as usize;
    let integer = all[..split].trim_start_matches('0');
    if integer.is_empty() {
        return Some("0".into());
    }
    if integer.len() + zeros > MAX_INTEGER_DIGITS {
        return None;
    }
    let sign = if negative { "-" } else { "" };
    Some(format!("{sign}{integer}{}", "0".repeat(zeros)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(body: &str) -> String {
        String::from_utf8(integral_floats_as_integers(body.as_bytes()).into_owned()).unwrap()
    }

    #[test]
    fn whole_numbers_with_a_fraction_or_exponent_become_integers() {
        for (given, want) in [
            ("5.0", "5"),
            ("-5.0", "-5"),
            ("0.0", "0"),
            ("-0.0", "0"),
            ("1e3", "1000"),
            ("1E+3", "1000"),
            ("-2.50e1", "-25"),
            ("100e-2", "1"),
            ("0.1e1", "1"),
            ("1000000000000.000", "1000000000000"),
            ("9007199254740993.0", "9007199254740993"),
            ("9223372036854775807.0", "9223372036854775807"),
        ] {
            assert_eq!(rewritten(given), want, "{given}");
        }
    }

    #[test]
    fn fractions_integers_and_non_numbers_stay_as_written() {
        for same in [
            "5",
            "-17",
            "5.5",
            "1e-2",
            "1.0000000000000000001",
            "1e999999",
            "1e9999999",
            "01.0",
            "1.",
            ".5",
            "1.0e",
            "--1.0",
            "1.0.0",
            "true",
            "null",
        ] {
            assert_eq!(rewritten(same), same, "{same}");
        }
        assert!(matches!(integral_floats_as_integers(br#"{"a":5,"b":"x"}"#), Cow::Borrowed(_)));
    }

    #[test]
    fn strings_are_never_touched() {
        let body = r#"{"reason":"5.0 \"6.0\" \\","amount":7.0,"n":["8.0",9.0]}"#;
        assert_eq!(rewritten(body), r#"{"reason":"5.0 \"6.0\" \\","amount":7,"n":["8.0",9]}"#);
    }

    #[derive(Debug, serde::Deserialize)]
    struct Line {
        quantity: i64,
        percent: Option<u32>,
    }

    #[test]
    fn integer_fields_take_whole_floats_and_refuse_fractions() {
        let line: Line = parse(br#"{"quantity": 5.0, "percent": 1e1}"#).unwrap();
        assert_eq!((line.quantity, line.percent), (5, Some(10)));
        let err = parse::<Line>(br#"{"quantity": 5.5}"#).unwrap_err();
        assert!(matches!(err, ApiError::InvalidInput(ref m) if m.contains("floating point")), "{err:?}");
        let err = parse::<Line>(br#"{"quantity": 1e40}"#).unwrap_err();
        assert!(matches!(err, ApiError::InvalidInput(_)), "out of range: {err:?}");
        let err = parse::<Line>(br#"{"quantity": 5.0"#).unwrap_err();
        assert!(matches!(err, ApiError::MalformedJson(_)), "{err:?}");
    }
}
