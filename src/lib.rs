//! sagaflow: a saga orchestrator daemon over Redis Streams.
pub mod cli;
pub mod config;
pub mod definition;
pub mod engine;
pub mod handler;
pub mod protocol;
pub mod saga;
pub mod streams;
