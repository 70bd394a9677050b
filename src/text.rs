//! Free text a caller gives that ends up in PostgreSQL (voucher types, rule
//! lists, order fields, batch labels, the reason of a wallet movement).
//! PostgreSQL's text and jsonb cannot hold a NUL at all (a NUL made
//! `POST /admin/codes` answer 500, found by the fuzzer), and no label needs a
//! control character, so both are refused as bad input up front.
//!
//! The spec states the same rule: every such field's schema carries
//! [`NO_CONTROL_PATTERN`] (through [`Label`], [`MovementReason`] or the
//! rules' `RuleString`), and the tests below hold the pattern and
//! [`has_control`] to the same verdict, so a generated client or a fuzzer
//! learns from the spec what the server refuses.

use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{RefOr, Schema};

/// What [`has_control`] refuses, as a JSON Schema `pattern`: Rust's
/// `char::is_control` is Unicode's general category Cc, i.e. C0
/// (U+0000-U+001F), DEL (U+007F) and C1 (U+0080-U+009F). Written with
/// `\uXXXX` escapes, which ECMA-262 (JSON Schema's regex dialect), Python's
/// `re` and Rust's `regex` all read alike.
pub const NO_CONTROL_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f]*$";

/// The characters [`NO_CONTROL_PATTERN`] excludes, for patterns built on it.
pub const CONTROL_CLASS: &str = r"\u0000-\u001f\u007f-\u009f";

/// White space that is not a control character, as Rust's
/// `char::is_whitespace` (Unicode's White_Space) has it, spelled out rather
/// than `\s`: ECMA-262's `\s` also matches U+FEFF, Python's does not, and
/// neither is Rust's.
pub const NON_CONTROL_SPACE_CLASS: &str = r" \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// [`NO_CONTROL_PATTERN`] that also needs one character that is not white
/// space: what [`is_text`] accepts (with the length). Spelled out (a
/// `pattern` is a literal in the spec); a test checks it is built from
/// [`CONTROL_CLASS`] and [`NON_CONTROL_SPACE_CLASS`].
pub const NOT_BLANK_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f]*[^ \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$";

/// 1 to `max` characters (as the schema's maxLength and the database's
/// length() count), none of them a control character.
pub fn is_label(s: &str, max: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max && !has_control(s)
}

/// A label that is not only white space (rule lists, a movement's reason).
pub fn is_text(s: &str, max: usize) -> bool {
    is_label(s, max) && !s.trim().is_empty()
}

/// Whether `s` holds a control character (NUL included).
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// The schema of free text: a string of `min..=max` characters matching `pattern`.
pub fn text_schema(min: usize, max: usize, pattern: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(Some(pattern))
        .into()
}

/// Longest label (voucher type, batch, order field), in characters.
pub const LABEL_MAX: usize = 64;
/// Longest reason of a wallet movement, in characters.
pub const REASON_MAX: usize = 200;

/// The spec's schema of a label: what [`is_label`]`(s, `[`LABEL_MAX`]`)` accepts.
pub struct Label;

impl utoipa::PartialSchema for Label {
    fn schema() -> RefOr<Schema> {
        text_schema(1, LABEL_MAX, NO_CONTROL_PATTERN)
    }
}

impl utoipa::ToSchema for Label {}

/// The spec's schema of a wallet movement's reason: what
/// [`is_text`]`(s, `[`REASON_MAX`]`)` accepts.
pub struct MovementReason;

impl utoipa::PartialSchema for MovementReason {
    fn schema() -> RefOr<Schema> {
        text_schema(1, REASON_MAX, NOT_BLANK_PATTERN)
    }
}

impl utoipa::ToSchema for MovementReason {}

#[cfg(test)]
pub mod tests {
    use super::*;

    #[test]
    fn labels_are_short_non_empty_and_free_of_control_characters() {
        assert!(is_label("mobile_topup", 64));
        assert!(is_label("خرید شارژ", 64), "any script");
        assert!(!is_label("", 64));
        assert!(!is_label(&"x".repeat(65), 64));
        assert!(!is_label("a\u{0}b", 64), "a NUL, which PostgreSQL cannot store");
        assert!(!is_label("line\nbreak", 64));
    }

    /// Strings on both sides of every edge of the control ranges, and a
    /// few far from them.
    pub fn boundary_strings() -> Vec<String> {
        let mut chars: Vec<char> = vec!['\u{0}', '\u{1f}', ' ', '~', '\u{7f}', '\u{80}', '\u{9f}', '\u{a0}', '\u{ff}'];
        chars.extend(['\t', '\n', '\r', '\u{85}', '\u{feff}', '\u{2028}', '\u{3000}', 'é', 'ش', '😀', '\u{10ffff}']);
        let mut strings: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        for c in &chars {
            strings.push(format!("a{c}b"));
            strings.push(format!("ok {c}"));
        }
        strings.push(String::new());
        strings.push("plain text".into());
        strings
    }

    #[test]
    fn the_pattern_and_the_checker_agree() {
        let pattern = regex::Regex::new(NO_CONTROL_PATTERN).unwrap();
        for s in boundary_strings() {
            assert_eq!(pattern.is_match(&s), !has_control(&s), "{s:?}");
        }
        // Every character, one at a time.
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let s = c.to_string();
            assert_eq!(pattern.is_match(&s), !has_control(&s), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn the_not_blank_pattern_and_the_checker_agree() {
        let built = format!("^[^{CONTROL_CLASS}]*[^{NON_CONTROL_SPACE_CLASS}{CONTROL_CLASS}][^{CONTROL_CLASS}]*$");
        assert_eq!(NOT_BLANK_PATTERN, built);
        assert_eq!(NO_CONTROL_PATTERN, format!("^[^{CONTROL_CLASS}]*$"));
        let pattern = regex::Regex::new(NOT_BLANK_PATTERN).unwrap();
        let mut strings = boundary_strings();
        strings.extend([" ", "   ", "\u{a0}\u{3000}", " x ", "\u{feff}", "\u{2028}\u{2029}"].map(String::from));
        for s in strings {
            // Length aside (the schema's maxLength), the pattern is the checker.
            assert_eq!(pattern.is_match(&s), is_text(&s, usize::MAX), "{s:?}");
        }
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let s = format!("{c}{c}");
            assert_eq!(pattern.is_match(&s), is_text(&s, 2), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn the_space_class_is_rusts_non_control_white_space() {
        let class = regex::Regex::new(&format!("^[{NON_CONTROL_SPACE_CLASS}]$")).unwrap();
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let want = c.is_whitespace() && !c.is_control();
            assert_eq!(class.is_match(&c.to_string()), want, "U+{:04X}", c as u32);
        }
    }
}
