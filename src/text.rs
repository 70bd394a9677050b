//! Free text a caller gives that ends up in PostgreSQL (voucher types, rule
//! lists, order fields, batch labels). PostgreSQL's text and jsonb cannot hold
//! a NUL at all (a NUL made `POST /admin/codes` answer 500, found by the
//! fuzzer), and no label needs a control character, so both are refused as
//! bad input up front.

/// 1 to `max` characters (as the schema's maxLength and the database's
/// length() count), none of them a control character.
pub fn is_label(s: &str, max: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max && !has_control(s)
}

/// Whether `s` holds a control character (NUL included).
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
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
}
