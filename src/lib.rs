//! VibeMQ: a clustered MQTT broker.
pub mod codec;
pub mod config;
pub mod topic;
