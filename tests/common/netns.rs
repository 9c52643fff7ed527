//! Several hosts on one machine: network namespaces this test creates (a server host and
//! worker hosts, each worker joined to the server by its own veth pair with private
//! addresses), removed when the guard drops. The test process stays in its own namespace;
//! sockets it needs on the server host are made by a thread that entered that namespace
//! (a socket belongs to the namespace it was created in).

use std::net::SocketAddr;
use std::process::Command;

/// The port rexd listens on inside the server host; the namespace is private, so it cannot
/// clash.
pub const SERVER_PORT: u16 = 8980;

pub struct Hosts {
    pub server: String,
    pub workers: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    /// A server host and `workers` worker hosts; `None` (after a loud message) where
    /// namespaces cannot be made, which fails the test instead when `CI` is set.
    pub fn create(workers: usize) -> Option<Hosts> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let run = format!(
            "rx{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let hosts = Hosts {
            server: format!("{run}-srv"),
            workers: (0..workers).map(|i| format!("{run}-w{i}")).collect(),
        };
        match hosts.build() {
            Ok(()) => Some(hosts),
            Err(why) => {
                if std::env::var_os("CI").is_some() {
                    panic!("network namespaces are needed and CI is set: {why}");
                }
                eprintln!("\n==========================================================");
                eprintln!("SKIPPED: cannot create network namespaces (root and iproute2): {why}");
                eprintln!("==========================================================\n");
                None
            }
        }
    }

    fn build(&self) -> Result<(), String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not root".into());
        }
        for ns in std::iter::once(&self.server).chain(&self.workers) {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        for (i, ns) in self.workers.iter().enumerate() {
            let (near, far) = (self.server_link(i), format!("w{i}"));
            ip(&[
                "-n",
                &self.server,
                "link",
                "add",
                &near,
                "type",
                "veth",
                "peer",
                "name",
                &far,
            ])?;
            ip(&["-n", &self.server, "link", "set", &far, "netns", ns])?;
            ip(&[
                "-n",
                &self.server,
                "addr",
                "add",
                &format!("10.77.{i}.1/30"),
                "dev",
                &near,
            ])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.77.{i}.2/30"),
                "dev",
                &far,
            ])?;
            ip(&["-n", &self.server, "link", "set", &near, "up"])?;
            ip(&["-n", ns, "link", "set", &far, "up"])?;
        }
        Ok(())
    }

    /// The server host's end of worker `i`'s link.
    fn server_link(&self, i: usize) -> String {
        format!("to-w{i}")
    }

    /// The server as worker `i` reaches it.
    pub fn server_url_for(&self, i: usize) -> String {
        format!("grpc://10.77.{i}.1:{SERVER_PORT}")
    }

    /// Cuts (or restores) worker `i`'s only link to the server.
    pub fn set_link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &self.server,
            "link",
            "set",
            &self.server_link(i),
            state,
        ])
        .unwrap();
    }

    /// Runs `f` on a thread inside namespace `ns`.
    pub fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("namespace thread")
    }

    /// Worker `i`'s address, as the server host and (once routed) the other workers reach it.
    pub fn worker_addr(i: usize) -> String {
        format!("10.77.{i}.2")
    }

    /// Lets the worker hosts reach one another, through the server host as their router
    /// (for a cluster of services spread over the worker hosts).
    pub fn route_between_workers(&self) {
        ip(&[
            "netns",
            "exec",
            &self.server,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])
        .unwrap();
        for (i, ns) in self.workers.iter().enumerate() {
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.77.{i}.1"),
            ])
            .unwrap();
        }
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn command_in(ns: &str, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(program);
        command
    }

    /// A gRPC channel to `port` on the loopback of namespace `ns`; each connection's socket
    /// is made inside it.
    pub async fn channel_into(ns: &str, port: u16) -> tonic::transport::Channel {
        let ns = ns.to_string();
        tonic::transport::Channel::from_static("http://server.invalid")
            .connect_with_connector(tower::service_fn(move |_| {
                let ns = ns.clone();
                async move {
                    let stream = Self::inside(&ns, move || {
                        std::net::TcpStream::connect(("127.0.0.1", port))
                    })?;
                    stream.set_nonblocking(true)?;
                    let stream = tokio::net::TcpStream::from_std(stream)?;
                    stream.set_nodelay(true)?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .expect("connecting to a server in its namespace")
    }

    /// A listener on every address of the server host.
    pub fn server_listener(&self) -> std::net::TcpListener {
        let listener = Self::inside(&self.server, || {
            std::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], SERVER_PORT))).unwrap()
        });
        listener.set_nonblocking(true).unwrap();
        listener
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in std::iter::once(&self.server).chain(&self.workers) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
