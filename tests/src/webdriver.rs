//! A headless Chromium driven through chromedriver's W3C WebDriver protocol (plain JSON over HTTP,
//! so no client crate): start a browser, open pages, find, click and type, run scripts, wait for
//! the page to show something, take screenshots. Debian's `chromium` and `chromium-driver` are the
//! real peer (`scripts/install-peers.sh` installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key W3C WebDriver puts element references under.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser window of a given size, or a phone emulated by Chromium (viewport, pixel ratio,
/// touch, mobile user agent).
#[derive(Debug, Clone, Copy)]
pub enum Viewport {
    Desktop { width: u32, height: u32 },
    Phone { width: u32, height: u32 },
}

/// One browser session with its own chromedriver and profile; both end when it is dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("base", &self.base)
            .field("session", &self.session)
            .finish()
    }
}

fn program(var: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        p.exists(),
        "{} not found (set {var}, or run ./test.sh: scripts/install-peers.sh installs chromium and chromium-driver)",
        p.display()
    );
    p
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session in `viewport`.
    pub fn start(viewport: Viewport) -> Self {
        let chromium = program("CITY_PEER_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = program("CITY_PEER_CHROMEDRIVER", "/usr/bin/chromedriver");
        let addr = crate::free_addr();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={}", addr.port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-first-run".to_owned(),
            "--lang=zh-CN".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut options = json!({ "binary": chromium, "args": [] });
        match viewport {
            Viewport::Desktop { width, height } => {
                args.push(format!("--window-size={width},{height}"));
            }
            Viewport::Phone { width, height } => {
                options["mobileEmulation"] = json!({
                    "deviceMetrics": { "width": width, "height": height, "pixelRatio": 2.0, "touch": true, "mobile": true },
                    "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Mobile Safari/537.36",
                });
            }
        }
        options["args"] = json!(args);
        let base = format!("http://{addr}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": { "browser": "ALL" },
        }}});
        let session = loop {
            match call(&base, "POST", "/session", Some(&caps)) {
                Ok(v) => break v["sessionId"].as_str().unwrap().to_owned(),
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "chromedriver did not start a session: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        Self {
            driver,
            base,
            session,
            _profile: profile,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        call(
            &self.base,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
    }

    /// Opens `url` (returns when the document has loaded).
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(&json!({ "url": url })))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns what it returns.
    pub fn js(&self, script: &str, args: &[Value]) -> Value {
        self.try_js(script, args)
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    pub fn try_js(&self, script: &str, args: &[Value]) -> Result<Value, String> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    fn find(&self, css: &str) -> Result<String, String> {
        let v = self.cmd(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        v[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no element reference in {v}"))
    }

    /// Clicks the element `css` selects, waiting up to 10 s for it (pages redraw from the live
    /// feed, so a reference may go stale between finding and clicking: then it tries again).
    pub fn click(&self, css: &str) {
        self.retry(&format!("click {css}"), |b| {
            let id = b.find(css)?;
            b.cmd("POST", &format!("/element/{id}/click"), Some(&json!({})))
        });
    }

    /// Types `text` into the element `css` selects.
    pub fn type_into(&self, css: &str, text: &str) {
        self.retry(&format!("type into {css}"), |b| {
            let id = b.find(css)?;
            b.cmd(
                "POST",
                &format!("/element/{id}/value"),
                Some(&json!({ "text": text })),
            )
        });
    }

    /// Tries `f` for up to 10 s; panics with its last error.
    fn retry<T>(&self, what: &str, mut f: impl FnMut(&Self) -> Result<T, String>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match f(self) {
                Ok(v) => return v,
                Err(e) if Instant::now() > deadline => {
                    let url = self.try_js("return location.href", &[]).unwrap_or_default();
                    panic!(
                        "{what}: {e}\nat {url}\nbrowser log:\n{}",
                        self.logs().join("\n")
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The text the element `css` selects shows, or `None` when there is none.
    pub fn text(&self, css: &str) -> Option<String> {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
            &[json!(css)],
        )
        .as_str()
        .map(str::to_owned)
    }

    /// Polls `f` every 200 ms until it gives a value; panics after `timeout` naming `what`, with
    /// the page's address and text to see what it showed instead.
    pub fn wait<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if Instant::now() > deadline {
                let url = self.try_js("return location.href", &[]).unwrap_or_default();
                let text = self
                    .try_js("return document.body.innerText.slice(0, 3000)", &[])
                    .unwrap_or_default();
                panic!(
                    "waited {timeout:?} for {what}\nat {url}\npage text:\n{}\nbrowser log:\n{}",
                    text.as_str().unwrap_or_default(),
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the element `css` selects shows text for which `ok` holds; returns the text.
    pub fn wait_text(&self, css: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        self.wait(timeout, &format!("the text of {css}"), |b| {
            b.text(css).filter(|t| ok(t))
        })
    }

    /// Saves a PNG of the viewport.
    pub fn screenshot(&self, path: &Path) {
        let v = self.cmd("GET", "/screenshot", None).unwrap();
        let png = base64_decode(v.as_str().unwrap());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    /// The browser's console messages since the last call (level and text).
    pub fn logs(&self) -> Vec<String> {
        self.cmd("POST", "/se/log", Some(&json!({ "type": "browser" })))
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|e| format!("{} {}", e["level"], e["message"]))
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call(
            &self.base,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One WebDriver command: its `value`, or the driver's error and message.
fn call(base: &str, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let url = format!("{base}{path}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let resp = match (method, body) {
        ("POST", Some(b)) => agent.post(&url).send_json(b),
        ("POST", None) => agent.post(&url).send_json(json!({})),
        ("DELETE", _) => agent.delete(&url).call(),
        _ => agent.get(&url).call(),
    };
    let mut resp = resp.map_err(|e| format!("{method} {path}: {e}"))?;
    let status = resp.status().as_u16();
    let v: Value = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_json()
        .map_err(|e| format!("{method} {path}: {status}, not JSON: {e}"))?;
    if status >= 400 {
        return Err(format!(
            "{method} {path}: {} ({})",
            v["value"]["error"], v["value"]["message"]
        ));
    }
    Ok(v["value"].clone())
}

/// Standard base64 (screenshots), without a crate for twenty lines.
fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes() {
        assert_eq!(super::base64_decode("aGVsbG8gd29ybGQ="), b"hello world");
        assert_eq!(super::base64_decode("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
    }
}
