//! Who may connect and what they may do: the `[auth]` configuration (`allow_anonymous`,
//! `password_file`, `acl_file`), password checks against the file (see `passwords`), a cache of
//! verified credentials so a reconnect storm does not burn the CPU on hashing, access control
//! (see `acl`), and reloading both files on SIGHUP (a bad file keeps the old one in force and
//! says why). The MQTT front end asks; the broker never sees a password.

pub mod acl;
pub mod passwords;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;

/// Verified credentials remembered (user, SHA-256 of the password); cleared on reload.
const CACHE_ENTRIES: usize = 100_000;

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// A user name and password that do not match the file (v5 0x86, v3 0x05).
    BadCredentials,
    /// No credentials where they are required (v5 0x87, v3 0x05).
    Required,
}

pub struct Authenticator {
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    /// The ACL in force; None without an `acl_file` (everything allowed).
    acl: RwLock<Option<Arc<acl::Acl>>>,
    allow_anonymous: bool,
    users: RwLock<Arc<HashMap<String, passwords::Hash>>>,
    verified: Mutex<HashMap<String, [u8; 32]>>,
}

impl Authenticator {
    /// From the configuration; a password file that cannot be read or parsed is an error
    /// naming the key.
    pub fn from_config(config: &AuthConfig) -> Result<Authenticator, String> {
        let password_file =
            (!config.password_file.is_empty()).then(|| PathBuf::from(&config.password_file));
        let users = match &password_file {
            Some(path) => passwords::load(path).map_err(|e| format!("auth.password_file: {e}"))?,
            None => HashMap::new(),
        };
        let acl_file = (!config.acl_file.is_empty()).then(|| PathBuf::from(&config.acl_file));
        let acl = match &acl_file {
            Some(path) => Some(Arc::new(load_acl(path)?)),
            None => None,
        };
        Ok(Authenticator {
            allow_anonymous: config.anonymous_allowed(),
            acl_file,
            acl: RwLock::new(acl),
            password_file,
            users: RwLock::new(Arc::new(users)),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Refuses everyone: what a node runs with when its password file vanished between the
    /// configuration check and start-up (failing closed, never open).
    pub fn deny_all(config: &AuthConfig) -> Authenticator {
        Authenticator {
            password_file: Some(PathBuf::from(&config.password_file)),
            acl_file: None,
            acl: RwLock::new(None),
            allow_anonymous: false,
            users: RwLock::new(Arc::new(HashMap::new())),
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the password and ACL files again (SIGHUP). A file that does not load leaves
    /// what it would have replaced in force; the other still reloads. Returns the users.
    pub fn reload(&self) -> Result<usize, String> {
        let mut errors = Vec::new();
        if let Some(path) = &self.acl_file {
            match load_acl(path) {
                Ok(acl) => *self.acl.write() = Some(Arc::new(acl)),
                Err(e) => errors.push(e),
            }
        }
        let mut n = self.users.read().len();
        if let Some(path) = &self.password_file {
            match passwords::load(path) {
                Ok(users) => {
                    n = users.len();
                    *self.users.write() = Arc::new(users);
                    self.verified.lock().clear();
                }
                Err(e) => errors.push(format!("auth.password_file: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(n)
        } else {
            Err(errors.join("; "))
        }
    }

    /// Whether an ACL is in force (without one, everything is allowed and no check is made).
    pub fn has_acl(&self) -> bool {
        self.acl.read().is_some()
    }

    /// Whether the client (`user`, None when anonymous) may do `action`.
    /// The ACL in force (None: no file, everything allowed). A reload replaces the `Arc`.
    pub fn acl(&self) -> Option<Arc<acl::Acl>> {
        self.acl.read().clone()
    }

    pub fn allows(&self, user: Option<&str>, client_id: &str, action: acl::Action<'_>) -> bool {
        let acl = self.acl.read().clone();
        acl.is_none_or(|acl| acl.allows(user, client_id, action))
    }

    /// Decides a CONNECT's credentials. Password hashing (deliberately slow) runs off the
    /// async workers, once per user and password until the next reload.
    pub async fn authenticate(
        self: &Arc<Self>,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<(), Denied> {
        let Some(user) = username else {
            return if self.allow_anonymous {
                Ok(())
            } else {
                Err(Denied::Required)
            };
        };
        let users = self.users.read().clone();
        let Some(hash) = users.get(user).cloned() else {
            // A name the file does not know: anonymous if that is allowed and there is no
            // file to check it against (as mosquitto), else refused.
            return if self.password_file.is_none() && self.allow_anonymous {
                Ok(())
            } else if self.password_file.is_none() {
                Err(Denied::Required)
            } else {
                Err(Denied::BadCredentials)
            };
        };
        let Some(password) = password else {
            return Err(Denied::BadCredentials);
        };
        let fingerprint: [u8; 32] = Sha256::digest(password).into();
        if self.verified.lock().get(user) == Some(&fingerprint) {
            return Ok(());
        }
        let password = password.to_vec();
        let ok = tokio::task::spawn_blocking(move || hash.verify(&password))
            .await
            .unwrap_or(false);
        if !ok {
            return Err(Denied::BadCredentials);
        }
        let mut verified = self.verified.lock();
        if verified.len() >= CACHE_ENTRIES {
            verified.clear();
        }
        verified.insert(user.to_string(), fingerprint);
        Ok(())
    }
}

/// Reads and parses an ACL file; the error names the key.
pub fn load_acl(path: &std::path::Path) -> Result<acl::Acl, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("auth.acl_file: cannot read {}: {e}", path.display()))?;
    acl::Acl::parse(&text).map_err(|e| format!("auth.acl_file: {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(file: Option<&str>, allow_anonymous: &str) -> Arc<Authenticator> {
        let path = file.map(|text| {
            let path = std::env::temp_dir().join(format!(
                "vibemq-auth-{}-{}",
                std::process::id(),
                text.len()
            ));
            std::fs::write(&path, text).unwrap();
            path
        });
        let config = AuthConfig {
            allow_anonymous: allow_anonymous.into(),
            password_file: path
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string()),
            acl_file: String::new(),
        };
        Arc::new(Authenticator::from_config(&config).unwrap())
    }

    #[tokio::test]
    async fn credentials_are_checked_against_the_file_and_cached() {
        let line = format!("alice:{}\n", passwords::hash_argon2id(b"s3cret").unwrap());
        let a = auth(Some(&line), "auto");
        assert!(
            !a.allow_anonymous,
            "a password file turns anonymous off unless allowed"
        );
        assert_eq!(a.authenticate(Some("alice"), Some(b"s3cret")).await, Ok(()));
        assert_eq!(a.verified.lock().len(), 1, "remembered");
        assert_eq!(a.authenticate(Some("alice"), Some(b"s3cret")).await, Ok(()));
        assert_eq!(
            a.authenticate(Some("alice"), Some(b"wrong")).await,
            Err(Denied::BadCredentials)
        );
        assert_eq!(
            a.authenticate(Some("alice"), None).await,
            Err(Denied::BadCredentials)
        );
        assert_eq!(
            a.authenticate(Some("mallory"), Some(b"s3cret")).await,
            Err(Denied::BadCredentials)
        );
        assert_eq!(a.authenticate(None, None).await, Err(Denied::Required));
        let open = auth(Some(&line), "true");
        assert_eq!(open.authenticate(None, None).await, Ok(()));
    }

    #[tokio::test]
    async fn without_a_file_anonymous_is_the_default() {
        let a = auth(None, "auto");
        assert_eq!(a.authenticate(None, None).await, Ok(()));
        assert_eq!(a.authenticate(Some("any"), Some(b"x")).await, Ok(()));
        let closed = auth(None, "false");
        assert_eq!(closed.authenticate(None, None).await, Err(Denied::Required));
    }
}
