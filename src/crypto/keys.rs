//! Key material: what `encryption:` names (recipients, identity and key files), parsed and
//! checked once, when the config is read (`check-config` and a reload refuse bad keys with the
//! key's path), and again by [`super::Crypto::load`] with the same functions.

use crate::secret::Secret;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A passphrase shorter than this is refused (age's scrypt is slow, but a short passphrase is
/// still guessed).
pub const MIN_PASSPHRASE: usize = 12;

/// `encryption:`: age encryption of everything stored (see docs/security.md).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EncryptionConfig {
    pub enabled: bool,
    /// X25519 recipients (`age1...`) new backups are encrypted to.
    pub recipients: Vec<String>,
    /// A file of recipients, one per line.
    pub recipients_file: Option<PathBuf>,
    /// Identities (`AGE-SECRET-KEY-1...`) that decrypt: needed where restores and checks run.
    pub identity_file: Option<PathBuf>,
    /// The reference config's key: an age identity file, or a passphrase (scrypt).
    pub key_file: Option<PathBuf>,
    /// scrypt work factor (log2 N) for passphrase mode.
    pub passphrase_work_factor: u8,
    /// Key files readable by group or others are an error, not a warning.
    pub strict: bool,
    /// Identity files given on the command line (`--identity`): they decrypt, and are never
    /// encrypted to; with `enabled: false` they make a decrypt-only configuration.
    pub extra_identity_files: Vec<PathBuf>,
}

/// What a `key_file` holds.
pub enum KeyFile {
    Identities(Vec<age::x25519::Identity>),
    Passphrase(Secret),
}

/// A problem with the key material, under the `encryption.` key it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyIssue {
    pub key: &'static str,
    pub message: String,
}

pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient, String> {
    age::x25519::Recipient::from_str(text.trim())
        .map_err(|e| format!("{text:?} is not an age X25519 recipient (age1..., as `pgbackd keygen` prints): {e}"))
}

fn read(path: &Path, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| {
        let next = match what {
            "key file" => "create it: `pgbackd keygen -o FILE` (an identity), or a passphrase of 12+ characters",
            "identity file" => "point it at the age identity (AGE-SECRET-KEY-1...) made with `pgbackd keygen -o FILE`",
            _ => "point it at a file of recipients (age1...), one per line",
        };
        match e.kind() {
            std::io::ErrorKind::NotFound => format!("{} does not exist: {next}", path.display()),
            std::io::ErrorKind::PermissionDenied => {
                format!(
                    "the {what} {} cannot be read by this user: give it read access (chmod 600, owned by it)",
                    path.display()
                )
            }
            _ => format!("cannot read the {what} {}: {e}", path.display()),
        }
    })
}

/// The identities of a file in age-keygen's format (comments and blank lines allowed).
pub fn parse_identities(text: &str, source: &str) -> Result<Vec<age::x25519::Identity>, String> {
    let ids: Vec<_> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            age::x25519::Identity::from_str(l).map_err(|_| {
                format!(
                    "{source}: a line is not an age identity (AGE-SECRET-KEY-1..., as `pgbackd keygen -o FILE` writes)"
                )
            })
        })
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Err(format!("{source} holds no identity (AGE-SECRET-KEY-1...)"));
    }
    Ok(ids)
}

pub fn read_identities(path: &Path) -> Result<Vec<age::x25519::Identity>, String> {
    parse_identities(&read(path, "identity file")?, &path.display().to_string())
}

pub fn read_recipients_file(path: &Path) -> Result<Vec<age::x25519::Recipient>, String> {
    let text = read(path, "recipients file")?;
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    if lines.is_empty() {
        return Err(format!("{} holds no recipient (age1...)", path.display()));
    }
    lines.into_iter().map(|l| parse_recipient(l).map_err(|e| format!("{}: {e}", path.display()))).collect()
}

/// A key file: an age identity file, or a passphrase of at least [`MIN_PASSPHRASE`] characters.
pub fn read_key_file(path: &Path) -> Result<KeyFile, String> {
    let text = read(path, "key file")?;
    if text.trim_start().starts_with("AGE-SECRET-KEY-") || text.trim_start().starts_with('#') {
        return parse_identities(&text, &path.display().to_string()).map(KeyFile::Identities);
    }
    let pass = text.trim_end_matches(['\n', '\r']);
    if pass.chars().count() < MIN_PASSPHRASE {
        return Err(format!(
            "{}: a passphrase of {} characters is too short; use at least {MIN_PASSPHRASE} (or an age identity: \
             `pgbackd keygen -o {}`)",
            path.display(),
            pass.chars().count(),
            path.display()
        ));
    }
    Ok(KeyFile::Passphrase(Secret::new(pass)))
}

impl EncryptionConfig {
    /// Every problem with the key material, checked as [`super::Crypto::load`] will use it:
    /// recipients parse, files exist and parse, a passphrase is strong enough, there is something
    /// to encrypt to, and an identity given beside recipients decrypts what is encrypted to them.
    pub fn check(&self) -> Vec<KeyIssue> {
        let mut out = Vec::new();
        if !self.enabled {
            return out;
        }
        let mut issue = |key: &'static str, message: String| out.push(KeyIssue { key, message });
        let mut recipients = Vec::new();
        for r in &self.recipients {
            match parse_recipient(r) {
                Ok(r) => recipients.push(r),
                Err(e) => issue("recipients", e),
            }
        }
        if let Some(p) = &self.recipients_file {
            match read_recipients_file(p) {
                Ok(rs) => recipients.extend(rs),
                Err(e) => issue("recipients_file", e),
            }
        }
        let mut passphrase = false;
        if let Some(p) = &self.key_file {
            match read_key_file(p) {
                Ok(KeyFile::Identities(ids)) => recipients.extend(ids.iter().map(|i| i.to_public())),
                Ok(KeyFile::Passphrase(_)) => passphrase = true,
                Err(e) => issue("key_file", e),
            }
        }
        let identities = match &self.identity_file {
            Some(p) => match read_identities(p) {
                Ok(ids) => ids,
                Err(e) => {
                    issue("identity_file", e);
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        if passphrase && !(self.recipients.is_empty() && self.recipients_file.is_none()) {
            issue(
                "key_file",
                "a passphrase key_file cannot be combined with recipients (age does not mix them)".into(),
            );
        }
        let given = !self.recipients.is_empty() || self.recipients_file.is_some();
        if given && !identities.is_empty() {
            let publics: Vec<String> = identities.iter().map(|i| i.to_public().to_string()).collect();
            if !recipients.iter().any(|r| publics.contains(&r.to_string())) {
                issue(
                    "identity_file",
                    format!(
                        "{} holds none of the identities of the recipients backups are encrypted to: this host could \
                         not read the backups it writes; add the matching identity, or its recipient ({})",
                        self.identity_file.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
                        publics.join(", ")
                    ),
                );
            }
        }
        let nothing = !given && self.key_file.is_none() && self.identity_file.is_none();
        if nothing {
            issue(
                "enabled",
                "encryption is enabled but there is nothing to encrypt to: set recipients (recommended), \
                 recipients_file or key_file"
                    .into(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled(f: impl FnOnce(&mut EncryptionConfig)) -> EncryptionConfig {
        let mut c = EncryptionConfig { enabled: true, passphrase_work_factor: 10, ..Default::default() };
        f(&mut c);
        c
    }

    fn keys_of(c: &EncryptionConfig) -> Vec<(&'static str, String)> {
        c.check().into_iter().map(|i| (i.key, i.message)).collect()
    }

    #[test]
    fn bad_key_material_is_named_under_its_key() {
        use age::secrecy::ExposeSecret;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate().to_public().to_string();
        let good_id = write("id.txt", &format!("# a comment\n{}\n", id.to_string().expose_secret()));

        let c = enabled(|c| c.recipients = vec!["age1notarealkey".into()]);
        let issues = keys_of(&c);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].0, "recipients");
        assert!(issues[0].1.contains("age1notarealkey") && issues[0].1.contains("not an age X25519 recipient"));

        let c = enabled(|c| c.key_file = Some(write("short", "hunter2\n")));
        let issues = keys_of(&c);
        assert!(issues[0].1.contains("7 characters is too short") && issues[0].1.contains("at least 12"), "{issues:?}");
        // the passphrase is never in the message
        assert!(!issues[0].1.contains("hunter2"));

        let c = enabled(|c| {
            c.recipients = vec![other.clone()];
            c.identity_file = Some(write("garbage", "not a key\n"));
        });
        assert_eq!(keys_of(&c)[0].0, "identity_file");
        assert!(keys_of(&c)[0].1.contains("is not an age identity"), "{:?}", keys_of(&c));

        // an identity beside recipients must read what is encrypted to them
        let c = enabled(|c| {
            c.recipients = vec![other.clone()];
            c.identity_file = Some(good_id.clone());
        });
        let issues = keys_of(&c);
        assert_eq!(issues.len(), 1);
        assert!(issues[0].1.contains("could not read the backups it writes"), "{issues:?}");
        let c = enabled(|c| {
            c.recipients = vec![other.clone(), id.to_public().to_string()];
            c.identity_file = Some(good_id.clone());
        });
        assert!(c.check().is_empty(), "{:?}", c.check());

        // a passphrase with recipients; nothing at all; a missing file with what to do
        let c = enabled(|c| {
            c.recipients = vec![other.clone()];
            c.key_file = Some(write("pass", "correct horse battery staple\n"));
        });
        assert!(keys_of(&c)[0].1.contains("cannot be combined"), "{:?}", keys_of(&c));
        assert_eq!(keys_of(&enabled(|_| {}))[0].0, "enabled");
        let c = enabled(|c| c.key_file = Some(dir.path().join("nope")));
        assert!(keys_of(&c)[0].1.contains("does not exist: create it: `pgbackd keygen"), "{:?}", keys_of(&c));
        // not enabled: nothing is read
        assert!(EncryptionConfig { key_file: Some(dir.path().join("nope")), ..Default::default() }.check().is_empty());
    }
}
