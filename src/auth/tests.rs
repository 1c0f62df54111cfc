//! Tests of the authenticator.
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
    Arc::new(Authenticator::from_config(&config(password_file, allow_anonymous), false).unwrap())
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
