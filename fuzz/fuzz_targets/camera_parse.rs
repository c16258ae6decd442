//! The camera payload parsers of the edge agent (`edge_agent::camera::parse::parse`): the generic
//! JSON form, the Hikvision ISAPI XML alert, and multipart requests carrying either with images.
//!
//! The first byte of the input picks how the rest reaches the parser, as the camera server's
//! `read_parts` would hand it over:
//!
//! * `X`: a plain body with `Content-Type: application/xml` (ISAPI);
//! * `M`: a `multipart/form-data` request: the first line is the boundary, the rest the body, split
//!   into parts by `multer` (the parser axum's `Multipart` extractor uses);
//! * anything else: the whole input as a plain body without a content type (field name `event`,
//!   so the generic JSON form).
//!
//! Properties: nothing panics; a refusal has an HTTP status of 400, 413, 415 or 422 and a reason;
//! an accepted event has at most `MAX_IMAGES` images, a lane in 1..=16, attribute values that may go
//! on the wire, and a capture time in the codec's range.
#![no_main]

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use edge_agent::camera::parse::{MAX_IMAGES, Parsed, Part, parse};
use libfuzzer_sys::fuzz_target;
use time::UtcOffset;

/// Runs a future whose IO is all in memory; `None` if it ever waits (it should not).
fn run_now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return Some(v);
        }
    }
    None
}

/// The parts of a multipart body, as the camera server collects them; `None` if multer refuses it
/// (the server answers 400 then, before the parser sees anything).
fn multipart(boundary: &str, body: &[u8]) -> Option<Vec<Part>> {
    let body = bytes::Bytes::copy_from_slice(body);
    let stream = futures_util::stream::once(async move { Ok::<_, Infallible>(body) });
    let mut mp = multer::Multipart::new(stream, boundary.to_owned());
    run_now(async move {
        let mut parts = Vec::new();
        while let Some(mut field) = mp.next_field().await.ok()? {
            let name = field.name().map(str::to_owned);
            let filename = field.file_name().map(str::to_owned);
            let content_type = field.content_type().map(|m| m.to_string());
            let mut bytes = Vec::new();
            while let Some(chunk) = field.chunk().await.ok()? {
                bytes.extend_from_slice(&chunk);
            }
            parts.push(Part {
                name,
                filename,
                content_type,
                bytes,
            });
        }
        Some(parts)
    })
    .flatten()
}

fn plain(bytes: &[u8], content_type: Option<&str>) -> Vec<Part> {
    vec![Part {
        name: Some("event".into()),
        filename: None,
        content_type: content_type.map(str::to_owned),
        bytes: bytes.to_vec(),
    }]
}

fn check(parts: Vec<Part>, offset: UtcOffset) {
    match parse(parts, offset) {
        Ok(Parsed::Event(e)) => {
            assert!(e.images.len() <= MAX_IMAGES, "{} images", e.images.len());
            if let Some(l) = e.lane {
                assert!((1..=16).contains(&l), "lane {l}");
            }
            if let Some(t) = e.captured_at {
                assert!(t.in_codec_range(), "capture time {t:?}");
            }
            for (k, v) in &e.attributes {
                assert!(
                    v.problem().is_none(),
                    "attribute {k} = {v:?}: {:?}",
                    v.problem()
                );
            }
            for im in &e.images {
                assert!(!im.bytes.is_empty());
                assert!(matches!(im.media_type, "image/jpeg" | "image/png"));
            }
        }
        Ok(Parsed::KeepAlive { .. }) => {}
        Err(r) => {
            assert!(
                matches!(r.status, 400 | 413 | 415 | 422),
                "status {}",
                r.status
            );
            assert!(!r.reason.is_empty());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let parts = match data.first() {
        Some(b'X') => plain(&data[1..], Some("application/xml")),
        Some(b'M') => {
            let rest = &data[1..];
            let nl = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let Ok(boundary) = std::str::from_utf8(&rest[..nl]) else {
                return;
            };
            let boundary = boundary.trim_end_matches('\r');
            if boundary.is_empty() {
                return;
            }
            match multipart(boundary, rest.get(nl + 1..).unwrap_or_default()) {
                Some(p) => p,
                None => return,
            }
        }
        _ => plain(data, None),
    };
    // China time (the default), then one of the extremes a gateway file may set (±14:59).
    check(
        parts.clone(),
        UtcOffset::from_hms(8, 0, 0).expect("valid offset"),
    );
    let (h, m) = if data.len() % 2 == 0 {
        (14, 59)
    } else {
        (-14, -59)
    };
    check(parts, UtcOffset::from_hms(h, m, 0).expect("valid offset"));
});
