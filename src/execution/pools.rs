//! Worker pools: executors grouped by the platform properties they offer, as Google's RBE
//! admin API names them (WorkerPool). The scheduler keeps one queue per pool. An action is
//! queued in every pool whose properties satisfy it, and is taken from whichever pool's
//! executor asks first. A bot joins the most specific pool whose properties it offers, and
//! the local worker slots join the pool the server's own platform fits, chosen the same
//! way. Pools come from `[[execution.pools]]`; without any, there is one pool, `default`,
//! offering the server's `execution.platform`.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Error;
use crate::execution::sandbox::SANDBOX_PROPERTIES;

/// Most pools a server may define: a [`PoolSet`] is one machine word.
pub const MAX_POOLS: usize = 64;
/// The name of the single pool of a server that defines none.
pub const DEFAULT_POOL: &str = "default";

/// A pool's index in [`Pools`].
pub type PoolId = usize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    /// What every executor in the pool offers, and so what an action may ask of it.
    pub properties: BTreeMap<String, String>,
}

/// The pools an action may run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSet(u64);

impl PoolSet {
    pub fn contains(self, pool: PoolId) -> bool {
        self.0 & (1 << pool) != 0
    }

    pub fn iter(self) -> impl Iterator<Item = PoolId> {
        (0..MAX_POOLS).filter(move |&p| self.contains(p))
    }
}

/// The server's pools, in the order bots try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pools {
    pools: Vec<Pool>,
}

impl Pools {
    /// Checks that there are 1 to [`MAX_POOLS`] pools with distinct, non-empty names.
    pub fn new(pools: Vec<Pool>) -> Result<Self, String> {
        if pools.is_empty() || pools.len() > MAX_POOLS {
            return Err(format!(
                "execution.pools must list 1 to {MAX_POOLS} pools, not {}",
                pools.len()
            ));
        }
        for (i, pool) in pools.iter().enumerate() {
            if pool.name.is_empty() || pool.name.len() > 64 {
                return Err("every execution.pools entry needs a name of 1 to 64 bytes".into());
            }
            if pools[..i].iter().any(|p| p.name == pool.name) {
                return Err(format!("pool {:?} is listed twice", pool.name));
            }
        }
        Ok(Pools { pools })
    }

    /// One pool, `default`, offering `properties`.
    pub fn single(properties: BTreeMap<String, String>) -> Self {
        Pools {
            pools: vec![Pool {
                name: DEFAULT_POOL.into(),
                properties,
            }],
        }
    }

    pub fn len(&self) -> usize {
        self.pools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    pub fn name(&self, pool: PoolId) -> &str {
        &self.pools[pool].name
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.pools.iter()
    }

    /// Every property name some pool offers, for Capabilities' `supported_node_properties`.
    pub fn property_names(&self) -> BTreeSet<String> {
        self.pools
            .iter()
            .flat_map(|p| p.properties.keys().cloned())
            .collect()
    }

    /// The pools able to run an action asking for `wanted`. The sandbox's own properties are
    /// checked by the sandbox, not matched here. No such pool: FAILED_PRECONDITION, naming
    /// what each pool lacks.
    pub fn for_action(&self, wanted: &BTreeMap<String, String>) -> Result<PoolSet, Error> {
        let mut set = 0u64;
        let mut lacks = Vec::new();
        for (id, pool) in self.pools.iter().enumerate() {
            match first_unmet(&pool.properties, wanted) {
                None => set |= 1 << id,
                Some(why) => lacks.push(format!("pool {:?} {why}", pool.name)),
            }
        }
        if set == 0 {
            return Err(Error::Unsatisfiable(format!(
                "no worker pool offers the action's platform: {}",
                lacks.join("; ")
            )));
        }
        Ok(PoolSet(set))
    }

    /// The pool a joining executor offering `offered` belongs to: of those whose every
    /// property it offers, the one asking most (so a GPU bot that also offers what a plain
    /// pool asks joins the GPU pool), the first listed on a tie.
    pub fn for_executor(&self, offered: &[(String, String)]) -> Option<PoolId> {
        let satisfied = |pool: &Pool| {
            pool.properties
                .iter()
                .all(|(k, v)| offered.iter().any(|(ok, ov)| ok == k && ov == v))
        };
        let mut best: Option<PoolId> = None;
        for (id, pool) in self.pools.iter().enumerate() {
            if satisfied(pool)
                && best.is_none_or(|b| pool.properties.len() > self.pools[b].properties.len())
            {
                best = Some(id);
            }
        }
        best
    }
}

/// Why a pool offering `offered` cannot run an action wanting `wanted`, if it cannot.
fn first_unmet(
    offered: &BTreeMap<String, String>,
    wanted: &BTreeMap<String, String>,
) -> Option<String> {
    wanted
        .iter()
        .filter(|(name, _)| !SANDBOX_PROPERTIES.contains(&name.as_str()))
        .find_map(|(name, value)| match offered.get(name) {
            Some(have) if have == value => None,
            Some(have) => Some(format!("offers {name}={have:?}, not {value:?}")),
            None => Some(format!("does not offer {name:?}")),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn two() -> Pools {
        Pools::new(vec![
            Pool {
                name: "cpu".into(),
                properties: props(&[("OSFamily", "linux")]),
            },
            Pool {
                name: "gpu".into(),
                properties: props(&[("OSFamily", "linux"), ("gpu", "yes")]),
            },
        ])
        .unwrap()
    }

    #[test]
    fn an_action_is_eligible_for_every_pool_that_satisfies_it() {
        let pools = two();
        let any = pools.for_action(&props(&[("OSFamily", "linux")])).unwrap();
        assert_eq!(any.iter().collect::<Vec<_>>(), vec![0, 1]);
        let gpu = pools.for_action(&props(&[("gpu", "yes")])).unwrap();
        assert_eq!(gpu.iter().collect::<Vec<_>>(), vec![1]);
        let sandboxed = pools.for_action(&props(&[("network", "on")])).unwrap();
        assert_eq!(sandboxed.iter().count(), 2);
    }

    #[test]
    fn an_action_no_pool_satisfies_is_told_what_each_lacks() {
        let err = two()
            .for_action(&props(&[("gpu", "no")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#"pool "cpu" does not offer "gpu""#), "{err}");
        assert!(
            err.contains(r#"pool "gpu" offers gpu="yes", not "no""#),
            "{err}"
        );
    }

    #[test]
    fn an_executor_joins_the_most_specific_pool_it_satisfies() {
        let pools = two();
        let offered = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            pools.for_executor(&offered(&[("gpu", "yes"), ("OSFamily", "linux")])),
            Some(1)
        );
        assert_eq!(
            pools.for_executor(&offered(&[("OSFamily", "linux")])),
            Some(0)
        );
        assert_eq!(pools.for_executor(&offered(&[("gpu", "yes")])), None);
    }

    #[test]
    fn pool_lists_are_checked() {
        assert!(Pools::new(Vec::new()).is_err());
        let twice = vec![two().pools[0].clone(), two().pools[0].clone()];
        assert!(Pools::new(twice).unwrap_err().contains("twice"));
    }
}
