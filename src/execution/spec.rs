//! Loads what an Execute request names (Action, Command, the input tree) from the CAS and
//! checks it, so that everything past this point works on a complete, canonical action.

// The input-tree checks, for the fuzzer, which reaches them through this module.
pub use crate::execution::input_tree::{check_symlink_target, validate_directory_for_fuzzing};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::InstanceConfig;
use crate::digest::Digest;
use crate::error::Error;
use crate::execution::input_tree::{self, InputTree};
use crate::execution::sandbox::Sandbox;
use crate::proto::remote_execution::{Action, Command};
use crate::storage::{Cas, tree::read_message};

/// An action ready to be scheduled: decoded, validated, with every input present.
pub struct ActionSpec {
    pub instance: String,
    pub action_digest: Digest,
    pub action: Action,
    pub command: Command,
    /// The input tree, parsed once.
    pub inputs: Arc<InputTree>,
    pub timeout: Duration,
    /// Platform properties the action asks for (Action.platform, else Command.platform).
    pub platform: BTreeMap<String, String>,
    /// Sandbox settings derived from the platform properties and the instance's config.
    pub options: crate::execution::sandbox::ActionOptions,
}

impl ActionSpec {
    /// Whether the result may be cached and identical in-flight runs merged.
    pub fn cacheable(&self) -> bool {
        !self.action.do_not_cache
    }
}

/// Limits that come from the server's configuration.
#[derive(Clone, Copy, Debug)]
pub struct SpecLimits {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
}

/// The Action and Command when the caller already holds them (a worker that had them from
/// the lease and the server), so they need not be in the CAS.
#[derive(Clone, Default)]
pub struct Preloaded {
    pub action: Option<Action>,
    pub command: Option<Command>,
}

/// Reads and validates the action. Missing blobs anywhere are collected and reported together
/// as one FAILED_PRECONDITION.
pub fn load(
    cas: &Cas,
    cache: &input_tree::DirectoryCache,
    instance: &InstanceConfig,
    sandbox: &Sandbox,
    action_digest: Digest,
    limits: &SpecLimits,
) -> Result<ActionSpec, Error> {
    let none = Preloaded::default();
    load_with(cas, cache, instance, sandbox, action_digest, none, limits)
}

/// [`load`], taking the Action and Command from `preloaded` where it has them.
pub fn load_with(
    cas: &Cas,
    cache: &input_tree::DirectoryCache,
    instance: &InstanceConfig,
    sandbox: &Sandbox,
    action_digest: Digest,
    preloaded: Preloaded,
    limits: &SpecLimits,
) -> Result<ActionSpec, Error> {
    let function = action_digest.function();
    let action: Action = match preloaded.action {
        Some(action) => action,
        None => read_message(cas, &action_digest, "action")?
            .ok_or_else(|| Error::MissingBlobs(vec![action_digest]))?,
    };
    let command_digest =
        Digest::from_required(function, action.command_digest.as_ref(), "command")?;
    let input_root =
        Digest::from_required(function, action.input_root_digest.as_ref(), "input root")?;
    let mut missing = Vec::new();
    let command: Option<Command> = match preloaded.command {
        Some(command) => Some(command),
        None => read_message(cas, &command_digest, "command")?,
    };
    if command.is_none() {
        missing.push(command_digest);
    }
    let inputs = input_tree::load(cas, cache, input_root, &mut missing)?;
    if !missing.is_empty() {
        // One violation per blob: a missing directory may be named by several parents,
        // and the same bytes may serve as a file, a directory and the command.
        missing.sort_unstable();
        missing.dedup();
        return Err(Error::MissingBlobs(missing));
    }
    let command = command.expect("checked above");
    validate_command(&command)?;
    let timeout = match &action.timeout {
        None => limits.default_timeout,
        Some(t) if t.seconds < 0 || t.nanos < 0 => {
            return Err(Error::BadInput(
                "action timeout must not be negative".into(),
            ));
        }
        Some(t) if t.seconds == 0 && t.nanos == 0 => limits.default_timeout,
        Some(t) => Duration::new(t.seconds as u64, t.nanos as u32),
    };
    if timeout > limits.max_timeout {
        return Err(Error::BadInput(format!(
            "action timeout of {}s is over this server's maximum of {}s",
            timeout.as_secs_f64(),
            limits.max_timeout.as_secs()
        )));
    }
    #[allow(deprecated)]
    let platform_source = action.platform.as_ref().or(command.platform.as_ref());
    let mut platform = BTreeMap::new();
    for p in platform_source
        .map(|p| p.properties.as_slice())
        .unwrap_or_default()
    {
        platform.insert(p.name.clone(), p.value.clone());
    }
    let options = sandbox.options_for(&platform, instance)?;
    Ok(ActionSpec {
        instance: instance.name.clone(),
        action_digest,
        action,
        command,
        inputs: Arc::new(inputs),
        timeout,
        platform,
        options,
    })
}

/// Output and working-directory paths are relative, with no empty components; `..` is
/// allowed only where the spec allows it (output_paths), and checked by the caller.
fn validate_command(command: &Command) -> Result<(), Error> {
    if command.arguments.is_empty() {
        return Err(Error::BadInput("command has no arguments".into()));
    }
    if command.working_directory.starts_with('/') {
        return Err(Error::BadInput(format!(
            "working_directory {:?} must be relative to the input root",
            command.working_directory
        )));
    }
    if resolve_relative("", &command.working_directory).is_none() {
        return Err(Error::BadInput(format!(
            "working_directory {:?} leaves the input root",
            command.working_directory
        )));
    }
    for path in declared_outputs(command) {
        if path.starts_with('/') || resolve_relative(&command.working_directory, path).is_none() {
            return Err(Error::BadInput(format!(
                "output path {path:?} must be relative and stay inside the input root"
            )));
        }
    }
    for var in &command.environment_variables {
        if var.name.is_empty()
            || var.name.contains('=')
            || var.name.contains('\0')
            || var.value.contains('\0')
        {
            return Err(Error::BadInput(format!(
                "invalid environment variable name {:?}",
                var.name
            )));
        }
    }
    Ok(())
}

/// Every output path the command declares, in the v2.0 and v2.1 fields alike.
pub fn declared_outputs(command: &Command) -> impl Iterator<Item = &String> {
    #[allow(deprecated)]
    command
        .output_files
        .iter()
        .chain(&command.output_directories)
        .chain(&command.output_paths)
}

/// Joins `path` onto `base` (both relative to the input root), resolving `.` and `..`;
/// `None` if the result would leave the root. The empty string is the root itself.
pub fn resolve_relative(base: &str, path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in base.split('/').chain(path.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(resolve_relative("", "a/b").as_deref(), Some("a/b"));
        assert_eq!(resolve_relative("a/b", "../c").as_deref(), Some("a/c"));
        assert_eq!(resolve_relative("a/b/c", ".").as_deref(), Some("a/b/c"));
        assert_eq!(
            resolve_relative("a/b/c", "../../../x").as_deref(),
            Some("x")
        );
        assert_eq!(resolve_relative("a", "../..").as_deref(), None);
        assert_eq!(resolve_relative("", "").as_deref(), Some(""));
    }

    #[test]
    fn symlink_targets() {
        assert!(check_symlink_target("l", "a/b", 0).is_ok());
        assert!(check_symlink_target("l", "../x", 1).is_ok());
        assert!(check_symlink_target("l", "../x", 0).is_err());
        assert!(check_symlink_target("l", "a/../../x", 0).is_err());
        assert!(check_symlink_target("l", "/etc/passwd", 3).is_err());
        assert!(check_symlink_target("l", "a/../..", i64::MAX as usize).is_ok());
        assert!(check_symlink_target("l", "../x", usize::MAX).is_ok());
    }
}
