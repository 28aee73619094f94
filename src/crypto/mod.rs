//! Encryption at rest with age: what new backups are encrypted to, what can decrypt old ones, and
//! manifest authentication.
//!
//! Two modes. `recipients:` (X25519 public keys): the daemon encrypts but cannot decrypt; restore,
//! verify and test-restore need `identity_file:` where they run. `key_file:` (the reference
//! config's key): an age identity file or a passphrase (scrypt), which both encrypts and decrypts.
//!
//! Manifests are authenticated: each backup has a random 32-byte key, encrypted with age to the
//! same recipients and stored in the manifest, and an HMAC-SHA256 of the manifest under that key.
//! Forging a manifest needs the recipients' public keys (never stored in the repository: manifests
//! carry only fingerprints) or the passphrase; checking one needs the identity.

pub mod keys;

use crate::secret::Secret;
use age::secrecy::SecretString;
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use hmac::{KeyInit, Mac};
pub use keys::EncryptionConfig;
use keys::KeyFile;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::sync::Arc;

/// How a backup was encrypted, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EncryptionInfo {
    /// Always `age`.
    pub format: String,
    pub mode: EncryptionMode,
    /// Fingerprints of the X25519 recipients (never the keys).
    pub recipients: Vec<String>,
    /// The manifest authentication key, age-encrypted to the same recipients (base64).
    pub auth_key: String,
}

/// How a backup's keys are wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncryptionMode {
    /// To X25519 recipients: an identity decrypts.
    Recipients,
    /// With a passphrase (scrypt): the same passphrase decrypts.
    Passphrase,
}

impl EncryptionMode {
    pub fn name(self) -> &'static str {
        match self {
            EncryptionMode::Recipients => "recipients",
            EncryptionMode::Passphrase => "passphrase",
        }
    }
}

/// A recipient's fingerprint: the start of the SHA-256 of its `age1...` form.
pub fn fingerprint(recipient: &age::x25519::Recipient) -> String {
    let hash = Sha256::digest(recipient.to_string().as_bytes());
    format!("x25519:{}", &hex::encode(hash)[..16])
}

pub struct Crypto {
    /// Whether new backups are encrypted (false: only `--identity` files, to read backups).
    encrypts: bool,
    mode: EncryptionMode,
    recipients: Vec<age::x25519::Recipient>,
    passphrase: Option<Secret>,
    passphrase_work_factor: u8,
    identities: Vec<age::x25519::Identity>,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crypto").field("mode", &self.mode).field("recipients", &self.fingerprints()).finish()
    }
}

impl Crypto {
    /// The encryption of a config; `None` when encryption is off. The config's checks
    /// ([`EncryptionConfig::check`]) passed when it was read; the files are read again here.
    pub fn load(cfg: &EncryptionConfig) -> Result<Option<Arc<Crypto>>> {
        if !cfg.enabled && cfg.extra_identity_files.is_empty() {
            return Ok(None);
        }
        if let Some(first) = cfg.check().into_iter().next() {
            bail!("encryption.{}: {}", first.key, first.message);
        }
        let mut c = Crypto {
            encrypts: cfg.enabled,
            mode: EncryptionMode::Recipients,
            recipients: Vec::new(),
            passphrase: None,
            passphrase_work_factor: cfg.passphrase_work_factor,
            identities: Vec::new(),
        };
        let fail = |e: String| anyhow!(e);
        if cfg.enabled {
            for r in &cfg.recipients {
                c.recipients.push(keys::parse_recipient(r).map_err(fail)?);
            }
            if let Some(path) = &cfg.recipients_file {
                c.recipients.extend(keys::read_recipients_file(path).map_err(fail)?);
            }
            if let Some(path) = &cfg.identity_file {
                c.identities = keys::read_identities(path).map_err(fail)?;
            }
            match cfg.key_file.as_deref().map(keys::read_key_file).transpose().map_err(fail)? {
                Some(KeyFile::Identities(ids)) => {
                    c.recipients.extend(ids.iter().map(|i| i.to_public()));
                    c.identities.extend(ids);
                }
                Some(KeyFile::Passphrase(p)) => {
                    crate::secret::register([&p]);
                    c.passphrase = Some(p);
                    c.mode = EncryptionMode::Passphrase;
                }
                None => {}
            }
            if c.recipients.is_empty() && c.passphrase.is_none() {
                // a host configured only to read (identity_file) encrypts new backups to that identity
                c.recipients = c.identities.iter().map(|i| i.to_public()).collect();
            }
        }
        for path in &cfg.extra_identity_files {
            c.identities.extend(keys::read_identities(path).map_err(|e| anyhow!("--identity: {e}"))?);
        }
        Ok(Some(Arc::new(c)))
    }

    /// Whether new backups are encrypted with this configuration.
    pub fn encrypts(&self) -> bool {
        self.encrypts
    }

    /// How new backups are encrypted (a decrypt-only configuration says `Recipients`).
    pub fn mode(&self) -> EncryptionMode {
        self.mode
    }

    pub fn fingerprints(&self) -> Vec<String> {
        self.recipients.iter().map(fingerprint).collect()
    }

    /// Whether this configuration can decrypt (has an identity or the passphrase).
    pub fn can_decrypt(&self) -> bool {
        !self.identities.is_empty() || self.passphrase.is_some()
    }

    /// A new encryptor to the configured recipients (one per object).
    pub fn encryptor(&self) -> Result<age::Encryptor> {
        if !self.encrypts {
            bail!("encryption is not enabled in this configuration (only --identity files to read backups)");
        }
        match &self.passphrase {
            Some(p) => {
                let mut r = age::scrypt::Recipient::new(SecretString::from(p.expose().to_owned()));
                r.set_work_factor(self.passphrase_work_factor);
                age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
                    .map_err(|e| anyhow!("age: {e}"))
            }
            None => age::Encryptor::with_recipients(self.recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| anyhow!("age: {e}")),
        }
    }

    /// Encrypts a small buffer whole.
    pub fn encrypt(&self, plain: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(plain.len() + 256);
        let mut w = self.encryptor()?.wrap_output(&mut out)?;
        w.write_all(plain)?;
        w.finish()?;
        Ok(out)
    }

    fn identities(&self) -> Vec<Box<dyn age::Identity>> {
        let mut out: Vec<Box<dyn age::Identity>> = Vec::new();
        for i in &self.identities {
            out.push(Box::new(i.clone()));
        }
        if let Some(p) = &self.passphrase {
            out.push(Box::new(age::scrypt::Identity::new(SecretString::from(p.expose().to_owned()))));
        }
        out
    }

    /// Opens an age stream for reading; `what` and `info` name the backup and its keys in errors.
    pub fn decrypt<R: Read>(
        &self,
        input: R,
        what: &str,
        info: &EncryptionInfo,
    ) -> Result<age::stream::StreamReader<R>> {
        if !self.can_decrypt() {
            bail!(
                "{what} is encrypted ({}) and this configuration cannot decrypt it: pass --identity FILE, or set \
                 encryption.identity_file (or key_file) where restores, verifications and test restores run",
                needs(info)
            );
        }
        let decryptor = age::Decryptor::new(input).map_err(|e| anyhow!("{what}: not a readable age file: {e}"))?;
        let ids = self.identities();
        decryptor.decrypt(ids.iter().map(|i| i.as_ref())).map_err(|e| match e {
            age::DecryptError::NoMatchingKeys | age::DecryptError::DecryptionFailed => anyhow!(
                "{what} needs {}; the configured identity ({}) does not decrypt it",
                needs(info),
                self.identity_description()
            ),
            other => anyhow!("{what}: cannot decrypt: {other}"),
        })
    }

    /// Decrypts a small buffer whole.
    pub fn decrypt_all(&self, cipher: &[u8], what: &str, info: &EncryptionInfo) -> Result<Vec<u8>> {
        let mut r = self.decrypt(cipher, what, info)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(|e| anyhow!("{what}: the encrypted data is damaged or truncated: {e}"))?;
        Ok(out)
    }

    fn identity_description(&self) -> String {
        let mut parts: Vec<String> = self.identities.iter().map(|i| fingerprint(&i.to_public())).collect();
        if self.passphrase.is_some() {
            parts.push("a passphrase".into());
        }
        if parts.is_empty() { "none".into() } else { parts.join(", ") }
    }

    /// Encryption facts and the authentication key for a new backup's manifest.
    pub fn new_backup_key(&self) -> Result<(EncryptionInfo, [u8; 32])> {
        let key: [u8; 32] = rand::random();
        let info = EncryptionInfo {
            format: "age".into(),
            mode: self.mode,
            recipients: self.fingerprints(),
            auth_key: base64::engine::general_purpose::STANDARD.encode(self.encrypt(&key)?),
        };
        Ok((info, key))
    }

    /// The authentication key of a backup (needs an identity).
    pub fn backup_key(&self, info: &EncryptionInfo, what: &str) -> Result<[u8; 32]> {
        let cipher = base64::engine::general_purpose::STANDARD
            .decode(&info.auth_key)
            .map_err(|_| anyhow!("{what}: the manifest's authentication key is malformed"))?;
        let plain = self.decrypt_all(&cipher, what, info)?;
        plain.try_into().map_err(|_| anyhow!("{what}: the manifest's authentication key is malformed"))
    }
}

/// Writes a new age identity to `path` (mode 0600, in age-keygen's format, never over an existing
/// file) and returns its recipient (`age1...`).
pub fn write_new_identity(path: &std::path::Path, now: chrono::DateTime<chrono::Utc>) -> Result<String> {
    use age::secrecy::ExposeSecret;
    use std::os::unix::fs::OpenOptionsExt;
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).with_context(|| {
        format!("creating the identity file {} (an existing file is never replaced)", path.display())
    })?;
    writeln!(
        f,
        "# created: {}\n# public key: {public}\n{}",
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        id.to_string().expose_secret()
    )
    .and_then(|_| f.sync_all())
    .map_err(|e| crate::storage::local::fs_error(format!("writing {}", path.display()), e))?;
    Ok(public)
}

/// Which key a backup needs, for messages.
pub fn needs(info: &EncryptionInfo) -> String {
    match info.mode {
        EncryptionMode::Passphrase => "the passphrase (key_file)".into(),
        EncryptionMode::Recipients => {
            format!("the identity of one of these recipients: {}", info.recipients.join(", "))
        }
    }
}

/// HMAC-SHA256 of `bytes` under `key`, hex.
pub fn mac(key: &[u8; 32], bytes: &[u8]) -> String {
    let mut m = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    m.update(bytes);
    hex::encode(m.finalize().into_bytes())
}

/// Checks an HMAC in constant time.
pub fn mac_matches(key: &[u8; 32], bytes: &[u8], expected_hex: &str) -> bool {
    let Ok(expected) = hex::decode(expected_hex) else { return false };
    let mut m = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    m.update(bytes);
    m.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(
        dir: &std::path::Path,
        key_file: Option<&str>,
        recipients: Vec<String>,
        identity: Option<&str>,
    ) -> EncryptionConfig {
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        EncryptionConfig {
            enabled: true,
            recipients,
            recipients_file: None,
            identity_file: identity.map(|t| write("identity.txt", t)),
            key_file: key_file.map(|t| write("key", t)),
            passphrase_work_factor: 10,
            strict: false,
            extra_identity_files: Vec::new(),
        }
    }

    #[test]
    fn recipients_encrypt_identities_decrypt_and_wrong_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let writer = Crypto::load(&config(dir.path(), None, vec![id.to_public().to_string()], None)).unwrap().unwrap();
        assert!(!writer.can_decrypt());
        let (info, key) = writer.new_backup_key().unwrap();
        assert_eq!(info.recipients, vec![fingerprint(&id.to_public())]);
        let cipher = writer.encrypt(b"hello").unwrap();
        let err = writer.decrypt_all(&cipher, "backup b", &info).unwrap_err().to_string();
        assert!(err.contains("cannot decrypt it") && err.contains("identity_file"), "{err}");

        let reader =
            Crypto::load(&config(dir.path(), None, vec![], Some(id.to_string().expose_secret()))).unwrap().unwrap();
        assert_eq!(reader.decrypt_all(&cipher, "backup b", &info).unwrap(), b"hello");
        assert_eq!(reader.backup_key(&info, "backup b").unwrap(), key);

        let wrong =
            Crypto::load(&config(dir.path(), None, vec![], Some(other.to_string().expose_secret()))).unwrap().unwrap();
        let err = wrong.decrypt_all(&cipher, "backup b", &info).unwrap_err().to_string();
        assert!(err.contains(&fingerprint(&id.to_public())) && err.contains(&fingerprint(&other.to_public())), "{err}");
    }

    #[test]
    fn a_key_file_is_an_identity_or_a_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let id = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let c = Crypto::load(&config(dir.path(), Some(id.to_string().expose_secret()), vec![], None)).unwrap().unwrap();
        assert_eq!(c.mode(), EncryptionMode::Recipients);
        assert!(c.can_decrypt());
        let p =
            Crypto::load(&config(dir.path(), Some("correct horse battery staple\n"), vec![], None)).unwrap().unwrap();
        assert_eq!(p.mode(), EncryptionMode::Passphrase);
        let (info, key) = p.new_backup_key().unwrap();
        assert_eq!(p.backup_key(&info, "b").unwrap(), key);
        assert!(Crypto::load(&config(dir.path(), Some("short"), vec![], None)).is_err());
    }

    #[test]
    fn keygen_writes_a_private_identity_that_decrypts() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.txt");
        let public = write_new_identity(&path, chrono::Utc::now()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(write_new_identity(&path, chrono::Utc::now()).is_err(), "overwrote an identity");
        let writer = Crypto::load(&config(dir.path(), None, vec![public], None)).unwrap().unwrap();
        let mut cfg = config(dir.path(), None, vec![], None);
        cfg.identity_file = Some(path);
        let reader = Crypto::load(&cfg).unwrap().unwrap();
        let (info, key) = writer.new_backup_key().unwrap();
        assert_eq!(reader.backup_key(&info, "b").unwrap(), key);
    }

    #[test]
    fn macs() {
        let k = [7u8; 32];
        let m = mac(&k, b"manifest");
        assert!(mac_matches(&k, b"manifest", &m));
        assert!(!mac_matches(&k, b"manifesT", &m));
        assert!(!mac_matches(&[8u8; 32], b"manifest", &m));
    }
}
