//! The operators' live console and the crews' phone view (`dashboards/web`), embedded in the binary
//! and served at `/` (the page) and `/console/…` (its scripts, styles and vendored libraries).
//!
//! Static files only: the pages call `/api/v1` with the user's own token, so nothing here needs
//! state, a token or the store. The files are compiled in with `include_bytes!` from an explicit
//! list (a test checks that the list and the directory agree), so a town's isolated network needs
//! nothing but the hub binary, and the browser is told by a Content-Security-Policy to load
//! nothing from anywhere else.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file: its path under `dashboards/web` and its bytes.
struct WebFile {
    path: &'static str,
    body: &'static [u8],
}

macro_rules! web_files {
    ($($path:literal),* $(,)?) => {
        &[$(WebFile { path: $path, body: include_bytes!(concat!("../../dashboards/web/", $path)) }),*]
    };
}

/// Every file the console is made of (README files stay out).
static FILES: &[WebFile] = web_files![
    "index.html",
    "console.css",
    "js/app.js",
    "js/api.js",
    "js/dom.js",
    "js/i18n.js",
    "js/model.js",
    "js/route.js",
    "js/town.js",
    "js/chart.js",
    "js/pages/signin.js",
    "js/pages/overview.js",
    "js/pages/map.js",
    "js/pages/asset.js",
    "js/pages/tasks.js",
    "js/pages/task.js",
    "js/pages/crew.js",
    "js/pages/gateways.js",
    "js/pages/assessment.js",
    "vendor/uplot/uPlot.esm.js",
    "vendor/uplot/uPlot.min.css",
];

/// Where the browser may load from and connect to: this hub only (images also as `data:`/`blob:`
/// URLs, styles also inline for the chart library's computed sizes).
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The console's routes, outside `/api/v1` (they need no token: the page asks for one).
pub fn router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
        .route("/", get(index))
        .route("/console/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(if path.is_empty() { "index.html" } else { &path }, &headers)
}

/// Set to a `dashboards/web` directory, the hub serves the console's files from there, read at each
/// request, instead of its embedded copy: edit a page, reload the browser, no rebuild. Only the
/// embedded files' names are served either way.
pub const DIR_VARIABLE: &str = "HUB_CONSOLE_DIR";

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let from_disk = std::env::var_os(DIR_VARIABLE)
        .and_then(|dir| std::fs::read(std::path::Path::new(&dir).join(path)).ok());
    let Some(file) = FILES.iter().find(|f| f.path == path) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("no console file {path:?}"),
        )
            .into_response();
    };
    let body: std::borrow::Cow<'static, [u8]> = match from_disk {
        Some(bytes) => bytes.into(),
        None => file.body.into(),
    };
    let etag = format!("\"{:016x}\"", fnv1a(&body));
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type(path))], body).into_response()
    };
    let h = response.headers_mut();
    // Revalidate every time: a new hub binary brings new files under the same names.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Links may carry `?token=` (evidence images, CSV downloads): never pass them on.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if path.ends_with(".html") {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    response
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// FNV-1a, for ETags (not security: the files are the binary's own).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every file under dashboards/web (but READMEs) is embedded, so a new page cannot be
    /// forgotten in the list; and every embedded path is one the page references or a module
    /// imports.
    #[test]
    fn embedded_list_matches_the_directory() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/web");
        let mut on_disk = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if !p.file_name().unwrap().to_str().unwrap().ends_with(".md")
                    && p.file_name().unwrap() != "LICENSE"
                {
                    on_disk.push(
                        p.strip_prefix(&root)
                            .unwrap()
                            .to_str()
                            .unwrap()
                            .replace('\\', "/"),
                    );
                }
            }
        }
        on_disk.sort();
        let mut listed: Vec<String> = FILES.iter().map(|f| f.path.to_owned()).collect();
        listed.sort();
        assert_eq!(on_disk, listed, "dashboards/web and console::FILES differ");
        for f in FILES {
            assert!(
                !content_type(f.path).starts_with("application/octet"),
                "{}",
                f.path
            );
        }
    }

    #[tokio::test]
    async fn serves_the_page_with_its_policy_and_revalidates() {
        let r = serve("index.html", &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("default-src 'self'")
        );
        let etag = r.headers()[header::ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(serve("index.html", &h).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            serve("js/app.js", &HeaderMap::new()).headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            serve("../Cargo.toml", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }

    /// The page loads nothing from elsewhere: no file names an absolute URL where a browser
    /// would fetch it (a script, style, image or module source).
    #[test]
    fn nothing_from_the_internet() {
        for f in FILES {
            let text = std::str::from_utf8(f.body).unwrap().replace(' ', "");
            for bad in [
                "src=\"http",
                "src='http",
                "href=\"http",
                "href='http",
                "from\"http",
                "from'http",
                "import(\"http",
                "import('http",
                "url(http",
                "url(\"http",
                "url('http",
                "@import",
                "new EventSource(\"http",
                "fetch(\"http",
                "fetch('http",
            ] {
                assert!(
                    !text.contains(&bad.replace(' ', "")),
                    "{} contains {bad}",
                    f.path
                );
            }
        }
    }
}
