//! The configuration loader's tests: defaults, files, overrides and the errors that name keys.

use super::*;

#[test]
fn allow_anonymous_is_a_boolean_or_unset() {
    use crate::auth::Anonymous;
    let anonymous = |text: &str| load_str(text).map(|c| Anonymous::from_config(&c.auth));
    assert_eq!(
        anonymous("").unwrap(),
        Anonymous::LoopbackOnly,
        "unset: loopback listeners only"
    );
    assert_eq!(
        anonymous("[auth]\nallow_anonymous = false\n").unwrap(),
        Anonymous::Refused
    );
    assert_eq!(
        anonymous("[auth]\nallow_anonymous = true\n").unwrap(),
        Anonymous::Allowed
    );
    let e = anonymous("[auth]\nallow_anonymous = \"maybe\"\n").unwrap_err();
    assert!(e.to_string().contains("auth.allow_anonymous"), "{e}");
    let from_env = Config::load(
        None,
        &[(
            "auth.allow_anonymous".into(),
            "no".into(),
            Source::Env("VIBEMQ_AUTH_ALLOW_ANONYMOUS"),
        )],
    )
    .unwrap();
    assert_eq!(Anonymous::from_config(&from_env.auth), Anonymous::Refused);
}

fn load_str(text: &str) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("vibemq-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        "{:x}.toml",
        text.len() * 31 + text.bytes().map(usize::from).sum::<usize>()
    ));
    std::fs::write(&path, text).unwrap();
    let r = Config::load(Some(&path), &[]);
    let _ = std::fs::remove_file(&path);
    r
}

#[test]
fn defaults_match_the_documented_values() {
    let c = Config::default_config();
    // Closed by default: nothing listens beyond loopback without a configuration saying so.
    assert_eq!(c.server.bind.to_string(), "127.0.0.1:1883");
    assert_eq!(c.http.bind.to_string(), "127.0.0.1:9090");
    assert_eq!(c.auth.allow_anonymous, "auto");
    assert_eq!(c.auth.clientid_ownership, ClientIdOwnership::Enforce);
    assert!(!c.cluster.allow_insecure);
    assert_eq!(c.mqtt.max_keepalive, 65535);
    assert_eq!(c.mqtt.max_packet_size, 1_048_576);
    assert_eq!(c.mqtt.max_inflight, 32);
    assert_eq!(c.mqtt.max_queued_messages, 1000);
    assert_eq!(c.log.level, "info");
}

#[test]
fn file_values_override_defaults() {
    let c = load_str("[server]\nbind = \"127.0.0.1:2883\"\n[mqtt]\nmax_inflight = 5\n").unwrap();
    assert_eq!(c.server.bind.to_string(), "127.0.0.1:2883");
    assert_eq!(c.mqtt.max_inflight, 5);
    assert_eq!(c.mqtt.max_queued_messages, 1000);
}

#[test]
fn errors_name_the_key() {
    let e = load_str("[mqtt]\nmax_inflight = 0\n").unwrap_err();
    assert!(e.0.starts_with("mqtt.max_inflight:"), "{e}");
    let e = load_str("[mqtt]\nmax_infligt = 3\n").unwrap_err();
    assert_eq!(e.0, "mqtt.max_infligt: unknown key");
    let e = load_str("[mqtt]\nmax_inflight = \"many\"\n").unwrap_err();
    assert_eq!(e.0, "mqtt.max_inflight: expected integer, got string");
    let e = load_str("[server]\nbind = \"localhost\"\n").unwrap_err();
    assert!(e.0.starts_with("server.bind: expected host:port"), "{e}");
    let e = load_str("[mqtt]\nmax_inflight = 70000\n").unwrap_err();
    assert!(e.0.starts_with("mqtt.max_inflight: invalid value"), "{e}");
    let e = load_str("[log]\nlevel = \"loud\"\n").unwrap_err();
    assert!(e.0.starts_with("log.level:"), "{e}");
    let e = load_str("[mqtt\n").unwrap_err();
    assert!(e.0.contains("line 1"), "{e}");
}

#[test]
fn overrides_apply_in_order_and_are_typed() {
    let o = vec![
        (
            "mqtt.max_inflight".to_string(),
            "7".to_string(),
            Source::Env("VIBEMQ_MQTT_MAX_INFLIGHT"),
        ),
        (
            "mqtt.max_inflight".to_string(),
            "9".to_string(),
            Source::Flag("--max-inflight"),
        ),
        (
            "mqtt.queue_qos0_offline".to_string(),
            "true".to_string(),
            Source::Env("X"),
        ),
    ];
    let c = Config::load(None, &o).unwrap();
    assert_eq!(c.mqtt.max_inflight, 9);
    assert!(c.mqtt.queue_qos0_offline);
    let bad = vec![(
        "mqtt.max_inflight".to_string(),
        "x".to_string(),
        Source::Env("VIBEMQ_MQTT_MAX_INFLIGHT"),
    )];
    let e = Config::load(None, &bad).unwrap_err();
    assert_eq!(
        e.0,
        "mqtt.max_inflight (from VIBEMQ_MQTT_MAX_INFLIGHT): expected an integer, got `x`"
    );
}

#[test]
fn a_cluster_beyond_loopback_needs_a_secret_or_the_words_allow_insecure() {
    let open = "[cluster]\nenabled = true\n";
    let e = load_str(open).unwrap_err();
    assert!(
        e.0.starts_with("cluster.secret: required when the cluster listens beyond loopback"),
        "{e}"
    );
    // Either address beyond loopback is enough to need one.
    let half = "[cluster]\nenabled = true\ngossip_addr = \"127.0.0.1:7946\"\n";
    assert!(load_str(half).is_err());
    // Controls: a secret, the words, loopback addresses, or no cluster at all.
    let key = "secret = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n";
    assert!(load_str(&format!("{open}{key}")).is_ok());
    assert!(load_str(&format!("{open}allow_insecure = true\n")).is_ok());
    let local = "[cluster]\nenabled = true\ngossip_addr = \"127.0.0.1:7946\"\npeer_addr = \"127.0.0.1:7947\"\n";
    assert!(load_str(local).is_ok());
    assert!(load_str("[cluster]\nenabled = false\n").is_ok());
}

#[test]
fn cluster_section_in_both_forms_and_its_errors() {
    let table = "[cluster]\nenabled = true\nallow_insecure = true\nnode_id = \"n1\"\nseeds = [\"n2@node2:7946\", \"10.0.0.3:7946\"]\n";
    let c = load_str(table).unwrap();
    assert!(c.cluster.enabled);
    assert_eq!(c.cluster.seed_addresses(), ["node2:7946", "10.0.0.3:7946"]);
    let array = table.replace("[cluster]", "[[cluster]]");
    assert_eq!(load_str(&array).unwrap().cluster.node_id, "n1");
    let two = format!("{array}{array}");
    assert!(
        load_str(&two)
            .unwrap_err()
            .0
            .starts_with("cluster: the [[cluster]] form")
    );
    let e = load_str("[cluster]\nseeds = [\"node1\"]\n").unwrap_err();
    assert_eq!(
        e.0,
        "cluster.seeds[0]: `node1` needs a host and a port, e.g. `node1:7946`"
    );
    let e = load_str("[cluster]\nsecret = \"c2hvcnQ=\"\n").unwrap_err();
    assert!(
        e.0.starts_with("cluster.secret[0]: must decode to 32 bytes, got 5"),
        "{e}"
    );
    let e = load_str("[cluster]\nsecret = \"***\"\n").unwrap_err();
    assert!(
        e.0.starts_with("cluster.secret[0]: not valid base64"),
        "{e}"
    );
    let e = load_str("[cluster]\ndns_server = \"dns.local\"\n").unwrap_err();
    assert!(e.0.starts_with("cluster.dns_server:"), "{e}");
    let key = "[cluster]\nsecret = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n";
    assert_eq!(
        load_str(key).unwrap().cluster.secret_keys().unwrap(),
        vec![[0u8; 32]]
    );
    // A list rotates: the first seals, all open; each is checked.
    let two = "[cluster]\nsecret = [\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\", \
               \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"]\n";
    assert_eq!(
        load_str(two).unwrap().cluster.secret_keys().unwrap(),
        vec![[0u8; 32], [1u8; 32]]
    );
    let e =
        load_str("[cluster]\nsecret = [\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\", \"x\"]\n")
            .unwrap_err();
    assert!(
        e.0.starts_with("cluster.secret[1]: not valid base64"),
        "{e}"
    );
    let o = [(
        "cluster.secret".to_string(),
        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
            .to_string(),
        Source::Env("VIBEMQ_CLUSTER_SECRET"),
    )];
    assert_eq!(
        Config::load(None, &o)
            .unwrap()
            .cluster
            .secret_keys()
            .unwrap(),
        vec![[1u8; 32], [0u8; 32]]
    );
    // From a file: one per line.
    let file = std::env::temp_dir().join(format!("vibemq-secrets-{}", std::process::id()));
    std::fs::write(
        &file,
        "# new first\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    )
    .unwrap();
    let from_file = format!("[cluster]\nsecret_file = \"{}\"\n", file.display());
    assert_eq!(
        load_str(&from_file).unwrap().cluster.secret_keys().unwrap(),
        vec![[1u8; 32], [0u8; 32]]
    );
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn list_and_float_overrides() {
    let o = vec![
        (
            "cluster.seeds".to_string(),
            "a:1, b:2".to_string(),
            Source::Env("VIBEMQ_CLUSTER_SEEDS"),
        ),
        (
            "cluster.failure_phi_threshold".to_string(),
            "5.5".to_string(),
            Source::Flag("--x"),
        ),
    ];
    let c = Config::load(None, &o).unwrap();
    assert_eq!(c.cluster.seeds, ["a:1", "b:2"]);
    assert_eq!(c.cluster.failure_phi_threshold, 5.5);
}

#[test]
fn env_names_map_to_keys() {
    let vars = vec![
        ("VIBEMQ_SERVER_BIND".to_string(), "127.0.0.1:1".to_string()),
        ("VIBEMQ_NOPE".to_string(), "1".to_string()),
        ("PATH".to_string(), "/bin".to_string()),
    ];
    let o = Config::env_overrides(vars);
    assert_eq!(
        o,
        vec![(
            "server.bind".into(),
            "127.0.0.1:1".into(),
            "VIBEMQ_SERVER_BIND".into()
        )]
    );
}

#[test]
fn persistence_keys_are_checked_and_named() {
    let p = load_str("").unwrap().persistence;
    assert!(!p.enabled, "off by default, as mosquitto");
    assert_eq!(
        (p.dir.as_str(), p.sync, p.sync_interval_ms),
        ("data", SyncMode::Always, 1000)
    );
    let p =
        load_str("[persistence]\nenabled = true\ndir = \"/var/lib/vibemq\"\nsync = \"interval\"\n")
            .unwrap()
            .persistence;
    assert_eq!(
        (p.dir.as_str(), p.sync),
        ("/var/lib/vibemq", SyncMode::Interval)
    );
    for (text, key) in [
        ("[persistence]\nsync = \"sometimes\"\n", "persistence.sync"),
        (
            "[persistence]\nsync_interval_ms = 0\n",
            "persistence.sync_interval_ms",
        ),
        (
            "[persistence]\nenabled = true\ndir = \" \"\n",
            "persistence.dir",
        ),
    ] {
        let e = load_str(text).unwrap_err().to_string();
        assert!(e.starts_with(key), "{text}: {e}");
    }
    let from_env = Config::load(
        None,
        &[(
            "persistence.enabled".into(),
            "true".into(),
            Source::Env("VIBEMQ_PERSISTENCE_ENABLED"),
        )],
    )
    .unwrap();
    assert!(from_env.persistence.enabled);
}

#[test]
fn subscribe_ack_keys_are_checked_and_named() {
    let c = Config::default_config();
    assert_eq!(c.cluster.subscribe_ack, SubscribeAck::Cluster);
    assert_eq!(c.cluster.subscribe_ack_timeout_ms, 500);
    let c = load_str("[cluster]\nsubscribe_ack = \"local\"\nsubscribe_ack_timeout_ms = 60000\n")
        .unwrap();
    assert_eq!(c.cluster.subscribe_ack, SubscribeAck::Local);
    assert_eq!(c.cluster.subscribe_ack_timeout_ms, 60_000);
    let e = load_str("[cluster]\nsubscribe_ack = \"everyone\"\n").unwrap_err();
    assert!(e.to_string().contains("cluster.subscribe_ack"), "{e}");
    for bad in [0, 60_001] {
        let e = load_str(&format!("[cluster]\nsubscribe_ack_timeout_ms = {bad}\n")).unwrap_err();
        assert!(
            e.to_string().contains("cluster.subscribe_ack_timeout_ms"),
            "{e}"
        );
    }
}

#[test]
fn session_takeover_keys_are_checked_and_named() {
    let c = Config::default_config();
    assert_eq!(c.cluster.takeover_timeout_ms, 5000);
    assert!(c.cluster.allow_connect_during_partition);
    let c =
        load_str("[cluster]\ntakeover_timeout_ms = 250\nallow_connect_during_partition = false\n")
            .unwrap();
    assert_eq!(c.cluster.takeover_timeout_ms, 250);
    assert!(!c.cluster.allow_connect_during_partition);
    for bad in [0, 60_001] {
        let e = load_str(&format!("[cluster]\ntakeover_timeout_ms = {bad}\n")).unwrap_err();
        assert!(e.to_string().contains("cluster.takeover_timeout_ms"), "{e}");
    }
}

#[test]
fn session_replication_is_sync_by_default_and_takes_two_names() {
    let c = Config::default_config();
    assert_eq!(c.cluster.session_replication, SessionReplication::Sync);
    let c = load_str("[cluster]\nsession_replication = \"async\"\n").unwrap();
    assert_eq!(c.cluster.session_replication, SessionReplication::Async);
    let e = load_str("[cluster]\nsession_replication = \"eventually\"\n").unwrap_err();
    assert!(e.to_string().contains("session_replication"), "{e}");
}

#[test]
fn shared_subscription_strategy_takes_the_five_names() {
    assert_eq!(
        Config::default_config().mqtt.shared_subscription_strategy,
        SharedStrategy::RoundRobin
    );
    for (name, strategy) in [
        ("round_robin", SharedStrategy::RoundRobin),
        ("random", SharedStrategy::Random),
        ("local_first", SharedStrategy::LocalFirst),
        ("hash_clientid", SharedStrategy::HashClientid),
        ("sticky", SharedStrategy::Sticky),
    ] {
        let c = load_str(&format!(
            "[mqtt]\nshared_subscription_strategy = \"{name}\"\n"
        ))
        .unwrap();
        assert_eq!(c.mqtt.shared_subscription_strategy, strategy);
    }
    let e = load_str("[mqtt]\nshared_subscription_strategy = \"hash_topic\"\n").unwrap_err();
    assert!(
        e.to_string().contains("mqtt.shared_subscription_strategy"),
        "{e}"
    );
}

#[test]
fn the_stop_phases_must_fit_in_shutdown_timeout() {
    let c = Config::default_config();
    let s = &c.server;
    assert_eq!(
        (
            s.shutdown_delay,
            s.shutdown_clients_timeout,
            s.shutdown_cluster_timeout
        ),
        (0, 5, 5)
    );
    assert!(s.shutdown_timeout >= 10);
    let c = load_str(
        "[server]\nshutdown_delay = 5\nshutdown_clients_timeout = 15\nshutdown_timeout = 25\n",
    )
    .unwrap();
    assert_eq!(c.server.shutdown_delay, 5);
    let e = load_str("[server]\nshutdown_delay = 5\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("server.shutdown_timeout") && e.contains("5 + 5 + 5 = 15"),
        "{e}"
    );
    let e = load_str(&format!(
        "[server]\nserver_reference = \"{}\"\n",
        "x".repeat(1025)
    ))
    .unwrap_err();
    assert!(e.to_string().contains("server.server_reference"), "{e}");
}

#[test]
fn join_timeout_is_bounded_and_named() {
    assert_eq!(Config::default_config().cluster.join_timeout_ms, 10_000);
    assert_eq!(
        load_str("[cluster]\njoin_timeout_ms = 0\n")
            .unwrap()
            .cluster
            .join_timeout_ms,
        0
    );
    let e = load_str("[cluster]\njoin_timeout_ms = 3600001\n").unwrap_err();
    assert!(e.to_string().contains("cluster.join_timeout_ms"), "{e}");
}
