//! Shared helpers of the system tests: free ports, real peers (Mosquitto, pymodbus) as child processes
//! that die with the test, and polling the hub's HTTP API.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod webdriver;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Logs to stderr when RUST_LOG is set (`RUST_LOG=debug cargo test -p tests -- --nocapture`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A loopback address with a port that was free a moment ago, never the same twice in one test
/// process. Taken below Linux's ephemeral range (32768 and up), so that an outgoing connection of
/// another test cannot be given the port between this call and the bind that uses it.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Each test process starts somewhere else in the range (test binaries run one after another,
    // but a port may linger in TIME_WAIT).
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

/// Waits until something accepts TCP connections at `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) {
    let end = Instant::now() + timeout;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < end,
            "nothing listens on {addr} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed when dropped.
#[derive(Debug)]
pub struct Peer {
    pub name: String,
    child: Child,
}

impl Peer {
    /// A started peer process, killed when dropped.
    pub fn new(name: &str, child: Child) -> Self {
        Self {
            name: name.to_owned(),
            child,
        }
    }

    /// SIGTERM and wait (a broker saves its persistent state), then the value of `Drop` is moot.
    pub fn terminate(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// SIGKILL, as a power cut or the OOM killer would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository root (for `target/debug/…` and the shipped files).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Finds a real peer program: the variable set by ./test.sh, else well-known places. Panics with the
/// way to install it: a missing peer is a failed test, never a skipped one.
fn peer_program(var: &str, candidates: &[&str]) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    for c in candidates {
        let p = if c.starts_with('/') {
            PathBuf::from(c)
        } else {
            workspace_root().join(c)
        };
        if p.exists() {
            return p;
        }
    }
    panic!("test peer not found (set {var}, or run ./test.sh, which installs the peers)");
}

/// The directory of device profiles made for the system tests (`test-meter`).
pub fn test_profiles() -> PathBuf {
    workspace_root().join("tests/peers/profiles")
}

/// Register values for unit `unit` of the `test-meter` profile, as pymodbus serves them.
pub fn test_meter_registers(voltage: f64) -> serde_json::Value {
    serde_json::json!({
        "input": [
            {"addr": 0, "type": "f32", "order": "CDAB", "value": voltage},
            {"addr": 2, "type": "i16", "value": -125},
            {"addr": 3, "type": "u32", "order": "DCBA", "value": 123_456_789}
        ],
        "holding": [
            {"addr": 10, "type": "u16", "value": 1500},
            {"addr": 11, "type": "u16", "value": 2}
        ],
        "coils": {"0": true}
    })
}

/// A pair of connected pseudo-terminals made by socat: a serial line without hardware. Returns the
/// peer and the two device paths.
pub fn socat_pty_pair(dir: &Path) -> (Peer, PathBuf, PathBuf) {
    let (a, b) = (dir.join("ttyA"), dir.join("ttyB"));
    let child = Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stderr(Stdio::null())
        .spawn()
        .expect("start socat (run ./test.sh, which installs it)");
    let peer = Peer {
        name: "socat".into(),
        child,
    };
    eventually(Duration::from_secs(10), "socat's pty links", || {
        (a.exists() && b.exists()).then_some(())
    });
    (peer, a, b)
}

/// Starts the pymodbus device script serving `spec` as Modbus RTU on the serial device `tty`.
pub fn pymodbus_rtu(tty: &Path, spec: &serde_json::Value, dir: &Path) -> Peer {
    let python = peer_program("CITY_PEER_PYTHON", &[".venv/bin/python"]);
    let spec_file = dir.join("modbus-rtu.json");
    std::fs::write(&spec_file, serde_json::to_vec(spec).unwrap()).unwrap();
    let child = Command::new(python)
        .arg(workspace_root().join("tests/peers/modbus_device.py"))
        .arg("rtu")
        .arg(tty)
        .arg(&spec_file)
        .stdout(Stdio::null())
        .spawn()
        .expect("start pymodbus");
    Peer {
        name: "pymodbus-rtu".into(),
        child,
    }
}

/// Starts Mosquitto on `port` (loopback, anonymous, no persistence).
pub fn mosquitto(port: u16, dir: &Path) -> Peer {
    mosquitto_with(port, dir, false)
}

/// Starts Mosquitto on `port`; with `persistent`, sessions and queued messages are saved under `dir`
/// when it stops (SIGTERM) and restored when it starts again, as a production broker is set up.
pub fn mosquitto_with(port: u16, dir: &Path, persistent: bool) -> Peer {
    let conf = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence {persistent}\npersistence_location {}/\n",
        dir.display()
    );
    mosquitto_conf(port, dir, &conf)
}

/// Starts Mosquitto with the listeners and settings of `conf` (logging and limits are added), and
/// waits for `port`.
pub fn mosquitto_conf(port: u16, dir: &Path, conf: &str) -> Peer {
    // Started as root, Mosquitto switches to the `mosquitto` user, which cannot read or write a
    // test's private directory; keep it as whoever runs the tests.
    let user = Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "mosquitto".into());
    let bin = peer_program(
        "CITY_PEER_MOSQUITTO",
        &["/usr/sbin/mosquitto", "/usr/bin/mosquitto"],
    );
    let file = dir.join("mosquitto.conf");
    std::fs::write(
        &file,
        format!(
            "user {user}\nmax_queued_messages 100000\nmax_inflight_messages 100\n\
             log_dest stderr\nlog_type error\n{conf}"
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&file)
        .stdout(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    let peer = Peer {
        name: "mosquitto".into(),
        child,
    };
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    );
    peer
}

/// Starts the pymodbus device script serving `spec` (see tests/peers/modbus_device.py) over TCP.
pub fn pymodbus_tcp(port: u16, spec: &serde_json::Value, dir: &Path) -> Peer {
    let python = peer_program("CITY_PEER_PYTHON", &[".venv/bin/python"]);
    let spec_file = dir.join(format!("modbus-{port}.json"));
    std::fs::write(&spec_file, serde_json::to_vec(spec).unwrap()).unwrap();
    let script = workspace_root().join("tests/peers/modbus_device.py");
    let child = Command::new(python)
        .arg(script)
        .arg("tcp")
        .arg(port.to_string())
        .arg(&spec_file)
        .stdout(Stdio::null())
        .spawn()
        .expect("start pymodbus");
    let peer = Peer {
        name: "pymodbus".into(),
        child,
    };
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(20),
    );
    peer
}

/// Starts a real `edge-agent run` process (target/debug), with its spool under `data_dir`.
pub fn agent_process(config: &Path, profiles: Option<&Path>, data_dir: &Path) -> Peer {
    let mut cmd = Command::new(workspace_root().join("target/debug/edge-agent"));
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--clock", "synced"]);
    if let Some(p) = profiles {
        cmd.arg("--profiles").arg(p);
    }
    // Its log (stdout) is appended to agent.log next to the data directory, for post-mortems.
    std::fs::create_dir_all(data_dir).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.with_extension("log"))
        .unwrap();
    let child = cmd
        .stdout(log)
        .spawn()
        .expect("start target/debug/edge-agent (cargo build --bins)");
    Peer {
        name: "edge-agent".into(),
        child,
    }
}

/// The first lines of a test's gateway file: the gateway id, a place in the test town and the
/// `[uplink]` table with its broker (more `[uplink]` keys may follow directly).
pub fn gateway_head(gateway: &str, broker: &str) -> String {
    format!(
        "gateway = \"{gateway}\"\n[location]\nlon = 118.78\nlat = 32.04\nroad_segment = \"rd-1\"\ngrid = \"g-1\"\n\
         [uplink]\nbroker = \"{broker}\"\n"
    )
}

/// A fresh, empty PostgreSQL database on the test server that `./test.sh` starts
/// (`CITY_TEST_POSTGRES`): its connection string. Without a server, `None` (the PostgreSQL half
/// of a test is skipped, said on stderr), unless `CITY_REQUIRE_POSTGRES` is set: then a missing
/// server fails the test.
pub fn postgres_database() -> Option<String> {
    let params = match std::env::var("CITY_TEST_POSTGRES") {
        Ok(p) if !p.is_empty() => p,
        _ if std::env::var_os("CITY_REQUIRE_POSTGRES").is_some() => {
            panic!("CITY_REQUIRE_POSTGRES is set but CITY_TEST_POSTGRES names no server")
        }
        _ => {
            eprintln!("CITY_TEST_POSTGRES is not set: PostgreSQL half skipped (./test.sh runs it)");
            return None;
        }
    };
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    use hub::db::Sql as _;
    hub::db::PgConn::connect(&params)
        .and_then(|c| c.batch(&format!("CREATE DATABASE {name}")))
        .expect("create a test database");
    Some(format!("{params} dbname={name}"))
}

/// The admin token every test hub knows ([`provision_admin`]); `get_json` and `get_status` send it.
pub const TEST_TOKEN: &str = "test-admin-token-3c1f0e9a7b5d42e8a6f1c0d9b8e7a6f5";

/// Records [`TEST_TOKEN`] as an admin token in the hub database under `hub_dir` (again is fine).
pub fn provision_admin(hub_dir: &Path) {
    provision_admin_in(&hub::store::Database::new(hub_dir, None));
}

/// Records [`TEST_TOKEN`] as an admin token in `database` (again is fine).
pub fn provision_admin_in(database: &hub::store::Database) {
    let _ = hub::access::TokenAdmin::open(database).unwrap().add_token(
        "test-admin",
        hub::access::Role::Admin,
        None,
        TEST_TOKEN,
    );
}

/// Makes an API token with `role` in the hub database under `hub_dir` and returns it.
pub fn api_token(
    hub_dir: &Path,
    name: &str,
    role: hub::access::Role,
    department: Option<&str>,
) -> String {
    hub::access::TokenAdmin::open(&hub::store::Database::new(hub_dir, None))
        .unwrap()
        .add(name, role, department)
        .unwrap()
}

/// `Authorization` header value for [`TEST_TOKEN`].
pub fn bearer() -> String {
    format!("Bearer {TEST_TOKEN}")
}

/// GET `url` with the test admin token and parse JSON; `None` on any failure.
pub fn get_json(url: &str) -> Option<serde_json::Value> {
    get_json_as(url, TEST_TOKEN)
}

/// GET `url` with `token` and parse JSON; `None` on any failure.
pub fn get_json_as(url: &str, token: &str) -> Option<serde_json::Value> {
    let mut resp = ureq::get(url)
        .header("authorization", &format!("Bearer {token}"))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .ok()?;
    resp.body_mut().read_json().ok()
}

/// POST `body` as JSON to `url` with `token`: status code and JSON answer.
pub fn post_json_as(url: &str, token: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    post_as(url, token, "application/json", body.to_string().as_bytes())
}

/// POST `body` of `content_type` to `url` with `token`: status code and JSON answer (`Null` when
/// the answer is not JSON).
pub fn post_as(
    url: &str,
    token: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let mut resp = ureq::post(url)
        .header("authorization", &format!("Bearer {token}"))
        .header("content-type", content_type)
        .config()
        .http_status_as_error(false)
        .build()
        .send(body)
        .unwrap();
    let status = resp.status().as_u16();
    (
        status,
        resp.body_mut()
            .read_json()
            .unwrap_or(serde_json::Value::Null),
    )
}

/// Opens the live feed (server-sent events) at `url` with `token` and forwards each
/// `(event, data)` pair to the returned receiver.
pub fn sse_subscribe(
    url: &str,
    token: &str,
) -> std::sync::mpsc::Receiver<(String, serde_json::Value)> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    let resp = ureq::get(url)
        .header("authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let reader = std::io::BufReader::new(resp.into_body().into_reader());
    std::thread::spawn(move || {
        let mut event = String::new();
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_owned();
            } else if let Some(d) = line.strip_prefix("data: ") {
                let data = serde_json::from_str(d).unwrap_or(serde_json::Value::Null);
                if tx.send((event.clone(), data)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The hub's `/metrics` text (Prometheus format) at `base`.
pub fn metrics_text(base: &str) -> String {
    ureq::get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// Status code and JSON body of a GET.
pub fn get_status(url: &str) -> (u16, serde_json::Value) {
    get_status_as(url, TEST_TOKEN)
}

/// Status code and JSON body of a GET with `token`.
pub fn get_status_as(url: &str, token: &str) -> (u16, serde_json::Value) {
    let mut resp = ureq::get(url)
        .header("authorization", &format!("Bearer {token}"))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    let status = resp.status().as_u16();
    (
        status,
        resp.body_mut()
            .read_json()
            .unwrap_or(serde_json::Value::Null),
    )
}

/// Waits until the hub at `http` reports itself healthy (store answers, ingest subscribed).
pub fn wait_hub_ready(http: SocketAddr) {
    eventually(Duration::from_secs(15), "the hub healthy", || {
        let (code, _) = get_status(&format!("http://{http}/healthz"));
        (code == 200).then_some(())
    });
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` with `what`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a hub on embedded defaults (its own broker on `mqtt`, the API on `http`) with its data
/// under `data_dir`, and waits until it is healthy. It takes unsigned messages from gateways without
/// a key (`--allow-unsigned`); [`start_embedded_hub_signed`] does not.
pub fn start_embedded_hub(
    rt: &tokio::runtime::Runtime,
    data_dir: &Path,
    http: SocketAddr,
    mqtt: SocketAddr,
) -> hub::RunningHub {
    start_embedded_hub_with(
        rt,
        data_dir,
        http,
        mqtt,
        hub::keys::AuthPolicy::AllowUnsigned,
    )
}

/// A hub on embedded defaults that takes only messages signed with their gateway's key.
pub fn start_embedded_hub_signed(
    rt: &tokio::runtime::Runtime,
    data_dir: &Path,
    http: SocketAddr,
    mqtt: SocketAddr,
) -> hub::RunningHub {
    start_embedded_hub_with(rt, data_dir, http, mqtt, hub::keys::AuthPolicy::Required)
}

/// Makes a key for `gateway` in the hub database under `hub_dir` (as `hub keys add` does) and writes
/// its key file to `file`.
pub fn provision_key(
    hub_dir: &Path,
    gateway: &str,
    key_id: &str,
    file: &Path,
) -> protocol::auth::Key {
    let gw = protocol::GatewayId::new(gateway).unwrap();
    let key = hub::keys::KeyAdmin::open(&hub::store::Database::new(hub_dir, None))
        .unwrap()
        .add(&gw, Some(protocol::auth::KeyId::new(key_id).unwrap()))
        .unwrap();
    std::fs::write(file, firmware_config::keyfile::key_file_text(&gw, &key)).unwrap();
    key
}

fn start_embedded_hub_with(
    rt: &tokio::runtime::Runtime,
    data_dir: &Path,
    http: SocketAddr,
    mqtt: SocketAddr,
    auth: hub::keys::AuthPolicy,
) -> hub::RunningHub {
    provision_admin(data_dir);
    let hub = rt
        .block_on(hub::start(hub::HubConfig {
            auth,
            ..hub::HubConfig::new(
                http,
                data_dir.to_owned(),
                hub::MqttMode::Embedded { listen: mqtt },
            )
        }))
        .unwrap();
    wait_hub_ready(http);
    hub
}

/// An edge agent running in-process (the same `edge_agent::run` the binary calls).
#[derive(Debug)]
pub struct Agent {
    /// Its status endpoint (`GET /status`).
    pub status: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Agent {
    /// Starts an agent for `config`, with extra profiles from `profiles`.
    pub fn start(rt: &tokio::runtime::Runtime, config: &Path, profiles: Option<PathBuf>) -> Agent {
        Self::start_with_key(rt, config, profiles, None)
    }

    /// Starts an agent that signs with the key in `key_file`.
    pub fn start_with_key(
        rt: &tokio::runtime::Runtime,
        config: &Path,
        profiles: Option<PathBuf>,
        key_file: Option<PathBuf>,
    ) -> Agent {
        let status = free_addr();
        let stop = tokio_util::sync::CancellationToken::new();
        let opts = edge_agent::AgentOptions {
            config: config.to_owned(),
            profiles,
            broker: None,
            clock: edge_agent::clock::ClockSource::Auto,
            hub_url: None,
            // Each test's spool and evidence next to its gateway file, never a shared directory.
            data_dir: Some(config.parent().unwrap_or(Path::new(".")).join(format!(
                "agent-data-{}",
                config.file_stem().unwrap_or_default().to_string_lossy()
            ))),
            camera_listen: None,
            status_listen: Some(status.to_string()),
            key_file,
            config_trial: edge_agent::fleet::DEFAULT_TRIAL,
        };
        let task = rt.spawn(edge_agent::run(opts, stop.clone()));
        Agent { status, stop, task }
    }

    /// Stops it the way SIGTERM does and waits for a clean exit.
    pub fn stop(self, rt: &tokio::runtime::Runtime) {
        self.stop.cancel();
        rt.block_on(self.task).unwrap().unwrap();
    }
}

/// Publishes `payload` on `topic` at QoS 1 with the real `mosquitto_pub` (as `user`/`password` when
/// given), waiting for the broker's acknowledgement. Returns whether mosquitto_pub succeeded.
pub fn mosquitto_pub(port: u16, login: Option<(&str, &str)>, topic: &str, payload: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload");
    std::fs::write(&file, payload).unwrap();
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-t",
        topic,
    ])
    .arg("-f")
    .arg(&file);
    if let Some((u, p)) = login {
        cmd.args(["-u", u, "-P", p]);
    }
    cmd.stderr(Stdio::piped())
        .output()
        .expect("mosquitto_pub (run ./test.sh, which installs it)")
        .status
        .success()
}

/// Publishes each (topic, payload) to the broker on `port` at QoS 1 and waits for every PUBACK.
pub async fn publish_all(port: u16, msgs: Vec<(String, Vec<u8>)>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = format!(
        "test-pub-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut ev) = AsyncClient::new(opts, 100);
    let n = msgs.len();
    tokio::spawn(async move {
        for (t, p) in msgs {
            client.publish(t, QoS::AtLeastOnce, false, p).await.unwrap();
        }
    });
    let mut acked = 0;
    while acked < n {
        let event = tokio::time::timeout(Duration::from_secs(10), ev.poll())
            .await
            .expect("broker answers")
            .unwrap();
        if let Event::Incoming(Packet::PubAck(_)) = event {
            acked += 1;
        }
    }
}

/// Messages as a gateway encodes them, for tests that play a gateway.
pub mod wire {
    use protocol::{
        BootId, ClockState, Envelope, GatewayId, Item, Limits, Reading, Timestamp, Value,
    };

    /// One minute before the test started: every envelope's reading is stamped from here, one second per
    /// sequence number, so two envelopes never share a millisecond (the store keeps one reading per
    /// series and millisecond) and a redelivered envelope carries the same time.
    pub fn base() -> Timestamp {
        static BASE: std::sync::OnceLock<Timestamp> = std::sync::OnceLock::new();
        *BASE.get_or_init(|| Timestamp::now().add_millis(-60_000))
    }

    pub fn envelope(gateway: &str, boot: BootId, seq: u64, value: f64) -> Vec<u8> {
        let now = Timestamp::now();
        let env = Envelope {
            v: 1,
            gateway: GatewayId::new(gateway).unwrap(),
            boot,
            seq,
            sent_at: now,
            clock: ClockState::Synced,
            items: vec![Item::Reading(Reading {
                device: "dev-1".parse().unwrap(),
                metric: "pm10".parse().unwrap(),
                observed_at: base().add_millis(seq as i64 * 1000),
                value: Some(Value::Number(value)),
                unit: Some(protocol::Unit::new("ug/m3").unwrap()),
                quality: Default::default(),
            })],
        };
        protocol::encode(&env, &Limits::default()).unwrap()
    }

    pub fn presence(gateway: &str, boot: BootId, asset: &str) -> Vec<u8> {
        let p = protocol::Presence {
            v: 1,
            gateway: GatewayId::new(gateway).unwrap(),
            boot,
            state: protocol::PresenceState::Online,
            sent_at: Timestamp::now(),
            clock: ClockState::Synced,
            agent: None,
            config_version: None,
            devices: vec![protocol::DeviceInfo {
                device: "dev-1".parse().unwrap(),
                asset: asset.parse().unwrap(),
                kind: protocol::AssetKind::DustMonitor,
                profile: None,
                location: None,
                road_segment: None,
                grid: None,
                zone: None,
                report_interval_s: None,
            }],
        };
        protocol::encode(&p, &Limits::default()).unwrap()
    }
}

/// One request a [`webhook`] receiver got.
#[derive(Debug, Clone)]
pub struct HookRequest {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HookRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A webhook receiver on a free port keeping every request in `log`: it answers 503 to the first
/// `refuse_first` requests and 200 after. Returns its URL.
pub fn webhook(
    log: std::sync::Arc<std::sync::Mutex<Vec<HookRequest>>>,
    refuse_first: usize,
) -> String {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Some(request) = read_http_request(&stream) else {
                continue;
            };
            let seen = {
                let mut log = log.lock().unwrap();
                log.push(request);
                log.len()
            };
            let answer = if seen <= refuse_first {
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy"
            } else {
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            };
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    url
}

/// Headers and body of one HTTP request; `None` if the connection broke first.
fn read_http_request(stream: &std::net::TcpStream) -> Option<HookRequest> {
    use std::io::{BufRead, Read};
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = std::io::BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(Some(0), |(_, v)| v.parse().ok())?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(HookRequest { headers, body })
}
