//! End-to-end tests: real registry, real clients, real sandbox. One binary, as uv and ripgrep do.

mod build;
mod credentials;
mod faults;
mod fixture_selftest;
mod golden;
mod google;
mod layers;
mod lock;
mod registry_client;
mod repro;
mod support;
mod token_auth;
