//! Routes each reply read from the daemon's reply stream to the task that
//! drives its saga.

use crate::protocol::{Reply, SagaId};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// Each saga's inbox is unbounded on purpose: a reply reader that waited on
/// one slow saga's inbox would hold up every other saga's replies, and a
/// saga receives only a handful of replies per attempt (start, progress,
/// final), so the inbox stays small.
pub type Inbox = mpsc::UnboundedReceiver<Reply>;

#[derive(Default)]
pub struct Router {
    sagas: Mutex<HashMap<SagaId, mpsc::UnboundedSender<Reply>>>,
}

impl Router {
    pub fn register(&self, saga_id: SagaId) -> Inbox {
        let (tx, rx) = mpsc::unbounded_channel();
        self.sagas.lock().expect("router lock").insert(saga_id, tx);
        rx
    }

    pub fn remove(&self, saga_id: &SagaId) {
        self.sagas.lock().expect("router lock").remove(saga_id);
    }

    /// Delivers a reply to its saga; false when no saga here owns it.
    pub fn route(&self, reply: Reply) -> bool {
        let Some(saga_id) = reply.saga_id.clone() else {
            return false;
        };
        let sender = self
            .sagas
            .lock()
            .expect("router lock")
            .get(&saga_id)
            .cloned();
        sender.is_some_and(|tx| tx.send(reply).is_ok())
    }

    pub fn len(&self) -> usize {
        self.sagas.lock().expect("router lock").len()
    }
}
