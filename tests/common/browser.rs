//! Headless Chromium driven through WebDriver (Debian's `chromium` and `chromedriver`), for
//! tests that check what a person sees in a browser: pages, clicks, screenshots. Without the
//! two binaries a test is skipped loudly, except under CI, where it fails.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Browser {
    pub client: Client,
    /// chromedriver, leader of its own process group (Chromium included): killed on Drop.
    driver: Child,
    /// Where [`Browser::screenshot`] writes.
    pub shots: PathBuf,
    /// Chromium's fresh profile; removed after the driver is killed.
    _profile: TempDir,
}

impl Browser {
    /// chromedriver on a free loopback port with a headless Chromium session, or None (test
    /// skipped) when the binaries are missing and `CI` is unset.
    pub async fn start(shots_dir: &Path) -> Option<Browser> {
        if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
            let msg = format!("{CHROMEDRIVER} or {CHROMIUM} is missing");
            if std::env::var_os("CI").is_some() {
                panic!("{msg}: CI must have them (apt-get install chromium chromium-driver)");
            }
            eprintln!("SKIPPED: {msg}, browser test not run (install chromium chromium-driver)");
            return None;
        }
        std::fs::create_dir_all(shots_dir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn chromedriver");
        // Readiness polling of the driver's port, bounded.
        let mut ready = false;
        for _ in 0..100 {
            if let Some(status) = driver.try_wait().unwrap() {
                panic!("chromedriver exited before listening: {status}");
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !ready {
            kill_group(&mut driver);
            panic!("chromedriver did not listen on 127.0.0.1:{port} within 5 s");
        }
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox", // we run as root
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ]
        .map(String::from)
        .into();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": CHROMIUM, "args": args }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        let client = match client {
            Ok(client) => client,
            Err(e) => {
                kill_group(&mut driver);
                panic!("no WebDriver session from chromedriver: {e}");
            }
        };
        Some(Browser {
            client,
            driver,
            shots: shots_dir.to_path_buf(),
            _profile: profile,
        })
    }

    /// The viewport as a PNG in `shots/name.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Waits (30 s at most) until an element matching `css` contains `text`, and returns it;
    /// panics with the start of the page source if none ever does.
    pub async fn wait_for_text(&self, css: &str, text: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Errors (a stale element while the page changes) count as "not yet".
            for el in self
                .client
                .find_all(Locator::Css(css))
                .await
                .unwrap_or_default()
            {
                if el.text().await.is_ok_and(|t| t.contains(text)) {
                    return el;
                }
            }
            if Instant::now() > deadline {
                let source = self.client.source().await.unwrap_or_else(|e| e.to_string());
                let snippet: String = source.chars().take(2000).collect();
                panic!("no {css:?} containing {text:?} within 30 s; page source:\n{snippet}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends the WebDriver session (Chromium quits), then kills the driver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}

/// SIGKILL to chromedriver's process group, so no Chromium outlives it, and reap it.
fn kill_group(driver: &mut Child) {
    let _ = killpg(Pid::from_raw(driver.id() as i32), Signal::SIGKILL);
    let _ = driver.wait();
}
