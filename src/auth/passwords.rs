//! Password files in mosquitto's format, `user:hash` a line: hashes written by mosquitto_passwd
//! (`$7$` PBKDF2-HMAC-SHA512 of mosquitto 2, `$6$` salted SHA-512 of mosquitto 1.x) and by
//! `vibemq passwd` (argon2id, as a PHC string), all verified in constant time. Reading and
//! writing the file lives here; deciding who may connect is `auth`'s job.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha512};

/// The most memory an argon2 hash of the password file may ask for (1 GiB, in KiB).
const MAX_ARGON2_KIB: u32 = 1 << 20;

/// One user's stored hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hash {
    /// mosquitto 2: PBKDF2-HMAC-SHA512 with this many iterations.
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// mosquitto 1.x: SHA-512 of password then salt.
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
    /// argon2id (or any argon2 variant) as a PHC string.
    Argon2(String),
}

impl Hash {
    /// Parses the part after `user:`; the error says what is wrong, never the hash itself.
    pub fn parse(text: &str) -> Result<Hash, String> {
        if text.starts_with("$argon2") {
            let parsed = argon2::password_hash::phc::PasswordHash::new(text)
                .map_err(|e| format!("argon2 hash not readable: {e}"))?;
            let params = argon2::Params::try_from(&parsed)
                .map_err(|e| format!("argon2 parameters not usable: {e}"))?;
            argon2::Algorithm::try_from(parsed.algorithm.as_str())
                .map_err(|e| format!("argon2 algorithm not known: {e}"))?;
            // Checked once here: each check then costs what the file says, within bounds
            // (argon2's memory is held by a hashing thread for as long as it runs).
            if params.m_cost() > MAX_ARGON2_KIB || params.t_cost() > 64 || params.p_cost() > 64 {
                return Err(format!(
                    "argon2 parameters beyond this broker's bounds (m at most {MAX_ARGON2_KIB} KiB, t and p at most 64)"
                ));
            }
            if parsed.salt.is_none() || parsed.hash.as_ref().is_none_or(|h| h.len() < 16) {
                return Err("argon2 hash without a salt or with a short output".into());
            }
            return Ok(Hash::Argon2(text.to_string()));
        }
        let b64 = |s: &str| STANDARD.decode(s).map_err(|_| "not base64".to_string());
        // A hash shorter than this would match too much (an empty one: every password).
        let bytes = |s: &str, what: &str, min: usize, max: usize| -> Result<Vec<u8>, String> {
            let v = b64(s)?;
            if (min..=max).contains(&v.len()) {
                Ok(v)
            } else {
                Err(format!(
                    "{what} of {} bytes (expected {min} to {max})",
                    v.len()
                ))
            }
        };
        let parts: Vec<&str> = text.split('$').collect();
        match parts.as_slice() {
            ["", "7", iterations, salt, hash] => Ok(Hash::Pbkdf2Sha512 {
                iterations: iterations
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000_000).contains(n))
                    .ok_or("iteration count not a number from 1 to 10000000")?,
                salt: bytes(salt, "salt", 8, 1024)?,
                hash: bytes(hash, "hash", 32, 64)?,
            }),
            ["", "6", salt, hash] => Ok(Hash::Sha512 {
                salt: bytes(salt, "salt", 8, 1024)?,
                // A SHA-512 digest, whole.
                hash: bytes(hash, "hash", 64, 64)?,
            }),
            _ => Err("not a hash this broker knows ($7$, $6$ or $argon2id$)".into()),
        }
    }

    /// Orders hashes by what verifying one costs (the slowest kind last).
    pub fn cost_rank(&self) -> u64 {
        match self {
            Hash::Sha512 { .. } => 1,
            Hash::Pbkdf2Sha512 { iterations, .. } => 1 + u64::from(*iterations),
            Hash::Argon2(_) => u64::MAX,
        }
    }

    /// Cheap to brute-force: one round of SHA-512 (`$6$`), or PBKDF2 below the 101 iterations
    /// mosquitto_passwd uses by default.
    pub fn is_weak(&self) -> bool {
        match self {
            Hash::Sha512 { .. } => true,
            Hash::Pbkdf2Sha512 { iterations, .. } => *iterations < 101,
            Hash::Argon2(_) => false,
        }
    }

    /// Whether `password` matches (in constant time for the comparison).
    pub fn verify(&self, password: &[u8]) -> bool {
        self.verify_with(password, &mut Vec::new())
    }

    /// As `verify`, with argon2's working memory in `memory` (grown as needed and kept by
    /// the caller: a hashing thread reuses one buffer instead of allocating tens of
    /// megabytes per check, which the allocator would keep around in pieces).
    pub fn verify_with(&self, password: &[u8], memory: &mut Vec<argon2::Block>) -> bool {
        match self {
            Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                constant_time_eq(&out, hash)
            }
            Hash::Sha512 { salt, hash } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                constant_time_eq(&digest.finalize(), hash)
            }
            Hash::Argon2(phc) => argon2_matches(phc, password, memory).unwrap_or(false),
        }
    }
}

/// Whether `password` gives the argon2 PHC string's hash, computed in `memory`; None when
/// the string's parameters are not ones argon2 takes.
fn argon2_matches(phc: &str, password: &[u8], memory: &mut Vec<argon2::Block>) -> Option<bool> {
    let parsed = argon2::password_hash::phc::PasswordHash::new(phc).ok()?;
    let algorithm = argon2::Algorithm::try_from(parsed.algorithm.as_str()).ok()?;
    let version = match parsed.version {
        Some(v) => argon2::Version::try_from(v).ok()?,
        None => argon2::Version::default(),
    };
    let params = argon2::Params::try_from(&parsed).ok()?;
    let (salt, expected) = (parsed.salt.as_ref()?, parsed.hash.as_ref()?);
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    argon2::Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..blocks])
        .ok()?;
    Some(constant_time_eq(&out, expected.as_ref()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An argon2id hash of `password` with a fresh salt, as a PHC string.
pub fn hash_argon2id(password: &[u8]) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| format!("argon2: {e}"))
}

/// The users of a password file. Blank lines and `#` comments are skipped; a line that does
/// not parse is an error naming its line number (the file is not half-loaded).
pub fn parse_file(text: &str) -> Result<HashMap<String, Hash>, String> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: expected user:hash", i + 1))?;
        let hash = Hash::parse(hash).map_err(|e| format!("line {}: {e}", i + 1))?;
        users.insert(user.to_string(), hash);
    }
    Ok(users)
}

/// Reads and parses a password file.
pub fn load(path: &Path) -> Result<HashMap<String, Hash>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_file(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Sets `user`'s password in the file at `path` (created if missing), keeping the other lines
/// as they are: what `vibemq passwd FILE USER` does.
pub fn set_password(path: &Path, user: &str, password: &[u8]) -> Result<(), String> {
    if user.is_empty() || user.contains(':') || user.contains('\n') {
        return Err("a user name must not be empty or contain ':' or a line break".into());
    }
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let hash = hash_argon2id(password)?;
    let mut lines: Vec<String> = Vec::new();
    let mut replaced = false;
    for line in existing.lines() {
        if line.split_once(':').is_some_and(|(u, _)| u == user) {
            lines.push(format!("{user}:{hash}"));
            replaced = true;
        } else {
            lines.push(line.to_string());
        }
    }
    if !replaced {
        lines.push(format!("{user}:{hash}"));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    // Written beside and renamed over, so a broker reloading never reads half a file.
    let tmp = path.with_extension("tmp-vibemq-passwd");
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by mosquitto_passwd 2.0 (`mosquitto_passwd -c -b pw alice secret1`).
    const MOSQUITTO_2: &str = "alice:$7$101$WsF3kjeR+oBiqOe0$7ZfmKsaYZezhc9ItK2IfHfGyldWpfrYvLb+yinLUO1IovqBh44/TayByzNJdqDIfeljp7NrfDvF4QOSwhIE34w==";

    #[test]
    fn mosquitto_2_hashes_verify() {
        let users = parse_file(MOSQUITTO_2).unwrap();
        assert!(users["alice"].verify(b"secret1"));
        assert!(!users["alice"].verify(b"secret2"));
        assert!(!users["alice"].verify(b""));
    }

    #[test]
    fn mosquitto_1_and_argon2_hashes_verify() {
        // $6$: SHA-512 over password then salt, both base64 in the file.
        let salt = b"0123456789ab";
        let mut d = Sha512::new();
        d.update(b"pw");
        d.update(salt);
        let line = format!(
            "old:$6${}${}",
            STANDARD.encode(salt),
            STANDARD.encode(d.finalize())
        );
        let argon = format!("new:{}", hash_argon2id(b"pw2").unwrap());
        let users = parse_file(&format!("# users\n{line}\n\n{argon}\n")).unwrap();
        assert!(users["old"].verify(b"pw") && !users["old"].verify(b"px"));
        assert!(users["new"].verify(b"pw2") && !users["new"].verify(b"pw"));
    }

    #[test]
    fn one_round_of_sha512_and_few_iterations_are_weak() {
        let old = format!(
            "$6${}${}",
            STANDARD.encode(b"0123456789ab"),
            STANDARD.encode(Sha512::digest(b"pw0123456789ab"))
        );
        let users = parse_file(&format!(
            "{MOSQUITTO_2}\nfew:$7$10$WsF3kjeR+oBiqOe0$7ZfmKsaYZezhc9ItK2IfHfGyldWpfrYvLb+yinLUO1IovqBh44/TayByzNJdqDIfeljp7NrfDvF4QOSwhIE34w==\nold:{old}\nnew:{}\n",
            hash_argon2id(b"x").unwrap()
        ))
        .unwrap();
        assert!(!users["alice"].is_weak(), "mosquitto_passwd's default");
        assert!(users["few"].is_weak());
        assert!(users["old"].is_weak());
        assert!(!users["new"].is_weak());
        assert!(users["new"].cost_rank() > users["alice"].cost_rank());
        assert!(users["alice"].cost_rank() > users["old"].cost_rank());
    }

    #[test]
    fn argon2_entries_are_checked_at_load() {
        let good = hash_argon2id(b"x").unwrap();
        assert!(parse_file(&format!("a:{good}")).is_ok());
        // Asking for 4 TiB of memory, or an unknown variant: refused, naming the line.
        let huge = good.replace("m=19456", "m=4294967295");
        let e = parse_file(&format!("a:{huge}")).unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
        let odd = good.replacen("$argon2id$", "$argon2x$", 1);
        assert!(parse_file(&format!("a:{odd}")).is_err());
    }

    #[test]
    fn a_bad_line_names_its_number_and_not_the_hash() {
        let err = parse_file(&format!("{MOSQUITTO_2}\nb:plaintext\n")).unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        assert!(!err.contains("plaintext"), "{err}");
        assert!(parse_file("nocolon").is_err());
        let zero = MOSQUITTO_2.replace("$101$", "$0$");
        assert!(parse_file(&zero).is_err(), "zero iterations");
        // An empty or short hash would accept any password (or many): refused at load.
        for short in [
            "alice:$7$101$WsF3kjeR+oBiqOe0$",
            "alice:$7$101$WsF3kjeR+oBiqOe0$AAAA",
        ] {
            let e = parse_file(short).unwrap_err();
            assert!(e.contains("hash of"), "{short}: {e}");
        }
        assert!(parse_file("alice:$7$101$$7ZfmKsaYZezhc9ItK2IfHfGyldWpfrYvLb+yinLUO1IovqBh44/TayByzNJdqDIfeljp7NrfDvF4QOSwhIE34w==").is_err(), "no salt");
        assert!(
            parse_file("old:$6$MDEyMzQ1Njc4OWFi$").is_err(),
            "an empty SHA-512"
        );
    }

    #[test]
    fn set_password_adds_and_replaces_users_keeping_the_rest() {
        let dir = std::env::temp_dir().join(format!("vibemq-passwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwords");
        std::fs::write(&path, format!("# kept\n{MOSQUITTO_2}\n")).unwrap();
        set_password(&path, "bob", b"one").unwrap();
        set_password(&path, "bob", b"two").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# kept\n"));
        let users = parse_file(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users["bob"].verify(b"two") && !users["bob"].verify(b"one"));
        assert!(users["alice"].verify(b"secret1"));
        assert!(set_password(&path, "a:b", b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
