//! A real headless Chromium driven over WebDriver (chromedriver, on a free
//! loopback port per test), and the daemon's HTTP server in this process,
//! for the dashboard's tests.
//!
//! chromedriver runs in a process group of its own, with Chromium under
//! it; [`Browser::close`] ends the session (Chromium quits) and stops
//! chromedriver, and dropping a browser that was not closed (a failed
//! test) kills that group by its id.

use super::STOP_WAIT;
use fantoccini::{Client, ClientBuilder};
use sagaflow::config::Settings;
use sagaflow::definition::Catalog;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The longest the page may take to show what a test waits for.
pub const PAGE_WAIT: Duration = Duration::from_secs(10);

/// How often a condition on the page is looked at again.
const POLL: Duration = Duration::from_millis(50);

/// The longest chromedriver may take to listen, and Chromium to start.
const BROWSER_START: Duration = Duration::from_secs(10);

/// Where screenshots go: `<target dir>/dashboard-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .expect("the target dir")
        .join("dashboard-screenshots")
}

/// The daemon's HTTP server (API and dashboard) in this process, on a
/// free loopback port, until the returned token is cancelled.
pub async fn serve_http(settings: &Settings, catalog: &Catalog) -> (SocketAddr, CancellationToken) {
    let shutdown = CancellationToken::new();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (listener, addr) = sagaflow::http::bind(addr).await.expect("a free port");
    let api = sagaflow::http::api::Api::new(
        settings.clone(),
        catalog.names().into_iter().map(str::to_owned).collect(),
        shutdown.clone(),
    );
    let ready: sagaflow::http::Readiness = Arc::new(Vec::new);
    tokio::spawn(sagaflow::http::serve(
        listener,
        None,
        ready,
        Some(api),
        shutdown.clone(),
    ));
    (addr, shutdown)
}

/// Headless Chromium under its own chromedriver.
pub struct Browser {
    pub client: Client,
    driver: std::process::Child,
    _profile: tempfile::TempDir,
    closed: bool,
}

impl Browser {
    /// Starts chromedriver on a free port and a new Chromium session with
    /// a window of `width` x `height`.
    pub async fn start(width: u32, height: u32) -> Self {
        let profile = tempfile::tempdir().expect("a temp dir for the profile");
        let (driver, port) = spawn_driver();
        let mut driver = Some(driver);
        let deadline = Instant::now() + BROWSER_START;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                kill_group(driver.as_mut().unwrap());
                panic!("chromedriver did not listen on {port} within {BROWSER_START:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    // Tests run as root, where Chromium's sandbox cannot.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-extensions",
                    "--hide-scrollbars",
                    "--force-device-scale-factor=1",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut builder = ClientBuilder::new(connector);
        builder.capabilities(caps);
        let webdriver = format!("http://127.0.0.1:{port}");
        let connect = builder.connect(&webdriver);
        let client = match tokio::time::timeout(BROWSER_START, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                kill_group(driver.as_mut().unwrap());
                panic!("no Chromium session: {e}");
            }
            Err(_) => {
                kill_group(driver.as_mut().unwrap());
                panic!("Chromium did not start within {BROWSER_START:?}");
            }
        };
        Self {
            client,
            driver: driver.take().unwrap(),
            _profile: profile,
            closed: false,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("the page opens");
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Looks at `script` every 50 ms until it returns something other
    /// than `null`, `false`, `0` or `""`, and returns that; panics naming
    /// `what`, with what the page shows, after `within`.
    pub async fn wait_js_for(
        &self,
        within: Duration,
        what: &str,
        script: &str,
        args: Vec<Value>,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self.js(script, args.clone()).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let shown = self
                    .js("return document.body.innerText.slice(0, 4000);", vec![])
                    .await;
                self.screenshot(&format!("failed-{}", slug(what))).await;
                panic!(
                    "the page did not show {what} within {within:?}; it shows:\n{}",
                    shown.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// [`Self::wait_js_for`] within [`PAGE_WAIT`].
    pub async fn wait_js(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        self.wait_js_for(PAGE_WAIT, what, script, args).await
    }

    /// Waits for an element matching `css` and clicks it; found again
    /// when the page drew it anew between finding and clicking.
    pub async fn click(&self, css: &str) {
        // A live list is drawn anew at each event it hears: a burst of
        // events (a step's locks taken one after the other) can replace the
        // element several times in a row.
        for _ in 0..20 {
            self.wait_js(
                &format!("{css} to be clickable"),
                "const e = document.querySelector(arguments[0]); \
                 return e && !e.disabled && e.offsetParent !== null;",
                vec![json!(css)],
            )
            .await;
            let element = self
                .client
                .find(fantoccini::Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"));
            match element.click().await {
                Ok(()) => return,
                Err(e) if e.to_string().contains("stale element") => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => panic!("click {css}: {e}"),
            }
        }
        panic!("{css} was drawn anew at every click");
    }

    /// Types `text` into the element matching `css`, as a user would.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self
            .client
            .find(fantoccini::Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        element
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        element
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Pastes `token` into the token field and waits until the page says
    /// what it allows (`read` or `write`).
    pub async fn use_token(&self, token: &str, access: &str) {
        self.type_into("#token", token).await;
        self.click("#token-use").await;
        self.wait_js(
            &format!("the token taken with {access} access"),
            "return document.getElementById('who').dataset.access === arguments[0];",
            vec![json!(access)],
        )
        .await;
    }

    /// Saves a PNG of the window under [`screenshot_dir`]; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("the screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("the screenshot written");
        path
    }

    /// Ends the session (Chromium quits) and stops chromedriver.
    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = tokio::time::timeout(STOP_WAIT, client.close()).await;
        let _ = Command::new("kill")
            .args(["-TERM", &self.driver.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.driver.try_wait() {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        kill_group(&mut self.driver);
        self.closed = true;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.closed {
            kill_group(&mut self.driver);
        }
    }
}

/// chromedriver on a free loopback port, in a process group of its own.
fn spawn_driver() -> (std::process::Child, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{CHROMEDRIVER} does not run ({e}): scripts/test installs chromium-driver")
        });
    (child, port)
}

/// SIGKILL to chromedriver's process group (itself and the Chromium it
/// started), then reaps it.
fn kill_group(driver: &mut std::process::Child) {
    let group = format!("-{}", driver.id());
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

fn slug(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(60)
        .collect()
}
