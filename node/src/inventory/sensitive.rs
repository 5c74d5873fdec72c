//! Sensitive-data detectors: each says whether a value (or a token of free text) has the shape
//! of one kind of sensitive data. They only classify; nothing keeps the value.
//!
//! | type          | rule |
//! |---------------|------|
//! | `email`       | `local@domain.tld`: a local part of `A-Za-z0-9.!#$%&'*+/=?^_`{|}~-`, a domain of 2+ labels of letters, digits and hyphens, a final label of 2+ letters |
//! | `card`        | 13 to 19 digits (spaces or hyphens between groups allowed), Luhn-valid, with a card network's prefix (Visa 4, Mastercard 51–55 and 2221–2720, Amex 34 and 37, Discover 6011 and 65, JCB 35, Diners 36 and 38, UnionPay 62) |
//! | `iban`        | 2 letters, 2 digits, 11 to 30 letters or digits (spaces allowed), mod-97 = 1 (ISO 13616) |
//! | `jwt`         | three base64url parts joined by dots, the first decoding to a JSON object with `alg` |
//! | `private_key` | a PEM `-----BEGIN … PRIVATE KEY-----` line |
//! | `cloud_key`   | an AWS access key id (`AKIA`/`ASIA` + 16 upper-case letters or digits), a Google API key (`AIza` + 35), a GitHub token (`ghp_`/`gho_`/`ghs_`/`ghu_` + 36), a Slack token (`xoxb-`/`xoxp-`/`xoxa-`/`xoxs-` + 10 or more) |
//! | `phone`       | `+` and 8 to 15 digits, or 10 to 15 digits with separators (space, `-`, `.`, parentheses) between groups; not a card |
//! | `national_id` | a US social security number `AAA-GG-SSSS` (area not 000, 666 nor 9xx, group not 00, serial not 0000) |

use base64::Engine as _;

/// The types, in the order they are tried and reported.
pub const TYPES: &[&str] = &[
    "private_key",
    "jwt",
    "cloud_key",
    "email",
    "card",
    "iban",
    "national_id",
    "phone",
];

/// Longest value classified whole; longer ones are scanned token by token.
const MAX_WHOLE: usize = 256;
/// Free text scanned for tokens, at most (bytes).
pub const MAX_SCAN: usize = 64 * 1024;

/// The sensitive type of a whole value, if it has one.
pub fn classify(value: &str) -> Option<&'static str> {
    let v = value.trim();
    if v.is_empty() || v.len() > MAX_WHOLE {
        return None;
    }
    if is_private_key(v) {
        Some("private_key")
    } else if is_jwt(v) {
        Some("jwt")
    } else if is_cloud_key(v) {
        Some("cloud_key")
    } else if is_email(v) {
        Some("email")
    } else if is_card(v) {
        Some("card")
    } else if is_iban(v) {
        Some("iban")
    } else if is_ssn(v) {
        Some("national_id")
    } else if is_phone(v) {
        Some("phone")
    } else {
        None
    }
}

/// Every type found in `text`: the whole value, else its tokens (split at whitespace and
/// `"',;<>()[]{}`), the first [`MAX_SCAN`] bytes. Each type once, in [`TYPES`] order.
pub fn scan(text: &str) -> Vec<&'static str> {
    if let Some(t) = classify(text) {
        return vec![t];
    }
    let mut end = text.len().min(MAX_SCAN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = text.get(..end).unwrap_or("");
    let mut found = [false; 8];
    if text.contains("PRIVATE KEY-----") && is_private_key(text) {
        found[0] = true;
    }
    let split = |c: char| c.is_whitespace() || "\"',;<>()[]{}".contains(c);
    for token in text.split(split) {
        let token = token.trim_matches(|c: char| c == '.' || c == ':' || c == '=');
        if token.len() < 6 {
            continue;
        }
        let t = if let Some(at) = token.find('=').filter(|_| !is_jwt(token)) {
            // `key=value` in a form or a log line: the value.
            token.get(at + 1..).unwrap_or("")
        } else {
            token
        };
        if let Some(kind) = classify(t) {
            if let Some(i) = TYPES.iter().position(|k| *k == kind) {
                if let Some(slot) = found.get_mut(i) {
                    *slot = true;
                }
            }
        }
    }
    TYPES
        .iter()
        .zip(found)
        .filter_map(|(t, f)| f.then_some(*t))
        .collect()
}

pub fn is_email(v: &str) -> bool {
    let Some((local, domain)) = v.split_once('@') else {
        return false;
    };
    if local.is_empty() || local.len() > 64 || domain.len() > 253 {
        return false;
    }
    let local_ok = local
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".!#$%&'*+/=?^_`{|}~-".contains(&b));
    if !local_ok || local.starts_with('.') || local.ends_with('.') {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let tld_ok = labels
        .last()
        .is_some_and(|t| t.len() >= 2 && t.bytes().all(|b| b.is_ascii_alphabetic()));
    labels.iter().all(label_ok) && tld_ok
}

/// The digits of `v` when it is only digits and the separators in `seps` (none at either end,
/// never two in a row).
fn digits_with(v: &str, seps: &[u8]) -> Option<Vec<u8>> {
    let bytes = v.as_bytes();
    if bytes.first().is_none_or(|b| !b.is_ascii_digit())
        || bytes.last().is_none_or(|b| !b.is_ascii_digit())
    {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut prev_sep = false;
    for &b in bytes {
        if b.is_ascii_digit() {
            out.push(b - b'0');
            prev_sep = false;
        } else if seps.contains(&b) && !prev_sep {
            prev_sep = true;
        } else {
            return None;
        }
    }
    Some(out)
}

/// The Luhn check over decimal digits (0–9 each).
pub fn luhn(digits: &[u8]) -> bool {
    if digits.is_empty() {
        return false;
    }
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut d = u32::from(*d);
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

fn card_prefix(d: &[u8]) -> bool {
    let n = |k: usize| -> u32 {
        d.iter()
            .take(k)
            .fold(0u32, |acc, x| acc * 10 + u32::from(*x))
    };
    matches!(d.first(), Some(4))
        || (51..=55).contains(&n(2))
        || (2221..=2720).contains(&n(4))
        || matches!(n(2), 34 | 35 | 36 | 37 | 38 | 62 | 65)
        || n(4) == 6011
}

pub fn is_card(v: &str) -> bool {
    let Some(d) = digits_with(v, b" -") else {
        return false;
    };
    (13..=19).contains(&d.len()) && card_prefix(&d) && luhn(&d)
}

/// ISO 13616's check: the country and check digits moved to the end, letters as 10–35, the
/// number mod 97 is 1.
pub fn iban_valid(v: &str) -> bool {
    let s: Vec<u8> = v.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&s.len()) {
        return false;
    }
    let (head, rest) = s.split_at(4);
    let [c1, c2, d1, d2] = head else { return false };
    if !c1.is_ascii_uppercase()
        || !c2.is_ascii_uppercase()
        || !d1.is_ascii_digit()
        || !d2.is_ascii_digit()
        || !rest
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return false;
    }
    let mut r: u32 = 0;
    for &b in rest.iter().chain(head.iter()) {
        if b.is_ascii_digit() {
            r = (r * 10 + u32::from(b - b'0')) % 97;
        } else {
            r = (r * 100 + u32::from(b - b'A' + 10)) % 97;
        }
    }
    r == 1
}

pub fn is_iban(v: &str) -> bool {
    // Spaces only in groups of four, as IBANs are printed.
    v.bytes().take(2).all(|b| b.is_ascii_uppercase()) && iban_valid(v)
}

pub fn is_jwt(v: &str) -> bool {
    let mut parts = v.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let b64 = |x: &str| {
        x.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if h.len() < 10 || p.is_empty() || !b64(h) || !b64(p) || !b64(s) {
        return false;
    }
    let Ok(header) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&header)
        .ok()
        .is_some_and(|j| j.get("alg").is_some())
}

pub fn is_private_key(v: &str) -> bool {
    v.find("-----BEGIN ").is_some_and(|at| {
        v.get(at..)
            .and_then(|rest| rest.find("-----").map(|_| rest))
            .and_then(|rest| rest.get(11..))
            .and_then(|rest| rest.split_once("-----"))
            .is_some_and(|(label, _)| label.ends_with("PRIVATE KEY") && label.len() <= 40)
    })
}

pub fn is_cloud_key(v: &str) -> bool {
    let tail = |prefix: &str, n: usize, ok: fn(u8) -> bool| {
        v.strip_prefix(prefix)
            .is_some_and(|t| t.len() == n && t.bytes().all(ok))
    };
    let upper_digit = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit();
    let url_safe = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    tail("AKIA", 16, upper_digit)
        || tail("ASIA", 16, upper_digit)
        || tail("AIza", 35, url_safe)
        || ["ghp_", "gho_", "ghs_", "ghu_"]
            .iter()
            .any(|p| tail(p, 36, alnum))
        || ["xoxb-", "xoxp-", "xoxa-", "xoxs-"].iter().any(|p| {
            v.strip_prefix(p).is_some_and(|t| {
                t.len() >= 10 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
        })
}

pub fn is_ssn(v: &str) -> bool {
    let b = v.as_bytes();
    if b.len() != 11 || b.get(3) != Some(&b'-') || b.get(6) != Some(&b'-') {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = v.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    match (num(0..3), num(4..6), num(7..11)) {
        (Some(area), Some(group), Some(serial)) => {
            area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
        }
        _ => false,
    }
}

pub fn is_phone(v: &str) -> bool {
    // Parentheses around an area code read as a space: `(415) 555-2671`.
    let spaced = v.replace(['(', ')'], " ");
    let joined = spaced.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(rest) = joined.strip_prefix('+') {
        let rest = rest.trim_start();
        return digits_with(rest, b" -.")
            .is_some_and(|d| (8..=15).contains(&d.len()) && !is_card(rest));
    }
    let has_sep = joined.bytes().any(|b| b == b' ' || b == b'-' || b == b'.');
    has_sep
        && digits_with(&joined, b" -.").is_some_and(|d| (10..=15).contains(&d.len()))
        && !is_card(&joined)
        && !is_ssn(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_and_cards() {
        // Test numbers of the networks' own documentation.
        for card in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "5555-5555-5555-4444",
            "378282246310005",
            "6011111111111117",
            "3530111333300000",
            "2223003122003222",
        ] {
            assert!(is_card(card), "{card}");
            assert_eq!(classify(card), Some("card"), "{card}");
        }
        assert!(luhn(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 3]));
        assert!(!luhn(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 4]));
        for not in [
            "4111111111111112",     // Luhn fails
            "1234567812345670",     // Luhn passes, no network starts with 1
            "411111111111",         // too short
            "41111111111111111111", // too long
            "4111--1111111111111",  // two separators
            "4111x1111111111111",
        ] {
            assert!(!is_card(not), "{not}");
        }
    }

    #[test]
    fn iban_mod_97() {
        for iban in [
            "DE89370400440532013000",
            "GB82WEST12345698765432",
            "GB82 WEST 1234 5698 7654 32",
            "FR1420041010050500013M02606",
        ] {
            assert!(is_iban(iban), "{iban}");
            assert_eq!(classify(iban), Some("iban"));
        }
        assert!(!is_iban("DE89370400440532013001"));
        assert!(!is_iban("GB82WEST1234569876543"));
        assert!(!is_iban("de89370400440532013000"));
    }

    #[test]
    fn jwt_shape() {
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.\
                   dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert!(is_jwt(jwt));
        assert_eq!(classify(jwt), Some("jwt"));
        // The header must decode to JSON with alg.
        assert!(!is_jwt("eyJmb28iOiJiYXIifQ.eyJzdWIiOiIxIn0.sig"));
        assert!(!is_jwt("a.b.c"));
        assert!(!is_jwt("www.example.com"));
        assert!(!is_jwt("eyJhbGciOiJIUzI1NiJ9.e30.sig.extra"));
    }

    #[test]
    fn keys_emails_ssn_phones() {
        assert!(is_private_key(
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE...\n-----END RSA PRIVATE KEY-----"
        ));
        assert!(is_private_key("-----BEGIN PRIVATE KEY-----\nMC4C"));
        assert!(!is_private_key("-----BEGIN CERTIFICATE-----\nMIIB"));
        assert!(!is_private_key("-----BEGIN PUBLIC KEY-----"));
        assert!(is_cloud_key("AKIAIOSFODNN7EXAMPLE"));
        assert!(is_cloud_key("AIzaSyA1234567890abcdefghijklmnopqrstuv"));
        assert!(is_cloud_key("ghp_abcdefghijklmnopqrstuvwxyz0123456789"));
        assert!(!is_cloud_key("AKIAshort"));
        assert!(is_email("ada.lovelace+api@example.co.uk"));
        for not in [
            "a@b",
            "@example.com",
            "a@example.c0m",
            "a b@example.com",
            "a@-x.com",
        ] {
            assert!(!is_email(not), "{not}");
        }
        assert!(is_ssn("123-45-6789"));
        for not in [
            "000-45-6789",
            "666-45-6789",
            "900-45-6789",
            "123-00-6789",
            "123-45-0000",
            "123456789",
        ] {
            assert!(!is_ssn(not), "{not}");
        }
        assert_eq!(classify("123-45-6789"), Some("national_id"));
        for phone in [
            "+14155552671",
            "+44 20 7946 0958",
            "(415) 555-2671",
            "415-555-2671",
            "+49 (30) 901820",
        ] {
            assert!(is_phone(phone), "{phone}");
            assert_eq!(classify(phone), Some("phone"), "{phone}");
        }
        for not in ["4155552671", "2026-12-04", "1.2.3", "+123", "12-34"] {
            assert!(!is_phone(not), "{not}");
        }
        assert_eq!(classify("42"), None);
        assert_eq!(classify("hello world"), None);
        assert_eq!(classify("redacted:0123456789abcdef"), None);
    }

    #[test]
    fn free_text_is_scanned_by_token() {
        let text = "Dear ada@example.com, your card 4111111111111111 is on file; \
                    call +14155552671. iban=DE89370400440532013000";
        assert_eq!(scan(text), ["email", "card", "iban", "phone"]);
        assert_eq!(
            scan("nothing to see here, order 42 shipped"),
            Vec::<&str>::new()
        );
        assert_eq!(scan("ada@example.com"), ["email"]);
    }
}
