//! rexd as a child process, for the tests that kill it with SIGKILL: the real binary on a
//! free loopback port, with its log in a file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::capabilities_client::CapabilitiesClient;

/// Longest a child server may take to come up.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A rexd child process; killed (SIGKILL, by its pid) when dropped.
pub struct Rexd {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn rexd_binary() -> PathBuf {
    std::env::var_os("REXD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rexd")))
}

impl Rexd {
    /// Starts `rexd serve` on a free port and waits until it answers GetCapabilities; also
    /// returns how long that took from the spawn.
    pub async fn start(bin: &Path, config: &Path, data_dir: &Path, log: &Path) -> (Rexd, Duration) {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let command = Command::new(bin);
        Self::spawn(
            command,
            addr,
            addr,
            config,
            data_dir,
            log,
            |url| async move {
                match CapabilitiesClient::connect(url).await {
                    Ok(mut caps) => caps
                        .get_capabilities(re::GetCapabilitiesRequest::default())
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            },
        )
        .await
    }

    /// Starts `rexd serve` inside network namespace `ns`, on `port` of every address there,
    /// and waits until the port accepts connections.
    pub async fn start_in_netns(
        ns: &str,
        port: u16,
        config: &Path,
        data_dir: &Path,
        log: &Path,
    ) -> Rexd {
        let command = super::netns::Hosts::command_in(ns, &rexd_binary());
        let listen: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let ns = ns.to_string();
        let ready = move |_url: String| {
            let ns = ns.clone();
            async move {
                super::netns::Hosts::inside(&ns, move || {
                    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                })
            }
        };
        Self::spawn(command, listen, addr, config, data_dir, log, ready)
            .await
            .0
    }

    async fn spawn<F: std::future::Future<Output = bool>>(
        mut command: Command,
        listen: SocketAddr,
        addr: SocketAddr,
        config: &Path,
        data_dir: &Path,
        log: &Path,
        ready: impl Fn(String) -> F,
    ) -> (Rexd, Duration) {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let spawned = Instant::now();
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut rexd = Rexd {
            child,
            addr,
            log: log.to_path_buf(),
        };
        loop {
            if let Some(status) = rexd.child.try_wait().unwrap() {
                panic!(
                    "rexd exited with {status} before serving:\n{}",
                    rexd.log_text()
                );
            }
            assert!(
                spawned.elapsed() < PATIENCE,
                "rexd did not answer within {PATIENCE:?}:\n{}",
                rexd.log_text()
            );
            if ready(rexd.url()).await {
                return (rexd, spawned.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Rexd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
