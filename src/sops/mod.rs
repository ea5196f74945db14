//! SOPS-encrypted manifests (YAML and JSON), decrypted in memory with age keys.
//!
//! A SOPS file keeps its structure in the clear and each value as
//! `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]`, encrypted with one data key under AES-256-GCM
//! (32-byte nonce). The additional data is the value's path of mapping keys, joined by `:`.
//! The data key itself is age-encrypted for each recipient in the `sops` metadata. A SHA-512 over
//! every value in document order (only the encrypted ones with `mac_only_encrypted`) is the
//! file's message authentication code, stored encrypted with `lastmodified` as additional data;
//! a file whose MAC does not match is refused. Plain values exist only in the returned manifests:
//! never in an error.
//!
//! Not supported, and refused by name: PGP, cloud KMS and Vault keys (age only), Shamir key
//! groups, and the comment-based rules (`encrypted_comment_regex`, `unencrypted_comment_regex`),
//! which need the YAML comments this loader does not keep.
use std::io::Read;

use aes_gcm::aead::consts::U32;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine;
use sha2::{Digest, Sha512};

mod tree;

pub use tree::Node;

/// Why a SOPS file cannot be decrypted. Never carries a plain value or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SopsError {
    #[error(
        "encrypted with SOPS for {recipients}, and no age key was given (--age-key-file, \
         SOPS_AGE_KEY_FILE, or a GitSync's spec.decryption)"
    )]
    NoKeys { recipients: String },
    #[error("encrypted with SOPS for {recipients}; none of the age keys given is one of them")]
    NoMatchingKey { recipients: String },
    #[error(
        "encrypted with SOPS without age recipients (only age keys are supported; PGP, cloud KMS \
         and Vault are not)"
    )]
    NoAgeRecipients,
    #[error("its sops metadata is invalid: {0}")]
    Metadata(String),
    #[error("it holds SOPS-encrypted values but no sops entry (cut or edited after encryption?)")]
    MissingMetadata,
    #[error("SOPS {0} is not supported")]
    Unsupported(&'static str),
    #[error("the value at {path} cannot be decrypted (changed after encryption, or not SOPS)")]
    Value { path: String },
    #[error(
        "the message authentication code does not match: the file was changed after it was \
         encrypted (re-encrypt it with sops)"
    )]
    MacMismatch,
    #[error(
        "its message authentication code cannot be decrypted (changed, or lastmodified edited)"
    )]
    MacUnreadable,
}

/// Why a set of age keys cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("line {line} of the age keys is not an age secret key (AGE-SECRET-KEY-1…)")]
    NotAnAgeKey { line: usize },
}

/// The age identities a sync may decrypt with.
#[derive(Clone, Default)]
pub struct Keys {
    identities: Vec<age::x25519::Identity>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} age identities)", self.identities.len())
    }
}

impl Keys {
    /// Age secret keys, one per line, as `age-keygen` writes them (`#` comments allowed).
    pub fn parse(text: &str) -> Result<Keys, KeyError> {
        let mut identities = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let identity = line
                .parse::<age::x25519::Identity>()
                .map_err(|_| KeyError::NotAnAgeKey { line: i + 1 })?;
            identities.push(identity);
        }
        Ok(Keys { identities })
    }

    pub fn extend(&mut self, other: Keys) {
        self.identities.extend(other.identities);
    }

    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// The public keys (recipients) of these identities.
    pub fn recipients(&self) -> Vec<String> {
        self.identities
            .iter()
            .map(|i| i.to_public().to_string())
            .collect()
    }
}

/// Whether a parsed document carries a SOPS entry (no Kubernetes object has a top-level `sops`
/// field; an incomplete entry is still SOPS's, and refused as such).
pub fn is_encrypted(document: &serde_json::Value) -> bool {
    document.get("sops").is_some()
}

/// Whether a document holds SOPS-encrypted values. Without a `sops` entry such a file was cut or
/// edited: it is refused rather than applied with its ciphertext.
pub fn holds_encrypted_values(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.starts_with("ENC[AES256_GCM,"),
        Value::Array(items) => items.iter().any(holds_encrypted_values),
        Value::Object(map) => map.values().any(holds_encrypted_values),
        _ => false,
    }
}

/// Which values are encrypted.
enum Rule {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(regex::Regex),
    EncryptedRegex(regex::Regex),
}

impl Rule {
    fn encrypts(&self, path: &[String]) -> bool {
        match self {
            Rule::UnencryptedSuffix(s) => !path.iter().any(|p| p.ends_with(s.as_str())),
            Rule::EncryptedSuffix(s) => path.iter().any(|p| p.ends_with(s.as_str())),
            Rule::UnencryptedRegex(r) => !path.iter().any(|p| r.is_match(p)),
            Rule::EncryptedRegex(r) => path.iter().any(|p| r.is_match(p)),
        }
    }
}

/// The `sops` entry of a file.
struct Metadata {
    /// (recipient, armored age file holding the data key).
    age: Vec<(String, String)>,
    mac: String,
    last_modified: String,
    rule: Rule,
    mac_only_encrypted: bool,
}

fn text_field(node: &Node, key: &str) -> Option<String> {
    node.get(key).and_then(Node::as_str).map(String::from)
}

fn age_entries(node: Option<&Node>) -> Vec<(String, String)> {
    let Some(Node::Seq(items)) = node else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|i| Some((text_field(i, "recipient")?, text_field(i, "enc")?)))
        .collect()
}

impl Metadata {
    fn read(sops: &Node) -> Result<Metadata, SopsError> {
        let missing = |field: &str| SopsError::Metadata(format!("sops.{field} is missing"));
        if text_field(sops, "encrypted_comment_regex").is_some()
            || text_field(sops, "unencrypted_comment_regex").is_some()
        {
            return Err(SopsError::Unsupported("encryption by comment regex"));
        }
        let mut age = age_entries(sops.get("age"));
        if let Some(Node::Seq(groups)) = sops.get("key_groups") {
            if groups.len() > 1 {
                return Err(SopsError::Unsupported(
                    "Shamir secret sharing over key groups",
                ));
            }
            age.extend(groups.iter().flat_map(|g| age_entries(g.get("age"))));
        }
        let rules = [
            ("unencrypted_suffix", 0),
            ("encrypted_suffix", 1),
            ("unencrypted_regex", 2),
            ("encrypted_regex", 3),
        ];
        let set: Vec<(String, i32)> = rules
            .iter()
            .filter_map(|(k, n)| {
                text_field(sops, k)
                    .filter(|v| !v.is_empty())
                    .map(|v| (v, *n))
            })
            .collect();
        let regex = |pattern: &str| {
            regex::Regex::new(pattern)
                .map_err(|_| SopsError::Metadata(format!("the regex {pattern:?} is invalid")))
        };
        let rule = match set.as_slice() {
            [] => Rule::UnencryptedSuffix("_unencrypted".into()),
            [(v, 0)] => Rule::UnencryptedSuffix(v.clone()),
            [(v, 1)] => Rule::EncryptedSuffix(v.clone()),
            [(v, 2)] => Rule::UnencryptedRegex(regex(v)?),
            [(v, _)] => Rule::EncryptedRegex(regex(v)?),
            _ => return Err(SopsError::Metadata("more than one encryption rule".into())),
        };
        Ok(Metadata {
            age,
            mac: text_field(sops, "mac").ok_or_else(|| missing("mac"))?,
            last_modified: text_field(sops, "lastmodified")
                .ok_or_else(|| missing("lastmodified"))?,
            rule,
            mac_only_encrypted: matches!(sops.get("mac_only_encrypted"), Some(Node::Bool(true))),
        })
    }

    fn recipients(&self) -> String {
        let list: Vec<&str> = self.age.iter().map(|(r, _)| r.as_str()).collect();
        format!("age recipients {}", list.join(", "))
    }

    /// The data key, from the first recipient one of `keys` can open.
    fn data_key(&self, keys: &Keys) -> Result<Vec<u8>, SopsError> {
        if self.age.is_empty() {
            return Err(SopsError::NoAgeRecipients);
        }
        if keys.is_empty() {
            return Err(SopsError::NoKeys {
                recipients: self.recipients(),
            });
        }
        let opened = self.age.iter().find_map(|(_, enc)| open_age(enc, keys));
        opened.ok_or_else(|| SopsError::NoMatchingKey {
            recipients: self.recipients(),
        })
    }
}

/// The 32-byte key inside an armored age file, if one of `keys` opens it.
fn open_age(armored: &str, keys: &Keys) -> Option<Vec<u8>> {
    let reader = age::armor::ArmoredReader::new(armored.as_bytes());
    let decryptor = age::Decryptor::new(reader).ok()?;
    let identities = keys.identities.iter().map(|i| i as &dyn age::Identity);
    let mut stream = decryptor.decrypt(identities).ok()?;
    let mut key = Vec::new();
    stream.read_to_end(&mut key).ok()?;
    (key.len() == 32).then_some(key)
}

type Aes256Gcm32 = aes_gcm::AesGcm<aes_gcm::aes::Aes256, U32>;

/// An `ENC[AES256_GCM,…]` value, decrypted: its plain bytes and its type.
fn open_value(text: &str, key: &[u8], additional_data: &str) -> Option<(Vec<u8>, String)> {
    let inner = text.strip_prefix("ENC[AES256_GCM,")?.strip_suffix(']')?;
    let field = |name: &str| {
        inner
            .split(',')
            .find_map(|part| part.strip_prefix(name)?.strip_prefix(':'))
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut data = b64.decode(field("data")?).ok()?;
    let iv = b64.decode(field("iv")?).ok()?;
    let tag = b64.decode(field("tag")?).ok()?;
    let kind = field("type")?.to_string();
    if iv.len() != 32 || tag.len() != 16 {
        return None;
    }
    data.extend_from_slice(&tag);
    let cipher = Aes256Gcm32::new_from_slice(key).ok()?;
    let payload = Payload {
        msg: &data,
        aad: additional_data.as_bytes(),
    };
    let plain = cipher
        .decrypt(GenericArray::from_slice(&iv), payload)
        .ok()?;
    Some((plain, kind))
}

/// A decrypted value as the document holds it.
fn typed(plain: Vec<u8>, kind: &str) -> Option<Node> {
    let text = || String::from_utf8(plain.clone()).ok();
    Some(match kind {
        "str" | "time" => Node::Str(text()?),
        "bytes" => Node::Str(String::from_utf8_lossy(&plain).into_owned()),
        "int" => Node::Int(text()?.parse().ok()?),
        "float" => Node::Float(text()?.parse().ok()?),
        "bool" => Node::Bool(match text()?.as_str() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
            "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
            _ => return None,
        }),
        _ => return None,
    })
}

/// A value's bytes as SOPS feeds them to the MAC (Go's formatting of numbers and booleans).
fn mac_bytes(node: &Node) -> Vec<u8> {
    match node {
        Node::Str(s) => s.as_bytes().to_vec(),
        Node::Int(i) => i.to_string().into_bytes(),
        Node::Float(f) if f.is_infinite() => if *f > 0.0 { "+Inf" } else { "-Inf" }.into(),
        Node::Float(f) => format!("{f}").into_bytes(),
        Node::Bool(true) => b"True".to_vec(),
        Node::Bool(false) => b"False".to_vec(),
        Node::Null | Node::Seq(_) | Node::Map(_) => Vec::new(),
    }
}

/// Walks the documents as SOPS does (mapping keys form the path; sequence items share their
/// parent's path), decrypting values in place and hashing them for the MAC.
struct Walk<'a> {
    metadata: &'a Metadata,
    key: &'a [u8],
    hash: Sha512,
    path: Vec<String>,
}

impl Walk<'_> {
    fn node(&mut self, node: &mut Node) -> Result<(), SopsError> {
        match node {
            Node::Null => Ok(()),
            Node::Map(entries) => {
                for (k, v) in entries.iter_mut() {
                    self.path.push(k.clone());
                    let walked = self.node(v);
                    self.path.pop();
                    walked?;
                }
                Ok(())
            }
            Node::Seq(items) => items.iter_mut().try_for_each(|i| self.node(i)),
            leaf => self.leaf(leaf),
        }
    }

    fn leaf(&mut self, leaf: &mut Node) -> Result<(), SopsError> {
        let encrypted = self.metadata.rule.encrypts(&self.path);
        if encrypted {
            *leaf = self.decrypt(leaf)?;
        }
        if !self.metadata.mac_only_encrypted || encrypted {
            self.hash.update(mac_bytes(leaf));
        }
        Ok(())
    }

    fn decrypt(&self, leaf: &Node) -> Result<Node, SopsError> {
        let failed = || SopsError::Value {
            path: self.path.join("."),
        };
        let text = leaf.as_str().ok_or_else(failed)?;
        if text.is_empty() {
            return Ok(Node::Str(String::new()));
        }
        let additional_data = format!("{}:", self.path.join(":"));
        let (plain, kind) = open_value(text, self.key, &additional_data).ok_or_else(failed)?;
        typed(plain, &kind).ok_or_else(failed)
    }
}

/// What the MAC's hash starts with under `mac_only_encrypted`, so that the two kinds of MAC never
/// agree (SOPS's constant).
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// `lastmodified` as SOPS formats it for the MAC's additional data (RFC 3339, whole seconds).
fn mac_additional_data(last_modified: &str) -> String {
    match last_modified.split_once('.') {
        Some((seconds, rest)) => {
            let zone = rest.trim_start_matches(|c: char| c.is_ascii_digit());
            format!("{seconds}{zone}")
        }
        None => last_modified.to_string(),
    }
}

/// Decrypts the documents of one SOPS file (the first holds the `sops` metadata; every
/// document loses its `sops` entry) and verifies the MAC over all of them.
pub fn decrypt(mut documents: Vec<Node>, keys: &Keys) -> Result<Vec<serde_json::Value>, SopsError> {
    let sops = documents
        .first()
        .and_then(|d| d.get("sops"))
        .cloned()
        .ok_or_else(|| SopsError::Metadata("the first document has no sops entry".into()))?;
    let metadata = Metadata::read(&sops)?;
    for document in documents.iter_mut() {
        if let Node::Map(entries) = document {
            entries.retain(|(k, _)| k != "sops");
        }
    }
    let key = metadata.data_key(keys)?;
    let mut hash = Sha512::new();
    if metadata.mac_only_encrypted {
        hash.update(MAC_ONLY_ENCRYPTED_INIT);
    }
    let mut walk = Walk {
        metadata: &metadata,
        key: &key,
        hash,
        path: Vec::new(),
    };
    for document in documents.iter_mut() {
        walk.node(document)?;
    }
    let computed: String = walk
        .hash
        .finalize()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    let aad = mac_additional_data(&metadata.last_modified);
    let (stored, _) = open_value(&metadata.mac, &key, &aad).ok_or(SopsError::MacUnreadable)?;
    if stored != computed.as_bytes() {
        return Err(SopsError::MacMismatch);
    }
    Ok(documents.into_iter().map(Node::into_json).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway key made by age-keygen for these tests only.
    const KEY: &str = "AGE-SECRET-KEY-12FUGW6G22TDR2HEE7QVW04JP4N086FLNHNNZPXN8JER0YPVMQ86QE9XSRG";

    #[test]
    fn keys_parse_like_age_keygen_files_and_errors_hold_no_key() {
        let keys = Keys::parse(&format!("# created: now\n# public key: age1…\n{KEY}\n\n"))
            .expect("parses");
        assert_eq!(keys.recipients().len(), 1);
        assert!(keys.recipients()[0].starts_with("age1"));
        let bad = Keys::parse(&format!("{KEY}\nAGE-SECRET-KEY-1NOTAKEY\n")).expect_err("refused");
        assert_eq!(bad, KeyError::NotAnAgeKey { line: 2 });
        assert!(!bad.to_string().contains("NOTAKEY"));
        assert!(
            format!("{keys:?}").contains("1 age identities") && !format!("{keys:?}").contains(KEY)
        );
    }

    #[test]
    fn rules_pick_the_encrypted_values_by_path() {
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let default = Rule::UnencryptedSuffix("_unencrypted".into());
        assert!(default.encrypts(&path(&["data", "password"])));
        assert!(!default.encrypts(&path(&["data_unencrypted", "x"])));
        let regex = Rule::EncryptedRegex(regex::Regex::new("^(data|stringData)$").expect("re"));
        assert!(regex.encrypts(&path(&["stringData", "password"])));
        assert!(!regex.encrypts(&path(&["metadata", "name"])));
    }

    #[test]
    fn values_are_typed_and_hashed_as_sops_does() {
        assert_eq!(typed(b"True".to_vec(), "bool"), Some(Node::Bool(true)));
        assert_eq!(typed(b"42".to_vec(), "int"), Some(Node::Int(42)));
        assert_eq!(typed(b"0.25".to_vec(), "float"), Some(Node::Float(0.25)));
        assert_eq!(typed(b"yes".to_vec(), "bool"), None);
        assert_eq!(typed(b"x".to_vec(), "nonsense"), None);
        assert_eq!(mac_bytes(&Node::Bool(false)), b"False");
        assert_eq!(mac_bytes(&Node::Float(2.0)), b"2");
        assert_eq!(mac_bytes(&Node::Float(0.1)), b"0.1");
        assert_eq!(
            mac_additional_data("2026-12-02T16:20:00.123Z"),
            "2026-12-02T16:20:00Z"
        );
        assert_eq!(
            mac_additional_data("2026-12-02T16:20:00Z"),
            "2026-12-02T16:20:00Z"
        );
    }

    #[test]
    fn damaged_values_do_not_open() {
        let key = [7u8; 32];
        assert!(
            open_value(
                "ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]",
                &key,
                "a:"
            )
            .is_none()
        );
        assert!(open_value("not sops", &key, "a:").is_none());
        assert!(open_value("ENC[AES256_GCM,data:!!,iv:,tag:,type:str]", &key, "a:").is_none());
    }
}
