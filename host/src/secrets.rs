//! Secrets at rest: the only module that names chacha20poly1305.
//!
//! Values are sealed with ChaCha20-Poly1305 under a 32-byte key kept in
//! `$WEIR_HOME/secrets.key` (created once, mode 0600). The secret's name is the
//! associated data, so a sealed value copied to another name does not open.
//! The store keeps only sealed text; nothing here logs or prints a value.
//!
//! A key readable by other users is refused, and a missing key is created
//! only while no sealed secret exists: a fresh key would leave every sealed
//! value unreadable, so the user is told to restore the old one instead.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use std::io::Write as _;
use std::path::{Path, PathBuf};

const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;
const PREFIX: &str = "v1:";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secrets key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error(
        "secrets key {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}` (and consider setting the secrets again if others may have read it)"
    )]
    KeyExposed { path: PathBuf, mode: u32 },
    #[error(
        "secrets key {path} is missing, but {sealed} secrets were sealed with it: restore the file from a backup (32 bytes, chmod 600). If it is lost for good, their values cannot be recovered: create a new key with `(umask 077; head -c 32 /dev/urandom > {path})` and set each secret again with `host secret set NAME`"
    )]
    KeyMissing { path: PathBuf, sealed: usize },
    #[error(
        "secret '{0}' cannot be decrypted: it was sealed with another key (was $WEIR_HOME/secrets.key replaced?); set it again with `host secret set {0}`"
    )]
    Undecryptable(String),
}

/// Seals and opens secret values.
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl SecretBox {
    /// Reads the key at `path`. When there is none it is created (0600), but
    /// only if `sealed_secrets` is 0: values sealed under a lost key need
    /// that key back, not a new one.
    pub fn open_key(path: &Path, sealed_secrets: usize) -> Result<SecretBox, SecretError> {
        let error = |message: String| SecretError::Key {
            path: path.to_path_buf(),
            message,
        };
        if !path.exists() {
            if sealed_secrets > 0 {
                return Err(SecretError::KeyMissing {
                    path: path.to_path_buf(),
                    sealed: sealed_secrets,
                });
            }
            create_key(path).map_err(|e| error(e.to_string()))?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| error(e.to_string()))?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(SecretError::KeyExposed {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
        let key: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| {
            error(format!(
                "expected {KEY_BYTES} bytes, found {}; restore the original file",
                bytes.len()
            ))
        })?;
        Ok(Self::from_key(key))
    }

    pub fn from_key(key: [u8; KEY_BYTES]) -> SecretBox {
        SecretBox {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    /// `v1:<nonce hex>:<ciphertext hex>`.
    pub fn seal(&self, name: &str, value: &str) -> String {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: name.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 encryption of an in-memory buffer does not fail");
        format!("{PREFIX}{}:{}", hex::encode(nonce), hex::encode(sealed))
    }

    pub fn open(&self, name: &str, sealed: &str) -> Result<String, SecretError> {
        let undecryptable = || SecretError::Undecryptable(name.to_string());
        let (nonce, body) = sealed
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .ok_or_else(undecryptable)?;
        let nonce = hex::decode(nonce).map_err(|_| undecryptable())?;
        let body = hex::decode(body).map_err(|_| undecryptable())?;
        if nonce.len() != NONCE_BYTES {
            return Err(undecryptable());
        }
        let clear = self
            .cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &body,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| undecryptable())?;
        String::from_utf8(clear).map_err(|_| undecryptable())
    }
}

/// Writes a fresh random key, readable by the owner only; never overwrites.
fn create_key(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        crate::store::create_private_dir(dir)?;
    }
    let mut key = [0u8; KEY_BYTES];
    rand::rng().fill_bytes(&mut key);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(&key)?;
            file.sync_all()
        }
        // Another process made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_name_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let sb = SecretBox::open_key(&path, 0).unwrap();
        let sealed = sb.seal("db", "hunter22");
        assert!(!sealed.contains("hunter22"));
        assert_ne!(sealed, sb.seal("db", "hunter22"), "a fresh nonce each time");
        assert_eq!(sb.open("db", &sealed).unwrap(), "hunter22");
        assert!(sb.open("other", &sealed).is_err());
        let again = SecretBox::open_key(&path, 1).unwrap();
        assert_eq!(again.open("db", &sealed).unwrap(), "hunter22");
        let stranger = SecretBox::from_key([9; 32]);
        assert!(matches!(
            stranger.open("db", &sealed),
            Err(SecretError::Undecryptable(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_lost_key_is_not_replaced_while_sealed_secrets_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("home/secrets.key");
        let error = SecretBox::open_key(&path, 2).err().unwrap();
        assert!(matches!(error, SecretError::KeyMissing { sealed: 2, .. }));
        assert!(
            error.to_string().contains("restore the file from a backup"),
            "{error}"
        );
        assert!(!path.exists(), "no new key was made");
        SecretBox::open_key(&path, 0).unwrap();
        assert!(path.exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("home/secrets.key");
        SecretBox::open_key(&path, 0).unwrap();
        let home_mode = std::fs::metadata(dir.path().join("home"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(home_mode & 0o777, 0o700, "{home_mode:o}");
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = SecretBox::open_key(&path, 1).err().unwrap();
            assert!(error.to_string().contains("chmod 600"), "{error}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        SecretBox::open_key(&path, 1).unwrap();
    }
}
