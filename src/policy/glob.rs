//! `*` wildcards for role matchers: `*` matches any run of characters
//! (including none and including dots); every other character is literal.
//! In a distinguished name (`subject`, `issuer`) a `*` stays inside one
//! attribute value: it never matches an RDN separator.

use crate::identity::{CertField, Compare};

/// A compiled pattern, exact or ASCII case-insensitive; which one a field
/// takes is [`CertField::compare`]'s to say.
///
/// ```
/// use certgate::policy::Glob;
///
/// assert!(Glob::new("billing-*", false).matches("billing-api"));
/// assert!(!Glob::new("billing-*", false).matches("Billing-api"));
/// assert!(Glob::new("*.example.org", true).matches("API.example.ORG"));
/// assert!(Glob::dn("CN=*,O=Acme").matches("CN=x\\,y,O=Acme"));
/// assert!(!Glob::dn("CN=*,O=Acme").matches("CN=x,OU=dev,O=Acme"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    shape: Shape,
    case_insensitive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// The literal pieces between `*`s.
    Text(Vec<String>),
    /// An RFC 4514 DN: per attribute, the separator before it (`,` between
    /// RDNs, `+` inside a multi-valued one; none for the first) and the
    /// literal pieces of its own pattern.
    Dn(Vec<(Option<u8>, Vec<String>)>),
}

fn pieces(pattern: &str) -> Vec<String> {
    pattern.split('*').map(str::to_owned).collect()
}

impl Glob {
    pub fn new(pattern: &str, case_insensitive: bool) -> Glob {
        let pattern = if case_insensitive {
            pattern.to_ascii_lowercase()
        } else {
            pattern.to_owned()
        };
        Glob {
            shape: Shape::Text(pieces(&pattern)),
            pattern,
            case_insensitive,
        }
    }

    /// A pattern for an RFC 4514 DN, compared exactly. Its unescaped `,`
    /// and `+` must line up with the DN's: `*` never spans a separator,
    /// while an escaped `\,` or `\+` is part of the value around it.
    pub fn dn(pattern: &str) -> Glob {
        Glob {
            shape: Shape::Dn(
                dn_attributes(pattern)
                    .map(|(sep, attr)| (sep, pieces(attr)))
                    .collect(),
            ),
            pattern: pattern.to_owned(),
            case_insensitive: false,
        }
    }

    /// A pattern for `field`, normalized and compared as that field's
    /// values are.
    pub fn for_field(field: CertField, pattern: &str) -> Glob {
        let pattern = field.normalize(pattern);
        match field.compare() {
            Compare::Exact => Glob::new(&pattern, false),
            Compare::CaseInsensitive => Glob::new(&pattern, true),
            Compare::Dn => Glob::dn(&pattern),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    pub fn matches(&self, value: &str) -> bool {
        if self.case_insensitive && value.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.matches_exact(&value.to_ascii_lowercase());
        }
        self.matches_exact(value)
    }

    fn matches_exact(&self, value: &str) -> bool {
        match &self.shape {
            Shape::Text(parts) => matches_pieces(parts, value),
            Shape::Dn(attributes) => {
                let mut values = dn_attributes(value);
                attributes.iter().all(|(sep, parts)| {
                    values
                        .next()
                        .is_some_and(|(s, v)| s == *sep && matches_pieces(parts, v))
                }) && values.next().is_none()
            }
        }
    }
}

/// Literal pieces must appear in order; the first anchors at the start
/// and the last at the end. Greedy leftmost search is correct for
/// `*`-only patterns, so this never backtracks.
fn matches_pieces(parts: &[String], value: &str) -> bool {
    let (first, rest) = match parts.split_first() {
        Some(split) => split,
        None => return value.is_empty(),
    };
    let Some(mut remaining) = value.strip_prefix(first.as_str()) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return remaining.is_empty();
    };
    for piece in middle {
        match remaining.find(piece.as_str()) {
            Some(i) => remaining = &remaining[i + piece.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last.as_str())
}

/// The attributes of an RFC 4514 DN (or DN pattern), each with the
/// separator before it: split at every `,` and `+` that no `\` escapes.
fn dn_attributes(dn: &str) -> impl Iterator<Item = (Option<u8>, &str)> {
    let mut rest = Some((None, dn));
    std::iter::from_fn(move || {
        let (sep, text) = rest?;
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                // Skips the escaped character, whatever it is; `\` is ASCII
                // and so is every separator, so `i` stays on a char boundary
                // whenever it reaches one.
                b'\\' => i += 2,
                b @ (b',' | b'+') => {
                    rest = Some((Some(b), &text[i + 1..]));
                    return Some((sep, &text[..i]));
                }
                _ => i += 1,
            }
        }
        rest = None;
        Some((sep, text))
    })
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn glob_table() {
        let cases: &[(&str, &str, bool, bool)] = &[
            // (pattern, value, case_insensitive, expected)
            ("billing-*", "billing-api", false, true),
            ("billing-*", "billing-", false, true),
            ("billing-*", "xbilling-api", false, false),
            ("*", "", false, true),
            ("*", "anything at all", false, true),
            ("exact", "exact", false, true),
            ("exact", "exactly", false, false),
            ("exact", "Exact", false, false),
            ("*.example.org", "api.example.org", true, true),
            ("*.example.org", "API.Example.ORG", true, true),
            ("*.example.org", "example.org", true, false),
            ("a*b*c", "abc", false, true),
            ("a*b*c", "aXbYc", false, true),
            ("a*b*c", "aXcYb", false, false),
            ("a*a", "a", false, false),
            ("a*a", "aa", false, true),
            ("*mid*", "xxmidyy", false, true),
            ("", "", false, true),
            ("", "x", false, false),
        ];
        for (pattern, value, ci, expected) in cases {
            assert_eq!(
                Glob::new(pattern, *ci).matches(value),
                *expected,
                "pattern {pattern:?} value {value:?} ci {ci}"
            );
        }
    }

    #[test]
    fn dn_glob_table() {
        let cases: &[(&str, &str, &str, bool)] = &[
            // (case, pattern, rendered DN, expected)
            ("exact", "CN=a,O=Acme", "CN=a,O=Acme", true),
            (
                "star inside a value",
                "CN=billing-*,O=Acme",
                "CN=billing-api,O=Acme",
                true,
            ),
            (
                "star per rdn",
                "CN=*,OU=admins,*",
                "CN=x,OU=admins,O=Acme",
                true,
            ),
            (
                "star does not span an escaped comma's rdn",
                "CN=*,OU=admins,*",
                "CN=x\\,OU=admins,OU=dev,O=Acme",
                false,
            ),
            (
                "star matches an escaped comma",
                "CN=*,O=Acme",
                "CN=x\\,y,O=Acme",
                true,
            ),
            ("star never spans a comma", "CN=*", "CN=a,O=Acme", false),
            (
                "star never spans a plus",
                "CN=*,O=Acme",
                "CN=a+UID=1,O=Acme",
                false,
            ),
            (
                "plus lines up",
                "CN=*+UID=*,O=Acme",
                "CN=a+UID=1,O=Acme",
                true,
            ),
            (
                "plus is not comma",
                "CN=a,UID=1,O=Acme",
                "CN=a+UID=1,O=Acme",
                false,
            ),
            (
                "escaped plus is data",
                "CN=*,O=Acme",
                "CN=a\\+UID=1,O=Acme",
                true,
            ),
            ("lone star is one rdn", "*", "CN=a", true),
            ("lone star is not two", "*", "CN=a,O=Acme", false),
            (
                "more rdns in pattern",
                "CN=a,O=Acme,C=*",
                "CN=a,O=Acme",
                false,
            ),
            (
                "escaped backslash then comma",
                "CN=*,O=b",
                "CN=a\\\\,O=b",
                true,
            ),
            (
                "escaped backslash does not escape the comma",
                "CN=*",
                "CN=a\\\\,O=b",
                false,
            ),
            (
                "escaped comma in pattern",
                "O=Acme\\, Inc*",
                "O=Acme\\, Inc.",
                true,
            ),
            ("hex escape", "CN=*", "CN=\\C3\\A9", true),
            ("case sensitive", "cn=*", "CN=a", false),
            ("empty dn", "", "", true),
            ("empty pattern", "", "CN=a", false),
            ("trailing backslash", "CN=a\\", "CN=a\\", true),
            ("non-ascii after backslash", "CN=*,O=b", "CN=\\é,O=b", true),
        ];
        for (case, pattern, value, expected) in cases {
            assert_eq!(
                Glob::dn(pattern).matches(value),
                *expected,
                "case {case}: pattern {pattern:?} value {value:?}"
            );
        }
    }
}
