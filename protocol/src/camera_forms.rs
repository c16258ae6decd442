//! The forms in which cameras post events to a gateway, as builders (no IO): the Hikvision ISAPI
//! ANPR alert and the generic JSON form, and the `multipart/form-data` body that carries either with
//! its images. The agent's parser accepts exactly these (see `docs/CAMERAS.md`); the agent's
//! `camera test` command and the demo's simulated cameras build their requests with them.

use crate::timestamp::Timestamp;

/// A Hikvision ISAPI ANPR alert for `plate` (which may carry its colour prefix, "蓝苏A8HK52", as
/// Chinese firmware sends it), `confidence` 0–100, seen in `lane`, with two pictures named
/// `licensePlatePicture.jpg` and `detectionPicture.jpg`.
pub fn isapi_anpr_xml(plate: &str, at: Timestamp, confidence: u8, lane: u32) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">
<ipAddress>192.168.1.64</ipAddress>
<portNo>80</portNo>
<protocol>HTTP</protocol>
<channelID>1</channelID>
<dateTime>{at}</dateTime>
<activePostCount>1</activePostCount>
<eventType>ANPR</eventType>
<eventState>active</eventState>
<eventDescription>ANPR</eventDescription>
<ANPR>
<country>CHN</country>
<licensePlate>{plate}</licensePlate>
<line>{lane}</line>
<direction>forward</direction>
<confidenceLevel>{confidence}</confidenceLevel>
<plateType>92TypeCivil</plateType>
<vehicleType>vehicle</vehicleType>
<pictureInfoList>
<pictureInfo><fileName>licensePlatePicture.jpg</fileName><type>licensePlatePicture</type></pictureInfo>
<pictureInfo><fileName>detectionPicture.jpg</fileName><type>detectionPicture</type></pictureInfo>
</pictureInfoList>
</ANPR>
</EventNotificationAlert>
"#,
        at = at.to_rfc3339(),
        plate = xml_escape(plate),
    )
}

/// A generic-form plate event (`confidence` 0..1).
pub fn generic_plate_json(plate: &str, at: Timestamp, confidence: f64, lane: u32) -> String {
    let plate = plate.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"{{"type":"plate","capturedAt":"{}","plate":"{plate}","vehicleType":"car","confidence":{confidence},"lane":{lane}}}"#,
        at.to_rfc3339()
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A `multipart/form-data` body: `document` as `(field name, content type, bytes)` (a name with a
/// dot is also sent as the file name, as Hikvision names `anpr.xml`), then each image as a file part
/// (`image/png` when it starts like a PNG, else `image/jpeg`). `boundary_seed` makes the boundary
/// unique per request. Returns the content type and the body.
pub fn multipart(
    document: (&str, &str, &[u8]),
    images: &[(&str, &[u8])],
    boundary_seed: u64,
) -> (String, Vec<u8>) {
    let boundary = format!("----city-iot-{boundary_seed:016x}");
    let mut body = Vec::new();
    let mut part = |name: &str, filename: Option<&str>, ct: &str, bytes: &[u8]| {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let disposition = match filename {
            Some(f) => format!("form-data; name=\"{name}\"; filename=\"{f}\""),
            None => format!("form-data; name=\"{name}\""),
        };
        body.extend_from_slice(
            format!("Content-Disposition: {disposition}\r\nContent-Type: {ct}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    };
    let (name, ct, bytes) = document;
    part(name, name.contains('.').then_some(name), ct, bytes);
    for (name, bytes) in images {
        let ct = if bytes.starts_with(b"\x89PNG") {
            "image/png"
        } else {
            "image/jpeg"
        };
        part(name, Some(name), ct, bytes);
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// `jpeg` with a comment segment (COM) carrying `text` right after its start marker: the same picture
/// with different bytes, so a simulated camera's captures have distinct hashes. Returns `jpeg`
/// unchanged if it is not a JPEG.
pub fn jpeg_with_comment(jpeg: &[u8], text: &str) -> Vec<u8> {
    if !jpeg.starts_with(&[0xff, 0xd8]) {
        return jpeg.to_vec();
    }
    let text = &text.as_bytes()[..text.len().min(60_000)];
    let len = (text.len() + 2) as u16;
    let mut out = Vec::with_capacity(jpeg.len() + text.len() + 4);
    out.extend_from_slice(&jpeg[..2]);
    out.extend_from_slice(&[0xff, 0xfe]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_shape() {
        let (ct, body) = multipart(
            ("anpr.xml", "application/xml", b"<x/>"),
            &[("a.jpg", &[0xff, 0xd8, 0xff])],
            7,
        );
        assert_eq!(
            ct,
            "multipart/form-data; boundary=----city-iot-0000000000000007"
        );
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("name=\"anpr.xml\"; filename=\"anpr.xml\"\r\nContent-Type: application/xml\r\n\r\n<x/>\r\n"));
        assert!(text.contains("filename=\"a.jpg\"\r\nContent-Type: image/jpeg"));
        assert!(text.ends_with("------city-iot-0000000000000007--\r\n"));
    }

    #[test]
    fn comment_keeps_a_jpeg() {
        let j = jpeg_with_comment(&[0xff, 0xd8, 0xff, 0xe0, 1, 2], "hi");
        assert_eq!(
            j,
            [0xff, 0xd8, 0xff, 0xfe, 0, 4, b'h', b'i', 0xff, 0xe0, 1, 2]
        );
        assert_eq!(jpeg_with_comment(b"png", "x"), b"png");
    }
}
