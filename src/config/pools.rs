//! `[[execution.pools]]`: the worker pools an operator defines, each a name and the platform
//! properties its executors offer. Checked here into [`Pools`], with the pool the local
//! worker slots join.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ConfigError;
use crate::execution::pools::{Pool, PoolId, Pools};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Shown in logs and as the `pool` label of the bot metrics.
    pub name: String,
    /// What a bot must offer to join, and what an action may ask of the pool.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// The pools in force, and the one the local slots (offering `platform`) join. No pools
/// configured: one pool, `default`, offering `platform`.
pub fn resolve(
    configured: &[PoolConfig],
    platform: &BTreeMap<String, String>,
    local_workers: usize,
) -> Result<(Pools, Option<PoolId>), ConfigError> {
    let pools = if configured.is_empty() {
        Pools::single(platform.clone())
    } else {
        let list = configured
            .iter()
            .map(|p| Pool {
                name: p.name.clone(),
                properties: p.properties.clone(),
            })
            .collect();
        Pools::new(list).map_err(ConfigError::Invalid)?
    };
    let offered: Vec<(String, String)> = platform
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let local = pools.for_executor(&offered);
    if local.is_none() && local_workers > 0 {
        return Err(ConfigError::Invalid(format!(
            "the local workers offer execution.platform {platform:?}, which fits no pool in \
             execution.pools; add a pool it fits, or set execution.local_workers = 0"
        )));
    }
    Ok((pools, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> BTreeMap<String, String> {
        [("OSFamily".to_string(), "linux".to_string())].into()
    }

    #[test]
    fn without_pools_there_is_one_offering_the_platform() {
        let (pools, local) = resolve(&[], &platform(), 4).unwrap();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools.name(0), "default");
        assert_eq!(local, Some(0));
    }

    #[test]
    fn local_workers_must_fit_a_pool() {
        let gpu = PoolConfig {
            name: "gpu".into(),
            properties: [("gpu".to_string(), "yes".to_string())].into(),
        };
        let err = resolve(std::slice::from_ref(&gpu), &platform(), 4).unwrap_err();
        assert!(err.to_string().contains("fits no pool"), "{err}");
        let (_, local) = resolve(&[gpu], &platform(), 0).unwrap();
        assert_eq!(local, None);
    }
}
