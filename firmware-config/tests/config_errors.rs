//! Configuration errors are reported at the exact `file:line:column`, all at once.

// Helpers outside #[test] functions unwrap too: a failure there is a broken test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use firmware_config::{Diagnostic, ProfileSet, Severity, check_files, load_gateway};
use tempfile::TempDir;

/// A valid gateway; line numbers matter to the tests below.
const GATEWAY: &str = r#"gateway = "gw-test-01"

[location]
lon = 118.7835
lat = 32.0415
road_segment = "zhongshan-rd-s2"
grid = "xjk-grid-03"

[uplink]
broker = "mqtt://127.0.0.1:1883"

[[bus]]
name = "rs485-1"
type = "rtu"
port = "/dev/ttyUSB0"
baud = 9600
pause_ms = 20

[[bus.device]]
id = "lamp-0001"
unit = 1
profile = "sl-100"
asset = "sl-t-0001"
poll_ms = 5000

[[bus.device]]
id = "water-0001"
unit = 2
profile = "wl-ultra"
asset = "wl-t-0001"
poll_ms = 5000
params = { mounting_height_mm = 3500 }
"#;

/// A valid profile; line numbers matter.
const PROFILE: &str = r#"name = "test-dev"
kind = "other"

[[field]]
metric = "status"
table = "holding"
address = 10
type = "u16"

[[field]]
metric = "flag"
table = "holding"
address = 11
type = "bit"
bit = 3

[[field]]
metric = "energy"
table = "holding"
address = 12
type = "u32"
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Diagnostics of a gateway whose text is `GATEWAY` with `from` replaced by `to`.
fn gateway_with(from: &str, to: &str) -> (TempDir, PathBuf, Vec<Diagnostic>) {
    assert!(GATEWAY.contains(from), "{from}");
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "gw-test-01.toml",
        &GATEWAY.replacen(from, to, 1),
    );
    let diagnostics = load_gateway(&path, &ProfileSet::builtin().unwrap())
        .err()
        .unwrap_or_default();
    (dir, path, diagnostics)
}

fn profile_with(from: &str, to: &str) -> (TempDir, PathBuf, Vec<Diagnostic>) {
    assert!(PROFILE.contains(from), "{from}");
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "test-dev.toml", &PROFILE.replacen(from, to, 1));
    let diagnostics = check_files(std::slice::from_ref(&path), &ProfileSet::new());
    (dir, path, diagnostics)
}

/// Asserts exactly one diagnostic, at `line:column`, mentioning every one of `words`.
fn assert_one(path: &Path, diagnostics: &[Diagnostic], line: usize, column: usize, words: &[&str]) {
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    let d = &diagnostics[0];
    let shown = d.to_string();
    assert!(
        shown.starts_with(&format!("{}:{line}:{column}: error: ", path.display())),
        "{shown}"
    );
    for w in words {
        assert!(d.message.contains(w), "{shown} lacks {w:?}");
    }
}

#[test]
fn the_base_files_are_valid() {
    let (_dir, _, d) = gateway_with("", "");
    assert!(d.is_empty(), "{d:#?}");
    let (_dir, _, d) = profile_with("", "");
    assert!(d.is_empty(), "{d:#?}");
}

#[test]
fn syntax_error() {
    let (_dir, path, d) = gateway_with("port = \"/dev/ttyUSB0\"", "port = \"/dev/ttyUSB0");
    assert_one(&path, &d, 15, 21, &["expected `\"`"]);
}

#[test]
fn unknown_field() {
    let (_dir, path, d) = gateway_with(
        "poll_ms = 5000\n\n",
        "poll_ms = 5000\npoll_interval = 5\n\n",
    );
    assert_one(
        &path,
        &d,
        25,
        1,
        &[
            "unknown field `poll_interval`",
            "expected one of",
            "`poll_ms`",
        ],
    );
}

#[test]
fn wrong_type() {
    let (_dir, path, d) = gateway_with("unit = 2", "unit = \"two\"");
    assert_one(
        &path,
        &d,
        28,
        8,
        &["invalid type: string \"two\"", "expected u8"],
    );
}

#[test]
fn invalid_id() {
    let (_dir, path, d) = gateway_with("id = \"water-0001\"", "id = \"water 0001\"");
    assert_one(
        &path,
        &d,
        27,
        6,
        &["device id \"water 0001\"", "' '", "allowed are"],
    );
}

#[test]
fn missing_field_points_at_its_table() {
    let (_dir, path, d) = gateway_with("asset = \"wl-t-0001\"\n", "");
    assert_one(&path, &d, 26, 1, &["missing field `asset`"]);
}

#[test]
fn overlapping_registers_in_a_profile() {
    // `energy` moves onto 11..12: it overlaps the bit field at 11 and nothing else.
    let (_dir, path, d) = profile_with("address = 12", "address = 11");
    assert_one(
        &path,
        &d,
        20,
        1,
        &["\"energy\"", "overlaps field \"flag\"", "(see line 13)"],
    );
}

#[test]
fn bit_fields_share_a_register_but_not_a_bit() {
    let (_dir, _, d) = profile_with(
        "metric = \"energy\"\ntable = \"holding\"\naddress = 12\ntype = \"u32\"",
        "metric = \"flag2\"\ntable = \"holding\"\naddress = 11\ntype = \"bit\"\nbit = 4",
    );
    assert!(d.is_empty(), "{d:#?}");
    let (_dir, path, d) = profile_with(
        "metric = \"energy\"\ntable = \"holding\"\naddress = 12\ntype = \"u32\"",
        "metric = \"flag2\"\ntable = \"holding\"\naddress = 11\ntype = \"bit\"\nbit = 3",
    );
    assert_one(&path, &d, 20, 1, &["bit 3 of the same register"]);
}

#[test]
fn duplicate_device_id() {
    let (_dir, path, d) = gateway_with("id = \"water-0001\"", "id = \"lamp-0001\"");
    assert_one(
        &path,
        &d,
        27,
        1,
        &["device id \"lamp-0001\" is used twice", "(see line 20)"],
    );
}

#[test]
fn unknown_profile() {
    let (_dir, path, d) = gateway_with("profile = \"wl-ultra\"", "profile = \"wl-sonic\"");
    assert_one(
        &path,
        &d,
        29,
        1,
        &[
            "unknown profile \"wl-sonic\"",
            "known profiles: bin-fill, dm-pm, sl-100, wl-ultra",
        ],
    );
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let text = GATEWAY
        .replace("unit = 2", "unit = 1")
        .replace("params = { mounting_height_mm = 3500 }\n", "")
        .replace("baud = 9600", "baud = 9000")
        .replace("asset = \"wl-t-0001\"", "asset = \"sl-t-0001\"");
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "gw.toml", &text);
    let d = load_gateway(&path, &ProfileSet::builtin().unwrap()).unwrap_err();
    let at: Vec<(usize, &str)> = d
        .iter()
        .map(|d| (d.line, d.message.split(' ').next().unwrap()))
        .collect();
    assert_eq!(
        at,
        [(16, "baud"), (26, "profile"), (28, "unit"), (30, "asset")],
        "{d:#?}"
    );
    assert!(d[1].message.contains("mounting_height_mm"), "{}", d[1]);
    assert!(d[2].message.ends_with("(see line 21)"), "{}", d[2]);
}

#[test]
fn poll_interval_too_short_for_9600_baud() {
    // An SL-100 needs four requests, ~200 ms of bus time at 9600 baud with a 20 ms pause.
    let (_dir, path, d) = gateway_with(
        "poll_ms = 5000\n\n[[bus.device]]",
        "poll_ms = 100\n\n[[bus.device]]",
    );
    let errors: Vec<String> = d
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].starts_with(&format!(
            "{}:13:1: error: bus \"rs485-1\" (9600 8N1) is busy",
            path.display()
        )),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].starts_with(&format!(
            "{}:24:1: error: poll_ms is 100 but one poll cycle",
            path.display()
        )),
        "{}",
        errors[1]
    );
    assert!(errors[1].contains("4 requests"), "{}", errors[1]);
}

#[test]
fn a_busy_bus_is_a_warning() {
    // One lamp polled every 240 ms keeps the bus between 80 % and 100 % busy.
    let (_dir, _, d) = gateway_with(
        "poll_ms = 5000\n\n[[bus.device]]",
        "poll_ms = 240\n\n[[bus.device]]",
    );
    assert_eq!(
        d,
        Vec::<Diagnostic>::new(),
        "a warning does not fail loading"
    );
    let text = GATEWAY.replacen(
        "poll_ms = 5000\n\n[[bus.device]]",
        "poll_ms = 240\n\n[[bus.device]]",
        1,
    );
    let config = firmware_config::parse_gateway(
        Path::new("gw.toml"),
        &text,
        &ProfileSet::builtin().unwrap(),
    )
    .unwrap();
    assert_eq!(config.warnings.len(), 1, "{:#?}", config.warnings);
    assert_eq!(config.warnings[0].severity, Severity::Warning);
    assert_eq!(config.warnings[0].line, 13);
    let u = config.buses[0].utilisation();
    assert!(u > 0.8 && u <= 1.0, "{u}");
}

#[test]
fn profile_type_and_table_rules() {
    let cases: &[(&str, &str, usize, &str)] = &[
        (
            "type = \"u16\"",
            "type = \"u16\"\ncount = 4",
            9,
            "count is only for type \"string\"",
        ),
        ("bit = 3", "bit = 16", 15, "bit is 16; expected 0..15"),
        (
            "table = \"holding\"\naddress = 10",
            "table = \"input\"\naddress = 10\nwritable = true",
            8,
            "read-only",
        ),
        (
            "type = \"u16\"",
            "type = \"bool\"",
            8,
            "for one bit of a register use type = \"bit\"",
        ),
        (
            "type = \"u32\"",
            "type = \"f32\"\nenum = { 0 = \"off\" }",
            22,
            "enum labels need an integer",
        ),
        (
            "type = \"u32\"",
            "type = \"u32\"\nrange = [10, 0]",
            22,
            "min > max",
        ),
        (
            "type = \"u32\"",
            "type = \"u32\"\nscale = 0",
            22,
            "scale is 0",
        ),
        ("address = 12", "address = 65535", 20, "up to 65536"),
        (
            "metric = \"energy\"",
            "metric = \"status\"",
            18,
            "metric \"status\" is defined twice",
        ),
    ];
    for (from, to, line, words) in cases {
        let (_dir, path, d) = profile_with(from, to);
        assert_one(&path, &d, *line, 1, &[words]);
    }
}

#[test]
fn profile_name_must_match_the_file() {
    let (_dir, path, d) = profile_with("name = \"test-dev\"", "name = \"other-dev\"");
    assert_one(&path, &d, 1, 1, &["must equal the file name \"test-dev\""]);
}

#[test]
fn unknown_derived_source() {
    let text = format!(
        "{PROFILE}\n[[derived]]\nmetric = \"depth\"\nfrom = \"distance\"\nformula = \"height_minus\"\nparam = \"h\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "test-dev.toml", &text);
    let d = check_files(std::slice::from_ref(&path), &ProfileSet::new());
    assert_one(
        &path,
        &d,
        25,
        1,
        &["from = \"distance\" names no field", "status, energy"],
    );
}

#[test]
fn rtu_bus_needs_a_port_and_tcp_no_baud() {
    let (_dir, path, d) = gateway_with("port = \"/dev/ttyUSB0\"\n", "");
    assert_one(&path, &d, 12, 1, &["an rtu bus needs port"]);
    let (_dir, path, d) = gateway_with(
        "type = \"rtu\"\nport = \"/dev/ttyUSB0\"",
        "type = \"tcp\"\nhost = \"10.0.0.5:502\"",
    );
    assert_one(&path, &d, 16, 1, &["baud does not apply to a tcp bus"]);
}

#[test]
fn unit_out_of_range_and_duplicate_buses() {
    let (_dir, path, d) = gateway_with("unit = 2", "unit = 248");
    assert_one(
        &path,
        &d,
        28,
        1,
        &["unit 248 is out of range; expected 1..=247"],
    );
    let dup = GATEWAY.to_owned()
        + "\n[[bus]]\nname = \"rs485-1\"\ntype = \"tcp\"\nhost = \"10.0.0.5:502\"\n";
    let d =
        firmware_config::parse_gateway(Path::new("gw.toml"), &dup, &ProfileSet::builtin().unwrap())
            .unwrap_err();
    let shown: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "gw.toml:35:1: error: bus name \"rs485-1\" is used twice (see line 13)",
            "gw.toml:34:1: warning: bus \"rs485-1\" has no [[bus.device]]"
        ]
        .map(String::from)
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
    );
}

#[test]
fn duplicate_asset_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.toml", GATEWAY);
    let b = write(
        dir.path(),
        "b.toml",
        &GATEWAY
            .replace("gw-test-01", "gw-test-02")
            .replace("lamp-0001", "lamp-0009"),
    );
    let d = check_files(&[a.clone(), b.clone()], &ProfileSet::builtin().unwrap());
    let shown: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 2, "{shown:#?}");
    assert!(
        shown[0].starts_with(&format!(
            "{}:23:1: error: asset id \"sl-t-0001\" is also used at {}:23:1",
            b.display(),
            a.display()
        )),
        "{shown:#?}"
    );
}

#[test]
fn enum_codes_must_be_integers() {
    let (_dir, path, d) = profile_with(
        "type = \"u16\"",
        "type = \"u16\"\nenum = { 0 = \"ok\", x = \"bad\" }",
    );
    assert_one(&path, &d, 9, 20, &["expected an integer"]);
}

#[test]
fn negative_deadband() {
    // Line 20 of the profile is `address = 12` of `energy`; the deadband goes right after it (line 21).
    let (_dir, path, d) = profile_with("address = 12", "address = 12\ndeadband = -0.5");
    assert_one(&path, &d, 21, 1, &["deadband is -0.5", ">= 0"]);
}

#[test]
fn max_silent_out_of_range() {
    let (_dir, path, d) = gateway_with("pause_ms = 20", "pause_ms = 20\n[agent]\nmax_silent_s = 0");
    assert!(
        d.iter()
            .any(|x| x.file == path && x.message.contains("max_silent_s")),
        "{d:#?}"
    );
}

#[test]
fn mqtt_source_problems_are_located() {
    let source = "params = { mounting_height_mm = 3500 }\n\n[[mqtt_source]]\nname = \"lns\"\nbroker = \"mqtt://127.0.0.1:1884\"\n\
                  [[mqtt_source.device]]\nid = \"lamp-0001\"\nasset = \"bin-1\"\nkind = \"smartBin\"\ntopic = \"app/#/up\"\n\
                  [[mqtt_source.device.metric]]\nmetric = \"fillingLevel\"\npointer = \"object/fill\"\n";
    let (_dir, path, d) = gateway_with("params = { mounting_height_mm = 3500 }", source);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let line_of = |prefix: &str| lines.iter().rposition(|l| l.starts_with(prefix)).unwrap() + 1;
    let at = |line: usize, words: &str| {
        d.iter()
            .any(|x| x.file == path && x.line == line && x.message.contains(words))
    };
    assert!(
        at(
            line_of("topic = "),
            "'#' must be a whole level and the last one"
        ),
        "{d:#?}"
    );
    assert!(
        at(
            line_of("id = \"lamp-0001\""),
            "device id \"lamp-0001\" is used twice"
        ),
        "{d:#?}"
    );
    assert!(at(line_of("pointer = "), "must start with '/'"), "{d:#?}");
}

/// A valid `[gpio]` section, appended to `GATEWAY`.
const GPIO: &str = r#"
[gpio]
backend = "simulated"
sim_dir = "/tmp/gpio-test"

[[gpio.input]]
id = "door-t-01"
asset = "cab-t-01"
kind = "door"
pin = 17
pull = "up"

[[gpio.counter]]
id = "rain-t-01"
asset = "rain-t-01"
pin = 27
pull = "up"
per_pulse = 0.2

[[gpio.output]]
id = "lamp-warn-t-01"
asset = "warn-t-01"
kind = "warning_light"
pin = 22
lon = 118.79
lat = 32.05
"#;

/// `GATEWAY` + `GPIO` with `from` replaced by `to`: the file, its text and its diagnostics.
fn gpio_with(from: &str, to: &str) -> (TempDir, PathBuf, String, Vec<Diagnostic>) {
    let base = GATEWAY.to_owned() + GPIO;
    assert!(base.contains(from), "{from}");
    let text = base.replacen(from, to, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "gw-test-01.toml", &text);
    let diagnostics = load_gateway(&path, &ProfileSet::builtin().unwrap())
        .err()
        .unwrap_or_default();
    (dir, path, text, diagnostics)
}

/// The 1-based line of the `n`th line (0-based) of `text` that starts with `prefix`.
fn nth_line(text: &str, prefix: &str, n: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with(prefix))
        .nth(n)
        .unwrap_or_else(|| panic!("no line {n} starting with {prefix:?}"))
        .0
        + 1
}

#[test]
fn a_gpio_section_resolves_with_its_defaults() {
    let (_dir, path, _, d) = gpio_with("", "");
    assert!(d.is_empty(), "{d:#?}");
    let config = load_gateway(&path, &ProfileSet::builtin().unwrap()).unwrap();
    let gpio = config.gpio.as_ref().unwrap();
    assert_eq!(
        gpio.backend,
        firmware_config::GpioBackend::Simulated {
            dir: "/tmp/gpio-test".into()
        }
    );
    let input = &gpio.inputs[0].spec;
    assert_eq!((input.debounce_ms, input.active_low), (50, false));
    let counter = &gpio.counters[0].spec;
    assert_eq!(counter.debounce_ms, 20);
    assert_eq!(counter.edge, firmware_config::gpio::Edge::Falling);
    assert_eq!(
        (
            counter.metric.as_str(),
            counter.unit.as_str(),
            counter.report_s
        ),
        ("rainfall", "mm", 60)
    );
    assert!(!gpio.outputs[0].spec.initial);
    // The hub learns of them from the presence inventory, placed like any device.
    let inventory = config.inventory();
    let kind_of = |id: &str| {
        let d = inventory.iter().find(|d| d.device.as_str() == id).unwrap();
        (d.kind, d.location.unwrap().lon(), d.report_interval_s)
    };
    assert_eq!(
        kind_of("door-t-01"),
        (protocol::AssetKind::Cabinet, 118.7835, None)
    );
    assert_eq!(
        kind_of("rain-t-01"),
        (protocol::AssetKind::RainGauge, 118.7835, Some(60))
    );
    assert_eq!(
        kind_of("lamp-warn-t-01"),
        (protocol::AssetKind::WarningLight, 118.79, None)
    );
    assert_eq!(inventory.len(), 5);
}

#[test]
fn gpio_sim_dir_defaults_under_the_data_dir() {
    let text = GATEWAY.to_owned()
        + "\n[agent]\ndata_dir = \"/srv/agent\"\n"
        + &GPIO.replacen("sim_dir = \"/tmp/gpio-test\"\n", "", 1);
    let config = firmware_config::parse_gateway(
        Path::new("gw.toml"),
        &text,
        &ProfileSet::builtin().unwrap(),
    )
    .unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(
        config.gpio.unwrap().backend,
        firmware_config::GpioBackend::Simulated {
            dir: "/srv/agent/gpio-sim".into()
        }
    );
}

#[test]
fn gpio_pin_out_of_range() {
    let (_dir, path, text, d) = gpio_with("pin = 27", "pin = 28");
    assert_one(
        &path,
        &d,
        nth_line(&text, "pin = 28", 0),
        1,
        &["pin 28 is not a GPIO", "BCM GPIO number 0..=27"],
    );
}

#[test]
fn gpio_pin_used_twice() {
    let (_dir, path, text, d) = gpio_with("pin = 22", "pin = 17");
    let first = nth_line(&text, "pin = 17", 0);
    assert_one(
        &path,
        &d,
        nth_line(&text, "pin = 17", 1),
        1,
        &[&format!(
            "pin 17 is used twice in [gpio] (see line {first})"
        )],
    );
}

#[test]
fn gpio_per_pulse_must_be_positive() {
    for bad in ["0", "-0.2", "nan"] {
        let (_dir, path, text, d) = gpio_with("per_pulse = 0.2", &format!("per_pulse = {bad}"));
        assert_one(
            &path,
            &d,
            nth_line(&text, "per_pulse", 0),
            1,
            &["per_pulse is", "a number > 0"],
        );
    }
}

#[test]
fn gpio_sim_dir_needs_the_simulated_backend() {
    let (_dir, path, text, d) = gpio_with("backend = \"simulated\"", "backend = \"rppal\"");
    assert_one(
        &path,
        &d,
        nth_line(&text, "sim_dir", 0),
        1,
        &["sim_dir applies to backend = \"simulated\" only"],
    );
    // Without sim_dir, rppal (also the default) is fine.
    let (_dir, _, _, d) = gpio_with(
        "backend = \"simulated\"\nsim_dir = \"/tmp/gpio-test\"\n",
        "",
    );
    assert!(d.is_empty(), "{d:#?}");
}

#[test]
fn gpio_devices_share_ids_with_the_other_devices() {
    let (_dir, path, text, d) = gpio_with("id = \"door-t-01\"", "id = \"lamp-0001\"");
    let first = nth_line(&text, "id = \"lamp-0001\"", 0);
    assert_one(
        &path,
        &d,
        nth_line(&text, "id = \"lamp-0001\"", 1),
        1,
        &[&format!(
            "device id \"lamp-0001\" is used twice (see line {first})"
        )],
    );
    let (_dir, path, text, d) = gpio_with("asset = \"warn-t-01\"", "asset = \"rain-t-01\"");
    assert_one(
        &path,
        &d,
        nth_line(&text, "asset = \"rain-t-01\"", 1),
        1,
        &["asset id \"rain-t-01\" is used twice"],
    );
}

#[test]
fn gpio_report_debounce_and_place_ranges() {
    let (_dir, path, text, d) = gpio_with("per_pulse = 0.2", "per_pulse = 0.2\nreport_s = 0");
    assert_one(
        &path,
        &d,
        nth_line(&text, "report_s", 0),
        1,
        &["report_s is 0; expected 1..=3600"],
    );
    let (_dir, path, text, d) = gpio_with("pull = \"up\"", "pull = \"up\"\ndebounce_ms = 60000");
    assert_one(
        &path,
        &d,
        nth_line(&text, "debounce_ms", 0),
        1,
        &["debounce_ms is 60000; expected 0..=5000"],
    );
    let (_dir, path, text, d) = gpio_with("lat = 32.05\n", "");
    assert_one(
        &path,
        &d,
        nth_line(&text, "lon = 118.79", 0),
        1,
        &["lon needs lat as well"],
    );
}

#[test]
fn gpio_typos_are_located_by_the_parser() {
    let (_dir, path, text, d) = gpio_with("kind = \"door\"", "kind = \"window\"");
    assert_one(
        &path,
        &d,
        nth_line(&text, "kind = \"window\"", 0),
        8,
        &[
            "unknown variant `window`",
            "`door`, `float_switch`, `digital`",
        ],
    );
    let (_dir, path, text, d) =
        gpio_with("pull = \"up\"\n\n", "pull = \"up\"\npolarity = \"low\"\n\n");
    assert_one(
        &path,
        &d,
        nth_line(&text, "polarity", 0),
        1,
        &["unknown field `polarity`", "`active_low`"],
    );
}

#[test]
fn gpio_reserved_pins_are_a_warning() {
    let (_dir, path, _, d) = gpio_with("pin = 22", "pin = 1");
    assert!(d.is_empty(), "{d:#?}");
    let config = load_gateway(&path, &ProfileSet::builtin().unwrap()).unwrap();
    assert_eq!(config.warnings.len(), 1, "{:#?}", config.warnings);
    assert_eq!(config.warnings[0].severity, Severity::Warning);
    assert!(config.warnings[0].message.contains("ID EEPROM"));
}

#[test]
fn gpio_asset_used_in_two_files() {
    let dir = tempfile::tempdir().unwrap();
    let text = GATEWAY.to_owned() + GPIO;
    let a = write(dir.path(), "a.toml", &text);
    let other = text
        .replace("gw-test-01", "gw-test-02")
        .replace("sl-t-0001", "sl-t-0009")
        .replace("wl-t-0001", "wl-t-0009")
        .replace("cab-t-01", "cab-t-09")
        .replace("asset = \"rain-t-01\"", "asset = \"rain-t-09\"");
    let b = write(dir.path(), "b.toml", &other);
    let d = check_files(&[a.clone(), b.clone()], &ProfileSet::builtin().unwrap());
    let shown: Vec<String> = d.iter().map(ToString::to_string).collect();
    let line = nth_line(&text, "asset = \"warn-t-01\"", 0);
    assert_eq!(
        shown,
        [format!(
            "{}:{line}:1: error: asset id \"warn-t-01\" is also used at {}:{line}:1",
            b.display(),
            a.display()
        )]
    );
}

#[test]
fn camera_problems_are_located() {
    let tail = "params = { mounting_height_mm = 3500 }\n\n[camera_server]\nlisten = \"0.0.0.0\"\n\
                max_request_bytes = 1000\n\n[evidence]\nhub_url = \"ftp://hub\"\n\n\
                [[camera]]\nid = \"cam-01\"\nasset = \"sl-t-0001\"\nkind = \"smartBin\"\n\
                lane_zones = { \"left\" = \"z-1\" }\nallow_from = [\"192.168.1.300\"]\nutc_offset = \"8\"\n";
    let (_dir, path, d) = gateway_with("params = { mounting_height_mm = 3500 }", tail);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let line_of = |prefix: &str| lines.iter().rposition(|l| l.starts_with(prefix)).unwrap() + 1;
    let at = |line: usize, words: &str| {
        d.iter().any(|x| {
            x.file == path
                && x.line == line
                && x.message.contains(words)
                && x.severity == Severity::Error
        })
    };
    for (prefix, words) in [
        ("listen = ", "is not an address:port"),
        ("max_request_bytes = ", "expected 64 KiB to 256 MiB"),
        ("hub_url = ", "must start with http:// or https://"),
        (
            "asset = \"sl-t-0001\"",
            "asset id \"sl-t-0001\" is used twice",
        ),
        ("kind = \"smartBin\"", "is not a camera"),
        ("lane_zones = ", "lane \"left\" must be a lane number"),
        ("allow_from = ", "is not an IP address"),
        ("utc_offset = ", "must look like +08:00"),
    ] {
        assert!(at(line_of(prefix), words), "{prefix} / {words}: {d:#?}");
    }
}

#[test]
fn a_camera_without_hub_url_is_a_warning_and_loads() {
    let tail = "params = { mounting_height_mm = 3500 }\n\n[[camera]]\nid = \"cam-01\"\n\
                asset = \"cam-asset-01\"\nkind = \"parkingCamera\"\nzone = \"np-1\"\n";
    let (_dir, path, d) = gateway_with("params = { mounting_height_mm = 3500 }", tail);
    assert!(d.is_empty(), "{d:#?}");
    let cfg = load_gateway(&path, &ProfileSet::builtin().unwrap()).unwrap();
    assert!(
        cfg.warnings
            .iter()
            .any(|x| x.severity == Severity::Warning && x.message.contains("no [evidence] hub_url")),
        "{:#?}",
        cfg.warnings
    );
    let cams = cfg.cameras.clone().unwrap();
    assert_eq!(cams.listen.to_string(), "0.0.0.0:8088");
    assert_eq!(cams.cameras[0].utc_offset_s, 8 * 3600);
    assert!(
        cfg.inventory()
            .iter()
            .any(|i| i.asset.as_str() == "cam-asset-01")
    );
}

#[test]
fn rule_problems_are_located() {
    let tail = "params = { mounting_height_mm = 3500 }\n\n[[rule]]\nname = \"water-warning\"\n\
                device = \"water-0001\"\nmetric = \"waterDepthh\"\nabove = 15.0\nclear = 18.0\n\n\
                [[rule.action]]\ndevice = \"lamp-0001\"\nmetric = \"voltage\"\nraise = true\n\n\
                [[rule]]\nname = \"water-warning\"\ndevice = \"nope-1\"\nmetric = \"x\"\n";
    let (_dir, path, d) = gateway_with("params = { mounting_height_mm = 3500 }", tail);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let line_of = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix)).unwrap() + 1;
    let last_of = |prefix: &str| lines.iter().rposition(|l| l.starts_with(prefix)).unwrap() + 1;
    let at = |line: usize, words: &str| {
        d.iter()
            .any(|x| x.file == path && x.line == line && x.message.contains(words))
    };
    for (line, words) in [
        (
            line_of("metric = \"waterDepthh\""),
            "has no metric \"waterDepthh\"",
        ),
        (
            line_of("clear = 18.0"),
            "must be at or below the threshold 15",
        ),
        (
            line_of("metric = \"voltage\""),
            "cannot be written; writable: powerState, dimLevel",
        ),
        (
            last_of("name = \"water-warning\""),
            "rule name \"water-warning\" is used twice",
        ),
        (line_of("device = \"nope-1\""), "no device \"nope-1\""),
        (
            last_of("name = \"water-warning\""),
            "has neither above nor below",
        ),
    ] {
        assert!(at(line, words), "line {line} / {words}: {d:#?}");
    }
}
