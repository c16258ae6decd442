//! Commands through a real broker to a real device: a client on the hub's side of Mosquitto publishes
//! commands on the gateway's `cmd` topic; the agent writes to a pymodbus device, reads back, and
//! replies on `reply` with the precise outcome.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use protocol::{Action, Command, CommandId, CommandOutcome, Limits, Reply, Timestamp, Value};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use tests::{free_addr, mosquitto, pymodbus_tcp};

fn command(device: &str, action: Action, expires_in_ms: i64) -> Command {
    let now = Timestamp::now();
    Command {
        v: 1,
        id: CommandId::from_uuid(uuid::Uuid::from_u128(fastrand_u128())),
        device: device.parse().unwrap(),
        issued_at: now.add_millis(-1000),
        expires_at: now.add_millis(expires_in_ms),
        action,
    }
}

fn fastrand_u128() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    u128::from(N.fetch_add(1, Ordering::Relaxed)) << 64 | u128::from(std::process::id())
}

fn write(metric: &str, value: Value) -> Action {
    Action::Write {
        metric: metric.parse().unwrap(),
        value,
    }
}

#[test]
fn commands_are_performed_read_back_and_answered_precisely() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = free_addr();
    let _broker = mosquitto(mqtt.port(), dir.path());
    let modbus = free_addr();
    // Register 2 holds other flags (bits 0 and 4) that a write of bit 3 must keep.
    let _device = pymodbus_tcp(
        modbus.port(),
        &json!({"1": {"holding": [{"addr": 0, "type": "u16", "value": 100}, {"addr": 1, "type": "u16", "value": 150},
                                  {"addr": 2, "type": "u16", "value": 0x11}],
                      "coils": {"0": true}}}),
        dir.path(),
    );
    let gw_file = dir.path().join("gw.toml");
    std::fs::write(
        &gw_file,
        format!(
            r#"gateway = "gw-cmd"
[location]
lon = 118.78
lat = 32.04
road_segment = "rd-1"
grid = "grid-1"
[uplink]
broker = "mqtt://{mqtt}"
[[bus]]
name = "tcp-1"
type = "tcp"
host = "{modbus}"
timeout_ms = 300
[[bus.device]]
id = "lamp-1"
unit = 1
profile = "test-lamp"
asset = "lamp-a1"
poll_ms = 1000
[[bus.device]]
id = "lamp-absent"
unit = 9
profile = "test-lamp"
asset = "lamp-a9"
poll_ms = 1000
"#
        ),
    )
    .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = tests::Agent::start(&rt, &gw_file, Some(tests::test_profiles()));

    let replies: HashMap<CommandId, Reply> = rt.block_on(async {
        let (client, mut ev) =
            AsyncClient::new(MqttOptions::new("hub-side", "127.0.0.1", mqtt.port()), 100);
        client
            .subscribe("city/v1/gw/gw-cmd/reply", QoS::AtLeastOnce)
            .await
            .unwrap();
        let send = |c: &Command| {
            let client = client.clone();
            let bytes = protocol::encode(c, &Limits::default()).unwrap();
            async move {
                client
                    .publish("city/v1/gw/gw-cmd/cmd", QoS::AtLeastOnce, false, bytes)
                    .await
                    .unwrap()
            }
        };
        let next_reply = async |ev: &mut rumqttc::EventLoop| loop {
            if let Event::Incoming(Packet::Publish(p)) = ev.poll().await.unwrap() {
                return protocol::decode::<Reply>(&p.payload, &Limits::default()).unwrap();
            }
        };
        // Until the agent has subscribed, commands go nowhere: repeat the first (idempotent) one.
        let mut replies = HashMap::new();
        let first = loop {
            let c = command("lamp-1", write("dimLevel", Value::Number(40.0)), 60_000);
            send(&c).await;
            if let Ok(r) =
                tokio::time::timeout(Duration::from_millis(700), next_reply(&mut ev)).await
            {
                break r;
            }
        };
        replies.insert(first.id, first.clone());
        let cases = vec![
            command("lamp-1", write("powerState", Value::Bool(false)), 60_000),
            command("lamp-1", write("nightMode", Value::Bool(true)), 60_000),
            command("lamp-1", write("ratedPower", Value::Number(200.0)), 60_000),
            command("lamp-1", write("dimLevel", Value::Number(250.0)), 60_000),
            command("lamp-1", write("colour", Value::Number(1.0)), 60_000),
            command("lamp-9", write("dimLevel", Value::Number(10.0)), 60_000),
            command("lamp-1", write("dimLevel", Value::Number(10.0)), -500),
            command(
                "lamp-absent",
                write("dimLevel", Value::Number(10.0)),
                60_000,
            ),
            command("lamp-1", Action::Reset, 60_000),
        ];
        for c in &cases {
            send(c).await;
        }
        while replies.len() < cases.len() + 1 {
            let r = tokio::time::timeout(Duration::from_secs(10), next_reply(&mut ev))
                .await
                .expect("a reply for every command");
            replies.insert(r.id, r);
        }
        let mut by_case = HashMap::new();
        by_case.insert(first.id, first);
        for c in cases {
            by_case.insert(c.id, replies.remove(&c.id).unwrap());
        }
        by_case
    });
    let mut rs: Vec<&Reply> = replies.values().collect();
    rs.sort_by_key(|r| r.at);
    let find =
        |pred: &dyn Fn(&Reply) -> bool| -> &Reply { rs.iter().copied().find(|r| pred(r)).unwrap() };
    let detail = |r: &Reply| r.detail.clone().unwrap_or_default();

    let dim =
        find(&|r| r.outcome == CommandOutcome::Ok && r.read_back == Some(Value::Number(40.0)));
    assert_eq!(dim.gateway.as_str(), "gw-cmd");
    find(&|r| r.outcome == CommandOutcome::Ok && r.read_back == Some(Value::Bool(false)));
    find(&|r| r.outcome == CommandOutcome::Ok && r.read_back == Some(Value::Bool(true)));
    assert!(detail(find(&|r| detail(r).contains("ratedPower is read-only"))).contains("test-lamp"));
    find(&|r| {
        r.outcome == CommandOutcome::Rejected
            && detail(r).contains("250 is outside dimLevel's range 0..100")
    });
    find(&|r| {
        r.outcome == CommandOutcome::Rejected
            && detail(r).contains("no metric colour; writable: powerState, dimLevel, nightMode")
    });
    find(&|r| {
        r.outcome == CommandOutcome::Rejected
            && detail(r).contains("gateway gw-cmd has no device lamp-9")
    });
    find(&|r| r.outcome == CommandOutcome::Expired);
    find(&|r| {
        r.outcome == CommandOutcome::Failed
            && r.device.as_str() == "lamp-absent"
            && detail(r).contains("write failed")
    });
    find(&|r| r.outcome == CommandOutcome::Rejected && detail(r).contains("no reset sequence"));

    agent.stop(&rt);
    // The bit write kept the register's other flags (0x11 | 0x08 = 0x19): probe the device as an
    // installer would and look at the raw holding registers (dimLevel 40, ratedPower 150, flags).
    let (report, ok) = rt
        .block_on(edge_agent::commission::probe(
            &gw_file,
            Some(&tests::test_profiles()),
            "lamp-1",
            1,
        ))
        .unwrap();
    assert!(ok, "{report}");
    assert!(report.contains("0028 0096 0019"), "{report}");
}
