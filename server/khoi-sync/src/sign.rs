//! Ed25519 signatures over what a publisher or a site writes to the bucket.
//!
//! ```text
//! offset 0    magic "KHOISIG1"
//! offset 8    kind, 16 bytes ASCII, zero-padded ("manifest", "retire", "status", ...)
//! offset 24   key id: the first 8 bytes of BLAKE3(public key)
//! offset 32   Ed25519 signature (64 bytes) over "khoi-sync/" kind "\0" body
//! offset 96   body (JSON)
//! ```
//! The kind is inside what is signed, so a signed status can never pass for
//! a manifest. The key id only picks which trusted key to try, and names a
//! foreign key in the refusal; it grants nothing.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::chunk::{hex, unhex};

const MAGIC: &[u8; 8] = b"KHOISIG1";
const KIND_LEN: usize = 16;
const HEADER: usize = 8 + KIND_LEN + 8 + 64;

const SECRET_TAG: &str = "khoi-sync-secret-v1";

/// What a signed object is. Part of the signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Manifest,
    Retire,
    Status,
    Snapshot,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Retire => "retire",
            Kind::Status => "status",
            Kind::Snapshot => "snapshot",
        }
    }
}

/// A key's short id, as shown to people and written in envelopes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    pub fn of(key: &VerifyingKey) -> KeyId {
        let h = blake3::hash(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&h.as_bytes()[..8]);
        KeyId(id)
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Why a signed object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("not a signed Khoi object (too short or bad magic)")]
    Malformed,
    #[error("signed as a {got:?}, expected a {expected}")]
    WrongKind { expected: &'static str, got: String },
    #[error("signed with key {0}, which is not a trusted key here")]
    ForeignKey(KeyId),
    #[error("the signature does not match key {0} (altered or forged)")]
    BadSignature(KeyId),
}

fn message(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 32);
    m.extend_from_slice(b"khoi-sync/");
    m.extend_from_slice(kind.name().as_bytes());
    m.push(0);
    m.extend_from_slice(body);
    m
}

/// Wraps `body` in a signed envelope.
pub fn sign(key: &SigningKey, kind: Kind, body: &[u8]) -> Vec<u8> {
    let sig = key.sign(&message(kind, body));
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    let mut k = [0u8; KIND_LEN];
    k[..kind.name().len()].copy_from_slice(kind.name().as_bytes());
    out.extend_from_slice(&k);
    out.extend_from_slice(&KeyId::of(&key.verifying_key()).0);
    out.extend_from_slice(&sig.to_bytes());
    out.extend_from_slice(body);
    out
}

/// Checks an envelope against the trusted keys and returns its body and
/// the key that signed it.
pub fn verify<'a>(
    trusted: &[VerifyingKey],
    kind: Kind,
    signed: &'a [u8],
) -> Result<(&'a [u8], VerifyingKey), SignError> {
    if signed.len() < HEADER || &signed[..8] != MAGIC {
        return Err(SignError::Malformed);
    }
    let k = &signed[8..8 + KIND_LEN];
    let name = kind.name().as_bytes();
    if &k[..name.len()] != name || k[name.len()..].iter().any(|&b| b != 0) {
        let got = String::from_utf8_lossy(k)
            .trim_end_matches('\0')
            .to_string();
        return Err(SignError::WrongKind {
            expected: kind.name(),
            got,
        });
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&signed[24..32]);
    let id = KeyId(id);
    let key = trusted
        .iter()
        .find(|t| KeyId::of(t) == id)
        .ok_or(SignError::ForeignKey(id))?;
    let sig = Signature::from_slice(&signed[32..96]).map_err(|_| SignError::BadSignature(id))?;
    let body = &signed[HEADER..];
    key.verify_strict(&message(kind, body), &sig)
        .map_err(|_| SignError::BadSignature(id))?;
    Ok((body, *key))
}

/// A new random signing key.
pub fn generate() -> std::io::Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A public key as written in config files: 64 hex digits.
pub fn public_hex(key: &VerifyingKey) -> String {
    hex(key.as_bytes())
}

pub fn parse_public(s: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = unhex(s.trim())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{s:?} is not a public key (64 lowercase hex digits)"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| format!("{s:?} is not a valid Ed25519 key"))
}

/// Writes a new private key file, owner-only, refusing to replace one.
pub fn write_secret(path: &Path, key: &SigningKey) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{SECRET_TAG} {}", hex(&key.to_bytes()))?;
    f.sync_all()
}

/// Reads a private key file; refuses one that anyone but its owner can read.
pub fn read_secret(path: &Path) -> Result<SigningKey, String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{}: a private key must be readable by its owner only (chmod 600)",
            path.display()
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let seed: [u8; 32] = text
        .trim()
        .strip_prefix(SECRET_TAG)
        .and_then(|rest| unhex(rest.trim()))
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{}: not a Khoi sync private key", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn envelope_layout() {
        let k = key(1);
        let s = sign(&k, Kind::Manifest, b"{}");
        assert_eq!(&s[..8], b"KHOISIG1");
        assert_eq!(&s[8..24], b"manifest\0\0\0\0\0\0\0\0");
        assert_eq!(&s[24..32], &KeyId::of(&k.verifying_key()).0);
        assert_eq!(&s[96..], b"{}");
        assert_eq!(s.len(), 98);
        // Ed25519 is deterministic: the same key and body sign the same.
        assert_eq!(s, sign(&k, Kind::Manifest, b"{}"));
    }

    #[test]
    fn verify_accepts_a_trusted_key() {
        let k = key(1);
        let s = sign(&k, Kind::Manifest, b"hello");
        let (body, by) = verify(
            &[key(2).verifying_key(), k.verifying_key()],
            Kind::Manifest,
            &s,
        )
        .expect("ok");
        assert_eq!(body, b"hello");
        assert_eq!(by, k.verifying_key());
    }

    #[test]
    fn a_changed_body_or_signature_is_refused() {
        let k = key(1);
        let trusted = [k.verifying_key()];
        let id = KeyId::of(&k.verifying_key());
        let s = sign(&k, Kind::Manifest, b"hello");
        let mut body = s.clone();
        *body.last_mut().expect("body") ^= 1;
        assert_eq!(
            verify(&trusted, Kind::Manifest, &body),
            Err(SignError::BadSignature(id))
        );
        let mut sig = s.clone();
        sig[40] ^= 0x80;
        assert_eq!(
            verify(&trusted, Kind::Manifest, &sig),
            Err(SignError::BadSignature(id))
        );
        // The right key id in front of another key's signature.
        let mut swapped = sign(&key(3), Kind::Manifest, b"hello");
        swapped[24..32].copy_from_slice(&id.0);
        assert_eq!(
            verify(&trusted, Kind::Manifest, &swapped),
            Err(SignError::BadSignature(id))
        );
    }

    #[test]
    fn another_key_is_refused_by_name() {
        let other = key(9);
        let s = sign(&other, Kind::Manifest, b"hello");
        assert_eq!(
            verify(&[key(1).verifying_key()], Kind::Manifest, &s),
            Err(SignError::ForeignKey(KeyId::of(&other.verifying_key())))
        );
        assert_eq!(
            verify(&[], Kind::Manifest, &s),
            Err(SignError::ForeignKey(KeyId::of(&other.verifying_key())))
        );
    }

    #[test]
    fn kinds_do_not_mix() {
        let k = key(1);
        let s = sign(&k, Kind::Status, b"{}");
        assert!(matches!(
            verify(&[k.verifying_key()], Kind::Manifest, &s),
            Err(SignError::WrongKind { .. })
        ));
        // Relabelled: the kind is signed, so the signature breaks.
        let mut relabelled = s.clone();
        relabelled[8..24].copy_from_slice(b"manifest\0\0\0\0\0\0\0\0");
        assert!(matches!(
            verify(&[k.verifying_key()], Kind::Manifest, &relabelled),
            Err(SignError::BadSignature(_))
        ));
        assert_eq!(
            verify(&[k.verifying_key()], Kind::Manifest, b"KHOISIG1"),
            Err(SignError::Malformed)
        );
        assert_eq!(
            verify(&[k.verifying_key()], Kind::Manifest, &[0u8; 200]),
            Err(SignError::Malformed)
        );
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("province.key");
        let k = generate().expect("key");
        write_secret(&path, &k).expect("write");
        assert_eq!(
            fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_secret(&path).expect("read").to_bytes(), k.to_bytes());
        assert!(write_secret(&path, &k).is_err(), "never replaces a key");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        let e = read_secret(&path).expect_err("group-readable");
        assert!(e.contains("chmod 600"), "{e}");
        let pk = public_hex(&k.verifying_key());
        assert_eq!(parse_public(&pk).expect("parse"), k.verifying_key());
        assert!(parse_public(&pk[..62]).is_err());
        assert!(parse_public(&pk.to_uppercase()).is_err());
    }
}
