//! What a bot says of itself in its `Worker`: the properties that place it in a pool and
//! the number of leases it runs at once.

use crate::error::Error;
use crate::proto::remoteworkers::Worker;

/// The worker property a bot states its concurrent leases with.
pub const SLOTS_PROPERTY: &str = "slots";
/// Most leases one bot may hold at once, whatever it claims.
const MAX_SLOTS: usize = 256;

/// The properties of the worker and of its primary device.
pub(super) fn offered_properties(worker: &Worker) -> Vec<(String, String)> {
    worker
        .properties
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .chain(
            worker
                .devices
                .first()
                .into_iter()
                .flat_map(|d| &d.properties)
                .map(|p| (p.key.clone(), p.value.clone())),
        )
        .collect()
}

/// The leases a bot runs at once: its `slots` property, else 1.
pub(super) fn slots_of(worker: &Worker) -> Result<usize, Error> {
    match worker.properties.iter().find(|p| p.key == SLOTS_PROPERTY) {
        None => Ok(1),
        Some(p) => match p.value.parse::<usize>() {
            Ok(n) if (1..=MAX_SLOTS).contains(&n) => Ok(n),
            _ => Err(Error::BadInput(format!(
                "worker property slots={:?} must be a number from 1 to {MAX_SLOTS}",
                p.value
            ))),
        },
    }
}
