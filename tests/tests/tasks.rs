//! Tasks through the API, as the people of the closed loop use them: an operator files a task about
//! a lamp and dispatches it to lighting; the lighting crew sees it (the sanitation crew does not),
//! accepts and handles it with a note; the operator verifies and closes it. Each step is checked
//! against the roles, appears on the live feed of those allowed to see it, and is in the audit
//! trail with who and when.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hub::access::Role;
use protocol::BootId;
use tests::{TEST_TOKEN, free_addr, get_status_as, post_json_as};

#[test]
fn a_task_goes_round_the_closed_loop_by_role() {
    tests::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (http, mqtt) = (free_addr(), free_addr());
    let hub = tests::start_embedded_hub(&rt, dir.path(), http, mqtt);
    let base = format!("http://{http}");
    let lighting = tests::api_token(dir.path(), "li-crew", Role::Crew, Some("lighting"));
    let sanitation = tests::api_token(dir.path(), "sa-crew", Role::Crew, Some("sanitation"));
    let enforcement = tests::api_token(dir.path(), "officer", Role::Enforcement, None);
    let boot = BootId::from_uuid(uuid::Uuid::from_u128(0x7a5c));
    assert!(tests::mosquitto_pub(
        mqtt.port(),
        None,
        "city/v1/gw/gw-t/state",
        &tests::wire::presence("gw-t", boot, "lamp-t1"),
    ));
    tests::eventually(Duration::from_secs(10), "the asset", || {
        tests::get_json(&format!("{base}/api/v1/assets"))?
            .as_array()?
            .iter()
            .any(|a| a["id"] == "lamp-t1")
            .then_some(())
    });
    let feed =
        |token: &str| tests::sse_subscribe(&format!("{base}/api/v1/stream?types=task"), token);
    let (lighting_feed, sanitation_feed) = (feed(&lighting), feed(&sanitation));
    let post = |token: &str, path: &str, body: serde_json::Value| {
        post_json_as(&format!("{base}{path}"), token, &body)
    };

    // Filed by hand (a citizen's call), about the lamp: its place is filled in.
    let (status, task) = post(
        TEST_TOKEN,
        "/api/v1/tasks",
        serde_json::json!({"kind": "maintenance", "category": "lamp_out", "title": "Lamp out at the school gate",
                           "asset": "lamp-t1", "department": "lighting", "due_in_h": 48, "note": "12345 hotline call"}),
    );
    assert_eq!(status, 201, "{task}");
    assert_eq!(task["state"], "filed");
    assert_eq!(task["rule"], "manual");
    assert!(task["due_at"].is_string());
    let id = task["id"].as_i64().unwrap();
    let path = format!("/api/v1/tasks/{id}/actions");
    // Filing is for operators; a crew cannot.
    let (status, _) = post(
        &lighting,
        "/api/v1/tasks",
        serde_json::json!({"kind": "maintenance", "category": "x", "title": "x"}),
    );
    assert_eq!(status, 403);
    let (status, body) = post(
        TEST_TOKEN,
        "/api/v1/tasks",
        serde_json::json!({"kind": "maintenance", "category": "lamp_out", "title": "x", "asset": "nope"}),
    );
    assert_eq!(status, 404, "{body}");

    // Only lighting sees it.
    let open = |token: &str| {
        tests::get_json_as(&format!("{base}/api/v1/tasks?status=open"), token)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(open(&lighting), vec![id]);
    assert!(open(&sanitation).is_empty());
    assert_eq!(
        get_status_as(&format!("{base}/api/v1/tasks/{id}"), &sanitation).0,
        404
    );

    // The crew cannot dispatch, nor accept before dispatch; the operator dispatches.
    let act = |token: &str, action: serde_json::Value| post(token, &path, action);
    assert_eq!(
        act(&lighting, serde_json::json!({"action": "dispatch"})).0,
        403
    );
    let (status, body) = act(&lighting, serde_json::json!({"action": "accept"}));
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot accept a task that is filed")
    );
    assert_eq!(
        act(TEST_TOKEN, serde_json::json!({"action": "dispatch"})).0,
        200
    );
    // Enforcement does not work maintenance tasks; the other crew cannot touch it.
    assert_eq!(
        act(&enforcement, serde_json::json!({"action": "accept"})).0,
        403
    );
    assert_eq!(
        act(&sanitation, serde_json::json!({"action": "accept"})).0,
        404
    );
    assert_eq!(
        act(&lighting, serde_json::json!({"action": "accept"})).0,
        200
    );
    let (status, body) = act(&lighting, serde_json::json!({"action": "handle"}));
    assert_eq!(status, 400, "a handled task says what was done: {body}");
    let (status, t) = act(
        &lighting,
        serde_json::json!({"action": "handle", "note": "replaced the driver"}),
    );
    assert_eq!((status, t["state"].as_str()), (200, Some("handled")), "{t}");
    // Closing needs verification first.
    assert_eq!(
        act(TEST_TOKEN, serde_json::json!({"action": "close"})).0,
        409
    );
    assert_eq!(
        act(TEST_TOKEN, serde_json::json!({"action": "verify"})).0,
        200
    );
    let (status, t) = act(TEST_TOKEN, serde_json::json!({"action": "close"}));
    assert_eq!((status, t["state"].as_str()), (200, Some("closed")));
    assert!(t["closed_at"].is_string());
    assert!(open(&lighting).is_empty());
    let closed = tests::get_json(&format!("{base}/api/v1/tasks?status=closed")).unwrap();
    assert_eq!(closed[0]["id"], id);
    let (status, body) = get_status_as(&format!("{base}/api/v1/tasks?status=lost"), TEST_TOKEN);
    assert_eq!(status, 400, "{body}");

    // The audit trail: every step, who, from and to.
    let detail = tests::get_json(&format!("{base}/api/v1/tasks/{id}")).unwrap();
    let steps: Vec<(String, String, String)> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
                e["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = [
        ("file", "test-admin", "filed"),
        ("dispatch", "test-admin", "dispatched"),
        ("accept", "li-crew", "accepted"),
        ("handle", "li-crew", "handled"),
        ("verify", "test-admin", "verified"),
        ("close", "test-admin", "closed"),
    ];
    assert_eq!(
        steps,
        expect
            .iter()
            .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
            .collect::<Vec<_>>()
    );
    assert_eq!(detail["history"][3]["note"], "replaced the driver");

    // The lighting crew's feed saw all six steps; the sanitation crew's saw none of them.
    for (action, _, state) in expect {
        let (kind, data) = lighting_feed.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            (
                kind.as_str(),
                data["action"].as_str(),
                data["state"].as_str()
            ),
            ("task", Some(action), Some(state))
        );
    }
    assert!(
        sanitation_feed
            .recv_timeout(Duration::from_millis(500))
            .is_err(),
        "another department's task reached the sanitation crew"
    );
    rt.block_on(hub.stop());
}
