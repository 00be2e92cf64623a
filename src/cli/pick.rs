//! Naming one saga on the command line: its id, the start of it, or its
//! correlation id (`status`, `cancel`, `retry`, `skip`, `abandon`).

use super::output::Failure;
use crate::config::Settings;
use crate::connection::Conn;
use crate::operator::{self, Found, Record, SagaRef, MAX_MATCHES};
use crate::protocol::CorrelationId;
use clap::Args;

#[derive(Debug, Args)]
pub struct SagaArgs {
    /// The saga's id, or a start of it that no other saga's id has (as
    /// `watch` and `start --wait` show it).
    #[arg(
        value_name = "SAGA_ID",
        required_unless_present = "correlation_id",
        value_parser = SagaRef::id
    )]
    saga_id: Option<SagaRef>,
    /// Name the saga by its correlation id instead (exactly: spaces included).
    #[arg(long, conflicts_with = "saga_id", value_parser = parse_correlation_id)]
    correlation_id: Option<CorrelationId>,
}

/// The flag's check: what the wire contract accepts.
pub fn parse_correlation_id(text: &str) -> Result<CorrelationId, String> {
    CorrelationId::parse(text)
}

impl SagaArgs {
    /// A saga named by one of the two (clap requires one).
    pub fn new(saga_id: Option<SagaRef>, correlation_id: Option<CorrelationId>) -> Self {
        Self {
            saga_id,
            correlation_id,
        }
    }

    fn which(&self) -> SagaRef {
        match (&self.saga_id, &self.correlation_id) {
            (Some(id), _) => id.clone(),
            (None, Some(c)) => SagaRef::Correlation(c.clone()),
            (None, None) => unreachable!("clap requires one of them"),
        }
    }

    /// The sagas named: one, or several for a correlation id that several
    /// sagas share. No saga, or the start of an id that several have, is a
    /// failure (exit 1) that says so.
    pub async fn find(&self, conn: &mut Conn, settings: &Settings) -> Result<Found, Failure> {
        let which = self.which();
        let found = operator::find(conn, settings, &which).await?;
        match (&which, found.total) {
            (_, 0) => Err(Failure::no(format!(
                "no {which}: never started, or its record expired after the retention"
            ))),
            (SagaRef::Id(_), n) if n > 1 => Err(Failure::no(format!(
                "{n} sagas have an id starting so: give more of it\n{}",
                table(&found)
            ))),
            _ => Ok(found),
        }
    }

    /// The one saga named; several sharing a correlation id are listed and
    /// refused (exit 1).
    pub async fn one(&self, conn: &mut Conn, settings: &Settings) -> Result<Record, Failure> {
        let found = self.find(conn, settings).await?;
        match <[Record; 1]>::try_from(found.records.clone()) {
            Ok([record]) if found.total == 1 => Ok(record),
            _ => Err(Failure::no(format!(
                "{} sagas have the {}: name one by its id\n{}",
                found.total,
                self.which(),
                table(&found)
            ))),
        }
    }
}

/// The sagas found, one line each, newest first.
pub fn table(found: &Found) -> String {
    let mut records: Vec<&Record> = found.records.iter().collect();
    records.sort_by_key(|r| std::cmp::Reverse(r.state.started_at_ms));
    let mut out: Vec<String> = records
        .into_iter()
        .map(|r| {
            let s = &r.state;
            let when = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(s.started_at_ms),
            );
            format!(
                "  {}  {:<12} started {when}  {}",
                s.saga_id,
                s.phase.status().as_str(),
                s.correlation_id
            )
        })
        .collect();
    if found.total > found.records.len() {
        out.push(format!(
            "  ({} more; {MAX_MATCHES} are shown)",
            found.total - found.records.len()
        ));
    }
    out.join("\n")
}
