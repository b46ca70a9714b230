//! How a servlet container (Tomcat's `CoyoteAdapter`, Jetty, Spring on
//! either) turns a request target into the path it routes on: `;`
//! parameters cut off each segment, then percent-decoding, then `//`
//! collapsed and dot segments resolved. Shared by the integration tests'
//! servlet-style upstream and the differential fuzz target, so that both
//! judge the gateway against the same model.

/// The path a servlet container routes `target` to (query removed), as
/// bytes; `None` where the container answers 400 itself.
pub fn servlet_route(target: &str) -> Option<Vec<u8>> {
    let path = target.split('?').next().unwrap_or(target);
    if !path.starts_with('/') {
        return None;
    }
    let without_parameters: Vec<&str> = path
        .split('/')
        .map(|segment| segment.split(';').next().unwrap_or(segment))
        .collect();
    let decoded = percent_decode(without_parameters.join("/").as_bytes())?;
    // Tomcat refuses these by default (ALLOW_BACKSLASH, and a NUL ends C strings).
    if decoded.contains(&b'\\') || decoded.contains(&0) {
        return None;
    }
    resolve_dots(&decoded)
}

/// Decodes every `%XX`; an encoded `/` is refused (Tomcat's
/// `ALLOW_ENCODED_SLASH` default).
fn percent_decode(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let value = u8::from_str_radix(hex, 16).ok()?;
            if value == b'/' {
                return None;
            }
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn resolve_dots(path: &[u8]) -> Option<Vec<u8>> {
    let mut stack: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split(|&b| b == b'/').skip(1) {
        trailing_slash = matches!(segment, b"" | b"." | b"..");
        match segment {
            b"" | b"." => {}
            b".." => {
                stack.pop()?;
            }
            name => stack.push(name),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for segment in &stack {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push(b'/');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::servlet_route;

    #[test]
    fn routes_like_tomcat() {
        let cases: &[(&str, Option<&str>)] = &[
            ("/api/billing;x/42", Some("/api/billing/42")),
            ("/app/page;jsessionid=1?q=1", Some("/app/page")),
            ("/public/..;/admin", Some("/admin")),
            ("/a/%2e%2e/b", Some("/b")),
            ("/a%3Bx/b", Some("/a;x/b")),
            ("//a///b/", Some("/a/b/")),
            ("/a%2Fb", None),
            ("/..", None),
            ("/a\\b", None),
        ];
        for (target, expected) in cases {
            let got = servlet_route(target);
            assert_eq!(got.as_deref(), expected.map(str::as_bytes), "{target}");
        }
    }
}
