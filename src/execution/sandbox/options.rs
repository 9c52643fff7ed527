//! What an action asks of the sandbox through its platform properties, checked against
//! the instance's configuration and the backend in force.

use std::collections::BTreeMap;

use super::{Backend, Sandbox};
use crate::config::{InstanceConfig, SandboxMode};
use crate::error::Error;

/// Platform properties the sandbox interprets, rather than matching them against the
/// workers' advertised properties.
pub const SANDBOX_PROPERTIES: &[&str] = &["network", "unixUID", "unixGID", "sandbox"];

/// What one action asked of the sandbox, checked against the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActionOptions {
    pub mode: SandboxMode,
    pub network: bool,
    /// uid and gid the action sees inside its user namespace.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Sandbox {
    /// Checks the sandbox-related platform properties of an action against the instance's
    /// configuration.
    pub fn options_for(
        &self,
        platform: &BTreeMap<String, String>,
        instance: &InstanceConfig,
    ) -> Result<ActionOptions, Error> {
        let mut options = ActionOptions {
            mode: instance.sandbox,
            ..Default::default()
        };
        if let Some(mode) = platform.get("sandbox") {
            let selected = [SandboxMode::Host, SandboxMode::Chroot]
                .into_iter()
                .find(|m| m.name() == mode)
                .filter(|m| *m == instance.sandbox || instance.selectable_sandboxes.contains(m));
            options.mode = selected.ok_or_else(|| {
                Error::Unsatisfiable(format!(
                    "platform property sandbox={mode:?} is not available on instance {:?}; it runs {:?}{}",
                    instance.name,
                    instance.sandbox.name(),
                    if instance.selectable_sandboxes.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " and allows selecting {}",
                            instance.selectable_sandboxes.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
                        )
                    }
                ))
            })?;
        }
        match platform.get("network").map(String::as_str) {
            None | Some("off") => {}
            Some("on") if self.config.allow_network => options.network = true,
            Some("on") => {
                return Err(Error::Unsatisfiable(
                    "platform property network=on is not allowed by this server's \
                     configuration (sandbox.allow_network = false)"
                        .into(),
                ));
            }
            Some(other) => {
                return Err(Error::BadInput(format!(
                    "platform property network={other:?}: expected \"on\" or \"off\""
                )));
            }
        }
        let id = |key: &str| -> Result<Option<u32>, Error> {
            platform
                .get(key)
                .map(|v| {
                    v.parse().map_err(|_| {
                        Error::BadInput(format!(
                            "platform property {key}={v:?} is not a uid/gid number"
                        ))
                    })
                })
                .transpose()
        };
        options.uid = id("unixUID")?;
        options.gid = id("unixGID")?;
        if self.backend == Backend::Plain
            && (options.mode == SandboxMode::Chroot
                || options.uid.is_some()
                || options.gid.is_some())
        {
            return Err(Error::Unsatisfiable(format!(
                "this server runs actions without namespaces (sandbox backend \"plain\"), so it \
                 cannot honour {}",
                if options.mode == SandboxMode::Chroot {
                    "chroot mode"
                } else {
                    "unixUID/unixGID"
                }
            )));
        }
        Ok(options)
    }
}
