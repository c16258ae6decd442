//! The README's main job, run as a user runs it: the `hub demo` binary with its simulated town and real
//! `edge-agent` child processes. Within 15 s the API lists every simulated asset, each seen in the last
//! 30 s and with readings; within three minutes the hub has raised exactly the tasks the day's
//! scenarios (`demo-scenarios.json`, hub/src/demo/scenario.rs) name for the evening — the failed
//! lamp, the storm, the dust episode, the night-market bin, the dead bin sensor, the parking
//! camera's violator and truck, the street vendor — each once, and nothing else (the test names
//! what is missing or extra); the gateway whose uplink was cut kept what it read meanwhile; SIGTERM
//! stops everything cleanly.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tests::{eventually, free_addr, get_json};

fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("debug").join(name);
    assert!(
        p.is_file(),
        "{} not built: run ./test.sh (it builds the binaries first)",
        p.display()
    );
    p
}

#[test]
fn demo_town_serves_fresh_assets_from_every_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_addr(), free_addr());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // The API needs a token: the test's own admin token, besides the one the demo makes.
    tests::provision_admin(dir.path());
    let log = std::fs::File::create(dir.path().join("demo.log")).unwrap();
    let child = Command::new(binary("hub"))
        .current_dir(&root)
        .args([
            "demo",
            "--http",
            &http.to_string(),
            "--mqtt-listen",
            &mqtt.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--agent-bin")
        .arg(binary("edge-agent"))
        // The hub logs to standard output, its agents to standard error: both into one file.
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // Killed if the test fails before its clean stop, so a failure leaves no demo holding ports.
    let mut child = KillOnDrop(Some(child));
    let started = Instant::now();
    let base = format!("http://{http}");
    // Every asset the example gateway files declare, with fresh values.
    let mut stale = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let assets = loop {
        if let Some(list) = fresh_assets(&base, &mut stale) {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "not all demo assets fresh within 15 s; stale: {stale:?}\ndemo log (tail):\n{}",
            tail(&dir.path().join("demo.log"))
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("demo ready in {:?}", started.elapsed());
    let gateways: std::collections::BTreeSet<&str> = assets
        .iter()
        .map(|a| a["gateway"].as_str().unwrap())
        .collect();
    assert!(gateways.len() >= 2, "{gateways:?}");
    let kinds: std::collections::BTreeSet<&str> =
        assets.iter().map(|a| a["kind"].as_str().unwrap()).collect();
    for k in ["streetlight", "waterlogging", "dustMonitor", "smartBin"] {
        assert!(kinds.contains(k), "no {k} in {kinds:?}");
    }
    for a in &assets {
        let id = a["id"].as_str().unwrap();
        let metric = a["latest"].as_object().unwrap().keys().next().unwrap();
        let r = get_json(&format!(
            "{base}/api/v1/assets/{id}/readings?metric={metric}"
        ))
        .unwrap();
        assert!(
            !r.as_array().unwrap().is_empty(),
            "no readings of {metric} for {id}"
        );
    }
    // Derived values arrive too: water depth from the mounting height and the measured distance.
    let water = assets.iter().find(|a| a["kind"] == "waterlogging").unwrap();
    assert!(water["latest"]["waterDepth"].is_number(), "{water}");
    // The simulated ANPR camera's captures arrive as plate events with both images at the hub.
    let event = eventually(
        Duration::from_secs(40),
        "a plate event with its images",
        || {
            let e = get_json(&format!("{base}/api/v1/events?event=plate"))?;
            e.as_array()?
                .iter()
                .find(|x| {
                    x["evidence"]
                        .as_array()
                        .is_some_and(|v| v.len() == 2 && v.iter().all(|i| i["available"] == true))
                })
                .cloned()
        },
    );
    assert!(event["attributes"]["plate"].is_string(), "{event}");
    let url = event["evidence"][0]["url"].as_str().unwrap();
    let (code, _) = tests::get_status(&format!("{base}{url}"));
    assert_eq!(code, 200);
    // The admin token the demo made for this run (its URL carries it too).
    let token = std::fs::read_to_string(dir.path().join("demo-admin.token")).unwrap();
    let (code, who) = tests::get_status_as(&format!("{base}/api/v1/whoami"), token.trim());
    assert_eq!(code, 200, "{who}");
    assert_eq!(who["role"], "admin");

    // The day's scenarios as the demo planned them: each names the tasks (rule, subject) it must
    // raise and by when. The hub must raise exactly those: the test names any missing or extra.
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("demo-scenarios.json")).unwrap())
            .unwrap();
    let (start_hour, speed) = (
        plan["startHour"].as_f64().unwrap(),
        plan["speed"].as_f64().unwrap(),
    );
    // Real seconds after the start by which a town hour has come.
    let real_s = |hour: f64| (hour - start_hour) * 3600.0 / speed;
    let mut planned = std::collections::BTreeMap::new();
    for sc in plan["scenarios"].as_array().unwrap() {
        for t in sc["tasks"].as_array().unwrap() {
            let key = (
                t["rule"].as_str().unwrap().to_owned(),
                t["subject"].as_str().unwrap().to_owned(),
            );
            let due = real_s(t["byHour"].as_f64().unwrap());
            let required = t["required"].as_bool().unwrap();
            planned.insert(
                key,
                (sc["name"].as_str().unwrap().to_owned(), due, required),
            );
        }
    }
    // What this test waits for: every task due in its first three minutes.
    const WINDOW_S: f64 = 180.0;
    let required: Vec<_> = planned
        .iter()
        .filter(|(_, (_, due, required))| *required && *due <= WINDOW_S)
        .collect();
    assert!(required.len() >= 12, "{planned:#?}");
    eprintln!(
        "the demo's plan: {} tasks within {WINDOW_S} s",
        required.len()
    );
    let tasks = loop {
        let list = get_json(&format!("{base}/api/v1/tasks?status=all&limit=500"))
            .and_then(|t| t.as_array().cloned())
            .unwrap_or_default();
        let have: std::collections::BTreeSet<(String, String)> = list
            .iter()
            .map(|x| {
                (
                    x["rule"].as_str().unwrap_or("").to_owned(),
                    x["subject"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let extra: Vec<&serde_json::Value> = list
            .iter()
            .filter(|x| {
                let key = (
                    x["rule"].as_str().unwrap_or("").to_owned(),
                    x["subject"].as_str().unwrap_or("").to_owned(),
                );
                !planned.contains_key(&key)
            })
            .collect();
        assert!(
            extra.is_empty(),
            "tasks no scenario of the demo's day has: {:#?}",
            extra
                .iter()
                .map(|x| format!("{} {} ({})", x["rule"], x["subject"], x["title"]))
                .collect::<Vec<_>>()
        );
        let elapsed = started.elapsed().as_secs_f64();
        let missing: Vec<String> = required
            .iter()
            .filter(|(key, _)| !have.contains(*key))
            .map(|((rule, subject), (scenario, due, _))| {
                format!("{rule} {subject} (scenario {scenario}, due {due:.0} s after the start)")
            })
            .collect();
        if missing.is_empty() {
            break list;
        }
        let overdue = required
            .iter()
            .any(|(key, (_, due, _))| !have.contains(*key) && elapsed > due + 30.0);
        assert!(
            !overdue,
            "after {elapsed:.0} s, tasks of the plan missing: {missing:#?}; the hub has {have:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    // The promise: open tasks of five or more rules at once, within five minutes.
    let open = eventually(
        Duration::from_secs(300).saturating_sub(started.elapsed()),
        "open tasks of five rules",
        || {
            let t = get_json(&format!("{base}/api/v1/tasks?status=open&limit=500"))?;
            let rules: std::collections::BTreeSet<String> = t
                .as_array()?
                .iter()
                .filter_map(|x| x["rule"].as_str().map(str::to_owned))
                .collect();
            (rules.len() >= 5).then_some(rules)
        },
    );
    eprintln!("open after {:?}: {open:?}", started.elapsed());
    eprintln!("demo tasks after {:?}:", started.elapsed());
    let mut seen = std::collections::BTreeSet::new();
    for t in &tasks {
        eprintln!(
            "  {} {} {} → {}",
            t["rule"], t["subject"], t["title"], t["department"]
        );
        assert!(
            seen.insert((t["rule"].to_string(), t["subject"].to_string())),
            "a second task for the same subject and rule: {t}"
        );
        for field in ["category", "department", "due_at", "kind"] {
            assert!(t[field].is_string(), "no {field}: {t}");
        }
        assert!(
            t["asset"].is_string() || t["subject"].as_str().unwrap().contains(':'),
            "{t}"
        );
    }
    let critical = tasks
        .iter()
        .find(|t| t["rule"] == "waterlogging_critical")
        .unwrap();
    assert_eq!(critical["department"], "traffic-police");
    let trading = tasks
        .iter()
        .find(|t| t["rule"] == "street_trading")
        .unwrap();
    assert_eq!(
        trading["state"], "filed",
        "an operator confirms AI cases: {trading}"
    );
    let truck = tasks
        .iter()
        .find(|t| t["rule"] == "truck_restricted")
        .unwrap();
    assert_eq!(truck["kind"], "enforcement");
    assert_eq!(
        truck["detail"]["evidence"][0]["images"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // This month's assessment ranks the demo town's road segments, with their road chiefs.
    let report = get_json(&format!("{base}/api/v1/reports/assessment")).unwrap();
    let segments = report["segments"].as_array().unwrap();
    assert!(segments.len() >= 4, "{report}");
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s["rank"], i + 1, "{s}");
    }
    let zs = segments
        .iter()
        .find(|s| s["key"] == "zhongshan-rd-s1")
        .unwrap();
    assert!(zs["chief"].as_str().unwrap().contains("王建国"), "{zs}");
    let raised: i64 = segments.iter().map(|s| s["raised"].as_i64().unwrap()).sum();
    assert!(raised >= tasks.len() as i64, "{report}");

    // The gateway whose uplink was cut for 20 town minutes: what it read meanwhile arrived after
    // the uplink came back (from its spool), and its silence raised no task (checked above).
    let outage = plan["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "uplink-outage")
        .unwrap();
    let back = real_s(outage["toHour"].as_f64().unwrap()) + 20.0;
    let wait = back - started.elapsed().as_secs_f64();
    if wait > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(wait));
    }
    let log = std::fs::read_to_string(dir.path().join("demo.log")).unwrap();
    assert!(
        log.contains("uplink cut"),
        "the outage never happened ({:.0} s after the start); demo log (tail):\n{}",
        started.elapsed().as_secs_f64(),
        tail(&dir.path().join("demo.log"))
    );
    let gateway = outage["gateway"].as_str().unwrap();
    let (from, to) = (
        outage["from"].as_str().unwrap(),
        outage["to"].as_str().unwrap(),
    );
    let mut during = 0;
    for a in assets.iter().filter(|a| a["gateway"] == gateway) {
        let id = a["id"].as_str().unwrap();
        for metric in a["latest"].as_object().unwrap().keys() {
            let r = get_json(&format!(
                "{base}/api/v1/assets/{id}/readings?metric={metric}&from={from}&to={to}"
            ))
            .unwrap();
            during += r.as_array().map_or(0, Vec::len);
        }
    }
    eprintln!("{gateway}: {during} readings taken during its outage ({from} .. {to})");
    assert!(
        during >= 10,
        "{gateway} lost what it read while its uplink was down: {during} readings"
    );
    // Still nothing unplanned, and nothing twice, now that the outage and the script's last
    // captures (the whitelisted car's second sighting) are behind.
    let after = get_json(&format!("{base}/api/v1/tasks?status=all&limit=500"))
        .and_then(|t| t.as_array().cloned())
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for t in &after {
        let key = (
            t["rule"].as_str().unwrap().to_owned(),
            t["subject"].as_str().unwrap().to_owned(),
        );
        assert!(
            planned.contains_key(&key),
            "a task no scenario of the demo's day has: {t}"
        );
        assert!(
            seen.insert(key),
            "a second task for the same subject and rule: {t}"
        );
    }

    let hub = child.0.as_mut().unwrap();
    kill(Pid::from_raw(hub.id() as i32), Signal::SIGTERM).unwrap();
    let end = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = hub.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < end,
            "hub demo did not stop within 15 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "hub demo exited with {status}");
}

/// The demo's assets other than cameras (at least 8), if every one was seen in the last 30 s
/// with values;
/// otherwise `None`, with the ids of those that were not in `stale`.
fn fresh_assets(base: &str, stale: &mut Vec<String>) -> Option<Vec<serde_json::Value>> {
    let a = get_json(&format!("{base}/api/v1/assets"))?;
    // Cameras report events, not readings; they are checked below.
    let list: Vec<serde_json::Value> = a
        .as_array()?
        .iter()
        .filter(|x| x["kind"] != "parkingCamera" && x["kind"] != "encroachmentCamera")
        .cloned()
        .collect();
    *stale = list
        .iter()
        .filter(|x| !is_fresh(x))
        .map(|x| x["id"].as_str().unwrap_or("?").to_owned())
        .collect();
    (list.len() >= 8 && stale.is_empty()).then_some(list)
}

fn is_fresh(x: &serde_json::Value) -> bool {
    x["last_seen"]
        .as_str()
        .and_then(|s| protocol::Timestamp::parse_rfc3339(s).ok())
        .is_some_and(|t| protocol::Timestamp::now().millis_since(t) < 30_000)
        && !x["latest"].as_object().is_none_or(|m| m.is_empty())
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
