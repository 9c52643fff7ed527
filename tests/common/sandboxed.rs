//! Helpers of the tests that need bubblewrap: a server that has it (or a loud skip), an
//! action's exit code and stdout, and the host's processes by command line.

use rexd::config::Config;
use rexd::execution::sandbox::Backend;

use super::TestServer;
use super::exec::{self, ActionBuilder};

/// rexd with namespaces, or `None` (loudly) where bubblewrap cannot work here.
pub async fn start_sandboxed(edit: impl FnOnce(&mut Config)) -> Option<TestServer> {
    let server = TestServer::start_with(edit).await;
    let backend = server
        .ctx
        .execution
        .as_ref()
        .unwrap()
        .sandbox_backend()
        .clone();
    if backend == Backend::Plain {
        assert!(
            std::env::var_os("CI").is_none(),
            "bubblewrap does not work on this CI machine (install bubblewrap, allow user namespaces)"
        );
        eprintln!(
            "SKIPPED: bubblewrap namespaces are unavailable here (apt-get install -y bubblewrap)"
        );
        return None;
    }
    Some(server)
}

/// Runs the action; its exit code and stdout.
pub async fn output(server: &TestServer, action: &ActionBuilder) -> (i32, String) {
    let response = exec::run(server, action).await;
    let result = response.result.expect("a result");
    let stdout = result.stdout_digest.clone().expect("stdout digest");
    let text = String::from_utf8(exec::read_blob(server, &stdout).await).unwrap();
    (result.exit_code, text)
}

/// Command lines of the host's processes that contain `marker`.
pub fn processes_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(marker))
        .collect()
}
