//! Helpers for remote-worker tests: a `rexd worker` process with its own data directory and
//! config, and a hand-driven bot that speaks the Bots protocol directly, for probing what
//! the server does with what a bot says.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use rexd::proto::remoteworkers as rw;
use rexd::proto::remoteworkers::bots_client::BotsClient;
use tempfile::TempDir;
use tonic::transport::Channel;

use super::TestServer;

/// A `rexd worker` process, killed when dropped.
pub struct WorkerProcess {
    pub bot_id: String,
    pub child: Child,
    pub dir: TempDir,
}

impl WorkerProcess {
    /// Starts `rexd worker` against `server_url` with `slots` concurrent leases, plain
    /// processes and a private uid range.
    pub fn start(server_url: &str, bot_id: &str, slots: usize) -> Self {
        Self::start_in(None, server_url, bot_id, slots, "plain", "")
    }

    /// Like [`WorkerProcess::start`], with the sandbox's `auto` backend (bubblewrap where it
    /// works) and `tables` (see [`WorkerProcess::start_in`]).
    pub fn start_sandboxed(server_url: &str, bot_id: &str, slots: usize, tables: &str) -> Self {
        Self::start_in(None, server_url, bot_id, slots, "auto", tables)
    }

    /// Like [`WorkerProcess::start`], on worker host `i` of `hosts`.
    pub fn start_on_host(
        hosts: &super::netns::Hosts,
        i: usize,
        bot_id: &str,
        slots: usize,
    ) -> Self {
        let url = hosts.server_url_for(i);
        Self::start_in(Some(&hosts.workers[i]), &url, bot_id, slots, "plain", "")
    }

    /// The general form: an optional network namespace, the sandbox backend, and `tables`,
    /// TOML that continues the config's `[worker]` table and may add tables after it.
    pub fn start_in(
        netns: Option<&str>,
        server_url: &str,
        bot_id: &str,
        slots: usize,
        backend: &str,
        tables: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "data_dir = {data:?}\nlog_level = \"info,rexd=debug\"\n\
             [storage]\nfsync = false\n\
             [execution]\nlocal_workers = {slots}\n\
             [sandbox]\nbackend = {backend:?}\nrun_as_uid_base = {uid}\n\
             [worker]\nbot_id = {bot_id:?}\n{tables}\n",
            data = dir.path().join("data"),
            uid = super::private_uid_base(),
        );
        let config_path = dir.path().join("worker.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_rexd")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_rexd")),
        };
        let child = command
            .args(["worker", "--server", server_url, "--config"])
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting rexd worker");
        WorkerProcess {
            bot_id: bot_id.to_string(),
            child,
            dir,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("worker.log")
    }

    /// The worker's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A bot driven by the test, one call at a time.
pub struct HandBot {
    pub client: BotsClient<Channel>,
    pub session: rw::BotSession,
}

/// The Worker a bot on this host describes: the server's default platform, `slots` slots.
pub fn worker_description(slots: usize) -> rw::Worker {
    let isa = if cfg!(target_arch = "x86_64") {
        "x86-64"
    } else {
        std::env::consts::ARCH
    };
    let property = |key: &str, value: &str| rw::worker::Property {
        key: key.into(),
        value: value.into(),
    };
    rw::Worker {
        properties: vec![
            property("OSFamily", "linux"),
            property("ISA", isa),
            property("slots", &slots.to_string()),
        ],
        ..Default::default()
    }
}

impl HandBot {
    /// Opens a session for `bot_id`, describing this host's platform.
    pub async fn join(server: &TestServer, bot_id: &str) -> Self {
        Self::join_as(server, bot_id, worker_description(1))
            .await
            .expect("CreateBotSession")
    }

    /// Opens a session for `bot_id`, described by `worker`.
    pub async fn join_as(
        server: &TestServer,
        bot_id: &str,
        worker: rw::Worker,
    ) -> Result<Self, tonic::Status> {
        let mut client = BotsClient::new(server.channel().await);
        let session = client
            .create_bot_session(rw::CreateBotSessionRequest {
                parent: String::new(),
                bot_session: Some(rw::BotSession {
                    bot_id: bot_id.into(),
                    status: rw::BotStatus::Ok as i32,
                    worker: Some(worker),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner();
        Ok(HandBot { client, session })
    }

    /// Reports `leases` and returns the server's reply.
    pub async fn update(
        &mut self,
        leases: Vec<rw::Lease>,
    ) -> Result<rw::BotSession, tonic::Status> {
        let reply = self
            .client
            .update_bot_session(rw::UpdateBotSessionRequest {
                name: self.session.name.clone(),
                bot_session: Some(rw::BotSession {
                    leases,
                    ..self.session.clone()
                }),
                update_mask: None,
            })
            .await?
            .into_inner();
        self.session = reply.clone();
        Ok(reply)
    }

    /// Updates until the server offers a lease, and accepts it (ACTIVE).
    pub async fn take_lease(&mut self) -> rw::Lease {
        let deadline = tokio::time::Instant::now() + super::exec::PATIENCE;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "no lease offered");
            let reply = self.update(Vec::new()).await.expect("UpdateBotSession");
            if let Some(lease) = reply
                .leases
                .iter()
                .find(|l| l.state == rw::LeaseState::Pending as i32)
            {
                let active = rw::Lease {
                    id: lease.id.clone(),
                    state: rw::LeaseState::Active as i32,
                    ..Default::default()
                };
                self.update(vec![active])
                    .await
                    .expect("accepting the lease");
                return lease.clone();
            }
        }
    }
}
