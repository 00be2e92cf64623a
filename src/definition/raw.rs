//! The YAML files as written, every value with its location, before any
//! check beyond the shape (unknown keys are refused here).

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSaga {
    pub name: Spanned<String>,
    pub trigger: Option<Spanned<String>>,
    #[allow(dead_code)] // documentation for readers of the file
    pub description: Option<String>,
    pub steps: Spanned<Vec<RawStep>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub name: Spanned<String>,
    pub stream: Spanned<String>,
    pub command: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub retry: Option<Spanned<RawRetry>>,
    pub input: Option<Spanned<serde_json::Value>>,
    pub compensation: Option<Spanned<RawCompensation>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_attempts: Spanned<i64>,
    pub backoff: Option<Spanned<String>>,
    pub initial_delay: Option<Spanned<String>>,
    pub max_delay: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompensation {
    pub command: Spanned<String>,
    pub stream: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub retry: Option<Spanned<RawRetry>>,
    pub input: Option<Spanned<serde_json::Value>>,
}
