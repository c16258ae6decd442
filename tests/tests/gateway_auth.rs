//! A gateway cannot pass itself off as another. Every message carries an HMAC made with its gateway's
//! key; the hub verifies it against the gateway its topic names. Played with the real `mosquitto_pub`:
//! - on the embedded broker (no topic ACL): an envelope under another gateway's topic, signed with
//!   another gateway's key, altered after signing, or unsigned is dead-lettered with its reason;
//!   a replayed one is stored once; a key added with the real `hub keys` CLI works at once and a
//!   revoked one stops working;
//! - on Mosquitto with the shipped ACL (deploy/mosquitto/acl): the broker itself refuses a foreign
//!   topic, and the hub still refuses a wrong key or an altered message; a gateway reads its own
//!   configuration pushes and not another's.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use protocol::BootId;
use protocol::auth::{Key, KeyId, seal};
use tests::wire::{envelope, presence};
use tests::{eventually, free_addr, get_json, mosquitto_pub};

fn up(gw: &str) -> String {
    format!("city/v1/gw/{gw}/up")
}

/// Reading values stored for `asset`, oldest first.
fn values(base: &str, asset: &str) -> Vec<f64> {
    get_json(&format!(
        "{base}/api/v1/assets/{asset}/readings?metric=pm10"
    ))
    .and_then(|v| {
        v.as_array()
            .map(|a| a.iter().filter_map(|p| p["value"].as_f64()).collect())
    })
    .unwrap_or_default()
}

/// Dead letters as (gateway, code, topic), oldest first.
fn dead(base: &str) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = get_json(&format!("{base}/api/v1/dead-letters"))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["gateway"].as_str().unwrap_or("").to_owned(),
                d["code"].as_str().unwrap_or("").to_owned(),
                d["topic"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    out.reverse();
    out
}

fn hub_cli(data_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/hub"))
        .arg("keys")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("target/debug/hub (cargo build --bins)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "hub keys {args:?}: {text}");
    text
}

/// The key with `id` but the secret of `other`: what a gateway holding another's secret could forge.
fn boot_of(n: u128) -> BootId {
    BootId::from_uuid(uuid::Uuid::from_u128(n + 1))
}

fn forged(id: &str, other: &Key) -> Key {
    Key::new(KeyId::new(id).unwrap(), other.secret().to_vec()).unwrap()
}

#[test]
fn embedded_broker_forgeries_replay_and_key_rotation() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_addr(), free_addr());
    let hub_dir = dir.path().join("hub");
    // Both gateways' keys are called k1: then only the MAC itself tells them apart.
    let ka = tests::provision_key(&hub_dir, "gw-a", "k1", &dir.path().join("a.key"));
    let kb = tests::provision_key(&hub_dir, "gw-b", "k1", &dir.path().join("b.key"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub = tests::start_embedded_hub_signed(&rt, &hub_dir, http, mqtt);
    let base = format!("http://{http}");
    let port = mqtt.port();
    // The embedded broker takes only logins: a gateway's id with the password derived from its key.
    let (pa, pb) = (
        protocol::auth::broker_password(&ka, "gw-a"),
        protocol::auth::broker_password(&kb, "gw-b"),
    );
    let t = "city/v1/gw/gw-a/state";
    let hello = seal(&ka, t, &presence("gw-a", boot_of(0), "dust-a"));
    assert!(
        !mosquitto_pub(port, None, t, &hello),
        "anonymous login taken"
    );
    assert!(
        !mosquitto_pub(port, Some(("gw-a", "guess")), t, &hello),
        "wrong password taken"
    );
    assert!(
        !mosquitto_pub(port, Some(("gw-b", &pa)), t, &hello),
        "gw-a's password taken for gw-b"
    );
    // Everything below is published by gw-a (the rogue, which has no ACL to stop it) except gw-b's
    // own presence.
    let pub_ = |topic: &str, payload: Vec<u8>| {
        assert!(mosquitto_pub(port, Some(("gw-a", &pa)), topic, &payload))
    };
    let boot = BootId::from_uuid(uuid::Uuid::new_v4());

    for (gw, key, asset, pass) in [("gw-a", &ka, "dust-a", &pa), ("gw-b", &kb, "dust-b", &pb)] {
        let t = format!("city/v1/gw/{gw}/state");
        let p = seal(key, &t, &presence(gw, boot, asset));
        assert!(mosquitto_pub(port, Some((gw, pass)), &t, &p));
    }
    pub_(
        &up("gw-a"),
        seal(&ka, &up("gw-a"), &envelope("gw-a", boot, 0, 1.0)),
    );
    eventually(Duration::from_secs(10), "gw-a's first reading", || {
        (values(&base, "dust-a") == [1.0]).then_some(())
    });

    // 1. gw-a publishes under gw-b's topic, as gw-b, signed with its own key.
    pub_(
        &up("gw-b"),
        seal(&ka, &up("gw-b"), &envelope("gw-b", boot, 1, 666.0)),
    );
    // 2. gw-b's genuine message moved to gw-a's topic.
    pub_(
        &up("gw-a"),
        seal(&kb, &up("gw-b"), &envelope("gw-b", boot, 2, 667.0)),
    );
    // 3. Signed by gw-a, then altered on the way (777 → 778).
    let genuine = seal(&ka, &up("gw-a"), &envelope("gw-a", boot, 3, 777.0));
    let text = String::from_utf8(genuine).unwrap();
    assert!(text.contains("777"));
    pub_(&up("gw-a"), text.replace("777", "778").into_bytes());
    // 4. Unsigned.
    pub_(&up("gw-a"), envelope("gw-a", boot, 4, 888.0));
    // 5. A key id gw-b has never had.
    pub_(
        &up("gw-b"),
        seal(
            &forged("k9", &kb),
            &up("gw-b"),
            &envelope("gw-b", boot, 5, 999.0),
        ),
    );
    // 6. Replayed: gw-a's first envelope again (stored once), then a new one as a barrier.
    pub_(
        &up("gw-a"),
        seal(&ka, &up("gw-a"), &envelope("gw-a", boot, 0, 1.0)),
    );
    pub_(
        &up("gw-a"),
        seal(&ka, &up("gw-a"), &envelope("gw-a", boot, 6, 2.0)),
    );
    eventually(Duration::from_secs(10), "the barrier reading", || {
        (values(&base, "dust-a") == [1.0, 2.0]).then_some(())
    });
    assert!(values(&base, "dust-b").is_empty());
    let d = eventually(Duration::from_secs(5), "five dead letters", || {
        let d = dead(&base);
        (d.len() >= 5).then_some(d)
    });
    let codes: Vec<(&str, &str)> = d.iter().map(|(g, c, _)| (g.as_str(), c.as_str())).collect();
    assert_eq!(
        codes,
        [
            ("gw-b", "bad_mac"),
            ("gw-a", "bad_mac"),
            ("gw-a", "bad_mac"),
            ("gw-a", "unsigned"),
            ("gw-b", "unknown_key"),
        ],
        "{d:?}"
    );
    let metrics = tests::metrics_text(&base);
    assert!(
        metrics.contains("hub_envelopes_duplicate_total 1"),
        "{metrics}"
    );
    // Wrong passwords are counted; rumqttd refuses an anonymous client before asking the hub.
    assert!(
        metrics.contains("hub_broker_logins_refused_total 2"),
        "{metrics}"
    );

    // Rotation with the real CLI beside the running hub: a second key works at once...
    let k2_file = dir.path().join("a2.key");
    hub_cli(
        &hub_dir,
        &[
            "add",
            "gw-a",
            "--key-id",
            "k2",
            "--out",
            k2_file.to_str().unwrap(),
        ],
    );
    let k2 = firmware_config::keyfile::read_key_file(&k2_file).unwrap();
    assert_eq!(k2.gateway.as_str(), "gw-a");
    pub_(
        &up("gw-a"),
        seal(&k2.key, &up("gw-a"), &envelope("gw-a", boot, 7, 3.0)),
    );
    eventually(
        Duration::from_secs(10),
        "the reading signed with k2",
        || (values(&base, "dust-a") == [1.0, 2.0, 3.0]).then_some(()),
    );
    // ... and once the old one is revoked, it is refused within seconds.
    hub_cli(&hub_dir, &["revoke", "gw-a", "k1"]);
    let listed = hub_cli(&hub_dir, &["list", "gw-a"]);
    assert!(listed.contains("k1") && listed.contains("k2"), "{listed}");
    assert!(
        !listed.contains(&ka.secret_base64()),
        "secrets never listed"
    );
    std::thread::sleep(hub::keys::RELOAD_EVERY + Duration::from_secs(1));
    // The broker password derived from the revoked key no longer logs in; k2's does.
    let late = seal(&ka, &up("gw-a"), &envelope("gw-a", boot, 8, 4.0));
    assert!(
        !mosquitto_pub(port, Some(("gw-a", &pa)), &up("gw-a"), &late),
        "a revoked key's broker password still logs in"
    );
    let pa2 = protocol::auth::broker_password(&k2.key, "gw-a");
    let pub_ = |topic: &str, payload: Vec<u8>| {
        assert!(mosquitto_pub(port, Some(("gw-a", &pa2)), topic, &payload))
    };
    // A message signed with the revoked key (say, still in the gateway's spool) is refused.
    pub_(&up("gw-a"), late);
    eventually(Duration::from_secs(10), "the revoked key refused", || {
        dead(&base)
            .last()
            .filter(|(g, c, _)| g == "gw-a" && c == "unknown_key")
            .map(|_| ())
    });
    pub_(
        &up("gw-a"),
        seal(&k2.key, &up("gw-a"), &envelope("gw-a", boot, 9, 5.0)),
    );
    eventually(Duration::from_secs(10), "k2 still works", || {
        (values(&base, "dust-a") == [1.0, 2.0, 3.0, 5.0]).then_some(())
    });
    rt.block_on(hub.stop());
}

#[test]
fn mosquitto_with_the_shipped_acl() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (http, port) = (free_addr(), free_addr().port());
    let mosq_dir = dir.path().join("mosquitto");
    std::fs::create_dir_all(&mosq_dir).unwrap();
    let passwd = mosq_dir.join("passwd");
    std::fs::write(&passwd, "").unwrap();
    for (user, pass) in [("hub", "hub-pw"), ("gw-a", "a-pw"), ("gw-b", "b-pw")] {
        let ok = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(&passwd)
            .args([user, pass])
            .status()
            .expect("mosquitto_passwd (from the mosquitto package; run ./test.sh)");
        assert!(ok.success());
    }
    let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto/acl");
    let _mosq = tests::mosquitto_conf(
        port,
        &mosq_dir,
        &format!(
            "per_listener_settings false\nallow_anonymous false\npassword_file {}\nacl_file {}\nlistener {port} 127.0.0.1\n",
            passwd.display(),
            acl.display()
        ),
    );
    let hub_dir = dir.path().join("hub");
    let ka = tests::provision_key(&hub_dir, "gw-a", "k1", &dir.path().join("a.key"));
    let kb = tests::provision_key(&hub_dir, "gw-b", "k1", &dir.path().join("b.key"));
    let hub_pw = dir.path().join("hub-pw");
    std::fs::write(&hub_pw, "hub-pw\n").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    tests::provision_admin(&hub_dir);
    let hub = rt
        .block_on(hub::start(hub::HubConfig {
            client_id: "hub-acl".into(),
            ..hub::HubConfig::new(
                http,
                hub_dir.clone(),
                hub::MqttMode::External {
                    url: hub::Broker::parse(&format!("mqtt://127.0.0.1:{port}")).unwrap(),
                    username: Some("hub".into()),
                    password: Some("hub-pw".into()),
                    tls: None,
                },
            )
        }))
        .unwrap();
    tests::wait_hub_ready(http);
    let base = format!("http://{http}");
    let a = Some(("gw-a", "a-pw"));
    let pub_as = |login, topic: &str, payload: Vec<u8>| mosquitto_pub(port, login, topic, &payload);
    let boot = BootId::from_uuid(uuid::Uuid::new_v4());

    for (gw, key, asset, pw) in [
        ("gw-a", &ka, "dust-a", "a-pw"),
        ("gw-b", &kb, "dust-b", "b-pw"),
    ] {
        let t = format!("city/v1/gw/{gw}/state");
        assert!(pub_as(
            Some((gw, pw)),
            &t,
            seal(key, &t, &presence(gw, boot, asset))
        ));
    }
    assert!(pub_as(
        a,
        &up("gw-a"),
        seal(&ka, &up("gw-a"), &envelope("gw-a", boot, 0, 1.0))
    ));
    eventually(Duration::from_secs(10), "gw-a's first reading", || {
        (values(&base, "dust-a") == [1.0]).then_some(())
    });

    // gw-a's credential under gw-b's topic: the broker drops it (MQTT 3.1.1 cannot say so; it
    // acknowledges and discards), so the hub never even sees it.
    pub_as(
        a,
        &up("gw-b"),
        seal(&kb, &up("gw-b"), &envelope("gw-b", boot, 1, 666.0)),
    );
    // No credential at all: refused at connect.
    assert!(!pub_as(None, &up("gw-a"), envelope("gw-a", boot, 2, 667.0)));
    // On its own topic but signed with gw-b's secret, and altered after signing: the hub refuses.
    assert!(pub_as(
        a,
        &up("gw-a"),
        seal(
            &forged("k1", &kb),
            &up("gw-a"),
            &envelope("gw-a", boot, 3, 668.0)
        )
    ));
    let genuine = String::from_utf8(seal(&ka, &up("gw-a"), &envelope("gw-a", boot, 4, 777.0)))
        .unwrap()
        .replace("777", "778");
    assert!(pub_as(a, &up("gw-a"), genuine.into_bytes()));
    // A barrier: the next genuine message arrives after all of the above.
    assert!(pub_as(
        a,
        &up("gw-a"),
        seal(&ka, &up("gw-a"), &envelope("gw-a", boot, 5, 2.0))
    ));
    eventually(Duration::from_secs(10), "the barrier reading", || {
        (values(&base, "dust-a") == [1.0, 2.0]).then_some(())
    });
    assert!(values(&base, "dust-b").is_empty());
    let d = dead(&base);
    let codes: Vec<(&str, &str, &str)> = d
        .iter()
        .map(|(g, c, t)| (g.as_str(), c.as_str(), t.as_str()))
        .collect();
    assert_eq!(
        codes,
        [
            ("gw-a", "bad_mac", "city/v1/gw/gw-a/up"),
            ("gw-a", "bad_mac", "city/v1/gw/gw-a/up"),
        ],
        "the foreign-topic message must not reach the hub at all"
    );

    // Configuration pushes: the hub may write every gateway's `config` topic; gw-a's credential
    // reads its own and gets nothing from gw-b's.
    let sub = |topic: &str| {
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args([
                "-u", "gw-a", "-P", "a-pw", "-t", topic, "-C", "1", "-W", "8",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let own = sub("city/v1/gw/gw-a/config");
    let foreign = sub("city/v1/gw/gw-b/config");
    std::thread::sleep(Duration::from_millis(700));
    for gw in ["gw-a", "gw-b"] {
        let file = tests::gateway_head(gw, &format!("mqtt://127.0.0.1:{port}"));
        let (code, body) = tests::post_as(
            &format!("{base}/api/v1/gateways/{gw}/config"),
            tests::TEST_TOKEN,
            "text/plain",
            file.as_bytes(),
        );
        assert_eq!(code, 201, "{body}");
    }
    let own = String::from_utf8(own.wait_with_output().unwrap().stdout).unwrap();
    let foreign = String::from_utf8(foreign.wait_with_output().unwrap().stdout).unwrap();
    let opened = protocol::auth::open(own.trim().as_bytes()).unwrap();
    opened.verify(&ka, "city/v1/gw/gw-a/config").unwrap();
    let push: protocol::ConfigPush =
        protocol::decode(opened.msg(), &protocol::Limits::default()).unwrap();
    assert_eq!((push.gateway.as_str(), push.version), ("gw-a", 1));
    assert!(
        foreign.is_empty(),
        "gw-a read gw-b's configuration: {foreign}"
    );
    rt.block_on(hub.stop());
}
