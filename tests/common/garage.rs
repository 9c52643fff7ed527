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
    pub s3_port: u16,
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

impl Garage {
    /// A running single-node Garage with bucket [`BUCKET`], or `None` if it is not installed.
    pub fn start() -> Option<Garage> {
        let binary = garage_or_skip()?;
        let dir = tempfile::tempdir().unwrap();
        let (s3_port, rpc_port) = (free_port(), free_port());
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) % 256))
            .collect();
        let config = format!(
            "metadata_dir = \"{root}/meta\"\n\
             data_dir = \"{root}/data\"\n\
             db_engine = \"sqlite\"\n\
             replication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_secret = \"{secret}\"\n\
             [s3_api]\n\
             s3_region = \"garage\"\n\
             api_bind_addr = \"127.0.0.1:{s3_port}\"\n\
             root_domain = \".s3.garage.localhost\"\n",
            root = dir.path().display()
        );
        std::fs::write(dir.path().join("garage.toml"), config).unwrap();
        let mut garage = Garage {
            dir,
            binary,
            child: None,
            s3_port,
        };
        garage.run();
        let node = garage.cli(&["node", "id", "-q"]);
        let node = node.trim().split('@').next().unwrap().to_string();
        garage.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        garage.cli(&["layout", "apply", "--version", "1"]);
        garage.cli(&["bucket", "create", BUCKET]);
        garage.cli(&["key", "import", "--yes", "-n", "rexd", KEY_ID, SECRET]);
        garage.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_ID,
        ]);
        std::fs::write(
            garage.credentials_path(),
            format!("access_key_id = \"{KEY_ID}\"\nsecret_access_key = \"{SECRET}\"\n"),
        )
        .unwrap();
        Some(garage)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("garage.toml")
    }

    pub fn credentials_path(&self) -> PathBuf {
        self.dir.path().join("credentials.toml")
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Starts the server process and waits until its S3 port accepts connections and its
    /// CLI answers.
    fn run(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.config_path())
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting garage");
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let status = Command::new(&self.binary)
                .arg("-c")
                .arg(self.config_path())
                .arg("status")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if status.success() && std::net::TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok()
            {
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
        let out = Command::new(&self.binary)
            .arg("-c")
            .arg(self.config_path())
            .args(args)
            .output()
            .unwrap();
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
