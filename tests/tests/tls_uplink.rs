//! TLS to a real Mosquitto, from both ends: the gateway's uplink and the hub's ingest connection
//! each verify the broker against the configured CA and present a client certificate, with a
//! username and password too; the hub sees the gateway. A gateway or a hub that trusts another CA
//! never gets through.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::{eventually, free_addr, get_json};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("openssl (run ./test.sh, which installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate it signs for `name` (server: with IP 127.0.0.1).
fn pki(dir: &Path, ca: &str, certs: &[(&str, bool)]) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.crt"),
        ],
    );
    for (name, server) in certs {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let ext = dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            if *server {
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
            } else {
                "extendedKeyUsage=clientAuth\n"
            },
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }
}

/// The hub as a client of the broker's TLS listener, trusting `ca`, with its own certificate.
fn hub_tls(d: &Path, tls_port: u16, ca: &str) -> hub::MqttMode {
    hub::MqttMode::External {
        url: hub::Broker::parse(&format!("mqtts://127.0.0.1:{tls_port}")).unwrap(),
        username: Some("hub".into()),
        password: Some("hub-secret".into()),
        tls: Some(firmware_config::TlsSpec {
            ca_file: Some(d.join(format!("{ca}.crt"))),
            client_cert_file: Some(d.join("hub.crt")),
            client_key_file: Some(d.join("hub.key")),
        }),
    }
}

fn gateway_file(dir: &Path, id: &str, tls_port: u16, ca: &str) -> std::path::PathBuf {
    let f = dir.join(format!("{id}.toml"));
    let d = dir.display();
    std::fs::write(
        &f,
        format!(
            r#"{head}username = "gw-user"
password = "gw-secret"
keep_alive_s = 5
[uplink.tls]
ca_file = "{d}/{ca}.crt"
client_cert_file = "{d}/gateway.crt"
client_key_file = "{d}/gateway.key"
[agent]
heartbeat_s = 1
"#,
            head = tests::gateway_head(id, &format!("mqtts://127.0.0.1:{tls_port}"))
        ),
    )
    .unwrap();
    f
}

#[test]
fn uplink_over_tls_with_client_certificate_and_password() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(
        d,
        "city-ca",
        &[("broker", true), ("gateway", false), ("hub", false)],
    );
    pki(d, "other-ca", &[]);
    let passwd = d.join("passwd");
    std::fs::write(&passwd, "").unwrap();
    for (user, pass) in [("gw-user", "gw-secret"), ("hub", "hub-secret")] {
        let ok = Command::new("mosquitto_passwd")
            .args(["-b"])
            .arg(&passwd)
            .args([user, pass])
            .status()
            .expect("mosquitto_passwd (from the mosquitto package; run ./test.sh)");
        assert!(ok.success());
    }
    let (plain, tls, http) = (free_addr().port(), free_addr().port(), free_addr());
    let conf = format!(
        "per_listener_settings false\nallow_anonymous false\npassword_file {p}\n\
         listener {plain} 127.0.0.1\n\
         listener {tls} 127.0.0.1\ncafile {dd}/city-ca.crt\ncertfile {dd}/broker.crt\nkeyfile {dd}/broker.key\n\
         require_certificate true\n",
        p = passwd.display(),
        dd = d.display()
    );
    let _broker = tests::mosquitto_conf(plain, d, &conf);
    tests::wait_for_port(([127, 0, 0, 1], tls).into(), Duration::from_secs(10));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub = rt
        .block_on(hub::start(hub::HubConfig {
            client_id: "hub-tls-test".into(),
            auth: hub::keys::AuthPolicy::AllowUnsigned,
            ..hub::HubConfig::new(
                http,
                {
                    tests::provision_admin(&d.join("hub"));
                    d.join("hub")
                },
                hub_tls(d, tls, "city-ca"),
            )
        }))
        .unwrap();
    tests::wait_hub_ready(http);

    let good = tests::Agent::start(&rt, &gateway_file(d, "gw-tls", tls, "city-ca"), None);
    let wrong = tests::Agent::start(&rt, &gateway_file(d, "gw-wrong-ca", tls, "other-ca"), None);
    let base = format!("http://{http}");
    let seen = |id: &str| -> Option<serde_json::Value> {
        get_json(&format!("{base}/api/v1/gateways"))?
            .as_array()?
            .iter()
            .find(|g| g["id"] == id)
            .cloned()
    };
    let gw = eventually(
        Duration::from_secs(20),
        "the TLS gateway's heartbeat",
        || seen("gw-tls").filter(|g| g["last_heartbeat"].is_object()),
    );
    assert_eq!(gw["state"], "online");
    // The gateway trusting another CA refuses the broker's certificate: never seen.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        seen("gw-wrong-ca").is_none(),
        "a gateway that cannot verify the broker got through"
    );
    good.stop(&rt);
    wrong.stop(&rt);
    rt.block_on(hub.stop());

    // A hub that trusts another CA refuses the broker: it starts, but never becomes ready.
    let http2 = free_addr();
    let cfg = |mqtt| hub::HubConfig {
        client_id: "hub-tls-test-2".into(),
        auth: hub::keys::AuthPolicy::AllowUnsigned,
        ..hub::HubConfig::new(http2, d.join("hub"), mqtt)
    };
    let doubting = rt
        .block_on(hub::start(cfg(hub_tls(d, tls, "other-ca"))))
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (status, health) = tests::get_status(&format!("http://{http2}/healthz"));
    assert_eq!(
        (status, health["mqtt"].as_str()),
        (503, Some("connecting")),
        "{health}"
    );
    rt.block_on(doubting.stop());
    // TLS files with a plain mqtt:// URL are a mistake worth stopping for.
    let mut plain_with_files = hub_tls(d, tls, "city-ca");
    if let hub::MqttMode::External { url, .. } = &mut plain_with_files {
        url.tls = false;
    }
    let err = rt.block_on(hub::start(cfg(plain_with_files))).unwrap_err();
    assert!(format!("{err:#}").contains("use mqtts://"), "{err:#}");
}
