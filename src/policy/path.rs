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
    #[error("`;` path parameters are refused (listener.path_parameters = \"reject\")")]
    PathParameters,
}

/// What a `;` in a path segment means (`listener.path_parameters`).
///
/// Servlet containers (Tomcat, Jetty, Spring) cut `;...` off each segment
/// before they route, so `/api/billing;x/42` reaches the `/api/billing`
/// servlet. A gate that matched `billing;x` as a name would authorize one
/// path while the upstream serves another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathParameters {
    /// A `;` anywhere in the path is refused (as Spring's `StrictHttpFirewall`).
    #[default]
    Reject,
    /// Parameters are cut off each segment for authorization, before dot
    /// segments are resolved, and kept on the path sent upstream.
    Allow,
}

/// A request path after normalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath<'a> {
    /// What authorization (and routing) sees: no `;` parameters.
    pub path: Cow<'a, str>,
    /// The same segments with their parameters, when any had some.
    with_parameters: Option<String>,
}

impl NormalizedPath<'_> {
    /// The path the upstream receives.
    pub fn forwarded(&self) -> &str {
        self.with_parameters.as_deref().unwrap_or(&self.path)
    }

    /// The path the upstream receives, taken out.
    pub fn into_forwarded(self) -> String {
        self.with_parameters
            .unwrap_or_else(|| self.path.into_owned())
    }

    /// Owns its strings, for the request that outlives the input.
    pub fn into_owned(self) -> NormalizedPath<'static> {
        NormalizedPath {
            path: Cow::Owned(self.path.into_owned()),
            with_parameters: self.with_parameters,
        }
    }
}

/// Normalizes an origin-form path (no query): decodes percent-encoded
/// unreserved characters, upper-cases the hex of the escapes it keeps,
/// collapses repeated `/`, and resolves `.` and `..` segments. `;` path
/// parameters are refused or cut off as `params` says; `%3B` is data, never
/// a separator, as in servlet containers.
///
/// ```
/// use certgate::policy::{normalize_path, PathError, PathParameters};
///
/// let p = normalize_path("//api/./v1/%2e%2e/v2/%7Euser", PathParameters::Reject).unwrap();
/// assert_eq!(p.path, "/api/v2/~user");
/// assert_eq!(normalize_path("/a;x/b", PathParameters::Reject), Err(PathError::PathParameters));
/// let p = normalize_path("/api/billing;x/42", PathParameters::Allow).unwrap();
/// assert_eq!((&*p.path, p.forwarded()), ("/api/billing/42", "/api/billing;x/42"));
/// assert_eq!(normalize_path("/a%2Fb", PathParameters::Allow), Err(PathError::EncodedSlash));
/// ```
///
/// # Errors
/// Targets that are not origin-form, `%2F`, `%5C`, encoded control bytes
/// (`%00`–`%1F`, `%7F`), malformed escapes, backslashes, `..` above the root,
/// and any `;` when `params` is [`PathParameters::Reject`].
pub fn normalize_path(path: &str, params: PathParameters) -> Result<NormalizedPath<'_>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let has_params = path.as_bytes().contains(&b';');
    if has_params && params == PathParameters::Reject {
        return Err(PathError::PathParameters);
    }
    if !has_params && is_already_normal(path) {
        return Ok(NormalizedPath {
            path: Cow::Borrowed(path),
            with_parameters: None,
        });
    }
    let decoded = decode_unreserved(path)?;
    let (path, with_parameters) = resolve_segments(&decoded)?;
    Ok(NormalizedPath {
        path: Cow::Owned(path),
        with_parameters,
    })
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

/// Resolves dot segments and empty segments on the parameter-free name of
/// each segment. Returns the path without parameters and, when any segment
/// that survives had parameters, the same path with them.
fn resolve_segments(path: &str) -> Result<(String, Option<String>), PathError> {
    // (name without parameters, whole segment)
    let mut stack: Vec<(&str, &str)> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        let name = segment.split(';').next().unwrap_or(segment);
        trailing_slash = matches!(name, "" | "." | "..");
        match name {
            "" | "." => {}
            ".." => {
                stack.pop().ok_or(PathError::AboveRoot)?;
            }
            _ => stack.push((name, segment)),
        }
    }
    let join = |with_parameters: bool| {
        let mut out = String::with_capacity(path.len());
        for (name, segment) in &stack {
            out.push('/');
            out.push_str(if with_parameters { segment } else { name });
        }
        if trailing_slash || out.is_empty() {
            out.push('/');
        }
        out
    };
    let with_parameters = stack
        .iter()
        .any(|(name, segment)| name.len() != segment.len())
        .then(|| join(true));
    Ok((join(false), with_parameters))
}

#[cfg(test)]
mod tests {
    use super::{normalize_path, PathError, PathParameters};

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
            (
                "semicolon refused",
                "/a;v=1/b",
                Err(PathError::PathParameters),
            ),
            ("encoded semicolon is data", "/a%3bx/b", Ok("/a%3Bx/b")),
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
                Err(PathError::PathParameters),
            ),
            ("asterisk form", "*", Err(PathError::NotOriginForm)),
            ("absolute form", "http://x/a", Err(PathError::NotOriginForm)),
            ("empty", "", Err(PathError::NotOriginForm)),
        ];
        for (name, input, expected) in cases {
            let got = normalize_path(input, PathParameters::Reject);
            assert_eq!(
                got.as_ref().map(|p| &*p.path).map_err(|e| *e),
                *expected,
                "case {name}: {input:?}"
            );
        }
    }

    /// With parameters allowed: (input, what authorization sees, what the
    /// upstream gets), or the error.
    #[test]
    fn parameters_allowed_table() {
        type Expected = Result<(&'static str, &'static str), PathError>;
        let cases: &[(&str, &str, Expected)] = &[
            ("plain", "/v2/items", Ok(("/v2/items", "/v2/items"))),
            (
                "parameter on a segment",
                "/api/billing;x/42",
                Ok(("/api/billing/42", "/api/billing;x/42")),
            ),
            (
                "jsessionid on the last segment",
                "/app/page;jsessionid=AB12",
                Ok(("/app/page", "/app/page;jsessionid=AB12")),
            ),
            (
                "several parameters",
                "/a;x=1;y=2/b;z",
                Ok(("/a/b", "/a;x=1;y=2/b;z")),
            ),
            (
                "dotdot with parameters resolves",
                "/public/..;/admin",
                Ok(("/admin", "/admin")),
            ),
            (
                "dot with parameters resolves",
                "/public/.;x/admin",
                Ok(("/public/admin", "/public/admin")),
            ),
            (
                "encoded dotdot with parameters",
                "/public/%2e%2e;x/admin;y",
                Ok(("/admin", "/admin;y")),
            ),
            (
                "parameters on a resolved segment vanish with it",
                "/a;x/../b",
                Ok(("/b", "/b")),
            ),
            (
                "empty name with parameters",
                "/a/;x/b",
                Ok(("/a/b", "/a/b")),
            ),
            ("trailing slash kept", "/a;x/", Ok(("/a/", "/a;x/"))),
            (
                "encoded semicolon is data",
                "/a%3Bx/b",
                Ok(("/a%3Bx/b", "/a%3Bx/b")),
            ),
            ("above root", "/..;x/..", Err(PathError::AboveRoot)),
            ("encoded slash", "/a;x/%2F", Err(PathError::EncodedSlash)),
        ];
        for (name, input, expected) in cases {
            let got = normalize_path(input, PathParameters::Allow);
            let got = got
                .as_ref()
                .map(|p| (&*p.path, p.forwarded()))
                .map_err(|e| *e);
            assert_eq!(got, *expected, "case {name}: {input:?}");
        }
    }

    #[test]
    fn normal_paths_are_not_copied() {
        for params in [PathParameters::Reject, PathParameters::Allow] {
            let p = normalize_path("/v2/items/42", params).unwrap();
            assert!(matches!(p.path, std::borrow::Cow::Borrowed(_)));
            assert_eq!(p.forwarded(), "/v2/items/42");
        }
    }
}
