//! placeholder
pub mod actuator;
pub mod policy;
pub mod store;
