//! Saga definitions: the YAML model, its validation into a checked
//! [`SagaDefinition`], payload templates, and loading a directory of files
//! (or one file) with `file:line:column` errors, every error of a file at
//! once.
//!
//! A definition that loads is valid: every later stage (the state machine,
//! the engine) relies on that and does not re-check.

mod load;
mod model;
mod raw;
mod salvage;
mod shape;
pub mod template;

pub use load::{catalog_from_str, load_dir, load_str, Catalog, DefinitionError, DefinitionErrors};
pub use model::{
    content_version, Backoff, Clocks, CompensationDefinition, ForEach, ReplyMode, RetryPolicy,
    SagaDefinition, StepDefinition, DEFAULT_COMPENSATION_RETRY, DEFAULT_MAX_DELAY,
    DEFAULT_STEP_RETRY, DEFAULT_STEP_TIMEOUT, MAX_BRANCHES,
};
pub use template::{Template, TemplateError};

#[cfg(test)]
mod tests;
