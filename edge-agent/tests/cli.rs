//! The installer commands as installers run them: the real binary, real files, exit codes and output.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge-agent"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn example_gateways() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("firmware-config/gateways"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    assert!(v.len() >= 2);
    v
}

#[test]
fn check_accepts_the_example_gateways() {
    let out = agent()
        .args(["config", "check"])
        .args(example_gateways())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stderr}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("2 file(s) OK"), "{stderr}");
}

#[test]
fn check_rejects_overlapping_registers_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let original =
        std::fs::read_to_string(repo().join("firmware-config/profiles/sl-100.toml")).unwrap();
    // A second field on the input register that the voltage field already occupies.
    let broken = format!(
        "{original}\n[[field]]\nmetric = \"voltageCopy\"\ntable = \"{table}\"\naddress = {address}\ntype = \"u16\"\n",
        table = field_of(&original, "voltage", "table"),
        address = field_of(&original, "voltage", "address"),
    );
    let profile = dir.path().join("sl-100.toml");
    std::fs::write(&profile, &broken).unwrap();
    // The `address = ...` line of the added field, 1-based.
    let copy_at = broken
        .lines()
        .position(|l| l.contains("voltageCopy"))
        .unwrap();
    let added_line = copy_at
        + broken
            .lines()
            .skip(copy_at)
            .position(|l| l.starts_with("address"))
            .unwrap()
        + 1;
    let out = agent()
        .args(["config", "check"])
        .args(example_gateways())
        .arg(&profile)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let want = format!("{}:{added_line}:", profile.display());
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&want) && l.contains("overlap")),
        "expected a line starting {want} about the overlap, got:\n{stdout}"
    );
}

#[test]
fn check_reports_every_problem_of_a_broken_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(&example_gateways()[0]).unwrap();
    // The second device takes the first one's id, and an unknown profile appears.
    let first_id = original
        .lines()
        .find(|l| l.starts_with("id = "))
        .unwrap()
        .to_owned();
    let mut lines: Vec<String> = original.lines().map(str::to_owned).collect();
    let second = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("id = "))
        .nth(1)
        .unwrap()
        .0;
    lines[second] = first_id;
    let profile_line = lines
        .iter()
        .position(|l| l.starts_with("profile = "))
        .unwrap();
    lines[profile_line] = "profile = \"no-such-profile\"".into();
    let file = dir.path().join("gw.toml");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = agent()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    // The duplicate is reported at one of its two lines, naming the other.
    let first_line = lines.iter().position(|l| *l == lines[second]).unwrap() + 1;
    assert!(
        stdout.contains(&format!("{}:{}:", file.display(), second + 1))
            || (stdout.contains(&format!("{}:{first_line}:", file.display()))
                && stdout.contains(&format!("line {}", second + 1))),
        "duplicate id at line {}:\n{stdout}",
        second + 1
    );
    assert!(
        stdout.contains(&format!("{}:{}:", file.display(), profile_line + 1)),
        "unknown profile at line {}:\n{stdout}",
        profile_line + 1
    );
}

#[test]
fn check_reports_syntax_errors_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.toml");
    std::fs::write(&file, "gateway = \"gw-1\"\n[location\nlon = 1\n").unwrap();
    let out = agent()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.starts_with(&format!("{}:2:", file.display())),
        "{stdout}"
    );
}

#[test]
fn plan_shows_merged_requests_and_bus_time() {
    let out = agent()
        .args(["config", "plan"])
        .arg(&example_gateways()[0])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("bus "), "{stdout}");
    assert!(stdout.contains("ms"), "{stdout}");
}

#[test]
fn run_refuses_a_broken_file_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.toml");
    std::fs::write(&file, "gateway = \"gw 1\"\n").unwrap();
    let out = agent()
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}:1:", file.display())),
        "{stderr}"
    );
}

/// The value of `key` in the `[[field]]` block whose metric is `metric`.
fn field_of(profile: &str, metric: &str, key: &str) -> String {
    let block = profile
        .split("[[field]]")
        .find(|b| b.contains(&format!("metric = \"{metric}\"")))
        .unwrap();
    let line = block
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{key} ")))
        .unwrap();
    let value = line.split_once('=').unwrap().1;
    value
        .split('#')
        .next()
        .unwrap()
        .trim()
        .trim_matches('"')
        .to_owned()
}
