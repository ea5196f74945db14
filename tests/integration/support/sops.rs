//! SOPS fixtures made by the real tools (`sops`, `age-keygen`, built by the testbed), as users make
//! them.
use std::path::{Path, PathBuf};
use std::process::Command;

use super::run;

/// An age key pair written by `age-keygen`.
pub struct AgeKey {
    pub file: PathBuf,
    pub recipient: String,
    /// The whole key file (comments and the secret key line).
    pub text: String,
}

pub fn age_key(dir: &Path, name: &str) -> AgeKey {
    let file = dir.join(format!("{name}.agekey"));
    run(Command::new("age-keygen").arg("-o").arg(&file));
    let text = std::fs::read_to_string(&file).expect("key file");
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("age-keygen writes the public key")
        .to_string();
    AgeKey {
        file,
        recipient,
        text,
    }
}

impl AgeKey {
    pub fn keys(&self) -> kubesync::sops::Keys {
        kubesync::sops::Keys::parse(&self.text).expect("age-keygen's file parses")
    }
}

/// `sops --encrypt` of `plain` for `recipients` with `args`; the encrypted text.
pub fn sops_encrypt(plain: &Path, recipients: &[&AgeKey], args: &[&str]) -> String {
    let list: Vec<&str> = recipients.iter().map(|k| k.recipient.as_str()).collect();
    run(Command::new("sops")
        .arg("--encrypt")
        .arg("--age")
        .arg(list.join(","))
        .args(args)
        .arg(plain)
        .env_remove("SOPS_AGE_KEY_FILE")
        .env_remove("SOPS_AGE_KEY"))
}

/// `sops --decrypt` of an encrypted file with `key`: what SOPS itself prints.
pub fn sops_decrypt(file: &Path, key: &AgeKey) -> String {
    run(Command::new("sops")
        .arg("--decrypt")
        .arg(file)
        .env("SOPS_AGE_KEY_FILE", &key.file)
        .env_remove("SOPS_AGE_KEY"))
}
