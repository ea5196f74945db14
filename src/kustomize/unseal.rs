//! SOPS-encrypted files listed as resources of a kustomization. Kustomize copies their values
//! into its output unchanged, and every SOPS value is a unique `ENC[…]` string (its own IV), so
//! kubesync decrypts the listed files itself, MAC verified, and puts each plain value where its
//! ciphertext landed. Plain values never reach the disk: the cached render holds ciphertext.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::RenderError;
use crate::sops::Keys;

/// How every SOPS value starts.
const CIPHERTEXT: &str = "ENC[AES256_GCM,";

/// Whether a render holds SOPS ciphertext.
pub fn holds_ciphertext(rendered: &[u8]) -> bool {
    let mark = CIPHERTEXT.as_bytes();
    rendered.windows(mark.len()).any(|w| w == mark)
}

/// The render `rendered` of kustomization `file`, each ciphertext replaced by its plain value
/// from the SOPS files among `resource_files`, and the `sops` metadata removed. As JSON documents
/// (YAML's subset), one per object.
pub fn unseal(
    file: &str,
    rendered: &[u8],
    root: &Path,
    resource_files: &[PathBuf],
    keys: &Keys,
) -> Result<Vec<u8>, RenderError> {
    let mut plain = HashMap::new();
    for path in resource_files {
        decrypt_into(root, path, keys, &mut plain)?;
    }
    let text = String::from_utf8_lossy(rendered);
    let mut documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| RenderError::Yaml {
            file: file.into(),
            message: e.to_string().lines().next().unwrap_or_default().to_string(),
        })?;
    let mut out = String::new();
    for document in &mut documents {
        if let Some(map) = document.as_object_mut() {
            map.remove("sops");
        }
        replace(document, &plain).map_err(|()| RenderError::Encrypted { file: file.into() })?;
        out.push_str("---\n");
        out.push_str(&document.to_string());
        out.push('\n');
    }
    Ok(out.into_bytes())
}

/// Refuses SOPS files whose `apiVersion`, `kind` or `metadata` are encrypted: Kustomize must
/// read those to work on the object (it would see a kind named `ENC[…]`).
pub fn check_readable(root: &Path, resource_files: &[PathBuf]) -> Result<(), RenderError> {
    for path in resource_files {
        let Some((name, documents)) = sealed_documents(root, path) else {
            continue;
        };
        let hidden = |d: &Value| {
            ["apiVersion", "kind", "metadata"].iter().any(|field| {
                d.get(*field)
                    .is_some_and(crate::sops::holds_encrypted_values)
            })
        };
        if documents.iter().any(hidden) {
            return Err(RenderError::SealedIdentity { file: name });
        }
    }
    Ok(())
}

/// A SOPS-encrypted file's repo-relative name and documents; None for any other file.
fn sealed_documents(root: &Path, path: &Path) -> Option<(String, Vec<Value>)> {
    let text = std::fs::read_to_string(path).ok()?;
    if !text.contains(CIPHERTEXT) {
        return None;
    }
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let name = path
        .strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string();
    let documents: Vec<Value> = match name.to_ascii_lowercase().ends_with(".json") {
        true => serde_json::from_str(&text)
            .map(|v| vec![v])
            .unwrap_or_default(),
        false => serde_saphyr::from_multiple(&text).unwrap_or_default(),
    };
    let documents: Vec<Value> = documents.into_iter().filter(|d| !d.is_null()).collect();
    documents
        .iter()
        .any(crate::sops::is_encrypted)
        .then_some((name, documents))
}

/// Adds the ciphertext → plain value pairs of one resource file, when SOPS encrypted it.
fn decrypt_into(
    root: &Path,
    path: &Path,
    keys: &Keys,
    plain: &mut HashMap<String, Value>,
) -> Result<(), RenderError> {
    let Some((name, encrypted)) = sealed_documents(root, path) else {
        return Ok(());
    };
    let text = std::fs::read_to_string(path).map_err(|e| RenderError::Unreadable {
        file: name.clone(),
        reason: e.kind().to_string(),
    })?;
    let is_json = name.to_ascii_lowercase().ends_with(".json");
    let decrypted = crate::manifests::decrypt(&name, &text, is_json, keys)
        .map_err(|reason| RenderError::Sops { file: name, reason })?;
    for (sealed, open) in encrypted.iter().zip(&decrypted) {
        pair(sealed, open, plain);
    }
    Ok(())
}

/// Walks an encrypted document and its decryption side by side.
fn pair(sealed: &Value, open: &Value, plain: &mut HashMap<String, Value>) {
    match (sealed, open) {
        (Value::String(s), _) if s.starts_with(CIPHERTEXT) => {
            plain.insert(s.clone(), open.clone());
        }
        (Value::Object(sealed), Value::Object(open)) => {
            for (key, value) in sealed {
                if let Some(opened) = open.get(key) {
                    pair(value, opened, plain);
                }
            }
        }
        (Value::Array(sealed), Value::Array(open)) => {
            for (value, opened) in sealed.iter().zip(open) {
                pair(value, opened, plain);
            }
        }
        _ => {}
    }
}

/// Replaces every ciphertext; a ciphertext that no listed file holds is an error.
fn replace(value: &mut Value, plain: &HashMap<String, Value>) -> Result<(), ()> {
    match value {
        Value::String(s) if s.starts_with(CIPHERTEXT) => *value = plain.get(s).cloned().ok_or(())?,
        Value::Object(map) => map.values_mut().try_for_each(|v| replace(v, plain))?,
        Value::Array(items) => items.iter_mut().try_for_each(|v| replace(v, plain))?,
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphertext_is_replaced_where_it_landed_and_unknown_ciphertext_refused() {
        let mut plain = HashMap::new();
        let sealed = serde_json::json!({"data": {"a": "ENC[AES256_GCM,data:x,iv:1]", "n": "ENC[AES256_GCM,data:y,iv:2]"}, "kind": "Secret"});
        let open = serde_json::json!({"data": {"a": "secret", "n": 42}, "kind": "Secret"});
        pair(&sealed, &open, &mut plain);
        assert_eq!(plain.len(), 2);
        let mut rendered = serde_json::json!({"kind": "Secret", "metadata": {"namespace": "x"},
            "stringData": {"moved": "ENC[AES256_GCM,data:y,iv:2]"}, "data": {"a": "ENC[AES256_GCM,data:x,iv:1]"}});
        replace(&mut rendered, &plain).expect("known");
        assert_eq!(rendered["stringData"]["moved"], 42);
        assert_eq!(rendered["data"]["a"], "secret");
        let mut stranger = serde_json::json!({"data": {"a": "ENC[AES256_GCM,data:z,iv:3]"}});
        assert!(replace(&mut stranger, &plain).is_err());
        assert!(holds_ciphertext(b"x: ENC[AES256_GCM,data:z]") && !holds_ciphertext(b"x: y"));
    }
}
