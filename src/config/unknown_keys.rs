//! Every unknown key in one pass. serde's `deny_unknown_fields` ends the
//! parse at the first one, which hid every other problem of the file from
//! `check`. Here each unknown key found is kept as an error and blanked out
//! of the text (its bytes become spaces, newlines stay, so later errors
//! keep their line numbers), and the text is parsed again. The keys are
//! still refused: the caller reports each of them as a problem.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

/// Unknown keys blanked at most before the next one ends the parse.
const MAX_UNKNOWN: usize = 64;

/// `text` parsed as `T` with its unknown keys left out, and the parser's
/// error for each unknown key (its message names the key, the line and
/// the keys expected there). Any other error ends the parse, as does an
/// unknown key that cannot be blanked cleanly.
pub(super) fn parse_skipping_unknown<T: DeserializeOwned>(
    text: &str,
) -> (Result<T, toml::de::Error>, Vec<toml::de::Error>) {
    let mut text = text.to_owned();
    let mut unknown = Vec::new();
    loop {
        let error = match toml::from_str::<T>(&text) {
            Ok(value) => return (Ok(value), unknown),
            Err(e) => e,
        };
        let blanked = error
            .span()
            .filter(|_| error.message().starts_with("unknown field") && unknown.len() < MAX_UNKNOWN)
            .and_then(|key| without_entry(&text, &key));
        match blanked {
            Some(shorter) => {
                text = shorter;
                unknown.push(error);
            }
            None => return (Err(error), unknown),
        }
    }
}

/// `text` with the entry whose key is at `key` blanked out, if that leaves
/// a document that still parses and no longer has that key.
fn without_entry(text: &str, key: &Range<usize>) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    let mut ranges = Vec::new();
    if !find(text, doc.get_ref(), key, &mut ranges) {
        return None;
    }
    let mut bytes = text.as_bytes().to_vec();
    for range in ranges {
        for b in bytes.get_mut(range)? {
            if *b != b'\n' && *b != b'\r' {
                *b = b' ';
            }
        }
    }
    // Every byte replaced was part of a whole UTF-8 sequence in a range
    // the parser gave, or an ASCII one.
    let blanked = String::from_utf8(bytes).ok()?;
    let after = DeTable::parse(&blanked).ok()?;
    (!find(&blanked, after.get_ref(), key, &mut Vec::new())).then_some(blanked)
}

/// Finds the entry whose key is at `key` below `table`, and pushes the
/// byte ranges that make it up.
fn find(text: &str, table: &DeTable<'_>, key: &Range<usize>, out: &mut Vec<Range<usize>>) -> bool {
    for (k, v) in table.iter() {
        if k.span() == *key {
            entry_ranges(text, k, v, out);
            return true;
        }
        let found = match v.get_ref() {
            DeValue::Table(t) => find(text, t, key, out),
            DeValue::Array(items) => items.iter().any(|item| match item.get_ref() {
                DeValue::Table(t) => find(text, t, key, out),
                _ => false,
            }),
            _ => false,
        };
        if found {
            return true;
        }
    }
    false
}

/// The ranges of one entry: a `[table]` or `[[array]]` header and each of
/// its entries; else the key through the end of its value (a value, an
/// inline table or array, a dotted key's subtree: all on its line).
fn entry_ranges(
    text: &str,
    key: &Spanned<DeString<'_>>,
    value: &Spanned<DeValue<'_>>,
    out: &mut Vec<Range<usize>>,
) {
    let is_header = |span: &Range<usize>| text.as_bytes().get(span.start) == Some(&b'[');
    match value.get_ref() {
        DeValue::Table(t) if is_header(&value.span()) => {
            out.push(value.span());
            for (k, v) in t.iter() {
                entry_ranges(text, k, v, out);
            }
        }
        DeValue::Array(items)
            if !items.is_empty()
                && items.iter().all(|item| {
                    matches!(item.get_ref(), DeValue::Table(_)) && is_header(&item.span())
                }) =>
        {
            for item in items.iter() {
                out.push(item.span());
                if let DeValue::Table(t) = item.get_ref() {
                    for (k, v) in t.iter() {
                        entry_ranges(text, k, v, out);
                    }
                }
            }
        }
        _ => out.push(key.span().start..end_of(value)),
    }
}

/// Where a value ends, its nested entries included.
fn end_of(value: &Spanned<DeValue<'_>>) -> usize {
    let nested = match value.get_ref() {
        DeValue::Table(t) => t.values().map(end_of).max(),
        DeValue::Array(items) => items.iter().map(end_of).max(),
        _ => None,
    };
    nested.map_or(value.span().end, |n| n.max(value.span().end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        listener: Listener,
        #[serde(default)]
        route: Vec<Route>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Listener {
        address: String,
        port: Option<u16>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Route {
        path: String,
    }

    fn names(errors: &[toml::de::Error]) -> Vec<String> {
        errors
            .iter()
            .map(|e| e.message().split('`').nth(1).unwrap_or("").to_owned())
            .collect()
    }

    #[test]
    fn every_unknown_key_is_found_and_the_rest_is_read() {
        let text = "[listener]\naddress = \"x\"\nbogus = [1,\n 2]\ninline = { a = 1 }\ndotted.b = 2\n\n[extra]\na = 1\n\n[[also]]\nb = 2\n\n[[route]]\npath = \"/\"\nzzz = 3\n";
        let (doc, unknown) = parse_skipping_unknown::<Doc>(text);
        let doc = doc.expect("the rest parses");
        assert_eq!(doc.listener.address, "x");
        assert_eq!(doc.route.len(), 1);
        let mut found = names(&unknown);
        found.sort();
        assert_eq!(found, ["also", "bogus", "dotted", "extra", "inline", "zzz"]);
        assert!(
            unknown.iter().any(|e| e.to_string().contains("line 3")),
            "line numbers are the file's: {unknown:?}"
        );
    }

    #[test]
    fn another_error_ends_the_parse_with_the_unknown_keys_found_before_it() {
        let text = "[listener]\naddress = \"x\"\nport = \"not a number\"\nbogus = 1\n";
        let (doc, unknown) = parse_skipping_unknown::<Doc>(text);
        let error = doc.expect_err("a wrong type stops it");
        assert!(!error.message().starts_with("unknown field"), "{error}");
        assert!(names(&unknown).len() <= 1);
    }
}
