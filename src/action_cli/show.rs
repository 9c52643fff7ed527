//! `rexd action show`: the facts of the action page, as text or JSON.

use serde_json::{Value, json};

use super::Client;
use crate::digest::Digest;
use crate::error::Error;
use crate::inspect::{ActionView, Input};
use crate::proto::remote_execution::ActionResult;

/// Input files listed in the text form; the totals cover them all.
const MAX_LISTED_INPUTS: usize = 200;

pub async fn show(client: &Client, digest: Digest, json: bool) -> Result<u8, Error> {
    let view = client.view(digest).await?;
    let result = client.cached_result(&digest).await?;
    if json {
        let text = serde_json::to_string_pretty(&to_json(&view, result.as_ref()))
            .map_err(|e| Error::Bug(e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", to_text(&view, result.as_ref()));
    }
    Ok(0)
}

fn result_json(r: &ActionResult) -> Value {
    let digest = |d: &Option<crate::proto::remote_execution::Digest>| {
        d.as_ref().map(|d| format!("{}/{}", d.hash, d.size_bytes))
    };
    json!({
        "exit_code": r.exit_code,
        "output_files": r.output_files.iter().map(|f| json!({
            "path": f.path, "digest": digest(&f.digest), "executable": f.is_executable,
        })).collect::<Vec<_>>(),
        "output_directories": r.output_directories.iter().map(|d| json!({
            "path": d.path, "tree_digest": digest(&d.tree_digest),
        })).collect::<Vec<_>>(),
        "stdout_digest": digest(&r.stdout_digest),
        "stderr_digest": digest(&r.stderr_digest),
        "worker": r.execution_metadata.as_ref().map(|m| m.worker.clone()),
    })
}

fn to_json(view: &ActionView, result: Option<&ActionResult>) -> Value {
    let inputs: Vec<Value> = view
        .inputs()
        .into_iter()
        .map(|(path, input)| match input {
            Input::File { digest, executable } => json!({
                "path": path, "digest": format!("{}/{}", digest.hash_hex(), digest.size()),
                "executable": executable,
            }),
            Input::Symlink { target } => json!({ "path": path, "symlink": target }),
            Input::MissingDirectory { digest } => {
                json!({ "path": path, "missing_directory": digest.to_string() })
            }
        })
        .collect();
    json!({
        "digest": format!("{}/{}", view.digest.hash_hex(), view.digest.size()),
        "arguments": view.arguments(),
        "environment": view.environment(),
        "platform": view.platform(),
        "working_directory": view.command.as_ref().map(|c| c.working_directory.clone()),
        "timeout_secs": view.action.timeout.as_ref().map_or(0, |t| t.seconds),
        "do_not_cache": view.action.do_not_cache,
        "output_paths": view.output_paths(),
        "inputs": inputs,
        "cached_result": result.map(result_json),
    })
}

fn to_text(view: &ActionView, result: Option<&ActionResult>) -> String {
    let mut out = format!("action {}\n", view.digest);
    if view.command.is_none() {
        out += "command: not in the CAS\n";
    }
    out += &format!("arguments: {}\n", view.arguments().join(" "));
    for (name, value) in view.environment() {
        out += &format!("env {name}={value}\n");
    }
    for (name, value) in view.platform() {
        out += &format!("platform {name}={value}\n");
    }
    if let Some(c) = &view.command {
        out += &format!("working directory: {:?}\n", c.working_directory);
    }
    let timeout = view.action.timeout.as_ref().map_or(0, |t| t.seconds);
    out += &format!("timeout: {timeout} s (0: the server's default)\n");
    out += &format!("outputs: {}\n", view.output_paths().join(" "));
    let inputs = view.inputs();
    let bytes: u64 = inputs
        .values()
        .map(|i| match i {
            Input::File { digest, .. } => digest.size(),
            _ => 0,
        })
        .sum();
    out += &format!("inputs: {} entries, {bytes} bytes\n", inputs.len());
    for (path, input) in inputs.iter().take(MAX_LISTED_INPUTS) {
        out += &match input {
            Input::File { digest, executable } => format!(
                "  {path} {}{}\n",
                digest,
                if *executable { " (executable)" } else { "" }
            ),
            Input::Symlink { target } => format!("  {path} -> {target}\n"),
            Input::MissingDirectory { digest } => {
                format!("  {path}/ (directory {digest} not in the CAS)\n")
            }
        };
    }
    match result {
        None => out += "cached result: none\n",
        Some(r) => {
            out += &format!("cached result: exit {}\n", r.exit_code);
            for f in &r.output_files {
                let d = f.digest.clone().unwrap_or_default();
                out += &format!("  output {} {}/{}\n", f.path, d.hash, d.size_bytes);
            }
            for d in &r.output_directories {
                let t = d.tree_digest.clone().unwrap_or_default();
                out += &format!(
                    "  output directory {} tree {}/{}\n",
                    d.path, t.hash, t.size_bytes
                );
            }
            if let Some(m) = &r.execution_metadata {
                out += &format!("  worker: {}\n", m.worker);
            }
        }
    }
    out
}
