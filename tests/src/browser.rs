//! Headless Chromium (Debian's `chromium`) driven over the Chrome DevTools Protocol:
//! one page the test navigates, reads, clicks with the real mouse and types into, and
//! screenshots. Every wait is bounded; Chromium and its helper processes are killed
//! when the [`Browser`] is dropped. A missing `chromium` fails the test.

use std::collections::VecDeque;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::process::Process;
use crate::tool;

/// The longest any single step (start, command, page load) may take.
const WAIT: Duration = Duration::from_secs(30);

/// The page's viewport: what a screenshot shows.
const VIEWPORT: (u32, u32) = (1280, 1600);

/// A running headless Chromium with one page attached over the DevTools Protocol.
pub struct Browser {
    process: Process,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The page's flattened session: every page command and event carries it.
    session: String,
    next_id: u64,
    /// The page's events read while waiting for a command's answer: (method, params).
    events: VecDeque<(String, Value)>,
}

impl Browser {
    /// Starts Chromium with its profile and log under `dir`, connects to the DevTools
    /// WebSocket it announces on stderr, and opens a blank page.
    pub async fn launch(dir: &Path) -> Browser {
        let chromium = tool::require("chromium", "chromium");
        let mut cmd = Command::new(chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--window-size={},{}", VIEWPORT.0, VIEWPORT.1))
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium-profile").display()
        ))
        .arg("about:blank")
        // Its own process group, so that drop kills the renderers and zygotes too.
        .process_group(0);
        let mut process = Process::spawn("chromium", cmd, &dir.join("chromium.log"));
        let url = announced_url(&mut process).await;
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&url))
            .await
            .unwrap_or_else(|_| panic!("connecting to {url} took over {WAIT:?}"))
            .unwrap_or_else(|e| panic!("connect to Chromium's DevTools at {url}: {e}"));
        let mut browser = Browser {
            process,
            ws,
            session: String::new(),
            next_id: 0,
            events: VecDeque::new(),
        };
        let target = browser
            .send("", "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target = target["targetId"].clone();
        let attached = browser
            .send(
                "",
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("Target.attachToTarget gave no sessionId: {attached}"))
            .to_owned();
        browser.call("Page.enable", json!({})).await;
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({
                    "width": VIEWPORT.0,
                    "height": VIEWPORT.1,
                    "deviceScaleFactor": 1,
                    "mobile": false,
                }),
            )
            .await;
        browser
    }

    /// Loads `url` in the page and waits for its `load` event.
    pub async fn navigate(&mut self, url: &str) {
        self.forget("Page.loadEventFired");
        let answer = self.call("Page.navigate", json!({ "url": url })).await;
        if let Some(error) = answer.get("errorText") {
            panic!("Chromium could not load {url}: {error}");
        }
        self.wait_for_load().await;
    }

    /// Waits for the page's next `load` event (after a click that navigates).
    pub async fn wait_for_load(&mut self) {
        self.event("Page.loadEventFired").await;
    }

    /// Evaluates the JavaScript `expression` in the page and returns its value as JSON;
    /// panics when it throws.
    pub async fn evaluate(&mut self, expression: &str) -> Value {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        if let Some(thrown) = answer.get("exceptionDetails") {
            panic!("{expression} threw: {thrown}");
        }
        answer["result"]["value"].clone()
    }

    /// The page's current DOM, serialized.
    pub async fn dom(&mut self) -> String {
        let dom = self.evaluate("document.documentElement.outerHTML").await;
        dom.as_str()
            .unwrap_or_else(|| panic!("the DOM is not a string: {dom}"))
            .to_owned()
    }

    /// Clicks the centre of the first element matching the CSS `selector` with the
    /// mouse (moved there, left button pressed and released), as a user would: the
    /// page sees trusted events, not a scripted `element.click()`. Load events seen
    /// before the click are forgotten, so [`Browser::wait_for_load`] waits for the
    /// load the click causes.
    pub async fn click(&mut self, selector: &str) {
        let quoted = serde_json::to_string(selector).unwrap_or_default();
        let centre = self
            .evaluate(&format!(
                "(() => {{ const e = document.querySelector({quoted}); if (!e) return null; \
                 e.scrollIntoView({{ block: 'center' }}); const r = e.getBoundingClientRect(); \
                 return {{ x: r.left + r.width / 2, y: r.top + r.height / 2, \
                 width: r.width, height: r.height }}; }})()"
            ))
            .await;
        let (Some(x), Some(y)) = (centre["x"].as_f64(), centre["y"].as_f64()) else {
            panic!("no element matches {selector} in the page");
        };
        assert!(
            centre["width"].as_f64() > Some(0.0) && centre["height"].as_f64() > Some(0.0),
            "{selector} is not visible: {centre}"
        );
        self.forget("Page.loadEventFired");
        self.mouse("mouseMoved", x, y, 0).await;
        self.mouse("mousePressed", x, y, 1).await;
        self.mouse("mouseReleased", x, y, 1).await;
    }

    /// Types `text` into the focused element, as an input method would.
    pub async fn insert_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// Saves a PNG of the page's viewport to `file` and returns its size in bytes.
    pub async fn screenshot(&mut self, file: &Path) -> u64 {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("Page.captureScreenshot's data is not base64: {e}"));
        std::fs::write(file, &png).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        png.len() as u64
    }

    async fn mouse(&mut self, kind: &str, x: f64, y: f64, clicks: u32) {
        let button = if clicks == 0 { "none" } else { "left" };
        self.call(
            "Input.dispatchMouseEvent",
            json!({ "type": kind, "x": x, "y": y, "button": button, "clickCount": clicks }),
        )
        .await;
    }

    /// Sends a command to the page's session and returns its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(&session, method, params).await
    }

    /// Sends a command (to the browser when `session` is empty) and reads until its
    /// answer, keeping the page's events that arrive meanwhile.
    async fn send(&mut self, session: &str, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if !session.is_empty() {
            command["sessionId"] = json!(session);
        }
        let deadline = Instant::now() + WAIT;
        let sent = tokio::time::timeout(WAIT, self.ws.send(Message::text(command.to_string())));
        match sent.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("send {method} to Chromium: {e}\n{}", self.process.log()),
            Err(_) => panic!("sending {method} to Chromium took over {WAIT:?}"),
        }
        loop {
            let message = self.receive(deadline, method).await;
            if message["id"] == id {
                if let Some(error) = message.get("error") {
                    panic!("{method} failed: {error}");
                }
                return message["result"].clone();
            }
            self.keep(message);
        }
    }

    /// Waits for the page's next event `method` (one already read counts) and returns
    /// its params.
    async fn event(&mut self, method: &str) -> Value {
        if let Some(i) = self.events.iter().position(|(m, _)| m == method) {
            return self.events.remove(i).map(|(_, p)| p).unwrap_or_default();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let message = self.receive(deadline, method).await;
            if message["method"] == method && message["sessionId"] == self.session.as_str() {
                return message["params"].clone();
            }
            self.keep(message);
        }
    }

    /// Drops the page's events `method` read so far.
    fn forget(&mut self, method: &str) {
        self.events.retain(|(m, _)| m != method);
    }

    fn keep(&mut self, message: Value) {
        if let Some(method) = message["method"].as_str()
            && message["sessionId"] == self.session.as_str()
        {
            self.events
                .push_back((method.to_owned(), message["params"].clone()));
        }
    }

    /// The next JSON message from Chromium, waiting at most until `deadline` for what
    /// `waiting_for` names.
    async fn receive(&mut self, deadline: Instant, waiting_for: &str) -> Value {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = match tokio::time::timeout(left, self.ws.next()).await {
                Ok(next) => next,
                Err(_) => panic!(
                    "Chromium gave no {waiting_for} within {WAIT:?}\n{}",
                    self.process.log()
                ),
            };
            match next {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str()).unwrap_or_else(|e| {
                        panic!("Chromium sent a message that is not JSON ({e}): {text}")
                    });
                }
                Some(Ok(Message::Close(_))) | None => panic!(
                    "Chromium closed the DevTools connection while {waiting_for} was due\n{}",
                    self.process.log()
                ),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("reading from Chromium's DevTools: {e}"),
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: the browser's renderer, GPU and zygote processes with it.
        if let Some(group) = rustix::process::Pid::from_raw(self.process.pid() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        self.process.kill();
    }
}

/// The `ws://` URL of the browser's DevTools endpoint, which Chromium prints on
/// stderr as "DevTools listening on ws://..." once it listens.
async fn announced_url(process: &mut Process) -> String {
    const ANNOUNCE: &str = "DevTools listening on ";
    let start = Instant::now();
    loop {
        let log = process.log();
        if let Some(url) = log
            .lines()
            .find_map(|l| l.strip_prefix(ANNOUNCE))
            .map(str::trim)
        {
            return url.to_owned();
        }
        assert!(
            process.is_running(),
            "chromium exited before listening for DevTools:\n{log}"
        );
        assert!(
            start.elapsed() < WAIT,
            "chromium did not announce its DevTools URL within {WAIT:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
