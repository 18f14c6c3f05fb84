//! A real browser for tests: Debian's Chromium, headless, driven through
//! chromedriver over the W3C WebDriver protocol (JSON over HTTP).
//!
//! The protocol's dozen calls a test needs are spoken here directly over
//! the harness's own HTTP client: fantoccini 0.22 would have added 19
//! crates, among them second versions of `http`, `cookie` and the ICU
//! stack, to every test build.

use crate::{HttpAnswer, http_request, wait_until};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The W3C name of an element reference in a JSON answer.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session; the driver and browser end with it.
pub struct Browser {
    driver: Child,
    url: String,
    session: String,
    /// Chromium's profile, removed with the session.
    _profile: tempfile::TempDir,
    /// Set once a phone's screen is emulated: screenshots keep its size.
    emulating: std::cell::Cell<bool>,
}

/// An element found on the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

fn find_program(names: &[&str]) -> Option<PathBuf> {
    names
        .iter()
        .flat_map(|name| {
            [
                PathBuf::from("/usr/bin").join(name),
                PathBuf::from("/usr/lib/chromium").join(name),
            ]
        })
        .find(|path| path.is_file())
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a session.
    /// Panics, naming the setup step, when Chromium is not installed.
    pub fn start() -> Browser {
        let driver_path = find_program(&["chromedriver"]).expect(
            "chromedriver is missing: `cargo xtask setup` installs Debian's chromium and chromium-driver",
        );
        let chromium = find_program(&["chromium", "chromium-browser"])
            .expect("chromium is missing: `cargo xtask setup` installs it");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let up = wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let profile = tempfile::tempdir().expect("a profile dir");
        let mut browser = Browser {
            driver,
            url,
            session: String::new(),
            _profile: profile,
            emulating: std::cell::Cell::new(false),
        };
        assert!(up, "chromedriver did not listen on port {port}");
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            "--headless=new",
                            // Tests may run as root, where Chromium's
                            // sandbox cannot start.
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--window-size=1280,1000",
                            format!("--user-data-dir={}", browser._profile.path().display()),
                        ],
                    },
                },
            },
        });
        let answer = browser.call("POST", "/session", Some(capabilities));
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        browser
    }

    /// One WebDriver call; its `value`, or a panic with the driver's error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers = [("Content-Type", "application/json")];
        let answer: HttpAnswer = http_request(&self.url, method, path, &headers, &body);
        let parsed: Value = serde_json::from_str(&answer.body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", answer.body));
        if answer.status != 200 {
            panic!("{method} {path} ({}): {}", answer.status, parsed["value"]);
        }
        parsed["value"].clone()
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn current_url(&self) -> String {
        self.session_call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Every element matching a CSS selector, in document order.
    pub fn find_all(&self, css: &str) -> Vec<Element> {
        let found = self.session_call(
            "POST",
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        );
        found
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT_KEY].as_str().map(|id| Element(id.to_string())))
            .collect()
    }

    /// The first element matching `css`; panics with the page's source
    /// when there is none.
    pub fn find(&self, css: &str) -> Element {
        self.find_all(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {css} on {}:\n{}", self.current_url(), self.source()))
    }

    /// The first element matching `css` once there is one: after a click
    /// that navigates, the next page may not have loaded when the click
    /// returns. Panics with the page's source after 10 s.
    pub fn wait_for(&self, css: &str) -> Element {
        let mut found = None;
        wait_until(Duration::from_secs(10), || {
            found = self.find_all(css).into_iter().next();
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no {css} on {}:\n{}", self.current_url(), self.source()))
    }

    /// The text of the first element matching `css` on the page shown
    /// now, read in the page (never a stale reference to one before it).
    pub fn text_of(&self, css: &str) -> Option<String> {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.innerText : null;",
            serde_json::to_string(css).unwrap_or_default()
        );
        self.execute(&script).as_str().map(str::to_string)
    }

    /// Waits until the page shown is at a URL for which `at` holds.
    pub fn wait_for_url(&self, at: impl Fn(&str) -> bool) -> String {
        let mut url = String::new();
        wait_until(Duration::from_secs(10), || {
            url = self.current_url();
            at(&url)
        });
        url
    }

    pub fn text(&self, element: &Element) -> String {
        self.session_call("GET", &format!("/element/{}/text", element.0), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// A DOM property (`naturalWidth`, `href`, ...).
    pub fn property(&self, element: &Element, name: &str) -> Value {
        self.session_call(
            "GET",
            &format!("/element/{}/property/{name}", element.0),
            None,
        )
    }

    /// Clicks as a user would (the element must be visible).
    pub fn click(&self, element: &Element) {
        self.session_call(
            "POST",
            &format!("/element/{}/click", element.0),
            Some(json!({})),
        );
    }

    /// Empties a text field, then types `text` into it.
    pub fn fill(&self, element: &Element, text: &str) {
        self.session_call(
            "POST",
            &format!("/element/{}/clear", element.0),
            Some(json!({})),
        );
        self.session_call(
            "POST",
            &format!("/element/{}/value", element.0),
            Some(json!({ "text": text })),
        );
    }

    /// Runs a script in the page; its return value.
    pub fn execute(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    pub fn source(&self) -> String {
        self.session_call("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Saves what the window shows as a PNG (the whole page's height, so a
    /// long list is seen to its end).
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        if !self.emulating.get() {
            self.fit_window_to_page();
        }
        let encoded = self.session_call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("writing the screenshot");
    }

    fn fit_window_to_page(&self) {
        let height = self
            .execute("return document.documentElement.scrollHeight")
            .as_u64()
            .unwrap_or(1000)
            .clamp(400, 4000);
        let width = self
            .execute("return window.outerWidth")
            .as_u64()
            .unwrap_or(1280);
        self.session_call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height + 100 })),
        );
    }

    /// Shows pages as a phone of `width` x `height` CSS pixels would
    /// (Chrome's device emulation: a window cannot be narrower than 500).
    pub fn phone(&self, width: u32, height: u32) {
        self.session_call(
            "POST",
            "/goog/cdp/execute",
            Some(json!({
                "cmd": "Emulation.setDeviceMetricsOverride",
                "params": { "width": width, "height": height, "deviceScaleFactor": 1, "mobile": true },
            })),
        );
        self.emulating.set(true);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            // Best effort: the driver is killed next either way.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                http_request(&self.url, "DELETE", &path, &[], "")
            }));
        }
        self.driver.kill().ok();
        self.driver.wait().ok();
    }
}

/// Where tests save screenshots: `target/screenshots/`, kept after the run
/// as the tests' artifacts.
pub fn screenshot_dir() -> PathBuf {
    crate::binary("cobble-worker")
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("screenshots"))
        .unwrap_or_else(|| PathBuf::from("target/screenshots"))
}
