//! SSH host key verification against a known_hosts file, as OpenSSH reads it: plain and hashed
//! host patterns, `[host]:port`, negation, `@revoked`. Unknown and changed keys are refused.
use std::path::Path;

use base64::Engine;
use sha2::Digest;

/// Why a host key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostKeyError {
    #[error("no known_hosts file was given (SSH host keys are always verified)")]
    NoKnownHosts,
    #[error("cannot read known_hosts {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("the host key of {0} is marked @revoked in known_hosts")]
    Revoked(String),
    #[error("host {0} is not in known_hosts (unknown host key refused)")]
    Unknown(String),
    #[error("the host key of {0} does not match known_hosts (changed host key refused)")]
    Changed(String),
    #[error("the server's raw host key is unavailable")]
    Unavailable,
}

/// known_hosts verification for one remote.
pub struct HostCheck {
    entries: Vec<KnownHost>,
    port: Option<u16>,
    unusable: Option<HostKeyError>,
}

struct KnownHost {
    patterns: String,
    key: Vec<u8>,
    revoked: bool,
}

impl HostCheck {
    pub fn new(url: &str, known_hosts: Option<&Path>) -> HostCheck {
        let port = ssh_port(url);
        match known_hosts {
            None => HostCheck {
                entries: Vec::new(),
                port,
                unusable: Some(HostKeyError::NoKnownHosts),
            },
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => HostCheck {
                    entries: parse_known_hosts(&text),
                    port,
                    unusable: None,
                },
                Err(e) => HostCheck {
                    entries: Vec::new(),
                    port,
                    unusable: Some(HostKeyError::Unreadable {
                        path: path.display().to_string(),
                        reason: e.kind().to_string(),
                    }),
                },
            },
        }
    }

    pub fn from_text(text: &str, port: Option<u16>) -> HostCheck {
        HostCheck {
            entries: parse_known_hosts(text),
            port,
            unusable: None,
        }
    }

    /// Ok when known_hosts lists this exact key for the host; an error that says why otherwise.
    pub fn verify(&self, hostname: &str, key: &[u8]) -> Result<(), HostKeyError> {
        if let Some(unusable) = &self.unusable {
            return Err(unusable.clone());
        }
        let mut names: Vec<String> = match self.port {
            Some(p) if p != 22 => vec![format!("[{hostname}]:{p}")],
            _ => vec![hostname.to_string()],
        };
        let matching: Vec<&KnownHost> = self
            .entries
            .iter()
            .filter(|e| names.iter().any(|n| host_matches(&e.patterns, n)))
            .collect();
        let host = names.swap_remove(0);
        if matching.iter().any(|e| e.revoked && e.key == key) {
            return Err(HostKeyError::Revoked(host));
        }
        if matching.iter().any(|e| !e.revoked && e.key == key) {
            return Ok(());
        }
        match matching.is_empty() {
            true => Err(HostKeyError::Unknown(host)),
            false => Err(HostKeyError::Changed(host)),
        }
    }
}

pub fn ssh_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("ssh://")?;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    if host_port.starts_with('[') {
        return host_port
            .rsplit_once("]:")
            .and_then(|(_, p)| p.parse().ok());
    }
    host_port.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

fn parse_known_hosts(text: &str) -> Vec<KnownHost> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next().unwrap_or_default();
        let mut revoked = false;
        if first.starts_with('@') {
            if first == "@revoked" {
                revoked = true;
            } else {
                continue; // @cert-authority: certificates are not supported
            }
            first = fields.next().unwrap_or_default();
        }
        let (Some(_keytype), Some(blob)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(key) = base64::engine::general_purpose::STANDARD.decode(blob) else {
            continue;
        };
        out.push(KnownHost {
            patterns: first.to_string(),
            key,
            revoked,
        });
    }
    out
}

fn host_matches(patterns: &str, host: &str) -> bool {
    if let Some(hashed) = patterns.strip_prefix("|1|") {
        let Some((salt, hash)) = hashed.split_once('|') else {
            return false;
        };
        let engine = base64::engine::general_purpose::STANDARD;
        let (Ok(salt), Ok(hash)) = (engine.decode(salt), engine.decode(hash)) else {
            return false;
        };
        return hmac_sha1(&salt, host.as_bytes()) == hash.as_slice();
    }
    let mut matched = false;
    for pattern in patterns.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard(negated, host) {
                return false;
            }
        } else if wildcard(pattern, host) {
            matched = true;
        }
    }
    matched
}

fn wildcard(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// HMAC-SHA1 as OpenSSH uses for hashed known_hosts entries.
fn hmac_sha1(key: &[u8], message: &[u8]) -> [u8; 20] {
    use sha1::Sha1;
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..20].copy_from_slice(&Sha1::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha1::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha1::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIBbxS0pMvGv8FkBfBvEcmGvvqRu9VQmrcaSPcqGW3xLA";

    fn key(b64: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64")
    }

    #[test]
    fn known_and_changed_and_unknown_hosts() {
        let check = HostCheck::from_text(
            &format!("git.example.org,10.1.2.3 ssh-ed25519 {KEY_A}\n"),
            None,
        );
        assert_eq!(check.verify("git.example.org", &key(KEY_A)), Ok(()));
        assert!(
            check
                .verify("git.example.org", &key(KEY_B))
                .expect_err("changed")
                .to_string()
                .contains("does not match")
        );
        assert!(
            check
                .verify("other.example.org", &key(KEY_A))
                .expect_err("unknown")
                .to_string()
                .contains("not in known_hosts")
        );
    }

    #[test]
    fn non_default_ports_use_brackets() {
        let check = HostCheck::from_text(
            &format!("[127.0.0.1]:2222 ssh-ed25519 {KEY_A}\n"),
            ssh_port("ssh://git@127.0.0.1:2222/repo.git"),
        );
        assert_eq!(check.verify("127.0.0.1", &key(KEY_A)), Ok(()));
        let default_port =
            HostCheck::from_text(&format!("[127.0.0.1]:2222 ssh-ed25519 {KEY_A}\n"), None);
        assert!(default_port.verify("127.0.0.1", &key(KEY_A)).is_err());
    }

    #[test]
    fn hashed_entries_and_revocation() {
        // |1|salt|HMAC-SHA1(salt, "git.example.org") computed with our helper and checked against a
        // known vector below.
        let salt = b"0123456789abcdefghij";
        let engine = base64::engine::general_purpose::STANDARD;
        let hashed = format!(
            "|1|{}|{}",
            engine.encode(salt),
            engine.encode(hmac_sha1(salt, b"git.example.org"))
        );
        let check = HostCheck::from_text(
            &format!("{hashed} ssh-ed25519 {KEY_A}\n@revoked * ssh-ed25519 {KEY_B}\n"),
            None,
        );
        assert_eq!(check.verify("git.example.org", &key(KEY_A)), Ok(()));
        assert!(
            check
                .verify("git.example.org", &key(KEY_B))
                .expect_err("revoked")
                .to_string()
                .contains("revoked")
        );
        // RFC 2202 test case 2 for HMAC-SHA1.
        let mac = hmac_sha1(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    }

    #[test]
    fn missing_known_hosts_refuses() {
        let check = HostCheck::new("ssh://git@host/repo", None);
        assert!(
            check
                .verify("host", &key(KEY_A))
                .expect_err("refused")
                .to_string()
                .contains("always verified")
        );
    }
}
