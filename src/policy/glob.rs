//! `*` wildcards for role matchers: `*` matches any run of characters
//! (including none and including dots); every other character is literal.

/// A compiled pattern. DNS names and email addresses compare
/// case-insensitively; everything else exactly.
///
/// ```
/// use certgate::policy::Glob;
///
/// assert!(Glob::new("billing-*", false).matches("billing-api"));
/// assert!(!Glob::new("billing-*", false).matches("Billing-api"));
/// assert!(Glob::new("*.example.org", true).matches("API.example.ORG"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    /// The literal pieces between `*`s.
    parts: Vec<String>,
    case_insensitive: bool,
}

impl Glob {
    pub fn new(pattern: &str, case_insensitive: bool) -> Glob {
        let pattern = if case_insensitive {
            pattern.to_ascii_lowercase()
        } else {
            pattern.to_owned()
        };
        let parts = pattern.split('*').map(str::to_owned).collect();
        Glob {
            pattern,
            parts,
            case_insensitive,
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

    /// Literal pieces must appear in order; the first anchors at the start
    /// and the last at the end. Greedy leftmost search is correct for
    /// `*`-only patterns, so this never backtracks.
    fn matches_exact(&self, value: &str) -> bool {
        let (first, rest) = match self.parts.split_first() {
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
}
