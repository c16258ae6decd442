//! Camera payloads to normalised events, with no IO: the generic JSON form (documented in
//! `docs/CAMERAS.md`) and the Hikvision ISAPI form (`EventNotificationAlert` XML), each alone or as
//! the first part of a `multipart/form-data` request whose other parts are the images.
//!
//! Normalising means: one event type per kind (`plate`, `detection`), confidences 0..1, the plate
//! colour kept apart from the plate text ("蓝苏A8HK52" is a blue plate "苏A8HK52"), vehicle types
//! from a small vocabulary, and times in UTC.

use std::collections::BTreeMap;

use protocol::{EventType, Timestamp, Value};
use quick_xml::events::Event as XmlEvent;
use serde::Deserialize;
use time::UtcOffset;

/// One part of a multipart request, or the whole body of a plain one.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: Option<String>,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// An image that proves an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The part's file name, or its field name.
    pub name: String,
    /// `image/jpeg` or `image/png`.
    pub media_type: &'static str,
    pub bytes: Vec<u8>,
}

/// Which form a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Generic,
    Isapi,
}

impl Form {
    pub fn as_str(self) -> &'static str {
        match self {
            Form::Generic => "generic",
            Form::Isapi => "isapi",
        }
    }
}

/// A normalised camera event, before the agent adds the zone and the evidence references.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraEvent {
    pub form: Form,
    /// `plate` or `detection`.
    pub event: EventType,
    /// When the camera says it captured the event (UTC), if it said so in a form we understand.
    pub captured_at: Option<Timestamp>,
    pub lane: Option<u32>,
    pub attributes: BTreeMap<String, Value>,
    pub images: Vec<Image>,
}

/// What a request turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Event(CameraEvent),
    /// A keep-alive (Hikvision sends `videoloss` / `inactive` every few seconds) or the end of a
    /// condition we do not track: accepted, nothing published.
    KeepAlive {
        detail: String,
    },
}

/// Why a request was refused; `status` is the HTTP status to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: String,
}

impl Reject {
    pub fn bad(reason: impl Into<String>) -> Self {
        Self {
            status: 400,
            reason: reason.into(),
        }
    }

    pub fn invalid(reason: impl Into<String>) -> Self {
        Self {
            status: 422,
            reason: reason.into(),
        }
    }

    pub fn unsupported(reason: impl Into<String>) -> Self {
        Self {
            status: 415,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

/// Most images on one event (the protocol's evidence limit).
pub const MAX_IMAGES: usize = protocol::envelope::MAX_EVIDENCE;

/// Parses a request made of `parts` (one part for a plain body). `utc_offset` applies to camera
/// times written without an offset (many cameras send local time).
pub fn parse(parts: Vec<Part>, utc_offset: UtcOffset) -> Result<Parsed, Reject> {
    let mut doc: Option<(Form, Part)> = None;
    let mut images = Vec::new();
    let mut others = Vec::new();
    for part in parts {
        match classify(&part) {
            Kind::Json | Kind::Xml if doc.is_some() => {
                return Err(Reject::bad(format!(
                    "more than one event document in the request (part {})",
                    describe(&part)
                )));
            }
            Kind::Json => doc = Some((Form::Generic, part)),
            Kind::Xml => doc = Some((Form::Isapi, part)),
            Kind::Image => images.push(part),
            Kind::Other => others.push(part),
        }
    }
    let Some((form, doc)) = doc else {
        return Err(Reject::bad(
            "no event document: expected a JSON part named \"event\" (generic form) or an XML \
             EventNotificationAlert part (Hikvision ISAPI)",
        ));
    };
    if form == Form::Generic
        && let Some(p) = others.first()
    {
        return Err(Reject::bad(format!(
            "unexpected part {}: the generic form takes one JSON part named \"event\" and image/jpeg or image/png parts",
            describe(p)
        )));
    }
    // ISAPI requests may carry parts we do not use; they are ignored.
    let images = images
        .into_iter()
        .map(image_of)
        .collect::<Result<Vec<_>, _>>()?;
    let parsed = match form {
        Form::Generic => generic(&doc.bytes, images, utc_offset)?,
        Form::Isapi => isapi(&doc.bytes, images, utc_offset)?,
    };
    if let Parsed::Event(e) = &parsed
        && e.images.len() > MAX_IMAGES
    {
        return Err(Reject::invalid(format!(
            "{} images; at most {MAX_IMAGES} per event",
            e.images.len()
        )));
    }
    Ok(parsed)
}

enum Kind {
    Json,
    Xml,
    Image,
    Other,
}

fn classify(p: &Part) -> Kind {
    let ct = p
        .content_type
        .as_deref()
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let file = p.filename.as_deref().unwrap_or("").to_ascii_lowercase();
    let name = p.name.as_deref().unwrap_or("");
    if ct == "application/json" || (ct.is_empty() && name == "event") {
        Kind::Json
    } else if ct == "application/xml" || ct == "text/xml" || file.ends_with(".xml") {
        Kind::Xml
    } else if ct.starts_with("image/")
        || file.ends_with(".jpg")
        || file.ends_with(".jpeg")
        || file.ends_with(".png")
    {
        Kind::Image
    } else if ct.is_empty() && p.bytes.first() == Some(&b'{') {
        Kind::Json
    } else if ct.is_empty() && p.bytes.first() == Some(&b'<') {
        Kind::Xml
    } else {
        Kind::Other
    }
}

fn describe(p: &Part) -> String {
    let name = p
        .filename
        .as_deref()
        .or(p.name.as_deref())
        .unwrap_or("(unnamed)");
    format!(
        "{name:?} ({})",
        p.content_type.as_deref().unwrap_or("no content type")
    )
}

fn image_of(p: Part) -> Result<Image, Reject> {
    let name = p
        .filename
        .clone()
        .or_else(|| p.name.clone())
        .unwrap_or_else(|| "image".into());
    let sniffed = if p.bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if p.bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else {
        None
    };
    let declared = p.content_type.as_deref().map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let declared = match declared.as_deref() {
        Some("image/jpeg" | "image/jpg" | "image/pjpeg") => Some("image/jpeg"),
        Some("image/png") => Some("image/png"),
        Some(other) if !other.is_empty() => {
            return Err(Reject::unsupported(format!(
                "image part {name:?} is {other}; only image/jpeg and image/png are kept as evidence"
            )));
        }
        _ => None,
    };
    if p.bytes.is_empty() {
        return Err(Reject::invalid(format!("image part {name:?} is empty")));
    }
    match (declared, sniffed) {
        (Some(d), Some(s)) if d == s => Ok(Image {
            name,
            media_type: d,
            bytes: p.bytes,
        }),
        (None, Some(s)) => Ok(Image {
            name,
            media_type: s,
            bytes: p.bytes,
        }),
        (Some(d), _) => Err(Reject::invalid(format!(
            "image part {name:?} is declared {d} but its content does not start like one"
        ))),
        (None, None) => Err(Reject::invalid(format!(
            "part {name:?} is neither a JPEG nor a PNG image"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// The generic JSON form.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Generic {
    #[serde(rename = "type")]
    kind: GenericKind,
    captured_at: Option<String>,
    /// The camera's own event id, kept for cross-reference.
    id: Option<String>,
    plate: Option<String>,
    plate_color: Option<String>,
    vehicle_type: Option<String>,
    confidence: Option<f64>,
    lane: Option<u32>,
    direction: Option<String>,
    class: Option<String>,
    dwell_s: Option<f64>,
    track_id: Option<String>,
    /// `[x, y, width, height]`, fractions of the image.
    bbox: Option<[f64; 4]>,
    /// Names of the image parts that belong to the event; default: every image part.
    images: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
enum GenericKind {
    Plate,
    Detection,
    /// "Still here, nothing to report": a box that posts only what it detects says so now and
    /// then, or the hub takes its silence for a dead camera.
    Heartbeat,
}

fn generic(bytes: &[u8], mut images: Vec<Image>, offset: UtcOffset) -> Result<Parsed, Reject> {
    let g: Generic =
        serde_json::from_slice(bytes).map_err(|e| Reject::bad(format!("event JSON: {e}")))?;
    let mut attrs = BTreeMap::new();
    let confidence = match g.confidence {
        Some(c) if (0.0..=1.0).contains(&c) => Some(c),
        Some(c) => {
            return Err(Reject::invalid(format!(
                "confidence {c} is outside 0..1 (the generic form takes fractions, not percent)"
            )));
        }
        None => None,
    };
    let event = match g.kind {
        GenericKind::Plate => {
            let raw = g
                .plate
                .as_deref()
                .ok_or_else(|| Reject::invalid("a plate event needs \"plate\""))?;
            put_plate(&mut attrs, raw, g.plate_color.as_deref())?;
            if let Some(v) = &g.vehicle_type {
                put_vehicle_type(&mut attrs, v);
            }
            "plate"
        }
        GenericKind::Detection => {
            let class = g
                .class
                .as_deref()
                .and_then(short_text)
                .ok_or_else(|| Reject::invalid("a detection event needs \"class\""))?;
            attrs.insert("class".into(), Value::Text(class));
            if confidence.is_none() {
                return Err(Reject::invalid("a detection event needs \"confidence\""));
            }
            if let Some(d) = g.dwell_s {
                if !(d.is_finite() && d >= 0.0) {
                    return Err(Reject::invalid(format!("dwellS {d} must be >= 0")));
                }
                attrs.insert("dwellS".into(), Value::Number(d));
            }
            if let Some(b) = g.bbox {
                if b.iter().any(|v| !(0.0..=1.0).contains(v)) {
                    return Err(Reject::invalid(format!(
                        "bbox {b:?} must be fractions of the image, each 0..1"
                    )));
                }
                for (k, v) in ["bboxX", "bboxY", "bboxW", "bboxH"].iter().zip(b) {
                    attrs.insert((*k).into(), Value::Number(v));
                }
            }
            if let Some(t) = g.track_id.as_deref().and_then(short_text) {
                attrs.insert("trackId".into(), Value::Text(t));
            }
            "detection"
        }
        GenericKind::Heartbeat => {
            return Ok(Parsed::KeepAlive {
                detail: "heartbeat".into(),
            });
        }
    };
    if let Some(c) = confidence {
        attrs.insert("confidence".into(), Value::Number(c));
    }
    if let Some(d) = g.direction.as_deref().and_then(short_text) {
        attrs.insert("direction".into(), Value::Text(d));
    }
    if let Some(id) = g.id.as_deref().and_then(short_text) {
        attrs.insert("cameraEventId".into(), Value::Text(id));
    }
    let lane = lane_of(g.lane)?;
    let captured_at = g
        .captured_at
        .as_deref()
        .map(|t| camera_time(t, offset).map_err(Reject::invalid))
        .transpose()?;
    if let Some(names) = g.images {
        let mut chosen = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let pos = images.iter().position(|im| &im.name == n).ok_or_else(|| {
                Reject::invalid(format!(
                    "images[{i}] names {n:?}, which is not an image part of the request"
                ))
            })?;
            chosen.push(images.remove(pos));
        }
        images = chosen;
    }
    Ok(Parsed::Event(CameraEvent {
        form: Form::Generic,
        event: event_type_of(event),
        captured_at,
        lane,
        attributes: attrs,
        images,
    }))
}

// ---------------------------------------------------------------------------------------------
// The Hikvision ISAPI form.

/// Deepest XML nesting accepted, and most elements: a real alert has a few dozen.
const XML_MAX_DEPTH: usize = 16;
const XML_MAX_ELEMENTS: usize = 4096;

/// The text of each element by its path below the root (`ANPR/licensePlate`), first occurrence.
/// Entity and character references are resolved; DOCTYPEs (and so external entities) are refused.
fn xml_fields(bytes: &[u8]) -> Result<(String, BTreeMap<String, String>), Reject> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Reject::bad(format!("event XML is not UTF-8: {e}")))?;
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().trim_text(true);
    // Paths of the open elements below the root, and the text gathered for the innermost.
    let mut stack: Vec<String> = Vec::new();
    let mut buf = String::new();
    let mut root: Option<String> = None;
    let mut closed = false;
    let mut fields = BTreeMap::new();
    let mut elements = 0usize;
    let malformed = |pos: u64, e: &dyn std::fmt::Display| {
        Reject::bad(format!("event XML is malformed at byte {pos}: {e}"))
    };
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| malformed(reader.error_position(), &e))?;
        match ev {
            XmlEvent::Start(_) | XmlEvent::Empty(_) if closed => {
                return Err(Reject::bad("event XML has more than one root element"));
            }
            XmlEvent::Start(s) => {
                elements += 1;
                let name = String::from_utf8_lossy(s.local_name().as_ref()).into_owned();
                buf.clear();
                let Some(parent) = stack.last() else {
                    if root.is_none() {
                        root = Some(name);
                        stack.push(String::new());
                        continue;
                    }
                    return Err(Reject::bad("event XML has more than one root element"));
                };
                if stack.len() >= XML_MAX_DEPTH || elements > XML_MAX_ELEMENTS {
                    return Err(Reject::bad(format!(
                        "event XML nests deeper than {XML_MAX_DEPTH} or has more than {XML_MAX_ELEMENTS} elements"
                    )));
                }
                let path = if parent.is_empty() {
                    name
                } else {
                    format!("{parent}/{name}")
                };
                stack.push(path);
            }
            XmlEvent::End(_) => {
                if let Some(path) = stack.pop() {
                    if !path.is_empty() && !buf.is_empty() {
                        fields.entry(path).or_insert_with(|| buf.clone());
                    }
                    if stack.is_empty() {
                        closed = true;
                    }
                }
                buf.clear();
            }
            XmlEvent::Empty(s) => {
                elements += 1;
                if root.is_none() {
                    root = Some(String::from_utf8_lossy(s.local_name().as_ref()).into_owned());
                    closed = true;
                }
            }
            XmlEvent::Text(t) => {
                let d = t
                    .decode()
                    .map_err(|e| malformed(reader.buffer_position(), &e))?;
                buf.push_str(&d);
            }
            XmlEvent::GeneralRef(r) => {
                let pos = reader.buffer_position();
                if let Some(c) = r.resolve_char_ref().map_err(|e| malformed(pos, &e))? {
                    buf.push(c);
                } else {
                    let name = r.decode().map_err(|e| malformed(pos, &e))?;
                    let resolved = quick_xml::escape::resolve_predefined_entity(&name)
                        .ok_or_else(|| malformed(pos, &format!("unknown entity &{name};")))?;
                    buf.push_str(resolved);
                }
            }
            XmlEvent::CData(c) => buf.push_str(&String::from_utf8_lossy(&c)),
            XmlEvent::DocType(_) => {
                return Err(Reject::bad(
                    "event XML has a DOCTYPE; camera alerts have none",
                ));
            }
            XmlEvent::Eof => break,
            _ => {}
        }
        if buf.len() > 4096 {
            return Err(Reject::bad("event XML has an element text over 4 KiB"));
        }
    }
    let root = root.ok_or_else(|| Reject::bad("event XML has no element"))?;
    if !stack.is_empty() {
        return Err(Reject::bad("event XML ends before its root element closes"));
    }
    Ok((root, fields))
}

fn isapi(bytes: &[u8], images: Vec<Image>, offset: UtcOffset) -> Result<Parsed, Reject> {
    let (root, f) = xml_fields(bytes)?;
    if root != "EventNotificationAlert" {
        return Err(Reject::bad(format!(
            "XML root is <{root}>; expected <EventNotificationAlert> (Hikvision ISAPI)"
        )));
    }
    let get = |k: &str| f.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
    let event_type = get("eventType")
        .ok_or_else(|| Reject::invalid("EventNotificationAlert without <eventType>"))?;
    let state = get("eventState").unwrap_or("active");
    if state.eq_ignore_ascii_case("inactive") {
        return Ok(Parsed::KeepAlive {
            detail: format!("{event_type} inactive"),
        });
    }
    let captured_at = get("dateTime")
        .map(|t| camera_time(t, offset).map_err(Reject::invalid))
        .transpose()?;
    let mut attrs = BTreeMap::new();
    let mut lane = None;
    let event = if event_type.eq_ignore_ascii_case("ANPR") {
        let raw = get("ANPR/licensePlate")
            .or_else(|| get("ANPR/plateNumber"))
            .ok_or_else(|| Reject::invalid("ANPR event without <ANPR><licensePlate>"))?;
        put_plate(&mut attrs, raw, get("ANPR/plateColor"))?;
        if let Some(c) = get("ANPR/confidenceLevel") {
            let n: f64 = c
                .parse()
                .map_err(|_| Reject::invalid(format!("<confidenceLevel> {c:?} is not a number")))?;
            if !(0.0..=100.0).contains(&n) {
                return Err(Reject::invalid(format!(
                    "<confidenceLevel> {n} is outside 0..100"
                )));
            }
            attrs.insert("confidence".into(), Value::Number(n / 100.0));
        }
        if let Some(v) = get("ANPR/vehicleType") {
            put_vehicle_type(&mut attrs, v);
        }
        if let Some(d) = get("ANPR/direction").and_then(short_text) {
            attrs.insert("direction".into(), Value::Text(d));
        }
        if let Some(l) = get("ANPR/line").or_else(|| get("ANPR/laneNo")) {
            let n: u32 = l
                .parse()
                .map_err(|_| Reject::invalid(format!("lane {l:?} is not a number")))?;
            lane = lane_of(Some(n))?;
        }
        "plate"
    } else {
        let class = short_text(event_type).unwrap_or_default();
        attrs.insert("class".into(), Value::Text(class));
        if let Some(d) = get("eventDescription").and_then(short_text) {
            attrs.insert("description".into(), Value::Text(d));
        }
        "detection"
    };
    if let Some(ch) = get("channelID").and_then(short_text) {
        attrs.insert("channel".into(), Value::Text(ch));
    }
    Ok(Parsed::Event(CameraEvent {
        form: Form::Isapi,
        event: event_type_of(event),
        captured_at,
        lane,
        attributes: attrs,
        images,
    }))
}

// ---------------------------------------------------------------------------------------------
// Shared normalisation.

fn event_type_of(s: &'static str) -> EventType {
    // Both names are constant and valid.
    EventType::new(s).unwrap_or_else(|_| unreachable!("{s} is a valid event type"))
}

/// Trimmed text of at most 64 characters, or `None` when empty.
fn short_text(s: &str) -> Option<String> {
    let t: String = s
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    (!t.is_empty()).then_some(t)
}

fn lane_of(l: Option<u32>) -> Result<Option<u32>, Reject> {
    match l {
        Some(n) if (1..=16).contains(&n) => Ok(Some(n)),
        // Hikvision numbers lanes from 1; 0 means "not configured".
        Some(0) | None => Ok(None),
        Some(n) => Err(Reject::invalid(format!("lane {n} is outside 1..16"))),
    }
}

/// Plate colours by their Chinese prefix, longest first.
const COLOUR_PREFIXES: [(&str, &str); 6] = [
    ("黄绿", "yellowGreen"),
    ("蓝", "blue"),
    ("黄", "yellow"),
    ("绿", "green"),
    ("白", "white"),
    ("黑", "black"),
];

/// Texts cameras send when they saw a vehicle but could not read its plate.
const NO_PLATE: [&str; 5] = ["无车牌", "车牌", "无牌", "unknown", "noplate"];

/// Puts `plate`, `plateColor` and `plateRecognised`, from a raw plate that may carry a colour
/// prefix and an explicit colour that wins over the prefix.
fn put_plate(
    attrs: &mut BTreeMap<String, Value>,
    raw: &str,
    colour: Option<&str>,
) -> Result<(), Reject> {
    let mut text = raw.trim();
    let mut prefix_colour = None;
    for (p, c) in COLOUR_PREFIXES {
        if let Some(rest) = text.strip_prefix(p) {
            prefix_colour = Some(c);
            text = rest;
            break;
        }
    }
    let plate: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '·' | '•' | '-' | '.'))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let explicit = colour.and_then(plate_colour);
    if let Some(c) = explicit.or(prefix_colour) {
        attrs.insert("plateColor".into(), Value::Text(c.into()));
    }
    if plate.is_empty() || NO_PLATE.iter().any(|n| plate.eq_ignore_ascii_case(n)) {
        attrs.insert("plateRecognised".into(), Value::Bool(false));
        return Ok(());
    }
    let n = plate.chars().count();
    if n > 12 || plate.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Reject::invalid(format!(
            "plate {raw:?} is not a plate: {n} characters (at most 12, no control characters)"
        )));
    }
    attrs.insert("plate".into(), Value::Text(plate));
    attrs.insert("plateRecognised".into(), Value::Bool(true));
    Ok(())
}

fn plate_colour(s: &str) -> Option<&'static str> {
    let s = s.trim();
    let lower = s.to_ascii_lowercase();
    Some(match lower.as_str() {
        "blue" | "蓝" | "蓝色" => "blue",
        "yellow" | "黄" | "黄色" => "yellow",
        "green" | "绿" | "绿色" | "newenergy" => "green",
        "yellowgreen" | "黄绿" | "黄绿色" => "yellowGreen",
        "white" | "白" | "白色" => "white",
        "black" | "黑" | "黑色" => "black",
        "" | "unknown" | "other" => return None,
        _ => "other",
    })
}

/// Puts `vehicleType` from a small vocabulary (`car`, `truck`, `bus`, `van`, `motorcycle`,
/// `other`), keeping a raw type we do not know as `vehicleTypeRaw`.
fn put_vehicle_type(attrs: &mut BTreeMap<String, Value>, raw: &str) {
    let lower = raw.trim().to_ascii_lowercase();
    let kind = match lower.as_str() {
        "car" | "vehicle" | "smallcar" | "suvmpv" | "suv" | "mpv" | "sedan" | "小型车" | "轿车" => {
            "car"
        }
        "truck" | "largetruck" | "heavytruck" | "mediumtruck" | "lighttruck" | "pickuptruck"
        | "mucktruck" | "dumptruck" | "货车" | "大货车" | "渣土车" => "truck",
        "bus" | "largebus" | "mediumbus" | "coach" | "客车" | "大客车" | "公交车" => "bus",
        "van" | "minibus" | "minivan" | "面包车" => "van",
        "motorcycle" | "motorbike" | "twowheelvehicle" | "threewheelvehicle" | "tricycle"
        | "摩托车" | "三轮车" => "motorcycle",
        "" | "unknown" => return,
        _ => "other",
    };
    attrs.insert("vehicleType".into(), Value::Text(kind.into()));
    if kind == "other"
        && let Some(t) = short_text(raw)
    {
        attrs.insert("vehicleTypeRaw".into(), Value::Text(t));
    }
}

/// A camera's time: RFC 3339, or the same without an offset (then `offset` applies), with a `T` or
/// a space between date and time.
pub fn camera_time(s: &str, offset: UtcOffset) -> Result<Timestamp, String> {
    if let Ok(t) = Timestamp::parse_rfc3339(s) {
        return Ok(t);
    }
    let normal = s.trim().replacen(' ', "T", 1);
    let formats = [
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]"
        ),
    ];
    for f in formats {
        if let Ok(p) = time::PrimitiveDateTime::parse(&normal, &f) {
            let ts = Timestamp::from_offset_date_time(p.assume_offset(offset));
            if ts.in_codec_range() {
                return Ok(ts);
            }
        }
    }
    Err(format!(
        "capture time {s:?} is neither RFC 3339 nor YYYY-MM-DDTHH:MM:SS[.fff]"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CST: UtcOffset = time::macros::offset!(+8);
    const JPEG: &[u8] = &[0xff, 0xd8, 0xff, 0xe0, 0, 16, b'J', b'F', b'I', b'F'];

    fn part(name: &str, ct: &str, bytes: &[u8]) -> Part {
        Part {
            name: Some(name.into()),
            filename: name.contains('.').then(|| name.into()),
            content_type: (!ct.is_empty()).then(|| ct.into()),
            bytes: bytes.to_vec(),
        }
    }

    fn event(p: Result<Parsed, Reject>) -> CameraEvent {
        match p {
            Ok(Parsed::Event(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    fn text(e: &CameraEvent, k: &str) -> String {
        match e.attributes.get(k) {
            Some(Value::Text(t)) => t.clone(),
            other => panic!("{k}: {other:?}"),
        }
    }

    fn number(e: &CameraEvent, k: &str) -> f64 {
        e.attributes
            .get(k)
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN)
    }

    pub(crate) const HIK_ANPR: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">
<ipAddress>192.168.1.64</ipAddress>
<channelID>1</channelID>
<dateTime>2026-11-22T09:15:02+08:00</dateTime>
<activePostCount>1</activePostCount>
<eventType>ANPR</eventType>
<eventState>active</eventState>
<eventDescription>ANPR</eventDescription>
<ANPR>
<country>CHN</country>
<licensePlate>蓝苏A8HK52</licensePlate>
<line>2</line>
<direction>forward</direction>
<confidenceLevel>97</confidenceLevel>
<plateType>92TypeCivil</plateType>
<vehicleType>vehicle</vehicleType>
<pictureInfoList><pictureInfo><fileName>licensePlatePicture.jpg</fileName><type>licensePlatePicture</type></pictureInfo></pictureInfoList>
</ANPR>
</EventNotificationAlert>"#;

    #[test]
    fn hikvision_anpr_with_two_images() {
        let e = event(parse(
            vec![
                part("anpr.xml", "application/xml", HIK_ANPR.as_bytes()),
                part("licensePlatePicture.jpg", "image/jpeg", JPEG),
                part("detectionPicture.jpg", "image/jpeg", &[JPEG, b"x"].concat()),
            ],
            CST,
        ));
        assert_eq!(e.form, Form::Isapi);
        assert_eq!(e.event.as_str(), "plate");
        assert_eq!(text(&e, "plate"), "苏A8HK52");
        assert_eq!(text(&e, "plateColor"), "blue");
        assert_eq!(text(&e, "vehicleType"), "car");
        assert_eq!(number(&e, "confidence"), 0.97);
        assert_eq!(e.lane, Some(2));
        assert_eq!(
            e.captured_at.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-11-22T01:15:02.000Z")
        );
        assert_eq!(e.images.len(), 2);
        assert_eq!(e.images[0].media_type, "image/jpeg");
        assert_eq!(e.images[0].name, "licensePlatePicture.jpg");
    }

    #[test]
    fn hikvision_keepalive_and_unreadable_plate() {
        let hb = HIK_ANPR
            .replace("<eventType>ANPR", "<eventType>videoloss")
            .replace(">active<", ">inactive<");
        assert!(matches!(
            parse(vec![part("", "application/xml", hb.as_bytes())], CST),
            Ok(Parsed::KeepAlive { .. })
        ));
        let unread = HIK_ANPR.replace("蓝苏A8HK52", "无车牌");
        let e = event(parse(
            vec![part("", "application/xml", unread.as_bytes())],
            CST,
        ));
        assert_eq!(
            e.attributes.get("plateRecognised"),
            Some(&Value::Bool(false))
        );
        assert!(!e.attributes.contains_key("plate"));
    }

    #[test]
    fn hikvision_local_time_without_offset() {
        let local = HIK_ANPR.replace("2026-11-22T09:15:02+08:00", "2026-11-22 09:15:02");
        let e = event(parse(vec![part("", "text/xml", local.as_bytes())], CST));
        assert_eq!(
            e.captured_at.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-11-22T01:15:02.000Z")
        );
    }

    #[test]
    fn explicit_colour_wins_and_yellow_green_prefix() {
        let mut a = BTreeMap::new();
        put_plate(&mut a, "黄绿苏A·12345D", None).unwrap();
        assert_eq!(a.get("plate"), Some(&Value::Text("苏A12345D".into())));
        assert_eq!(
            a.get("plateColor"),
            Some(&Value::Text("yellowGreen".into()))
        );
        let mut a = BTreeMap::new();
        put_plate(&mut a, "蓝苏E 5x789", Some("yellow")).unwrap();
        assert_eq!(a.get("plate"), Some(&Value::Text("苏E5X789".into())));
        assert_eq!(a.get("plateColor"), Some(&Value::Text("yellow".into())));
    }

    #[test]
    fn generic_plate_and_detection() {
        let json = r#"{"type":"plate","capturedAt":"2026-11-22T09:15:02.120+08:00","plate":"苏A8HK52",
            "plateColor":"blue","vehicleType":"truck","confidence":0.93,"lane":1,"images":["plate.jpg"]}"#;
        let e = event(parse(
            vec![
                part("event", "application/json", json.as_bytes()),
                part("scene.jpg", "image/jpeg", JPEG),
                part("plate.jpg", "image/jpeg", JPEG),
            ],
            CST,
        ));
        assert_eq!(e.form, Form::Generic);
        assert_eq!(text(&e, "vehicleType"), "truck");
        assert_eq!(e.images.len(), 1);
        assert_eq!(e.images[0].name, "plate.jpg");
        assert_eq!(
            e.captured_at.map(|t| t.unix_millis() % 1000),
            Some(120),
            "milliseconds kept"
        );
        let hb = r#"{"type":"heartbeat","capturedAt":"2026-11-22T09:15:02+08:00"}"#;
        assert!(matches!(
            parse(vec![part("event", "application/json", hb.as_bytes())], CST),
            Ok(Parsed::KeepAlive { .. })
        ));
        let det = r#"{"type":"detection","class":"streetVendor","confidence":0.72,"dwellS":320,"bbox":[0.1,0.2,0.3,0.4]}"#;
        let e = event(parse(
            vec![part("event", "application/json", det.as_bytes())],
            CST,
        ));
        assert_eq!(e.event.as_str(), "detection");
        assert_eq!(text(&e, "class"), "streetVendor");
        assert_eq!(number(&e, "bboxH"), 0.4);
        assert_eq!(e.captured_at, None);
    }

    #[test]
    fn broken_requests_are_refused_with_reasons() {
        let cases: Vec<(Vec<Part>, u16, &str)> = vec![
            (vec![], 400, "no event document"),
            (
                vec![part("event", "application/json", b"{\"type\":\"plate\"")],
                400,
                "event JSON",
            ),
            (
                vec![part(
                    "event",
                    "application/json",
                    br#"{"type":"plate","plate":"A1","confidence":97}"#,
                )],
                422,
                "outside 0..1",
            ),
            (
                vec![part(
                    "event",
                    "application/json",
                    br#"{"type":"plate","plate":"A1","colour":"blue"}"#,
                )],
                400,
                "unknown field `colour`",
            ),
            (
                vec![part(
                    "event",
                    "application/json",
                    br#"{"type":"detection"}"#,
                )],
                422,
                "needs \"class\"",
            ),
            (
                vec![
                    part(
                        "event",
                        "application/json",
                        br#"{"type":"plate","plate":"A1"}"#,
                    ),
                    part("x.jpg", "image/jpeg", b"not a jpeg"),
                ],
                422,
                "does not start like one",
            ),
            (
                vec![
                    part(
                        "event",
                        "application/json",
                        br#"{"type":"plate","plate":"A1"}"#,
                    ),
                    part("x.gif", "image/gif", b"GIF89a"),
                ],
                415,
                "only image/jpeg and image/png",
            ),
            (
                vec![part(
                    "event",
                    "application/json",
                    br#"{"type":"plate","plate":"A1","images":["nope.jpg"]}"#,
                )],
                422,
                "not an image part",
            ),
            (
                vec![part(
                    "",
                    "application/xml",
                    b"<EventNotificationAlert><eventType>ANPR",
                )],
                400,
                "ends before",
            ),
            (
                vec![part("", "application/xml", b"<Other/>")],
                400,
                "expected <EventNotificationAlert>",
            ),
            (
                vec![part(
                    "",
                    "application/xml",
                    b"<!DOCTYPE x [<!ENTITY a \"b\">]><EventNotificationAlert/>",
                )],
                400,
                "DOCTYPE",
            ),
            (
                vec![part(
                    "",
                    "application/xml",
                    HIK_ANPR.replace(">97<", ">197<").as_bytes(),
                )],
                422,
                "outside 0..100",
            ),
            (
                vec![part(
                    "",
                    "application/xml",
                    HIK_ANPR
                        .replace("<licensePlate>蓝苏A8HK52</licensePlate>", "")
                        .as_bytes(),
                )],
                422,
                "without <ANPR><licensePlate>",
            ),
            (
                vec![part(
                    "",
                    "application/xml",
                    HIK_ANPR
                        .replace("2026-11-22T09:15:02+08:00", "yesterday")
                        .as_bytes(),
                )],
                422,
                "capture time",
            ),
        ];
        for (parts, status, needle) in cases {
            let what = format!("{parts:?}");
            match parse(parts, CST) {
                Err(r) => {
                    assert_eq!(r.status, status, "{what}: {r}");
                    assert!(r.reason.contains(needle), "{what}: {r}");
                }
                Ok(p) => panic!("{what}: accepted as {p:?}"),
            }
        }
    }

    #[test]
    fn too_many_images() {
        let mut parts = vec![part(
            "event",
            "application/json",
            br#"{"type":"plate","plate":"A1"}"#,
        )];
        for i in 0..=MAX_IMAGES {
            parts.push(part(&format!("{i}.jpg"), "image/jpeg", JPEG));
        }
        assert_eq!(parse(parts, CST).map_err(|r| r.status), Err(422));
    }
}
