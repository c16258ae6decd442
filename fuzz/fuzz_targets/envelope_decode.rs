//! The hub's ingest path for an MQTT payload, minus IO: `protocol::auth::open` (the signed wrapper),
//! MAC verification with a fixed key, then `protocol::decode` as every message type the hub and the
//! agent accept (envelope on `up`, presence, heartbeat, reply, and the agent's command).
//!
//! Properties: nothing panics; a message that decodes also re-encodes (given room for the
//! re-serialisation, which may be longer than the input) and decodes back to an equal message;
//! whatever `decode`'s fast reader (sonic-rs) accepts, serde_json accepts and reads the same.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use protocol::auth::{self, Key, KeyId, Opened};
use protocol::{Command, Envelope, Heartbeat, Limits, Presence, Reply};

const TOPIC: &str = "city/v1/gw-zhongshan-01/up";

fn key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let id = KeyId::new("k-fuzz").expect("valid key id");
        Key::new(id, vec![7u8; 32]).expect("valid key")
    })
}

/// Decodes `msg` as `M`; if that works, checks the re-encode/decode round trip.
fn check<M>(msg: &[u8], limits: &Limits)
where
    M: protocol::codec::Message + PartialEq + std::fmt::Debug,
{
    if let Some(fast) = protocol::codec::fast_read::<M>(msg) {
        match serde_json::from_slice::<M>(msg) {
            Ok(slow) => assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "readers differ"),
            Err(e) => panic!("sonic-rs accepts what serde_json refuses: {e}"),
        }
    }
    let Ok(m) = protocol::decode::<M>(msg, limits) else {
        return;
    };
    // Re-serialisation may be longer than the input ("1e5" becomes "100000.0"): allow for it.
    let roomy = Limits {
        max_payload: usize::MAX,
        ..*limits
    };
    let bytes = match protocol::encode(&m, &roomy) {
        Ok(b) => b,
        Err(e) => panic!("decoded {m:?} but it does not re-encode: {e}"),
    };
    match protocol::decode::<M>(&bytes, &roomy) {
        Ok(back) => assert_eq!(back, m, "round trip changed the message"),
        Err(e) => panic!(
            "re-encoded {:?} does not decode: {e}",
            String::from_utf8_lossy(&bytes)
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let msg = match auth::open(data) {
        Ok(opened) => {
            if let Opened::Signed { .. } = &opened {
                let _ = opened.verify(key(), TOPIC);
            }
            opened.msg()
        }
        Err(e) => {
            let _ = e.code();
            return;
        }
    };
    // A signed wrapper's `msg` is a sub-slice of the payload.
    assert!(msg.len() <= data.len());
    check::<Envelope>(msg, &limits);
    check::<Presence>(msg, &limits);
    check::<Heartbeat>(msg, &limits);
    check::<Reply>(msg, &limits);
    check::<Command>(msg, &limits);
    // The decoder's error codes are total (used as metric labels and dead-letter reasons).
    if let Err(e) = protocol::decode::<Envelope>(msg, &limits) {
        let _ = (e.code(), e.to_string());
    }
});
