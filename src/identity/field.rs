//! The certificate fields a `[[roles.map]]` rule can match, and everything
//! certgate knows about each one: its config key, how its patterns compare,
//! whether a certificate should carry it once, how a pattern is normalized
//! and where its values live in an [`Identity`].
//!
//! Adding a matcher is one variant here, its arm in each `match` below (the
//! compiler asks for them), and its place at the end of [`CertField::ALL`].

use std::borrow::Cow;

use super::Identity;

/// A certificate field that role rules match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CertField {
    Cn,
    Ou,
    O,
    Subject,
    IssuerCn,
    Dns,
    Uri,
    Email,
    SpiffeId,
    FingerprintSha256,
    Serial,
}

/// How a pattern compares with a field's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Byte for byte.
    Exact,
    /// ASCII case folded.
    CaseInsensitive,
    /// Exactly, as an RFC 4514 DN: `*` stays inside one attribute value.
    Dn,
}

impl CertField {
    /// Every field, in declaration order: the order rules are matched,
    /// described and explained in.
    pub const ALL: [CertField; 11] = [
        CertField::Cn,
        CertField::Ou,
        CertField::O,
        CertField::Subject,
        CertField::IssuerCn,
        CertField::Dns,
        CertField::Uri,
        CertField::Email,
        CertField::SpiffeId,
        CertField::FingerprintSha256,
        CertField::Serial,
    ];

    /// The matcher's key in `[[roles.map]]`.
    pub const fn name(self) -> &'static str {
        match self {
            CertField::Cn => "cn",
            CertField::Ou => "ou",
            CertField::O => "o",
            CertField::Subject => "subject",
            CertField::IssuerCn => "issuer_cn",
            CertField::Dns => "dns",
            CertField::Uri => "uri",
            CertField::Email => "email",
            CertField::SpiffeId => "spiffe_id",
            CertField::FingerprintSha256 => "fingerprint_sha256",
            CertField::Serial => "serial",
        }
    }

    /// The field's name in messages about a certificate ("2 CN values").
    pub const fn display_name(self) -> &'static str {
        match self {
            CertField::Cn => "CN",
            CertField::O => "O",
            CertField::IssuerCn => "issuer CN",
            CertField::Ou
            | CertField::Subject
            | CertField::Dns
            | CertField::Uri
            | CertField::Email
            | CertField::SpiffeId
            | CertField::FingerprintSha256
            | CertField::Serial => self.name(),
        }
    }

    /// The field whose config key is `name`.
    pub fn from_name(name: &str) -> Option<CertField> {
        CertField::ALL.into_iter().find(|f| f.name() == name)
    }

    /// How patterns for this field compare with its values (the "Roles"
    /// table in docs/requests.md).
    pub const fn compare(self) -> Compare {
        match self {
            CertField::Cn
            | CertField::Ou
            | CertField::O
            | CertField::IssuerCn
            | CertField::Uri
            | CertField::SpiffeId => Compare::Exact,
            CertField::Subject => Compare::Dn,
            CertField::Dns
            | CertField::Email
            | CertField::FingerprintSha256
            | CertField::Serial => Compare::CaseInsensitive,
        }
    }

    /// Whether a certificate is expected to carry this field once. A rule on
    /// such a field grants nothing to a certificate that has it several
    /// times: which value the rule meant is unknowable.
    pub const fn is_single_valued(self) -> bool {
        match self {
            CertField::Cn
            | CertField::O
            | CertField::IssuerCn
            | CertField::FingerprintSha256
            | CertField::Serial => true,
            CertField::Ou
            | CertField::Subject
            | CertField::Dns
            | CertField::Uri
            | CertField::Email
            | CertField::SpiffeId => false,
        }
    }

    /// A pattern as the operator wrote it, in the form the field's values
    /// take: hex fields drop `:` separators and case, a serial its leading
    /// zeros (see [`Identity::serial`]).
    pub fn normalize(self, pattern: &str) -> Cow<'_, str> {
        let hex = || pattern.replace(':', "").to_ascii_lowercase();
        match self {
            CertField::FingerprintSha256 => Cow::Owned(hex()),
            CertField::Serial => Cow::Owned(hex().trim_start_matches('0').to_owned()),
            CertField::Cn
            | CertField::Ou
            | CertField::O
            | CertField::Subject
            | CertField::IssuerCn
            | CertField::Dns
            | CertField::Uri
            | CertField::Email
            | CertField::SpiffeId => Cow::Borrowed(pattern),
        }
    }
}

// `ALL` lists the variants in declaration order, so a field's position in
// it is its discriminant.
const _: () = {
    let mut i = 0;
    while i < CertField::ALL.len() {
        assert!(CertField::ALL[i] as usize == i);
        i += 1;
    }
};

impl std::fmt::Display for CertField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Identity {
    /// The values a matcher on `field` compares against: none, one or
    /// several, as the certificate carries them.
    pub fn values(&self, field: CertField) -> &[String] {
        match field {
            CertField::Cn => &self.cn,
            CertField::Ou => &self.ou,
            CertField::O => &self.o,
            CertField::Subject => std::slice::from_ref(&self.subject),
            CertField::IssuerCn => &self.issuer_cn,
            CertField::Dns => &self.dns,
            CertField::Uri => &self.uri,
            CertField::Email => &self.email,
            CertField::SpiffeId => self.spiffe_id.as_slice(),
            CertField::FingerprintSha256 => std::slice::from_ref(&self.fingerprint_sha256),
            CertField::Serial => std::slice::from_ref(&self.serial),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        for field in CertField::ALL {
            assert_eq!(CertField::from_name(field.name()), Some(field), "{field}");
        }
        assert_eq!(CertField::from_name("common_name"), None);
        assert_eq!(CertField::from_name("CN"), None, "keys are case-sensitive");
    }

    #[test]
    fn patterns_are_normalized_like_the_values() {
        let cases = [
            (CertField::FingerprintSha256, "AB:cd:EF", "abcdef"),
            (CertField::Serial, "00:1A:2b", "1a2b"),
            (CertField::Cn, "Billing:API", "Billing:API"),
            (CertField::Subject, "CN=A:B", "CN=A:B"),
        ];
        for (field, pattern, expected) in cases {
            assert_eq!(field.normalize(pattern), expected, "{field}");
        }
    }

    #[test]
    fn values_come_from_the_named_field() {
        let id = Identity {
            subject: "CN=a".into(),
            cn: vec!["a".into(), "b".into()],
            serial: "1a".into(),
            ..Identity::default()
        };
        assert_eq!(id.values(CertField::Cn), ["a", "b"]);
        assert_eq!(id.values(CertField::Subject), ["CN=a"]);
        assert_eq!(id.values(CertField::Serial), ["1a"]);
        assert!(id.values(CertField::SpiffeId).is_empty());
        assert!(id.values(CertField::Ou).is_empty());
    }
}
