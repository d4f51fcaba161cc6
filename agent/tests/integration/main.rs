//! The agent's integration tests, one binary (one link instead of one per file).

mod stream;
mod udev_rule;
