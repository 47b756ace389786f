//! Who signed in: the citizen's pivot identity and pairwise `sub`
//! ([`citizen`], with the registry check), and the public agent's identity,
//! email routing and account ([`agent`]). Pure rules over what the upstream
//! provider returned, and the civil registry check ([`registry`]); the store calls they need are in `crate::store`.

pub mod agent;
pub mod citizen;
pub mod registry;
