//! Session-ticket keys shared by every replica (`listener.session_ticket_keys`).
//!
//! The key file holds one base64 key per line (blank lines and `#` comments
//! are skipped). A key is 80 bytes in nginx's `ssl_session_ticket_key`
//! layout, so `openssl rand 80 | base64 -w0` makes one and an nginx key file
//! converts with `base64 -w0`:
//!
//! | bytes | nginx | certgate |
//! |---|---|---|
//! | 0..16 | key name | key name: which key sealed a ticket |
//! | 16..48 | HMAC-SHA256 secret | reserved (AES-GCM authenticates itself) |
//! | 48..80 | AES-256 key | AES-256-GCM key |
//!
//! The first key seals new tickets; every key opens them. A fleet rotates by
//! putting a new key first everywhere, then, once every replica has it,
//! removing the oldest. A ticket is `name ‖ nonce ‖ AES-256-GCM(state)`,
//! with the name as associated data; the nonce is random per ticket.
//!
//! What a ticket carries (the client's chain among it) is trusted only as
//! far as the current state accepts it: a resumed session is verified again
//! before its first request (`proxy::verified`).

use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine;
use rustls::server::ProducesTickets;

use super::LoadError;

/// The length of one key in the file, as nginx's.
pub const KEY_LEN: usize = 80;
const NAME_LEN: usize = 16;
const AES_KEY_AT: usize = 48;
/// The lifetime clients are told: the key, not the ticket, bounds how long a
/// ticket works, so rotating keys is what ends old sessions.
const LIFETIME_SECS: u32 = 12 * 60 * 60;

/// The ticketer over the keys of one key file.
pub struct SharedTicketer {
    /// In file order: the first seals.
    keys: Vec<TicketKey>,
}

struct TicketKey {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
}

/// Key names only: the keys themselves are never printed.
impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTicketer")
            .field(
                "key_names",
                &self
                    .keys
                    .iter()
                    .map(|k| hex::encode(k.name))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SharedTicketer {
    /// Reads the key file.
    ///
    /// # Errors
    /// The file cannot be read, holds no key, a line is not base64 of
    /// exactly 80 bytes, or two keys share a name (a ticket would not say
    /// which key opens it). A reason never quotes a key.
    pub fn load(file: &Path) -> Result<SharedTicketer, LoadError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| LoadError::new(file, format!("cannot read session ticket keys: {e}")))?;
        Self::parse(&text).map_err(|reason| LoadError::new(file, reason))
    }

    fn parse(text: &str) -> Result<SharedTicketer, String> {
        let mut keys: Vec<TicketKey> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let lineno = i + 1;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(line)
                .map_err(|_| format!("line {lineno}: not base64"))?;
            let raw: [u8; KEY_LEN] = raw.as_slice().try_into().map_err(|_| {
                format!(
                    "line {lineno}: a key is {KEY_LEN} bytes (`openssl rand 80 | base64 -w0`), this one {}",
                    raw.len()
                )
            })?;
            let key = TicketKey::new(&raw);
            if keys.iter().any(|k| k.name == key.name) {
                return Err(format!(
                    "line {lineno}: key name {} is used by an earlier key",
                    hex::encode(key.name)
                ));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("no session ticket key in the file".into());
        }
        Ok(SharedTicketer { keys })
    }

    /// The key names in file order (hex), for logs: names are public, they
    /// travel in every ticket.
    pub fn key_names(&self) -> Vec<String> {
        self.keys.iter().map(|k| hex::encode(k.name)).collect()
    }
}

impl TicketKey {
    fn new(raw: &[u8; KEY_LEN]) -> TicketKey {
        let mut name = [0; NAME_LEN];
        name.copy_from_slice(&raw[..NAME_LEN]);
        let aead =
            UnboundKey::new(&AES_256_GCM, &raw[AES_KEY_AT..]).expect("32 bytes is an AES-256 key");
        TicketKey {
            name,
            aead: LessSafeKey::new(aead),
        }
    }
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        let mut nonce = [0; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.name),
                &mut sealed,
            )
            .ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        // Attacker-controlled: every split is checked, and a wrong name or
        // tag is `None`, never a panic.
        let (name, rest) = ticket.split_at_checked(NAME_LEN)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let key = self.keys.iter().find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(key.name), &mut buf)
            .ok()?;
        let len = plain.len();
        buf.truncate(len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fill: u8) -> String {
        let mut raw = [fill; KEY_LEN];
        // Distinct names, distinct AES keys.
        raw[0] = fill;
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let (old, new) = (key(1), key(2));
        let before = SharedTicketer::parse(&old).unwrap();
        let during = SharedTicketer::parse(&format!("# rotation\n{new}\n\n{old}\n")).unwrap();
        let after = SharedTicketer::parse(&new).unwrap();

        let old_ticket = before.encrypt(b"session").unwrap();
        assert_eq!(
            during.decrypt(&old_ticket).as_deref(),
            Some(&b"session"[..]),
            "a ticket sealed before the rotation still opens while its key is listed"
        );
        let new_ticket = during.encrypt(b"session").unwrap();
        assert_eq!(
            &new_ticket[..NAME_LEN],
            &[2; NAME_LEN],
            "the first key seals"
        );
        assert_eq!(after.decrypt(&new_ticket).as_deref(), Some(&b"session"[..]));
        assert_eq!(
            after.decrypt(&old_ticket),
            None,
            "a removed key's tickets no longer open"
        );
    }

    #[test]
    fn forged_and_truncated_tickets_do_not_open() {
        let t = SharedTicketer::parse(&key(7)).unwrap();
        let ticket = t.encrypt(b"session state").unwrap();
        for cut in 0..ticket.len() {
            assert_eq!(t.decrypt(&ticket[..cut]), None, "truncated to {cut}");
        }
        for i in 0..ticket.len() {
            let mut flipped = ticket.clone();
            flipped[i] ^= 1;
            assert_eq!(t.decrypt(&flipped), None, "bit flipped in byte {i}");
        }
        let a = t.encrypt(b"x").unwrap();
        let b = t.encrypt(b"x").unwrap();
        assert_ne!(a, b, "a fresh nonce per ticket");
    }

    #[test]
    fn bad_key_files_say_which_line_and_never_quote_a_key() {
        let short = base64::engine::general_purpose::STANDARD.encode([9u8; 48]);
        let cases = [
            ("", "no session ticket key"),
            ("# only a comment\n", "no session ticket key"),
            ("not base64!\n", "line 1: not base64"),
            (short.as_str(), "line 1: a key is 80 bytes"),
        ];
        for (text, want) in cases {
            let err = SharedTicketer::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(text.is_empty() || !err.contains(text.trim()), "{err}");
        }
        let dup = format!("{}\n{}\n", key(3), key(3));
        let err = SharedTicketer::parse(&dup).unwrap_err();
        assert!(err.contains("line 2: key name"), "{err}");
    }
}
