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
    /// Keys the choice of decoy, fresh for each process.
    pick: std::collections::hash_map::RandomState,
}

impl Users {
    fn new(by_name: HashMap<String, passwords::Hash>) -> Users {
        let mut names: Vec<&String> = by_name.keys().collect();
        names.sort();
        let decoys = names.iter().map(|n| by_name[*n].clone()).collect();
        Users {
            by_name,
            decoys,
            pick: Default::default(),
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
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);
    /// A client on a loopback listener, and one on a listener beyond it.
    const LOCAL: Source = Source {
        ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        loopback_listener: true,
    };
    const REMOTE: Source = Source {
        ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)),
        loopback_listener: false,
    };

    fn file(text: &str) -> String {
        use std::sync::atomic::AtomicUsize;
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "vibemq-auth-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn config(password_file: Option<&str>, allow_anonymous: &str) -> AuthConfig {
        AuthConfig {
            allow_anonymous: allow_anonymous.into(),
            password_file: password_file.map_or(String::new(), file),
            max_concurrent_hashes: 2,
            ..AuthConfig::default()
        }
    }

    fn auth(password_file: Option<&str>, allow_anonymous: &str) -> Arc<Authenticator> {
        Arc::new(
            Authenticator::from_config(&config(password_file, allow_anonymous), false).unwrap(),
        )
    }

    #[tokio::test]
    async fn credentials_are_checked_against_the_file_and_cached() {
        let line = format!("alice:{}\n", passwords::hash_argon2id(b"s3cret").unwrap());
        let a = auth(Some(&line), "auto");
        let alice = Some(Arc::from("alice"));
        let check = |user, pw| a.authenticate(user, pw, LOCAL, WAIT);
        assert_eq!(
            check(Some("alice"), Some(b"s3cret")).await,
            Ok(alice.clone())
        );
        assert_eq!(a.verified.lock().len(), 1, "remembered");
        assert_eq!(check(Some("alice"), Some(b"s3cret")).await, Ok(alice));
        assert_eq!(
            check(Some("alice"), Some(b"wrong")).await,
            Err(Denied::BadCredentials)
        );
        assert_eq!(
            check(Some("alice"), None).await,
            Err(Denied::BadCredentials)
        );
        assert_eq!(
            check(Some("mallory"), Some(b"s3cret")).await,
            Err(Denied::BadCredentials)
        );
        // A password file turns anonymous clients away unless allowed, even on loopback.
        assert_eq!(check(None, None).await, Err(Denied::Required));
        let open = auth(Some(&line), "true");
        assert_eq!(open.authenticate(None, None, REMOTE, WAIT).await, Ok(None));
    }

    #[tokio::test]
    async fn anonymous_by_default_only_on_loopback_and_names_without_a_file_verify_nothing() {
        let a = auth(None, "auto");
        assert_eq!(a.anonymous(), Anonymous::LoopbackOnly);
        assert_eq!(a.authenticate(None, None, LOCAL, WAIT).await, Ok(None));
        assert_eq!(
            a.authenticate(None, None, REMOTE, WAIT).await,
            Err(Denied::Required),
            "auto never means open beyond loopback"
        );
        // A claimed name is no identity: anonymous (and refused where anonymous is).
        assert_eq!(
            a.authenticate(Some("admin"), Some(b"x"), LOCAL, WAIT).await,
            Ok(None)
        );
        assert_eq!(
            a.authenticate(Some("admin"), Some(b"x"), REMOTE, WAIT)
                .await,
            Err(Denied::Required)
        );
        let open = auth(None, "true");
        assert_eq!(open.authenticate(None, None, REMOTE, WAIT).await, Ok(None));
        let closed = auth(None, "false");
        assert_eq!(
            closed.authenticate(None, None, LOCAL, WAIT).await,
            Err(Denied::Required)
        );
    }

    #[tokio::test]
    async fn unknown_users_pay_a_hash_and_hashing_waits_for_a_slot() {
        let line = format!("alice:{}\n", passwords::hash_argon2id(b"s3cret").unwrap());
        let a = auth(Some(&line), "auto");
        assert!(
            a.users
                .read()
                .hash_for("mallory")
                .is_some_and(|(_, known)| !known),
            "a decoy from the file"
        );
        // Every slot taken: a check waits, and past its wait is refused as busy.
        let held = a.hashing.take_all().await;
        let short = Duration::from_millis(50);
        assert_eq!(
            a.authenticate(Some("alice"), Some(b"s3cret"), LOCAL, short)
                .await,
            Err(Denied::Busy(crate::limits::Limit::ConcurrentHashes))
        );
        // An unknown user waits for a slot too: it is hashed like a known one.
        assert_eq!(
            a.authenticate(Some("mallory"), Some(b"x"), LOCAL, short)
                .await,
            Err(Denied::Busy(crate::limits::Limit::ConcurrentHashes))
        );
        // The control: with a slot free, the same checks complete.
        drop(held);
        assert_eq!(
            a.authenticate(Some("mallory"), Some(b"x"), LOCAL, WAIT)
                .await,
            Err(Denied::BadCredentials)
        );
        assert!(
            a.authenticate(Some("alice"), Some(b"s3cret"), LOCAL, WAIT)
                .await
                .is_ok()
        );
        assert_eq!(a.hashing.free_slots(), 2, "every slot given back");
    }

    #[tokio::test]
    async fn a_verification_that_raced_a_reload_is_not_remembered() {
        let path = file(&format!(
            "alice:{}\n",
            passwords::hash_argon2id(b"old").unwrap()
        ));
        let cfg = AuthConfig {
            password_file: path.clone(),
            ..AuthConfig::default()
        };
        let a = Arc::new(Authenticator::from_config(&cfg, false).unwrap());
        assert!(
            a.authenticate(Some("alice"), Some(b"old"), LOCAL, WAIT)
                .await
                .is_ok()
        );
        // The old password verified under generation 0; the file changes.
        std::fs::write(
            &path,
            format!("alice:{}\n", passwords::hash_argon2id(b"new").unwrap()),
        )
        .unwrap();
        a.reload().unwrap();
        assert!(a.verified.lock().is_empty(), "a reload forgets");
        // A verification that began before the reload finishes after it: not cached.
        a.remember("alice", Sha256::digest(b"old").into(), 0);
        assert!(a.verified.lock().is_empty());
        assert_eq!(
            a.authenticate(Some("alice"), Some(b"old"), LOCAL, WAIT)
                .await,
            Err(Denied::BadCredentials)
        );
        assert!(
            a.authenticate(Some("alice"), Some(b"new"), LOCAL, WAIT)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn one_address_gets_its_share_of_checks_and_no_more() {
        let line = format!("alice:{}\n", passwords::hash_argon2id(b"s3cret").unwrap());
        let cfg = AuthConfig {
            password_file: file(&line),
            max_concurrent_hashes: 1,
            max_hashes_per_ip: 2,
            ..AuthConfig::default()
        };
        let a = Arc::new(Authenticator::from_config(&cfg, false).unwrap());
        // The one slot taken: two checks from REMOTE's address wait, a third is refused at
        // once, while another address still gets in line.
        let held = a.hashing.take_all().await;
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move {
                    a.authenticate(Some("alice"), Some(b"wrong"), REMOTE, WAIT)
                        .await
                })
            })
            .collect();
        let deadline = tokio::time::Instant::now() + WAIT;
        while a.hashing.waiting_from(REMOTE.ip) < 2 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        assert_eq!(
            a.authenticate(Some("alice"), Some(b"wrong"), REMOTE, WAIT)
                .await,
            Err(Denied::Busy(crate::limits::Limit::HashesPerIp))
        );
        let other = {
            let a = a.clone();
            tokio::spawn(async move {
                a.authenticate(Some("alice"), Some(b"s3cret"), LOCAL, WAIT)
                    .await
            })
        };
        drop(held);
        assert_eq!(other.await.unwrap(), Ok(Some(Arc::from("alice"))));
        for w in waiting {
            assert_eq!(w.await.unwrap(), Err(Denied::BadCredentials));
        }
        assert_eq!(
            a.hashing.waiting_from(REMOTE.ip),
            0,
            "every share given back"
        );
    }

    #[test]
    fn unknown_names_are_checked_against_hashes_of_the_file_each_always_the_same() {
        let users = Users::new(
            passwords::parse_file(&format!(
                "a:{}\nb:$7$101$WsF3kjeR+oBiqOe0$7ZfmKsaYZezhc9ItK2IfHfGyldWpfrYvLb+yinLUO1IovqBh44/TayByzNJdqDIfeljp7NrfDvF4QOSwhIE34w==\n",
                passwords::hash_argon2id(b"x").unwrap()
            ))
            .unwrap(),
        );
        let decoy = |name: &str| {
            users
                .hash_for(name)
                .map(|(h, known)| (h.cost_rank(), known))
        };
        // The same decoy for a name every time; over many names, both kinds of the file.
        assert_eq!(decoy("mallory"), decoy("mallory"));
        let kinds: std::collections::HashSet<u64> = (0..64)
            .map(|i| decoy(&format!("name{i}")).unwrap().0)
            .collect();
        assert_eq!(kinds.len(), 2, "decoys of both kinds");
        assert_eq!(decoy("a").map(|(_, k)| k), Some(true));
    }

    #[test]
    fn user_sections_need_something_that_verifies_names() {
        let acl = file("user admin\ntopic #\n");
        let cfg = AuthConfig {
            acl_file: acl.clone(),
            ..AuthConfig::default()
        };
        let e = Authenticator::from_config(&cfg, false).err().unwrap();
        assert!(e.contains("auth.acl_file") && e.contains("verifies"), "{e}");
        // Certificates that name users, or a password file, make it valid.
        assert!(Authenticator::from_config(&cfg, true).is_ok());
        let with_file = AuthConfig {
            acl_file: acl,
            password_file: file(
                "alice:$7$101$WsF3kjeR+oBiqOe0$7ZfmKsaYZezhc9ItK2IfHfGyldWpfrYvLb+yinLUO1IovqBh44/TayByzNJdqDIfeljp7NrfDvF4QOSwhIE34w==\n",
            ),
            ..AuthConfig::default()
        };
        assert!(Authenticator::from_config(&with_file, false).is_ok());
        // Patterns and anonymous rules need nothing verified.
        let plain = AuthConfig {
            acl_file: file("topic read a/#\npattern readwrite c/%c/#\n"),
            ..AuthConfig::default()
        };
        assert!(Authenticator::from_config(&plain, false).is_ok());
    }
}
