//! A real S3 server for the object-store tier's tests: Garage (crates.io `garage`), started
//! as a single-node cluster in a temp directory on loopback ports, with its layout, a bucket
//! and an access key set up through its own CLI. It can be stopped and started again on the
//! same data, for the fault tests. Dropping it kills it.
//!
//! The binary is `$REXD_GARAGE`, else `garage` on the PATH, else `/opt/garage/bin/garage`
//! (where `.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rexd::config::RemoteConfig;

use super::child::free_port;
use tempfile::TempDir;

pub const BUCKET: &str = "rexd";
/// Fixed test credentials; every Garage of a test run imports the same key.
const KEY_ID: &str = "GK0123456789abcdef01234567";
const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// How long Garage may take to come up before the test fails.
const START_DEADLINE: Duration = Duration::from_secs(60);

pub struct Garage {
    dir: TempDir,
    binary: PathBuf,
    child: Option<Child>,
    /// The network namespace the node runs in; `None` for the test's own (loopback).
    netns: Option<String>,
    /// The address its S3 API and RPC listen on.
    pub ip: String,
    pub s3_port: u16,
    rpc_port: u16,
}

/// The Garage binary, or `None` (after a loud notice) when it is missing outside CI.
pub fn garage_or_skip() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("REXD_GARAGE").map(PathBuf::from),
        which("garage"),
        Some(PathBuf::from("/opt/garage/bin/garage")),
    ];
    if let Some(found) = candidates.into_iter().flatten().find(|p| p.is_file()) {
        return Some(found);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "garage not found and CI is set: install it with `cargo install --locked --root /opt/garage garage`"
        );
    }
    eprintln!();
    eprintln!("==============================================================");
    eprintln!("SKIPPED: garage not installed (cargo install --locked --root /opt/garage garage)");
    eprintln!("==============================================================");
    eprintln!();
    None
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// The RPC secret every node of a test cluster shares.
fn rpc_secret() -> String {
    (0..32)
        .map(|i| format!("{:02x}", (i * 37 + 11) % 256))
        .collect()
}

impl Garage {
    /// A running single-node Garage on loopback with bucket [`BUCKET`], or `None` if it is
    /// not installed.
    pub fn start() -> Option<Garage> {
        let binary = garage_or_skip()?;
        let node = Garage::spawn(binary, None, "127.0.0.1", free_port(), free_port(), 1);
        node.set_up(std::slice::from_ref(&node));
        Some(node)
    }

    /// A Garage cluster of one node per worker host of `hosts` (routed to one another),
    /// storing every object on all of them, with bucket [`BUCKET`].
    pub fn start_cluster(hosts: &super::netns::Hosts) -> Option<Vec<Garage>> {
        let binary = garage_or_skip()?;
        let nodes: Vec<Garage> = hosts
            .workers
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let ip = super::netns::Hosts::worker_addr(i);
                Garage::spawn(
                    binary.clone(),
                    Some(ns.clone()),
                    &ip,
                    3900,
                    3901,
                    hosts.workers.len(),
                )
            })
            .collect();
        for other in &nodes[1..] {
            let peer = format!("{}@{}:{}", other.node_id(), other.ip, other.rpc_port);
            nodes[0].cli(&["node", "connect", &peer]);
        }
        nodes[0].set_up(&nodes);
        Some(nodes)
    }

    fn spawn(
        binary: PathBuf,
        netns: Option<String>,
        ip: &str,
        s3_port: u16,
        rpc_port: u16,
        replication: usize,
    ) -> Garage {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "metadata_dir = \"{root}/meta\"\n\
             data_dir = \"{root}/data\"\n\
             db_engine = \"sqlite\"\n\
             replication_factor = {replication}\n\
             rpc_bind_addr = \"{ip}:{rpc_port}\"\n\
             rpc_public_addr = \"{ip}:{rpc_port}\"\n\
             rpc_secret = \"{secret}\"\n\
             [s3_api]\n\
             s3_region = \"garage\"\n\
             api_bind_addr = \"{ip}:{s3_port}\"\n\
             root_domain = \".s3.garage.localhost\"\n",
            root = dir.path().display(),
            secret = rpc_secret(),
        );
        std::fs::write(dir.path().join("garage.toml"), config).unwrap();
        let mut node = Garage {
            dir,
            binary,
            child: None,
            netns,
            ip: ip.to_string(),
            s3_port,
            rpc_port,
        };
        node.run();
        node
    }

    /// Gives every node of `nodes` a role (one zone each), then makes the bucket and key.
    fn set_up(&self, nodes: &[Garage]) {
        for (i, node) in nodes.iter().enumerate() {
            let zone = format!("dc{i}");
            self.cli(&["layout", "assign", "-z", &zone, "-c", "1G", &node.node_id()]);
        }
        self.cli(&["layout", "apply", "--version", "1"]);
        self.cli(&["bucket", "create", BUCKET]);
        self.cli(&["key", "import", "--yes", "-n", "rexd", KEY_ID, SECRET]);
        self.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_ID,
        ]);
        for node in nodes {
            std::fs::write(
                node.credentials_path(),
                format!("access_key_id = \"{KEY_ID}\"\nsecret_access_key = \"{SECRET}\"\n"),
            )
            .unwrap();
        }
    }

    fn node_id(&self) -> String {
        let id = self.cli(&["node", "id", "-q"]);
        id.trim().split('@').next().unwrap().to_string()
    }

    /// The node's own binary, run in its namespace.
    fn command(&self) -> Command {
        let mut command = match &self.netns {
            Some(ns) => super::netns::Hosts::command_in(ns, &self.binary),
            None => Command::new(&self.binary),
        };
        command.arg("-c").arg(self.config_path());
        command
    }

    fn s3_answers(&self) -> bool {
        let (ip, port) = (self.ip.clone(), self.s3_port);
        let connect = move || std::net::TcpStream::connect((ip.as_str(), port)).is_ok();
        match &self.netns {
            Some(ns) => super::netns::Hosts::inside(ns, connect),
            None => connect(),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("garage.toml")
    }

    pub fn credentials_path(&self) -> PathBuf {
        self.dir.path().join("credentials.toml")
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.ip, self.s3_port)
    }

    /// Starts the server process and waits until its S3 port accepts connections and its
    /// CLI answers.
    fn run(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = self
            .command()
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting garage");
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let status = self
                .command()
                .arg("status")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if status.success() && self.s3_answers() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "garage did not come up; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "garage {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Kills the server (its data stays), as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// A `[storage.remote]` section pointing at this server under `prefix`.
    pub fn remote_config(&self, prefix: &str) -> RemoteConfig {
        RemoteConfig {
            endpoint: Some(self.endpoint()),
            bucket: BUCKET.into(),
            prefix: prefix.into(),
            region: "garage".into(),
            credentials_file: Some(self.credentials_path()),
            request_timeout_secs: 10,
            connect_timeout_secs: 2,
            max_retries: 1,
            ..RemoteConfig::default()
        }
    }

    /// A plain object-store client on the same bucket, to look at or tamper with objects.
    pub fn client(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_bucket_name(BUCKET)
            .with_region("garage")
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()
            .unwrap()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}
