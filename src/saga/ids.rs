//! Where the state machine gets new ids, so tests can fix them.

use crate::protocol::{RequestId, SpanId};

pub trait IdSource {
    fn request_id(&mut self) -> RequestId;
    fn span_id(&mut self) -> SpanId;
}

/// Random ids, for the daemon.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn request_id(&mut self) -> RequestId {
        RequestId::generate()
    }

    fn span_id(&mut self) -> SpanId {
        SpanId::generate()
    }
}
