//! VibeMQ: a clustered MQTT broker.
pub mod codec;
pub mod topic;
