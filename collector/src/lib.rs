//! placeholder
pub mod actuator;
pub mod policy;
