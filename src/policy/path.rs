//! Request path normalization, done before authorization so that a rule
//! sees the same path the upstream will serve. Anything that different
//! servers could read differently is refused instead of guessed.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request target is not an absolute path")]
    NotOriginForm,
    #[error("encoded slash (%2F) in path")]
    EncodedSlash,
    #[error("encoded backslash (%5C) in path")]
    EncodedBackslash,
    #[error("encoded control character in path")]
    EncodedControl,
    #[error("malformed percent-encoding in path")]
    BadPercentEncoding,
    #[error("backslash in path")]
    Backslash,
    #[error("control character or space in path")]
    RawControl,
    #[error("`..` climbs above the root")]
    AboveRoot,
    #[error("dot segment with parameters (`..;`) in path")]
    DotSegmentWithParams,
}

/// Normalizes an origin-form path (no query): decodes percent-encoded
/// unreserved characters, upper-cases the hex of the escapes it keeps,
/// collapses repeated `/`, and resolves `.` and `..` segments.
///
/// ```
/// use certgate::policy::{normalize_path, PathError};
///
/// assert_eq!(normalize_path("//api/./v1/%2e%2e/v2/%7Euser").unwrap(), "/api/v2/~user");
/// assert_eq!(normalize_path("/public/..;/admin"), Err(PathError::DotSegmentWithParams));
/// assert_eq!(normalize_path("/a%2Fb"), Err(PathError::EncodedSlash));
/// ```
///
/// # Errors
/// Targets that are not origin-form, `%2F`, `%5C`, encoded control bytes
/// (`%00`–`%1F`, `%7F`), malformed escapes, backslashes, `..` above the root,
/// and `..;`/`.;` segments (servlet containers strip `;` parameters and would
/// then resolve them as dot segments).
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if is_already_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(resolve_segments(&decoded)?))
}

/// The common case: plain segments, nothing to decode or resolve.
fn is_already_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' => return false,
            b'/' if bytes.get(i + 1) == Some(&b'/') => return false,
            b'.' if bytes[i - 1] == b'/' => return false,
            _ if b <= b' ' || b == 0x7f => return false,
            _ => {}
        }
    }
    true
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or(PathError::BadPercentEncoding)?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .filter(|_| hex.iter().all(u8::is_ascii_hexdigit))
                    .ok_or(PathError::BadPercentEncoding)?;
                match value {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    0x00..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                    v if is_unreserved(v) => out.push(v as char),
                    v => {
                        out.push('%');
                        out.push_str(&format!("{v:02X}"));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            _ if b <= b' ' || b == 0x7f => return Err(PathError::RawControl),
            _ => {
                // Multi-byte UTF-8 is copied through unchanged.
                let len = utf8_len(b);
                out.push_str(&path[i..i + len]);
                i += len;
            }
        }
    }
    Ok(out)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0.. => 4,
        0xe0.. => 3,
        0xc0.. => 2,
        _ => 1,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn resolve_segments(path: &str) -> Result<String, PathError> {
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        let bare = segment.split(';').next().unwrap_or(segment);
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                stack.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = true;
            }
            _ if bare == "." || bare == ".." => return Err(PathError::DotSegmentWithParams),
            _ => stack.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &stack {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{normalize_path, PathError};

    #[test]
    fn normalization_table() {
        let cases: &[(&str, &str, Result<&str, PathError>)] = &[
            ("root", "/", Ok("/")),
            ("plain", "/v2/items", Ok("/v2/items")),
            ("trailing slash kept", "/v2/", Ok("/v2/")),
            ("repeated slashes", "//v2///items", Ok("/v2/items")),
            ("dot segment", "/v2/./items", Ok("/v2/items")),
            ("dotdot segment", "/v2/x/../items", Ok("/v2/items")),
            ("dotdot to root", "/v2/..", Ok("/")),
            ("trailing dot", "/v2/.", Ok("/v2/")),
            ("encoded dots", "/public/%2e%2e/admin", Ok("/admin")),
            (
                "mixed-case encoded dots",
                "/public/%2E%2e/admin",
                Ok("/admin"),
            ),
            (
                "encoded unreserved decoded",
                "/%7Euser/%41bc",
                Ok("/~user/Abc"),
            ),
            ("reserved escape kept uppercased", "/a%3fb", Ok("/a%3Fb")),
            ("space escape kept", "/a%20b", Ok("/a%20b")),
            ("utf8 escape kept", "/caf%c3%a9", Ok("/caf%C3%A9")),
            ("dotfile is a name", "/.well-known/x", Ok("/.well-known/x")),
            ("dots in names", "/a..b/c.", Ok("/a..b/c.")),
            ("semicolon in name", "/a;v=1/b", Ok("/a;v=1/b")),
            ("above root", "/..", Err(PathError::AboveRoot)),
            ("above root later", "/a/../../b", Err(PathError::AboveRoot)),
            (
                "encoded above root",
                "/%2e%2e/etc",
                Err(PathError::AboveRoot),
            ),
            ("encoded slash", "/a%2Fb", Err(PathError::EncodedSlash)),
            (
                "encoded slash lower",
                "/a%2fb",
                Err(PathError::EncodedSlash),
            ),
            (
                "encoded backslash",
                "/a%5cb",
                Err(PathError::EncodedBackslash),
            ),
            ("encoded nul", "/a%00b", Err(PathError::EncodedControl)),
            ("encoded newline", "/a%0Ab", Err(PathError::EncodedControl)),
            ("encoded del", "/a%7fb", Err(PathError::EncodedControl)),
            ("raw backslash", "/a\\..\\admin", Err(PathError::Backslash)),
            (
                "truncated escape",
                "/a%2",
                Err(PathError::BadPercentEncoding),
            ),
            ("bad hex", "/a%zz", Err(PathError::BadPercentEncoding)),
            ("sign in hex", "/a%+1", Err(PathError::BadPercentEncoding)),
            (
                "tomcat dotdot params",
                "/public/..;/admin",
                Err(PathError::DotSegmentWithParams),
            ),
            (
                "tomcat dot params",
                "/public/.;x/admin",
                Err(PathError::DotSegmentWithParams),
            ),
            ("asterisk form", "*", Err(PathError::NotOriginForm)),
            ("absolute form", "http://x/a", Err(PathError::NotOriginForm)),
            ("empty", "", Err(PathError::NotOriginForm)),
        ];
        for (name, input, expected) in cases {
            let got = normalize_path(input);
            assert_eq!(
                got.as_deref().map_err(|e| *e),
                *expected,
                "case {name}: {input:?}"
            );
        }
    }

    #[test]
    fn normal_paths_are_not_copied() {
        assert!(matches!(
            normalize_path("/v2/items/42").unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
