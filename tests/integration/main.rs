//! Integration tests against the local control plane (`eval "$(tests/testbed/up)"` first).
mod support;

mod engine;
mod flux;
mod git;
mod testbed;
