//! Who may connect and what they may do: the `[auth]` configuration (`allow_anonymous`,
//! `password_file`, `acl_file`), password checks against the file (see `passwords`), a cache of
//! verified credentials so a reconnect storm does not burn the CPU on hashing, access control
//! (see `acl`), and reloading both files on SIGHUP (a bad file keeps the old one in force and
//! says why). The MQTT front end asks; the broker never sees a password.

pub mod acl;
mod hashing;
pub mod passwords;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    /// No hashing slot came free within the wait (`auth.max_concurrent_hashes`), or the
    /// source address has `auth.max_hashes_per_ip` checks under way (v5 0x89 Server busy, v3
    /// server unavailable).
    Busy(crate::limits::Limit),
}

/// Where a CONNECT comes from, as far as deciding its credentials needs.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// The client's address (the PROXY header's, behind one).
    pub ip: std::net::IpAddr,
    /// The listener is bound to a loopback address (and not behind the PROXY protocol).
    pub loopback_listener: bool,
}

/// Who may connect without credentials (`auth.allow_anonymous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anonymous {
    /// `true` written somewhere: on every listener.
    Allowed,
    /// `false`, or "auto" with a password file: on none.
    Refused,
    /// "auto" without a password file: on loopback listeners only (mosquitto 2 without a
    /// configuration listens on loopback only); never beyond it unless the configuration
    /// says `true` in words.
    LoopbackOnly,
}

impl Anonymous {
    pub fn from_config(config: &AuthConfig) -> Anonymous {
        match config.anonymous_setting() {
            Ok(Some(true)) => Anonymous::Allowed,
            Ok(Some(false)) => Anonymous::Refused,
            _ if !config.password_file.is_empty() => Anonymous::Refused,
            _ => Anonymous::LoopbackOnly,
        }
    }

    /// Whether a client without verified credentials may connect on a listener that is
    /// (`loopback`) or is not bound to a loopback address.
    pub fn admits(self, loopback: bool) -> bool {
        match self {
            Anonymous::Allowed => true,
            Anonymous::Refused => false,
            Anonymous::LoopbackOnly => loopback,
        }
    }
}

/// The users of the password file in force, with what verification needs beside them.
struct Users {
    by_name: HashMap<String, passwords::Hash>,
    /// The file's hashes, as decoys: a name the file does not know is checked against one of
    /// them (chosen by the name, the same one each time), its verdict ignored, so unknown
    /// names take as long to refuse as known ones with a wrong password and show the same
    /// spread of times when the file mixes kinds of hashes: user names are not enumerable by
    /// timing.
    decoys: Vec<passwords::Hash>,
    /// Keys the choice of decoy: one for the process, so a name keeps its decoy across
    /// reloads as a known user keeps their hash.
    pick: std::collections::hash_map::RandomState,
}

/// The process's key for choosing decoys.
fn decoy_key() -> std::collections::hash_map::RandomState {
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    KEY.get_or_init(Default::default).clone()
}

impl Users {
    fn new(by_name: HashMap<String, passwords::Hash>) -> Users {
        let mut names: Vec<&String> = by_name.keys().collect();
        names.sort();
        let decoys = names.iter().map(|n| by_name[*n].clone()).collect();
        Users {
            by_name,
            decoys,
            pick: decoy_key(),
        }
    }

    /// The hash `user`'s password is checked against: theirs, or a decoy (false).
    fn hash_for(&self, user: &str) -> Option<(passwords::Hash, bool)> {
        use std::hash::BuildHasher;
        if let Some(hash) = self.by_name.get(user) {
            return Some((hash.clone(), true));
        }
        let n = self.decoys.len();
        (n > 0).then(|| {
            let i = (self.pick.hash_one(user) % n as u64) as usize;
            (self.decoys[i].clone(), false)
        })
    }
}

/// Who may connect, as the `[auth]` files say, and what they may do there.
pub struct Authenticator {
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    /// The ACL in force; None without an `acl_file` (everything allowed).
    acl: RwLock<Option<Arc<acl::Acl>>>,
    anonymous: Anonymous,
    /// Whether a certificate can name a user (`tls.use_identity_as_username` with a TLS
    /// listener): with the password file, what may verify the user names an ACL's `user`
    /// sections select.
    certificates_name_users: bool,
    users: RwLock<Arc<Users>>,
    /// Bumped by every reload of the password file: a verification that started before it
    /// does not fill the cache with what the old file said.
    generation: AtomicU64,
    /// (user) -> (SHA-256 of the password, the generation it was verified under).
    verified: Mutex<HashMap<String, ([u8; 32], u64)>>,
    /// Password hashing (deliberately slow and memory-hungry) runs on a pool of
    /// `auth.max_concurrent_hashes` threads of its own.
    hashing: hashing::HashPool,
}

/// What a CONNECT's credentials came to.
pub type Verdict = Result<Option<Arc<str>>, Denied>;

impl Authenticator {
    /// From the configuration; a password file that cannot be read or parsed is an error
    /// naming the key. `certificates_name_users`: `tls.use_identity_as_username` is on and a
    /// TLS listener carries certificates.
    pub fn from_config(
        config: &AuthConfig,
        certificates_name_users: bool,
    ) -> Result<Authenticator, String> {
        let password_file =
            (!config.password_file.is_empty()).then(|| PathBuf::from(&config.password_file));
        let users = match &password_file {
            Some(path) => passwords::load(path).map_err(|e| format!("auth.password_file: {e}"))?,
            None => HashMap::new(),
        };
        warn_weak_hashes(&users);
        let acl_file = (!config.acl_file.is_empty()).then(|| PathBuf::from(&config.acl_file));
        let verifiable = password_file.is_some() || certificates_name_users;
        let acl = match &acl_file {
            Some(path) => Some(Arc::new(load_acl_checked(path, verifiable)?)),
            None => None,
        };
        Ok(Authenticator {
            anonymous: Anonymous::from_config(config),
            certificates_name_users,
            acl_file,
            acl: RwLock::new(acl),
            password_file,
            users: RwLock::new(Arc::new(Users::new(users))),
            generation: AtomicU64::new(0),
            verified: Mutex::new(HashMap::new()),
            hashing: hashing::HashPool::new(config.hash_slots(), config.hashes_per_ip()),
        })
    }

    /// Refuses everyone: what a node runs with when its password file vanished between the
    /// configuration check and start-up (failing closed, never open).
    pub fn deny_all(config: &AuthConfig) -> Authenticator {
        Authenticator {
            password_file: Some(PathBuf::from(&config.password_file)),
            acl_file: None,
            acl: RwLock::new(None),
            anonymous: Anonymous::Refused,
            certificates_name_users: false,
            users: RwLock::new(Arc::new(Users::new(HashMap::new()))),
            generation: AtomicU64::new(0),
            verified: Mutex::new(HashMap::new()),
            hashing: hashing::HashPool::new(1, 1),
        }
    }

    /// Reads the password and ACL files again (SIGHUP). A file that does not load leaves
    /// what it would have replaced in force; the other still reloads. Returns the users.
    pub fn reload(&self) -> Result<usize, String> {
        let mut errors = Vec::new();
        if let Some(path) = &self.acl_file {
            let verifiable = self.password_file.is_some() || self.certificates_name_users;
            match load_acl_checked(path, verifiable) {
                Ok(acl) => *self.acl.write() = Some(Arc::new(acl)),
                Err(e) => errors.push(e),
            }
        }
        let mut n = self.users.read().by_name.len();
        if let Some(path) = &self.password_file {
            match passwords::load(path) {
                Ok(users) => {
                    n = users.len();
                    warn_weak_hashes(&users);
                    // The generation first: a verification finishing after this point sees
                    // it changed and does not cache what the old file said.
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    *self.users.write() = Arc::new(Users::new(users));
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

    /// The ACL in force (None: no file, everything allowed). A reload replaces the `Arc`.
    pub fn acl(&self) -> Option<Arc<acl::Acl>> {
        self.acl.read().clone()
    }

    /// Whether the client (`user`: a verified user name, None when anonymous) may do `action`.
    pub fn allows(&self, user: Option<&str>, client_id: &str, action: acl::Action<'_>) -> bool {
        let acl = self.acl.read().clone();
        acl.is_none_or(|acl| acl.allows(user, client_id, action))
    }

    /// Who anonymous clients are to this node (`auth.allow_anonymous`).
    pub fn anonymous(&self) -> Anonymous {
        self.anonymous
    }

    /// Decides a CONNECT's credentials: Ok(Some(user)) when the password file verified the
    /// user name, Ok(None) for a client admitted as anonymous (no user name, or one that
    /// nothing can verify: it selects no ACL rules), or why it is refused. Hashing
    /// (deliberately slow) runs on the `auth.max_concurrent_hashes` threads of `hashing`,
    /// waiting at most `wait` for one, at most `auth.max_hashes_per_ip` checks of one address
    /// at once; a user and password verified once are remembered until the next reload.
    pub async fn authenticate(
        self: &Arc<Self>,
        username: Option<&str>,
        password: Option<&[u8]>,
        from: Source,
        wait: Duration,
    ) -> Verdict {
        let anonymous = || {
            if self.anonymous.admits(from.loopback_listener) {
                Ok(None)
            } else {
                Err(Denied::Required)
            }
        };
        let Some(user) = username else {
            return anonymous();
        };
        if self.password_file.is_none() {
            // Nothing can verify the name: the client is anonymous (mosquitto without a
            // password file), and the name selects no rules.
            return anonymous();
        }
        let users = self.users.read().clone();
        let Some(password) = password else {
            return Err(Denied::BadCredentials);
        };
        let fingerprint: [u8; 32] = Sha256::digest(password).into();
        let generation = self.generation.load(Ordering::SeqCst);
        let Some((hash, known)) = users.hash_for(user) else {
            // An empty file: nothing to verify against, and nothing to learn by timing.
            return Err(Denied::BadCredentials);
        };
        if known && self.verified.lock().get(user) == Some(&(fingerprint, generation)) {
            return Ok(Some(Arc::from(user)));
        }
        let ok = match self.hashing.verify(hash, password, wait, from.ip).await {
            Ok(ok) => ok,
            Err(hashing::Busy::Slots) => {
                return Err(Denied::Busy(crate::limits::Limit::ConcurrentHashes));
            }
            Err(hashing::Busy::Source) => {
                return Err(Denied::Busy(crate::limits::Limit::HashesPerIp));
            }
        };
        if !ok || !known {
            return Err(Denied::BadCredentials);
        }
        self.remember(user, fingerprint, generation);
        Ok(Some(Arc::from(user)))
    }

    /// Caches a verified password, unless the file was reloaded since the verification began
    /// (`generation`): then it may be a password the new file no longer has.
    fn remember(&self, user: &str, fingerprint: [u8; 32], generation: u64) {
        let mut verified = self.verified.lock();
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if verified.len() >= CACHE_ENTRIES {
            verified.clear();
        }
        verified.insert(user.to_string(), (fingerprint, generation));
    }
}

/// Says, once per load, which users have hashes that are cheap to brute-force.
fn warn_weak_hashes(users: &HashMap<String, passwords::Hash>) {
    let mut weak: Vec<&str> = users
        .iter()
        .filter(|(_, h)| h.is_weak())
        .map(|(u, _)| u.as_str())
        .collect();
    if weak.is_empty() {
        return;
    }
    weak.sort_unstable();
    let names: Vec<String> = weak
        .iter()
        .take(20)
        .map(|u| crate::limits::printable(u).to_string())
        .collect();
    tracing::warn!(
        users = %names.join(", "),
        count = weak.len(),
        "auth.password_file: weak password hashes ($6$ one round of SHA-512, or $7$ below mosquitto's 101 iterations): set these passwords again with `vibemq passwd FILE USER` (argon2id) or mosquitto_passwd"
    );
}

/// Reads and parses an ACL file; `user` sections are refused when nothing can verify a user
/// name (`verifiable` false): anyone could claim the name and get its rules.
pub fn load_acl_checked(path: &std::path::Path, verifiable: bool) -> Result<acl::Acl, String> {
    let acl = load_acl(path)?;
    if acl.has_user_sections() && !verifiable {
        return Err(format!(
            "auth.acl_file: {} has `user` sections, but nothing verifies user names (set auth.password_file, or tls.use_identity_as_username with a TLS listener): anyone could claim a name and get its rules",
            path.display()
        ));
    }
    Ok(acl)
}

/// Reads and parses an ACL file; the error names the key.
pub fn load_acl(path: &std::path::Path) -> Result<acl::Acl, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("auth.acl_file: cannot read {}: {e}", path.display()))?;
    acl::Acl::parse(&text).map_err(|e| format!("auth.acl_file: {}: {e}", path.display()))
}

#[cfg(test)]
mod tests;
