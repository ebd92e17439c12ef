//! minisync: keeps JSON documents in step between people and devices through ordinary e-mail or a
//! shared folder. The [`engine`] is pure; the agent, the store and the transports are built on it.

pub mod agent;
pub mod config;
pub mod engine;
pub mod store;
pub mod transport;
