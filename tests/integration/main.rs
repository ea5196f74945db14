//! Integration tests against the local control plane (`eval "$(tests/testbed/up)"` first).
mod support;

mod bad_input;
mod chart;
mod controller;
mod controller_faults;
mod correctness;
mod docs;
mod drift;
mod engine;
mod faults;
mod fixtures;
mod flux;
mod git;
mod git_faults;
mod homelab;
mod https;
mod kustomize;
mod layout;
mod security;
mod sops;
mod ssh;
mod testbed;
mod tutorial;
mod wait;
