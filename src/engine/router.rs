//! Routes each reply read from the daemon's reply streams to the task that
//! drives its saga.
//!
//! A reply can arrive before its saga's task exists here: a saga being taken
//! over from another daemon is resumed a moment after the reader has read
//! what was waiting for it. Replies that belong to no saga are therefore kept
//! for a while, and handed over when a saga of that id registers.

use super::replies::Receipt;
use crate::protocol::{Reply, SagaId};
use crate::saga::OperatorRequest;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Each saga's inbox is unbounded on purpose: a reply reader that waited on
/// one slow saga's inbox would hold up every other saga's replies, and a
/// saga receives only a handful of replies per attempt (start, progress,
/// final), so the inbox stays small. Replies travel boxed: a channel
/// allocates its slots in blocks, and with thousands of sagas in flight
/// pointer-sized slots keep those blocks small.
pub type Inbox = mpsc::UnboundedReceiver<Inbound>;

/// What a saga's task receives. A reply read from this daemon's own
/// stream comes with its [`Receipt`]: the task drops it once the reply is
/// applied, and only then may the entry be trimmed.
#[derive(Debug)]
pub enum Inbound {
    Reply(Box<Reply>, Option<Receipt>),
    Operator(Box<OperatorRequest>),
}

/// How many unrouted replies are kept at most, how many bytes of entries
/// in all, and for how long: enough to cover a takeover, little enough
/// that garbage (replies for sagas that will never come) costs little.
const KEPT_MAX: usize = 10_000;
const KEPT_BYTES_MAX: usize = 64 << 20;
const KEPT_FOR: Duration = Duration::from_secs(60);

/// A reply waiting for its saga, with its entry's size.
type Kept = (Reply, Option<Receipt>, usize);

#[derive(Default)]
struct Inner {
    sagas: HashMap<SagaId, mpsc::UnboundedSender<Inbound>>,
    /// Unrouted replies by saga, and the order they came in, for expiry.
    kept: HashMap<SagaId, Vec<Kept>>,
    kept_order: VecDeque<(Instant, SagaId, usize)>,
    kept_bytes: usize,
}

#[derive(Default)]
pub struct Router {
    inner: Mutex<Inner>,
}

impl Router {
    /// The inbox of a saga, holding the replies that came for it before;
    /// `None` if a task of this daemon drives it already.
    pub fn register(&self, saga_id: SagaId) -> Option<Inbox> {
        let mut inner = self.inner.lock().expect("router lock");
        if inner.sagas.get(&saga_id).is_some_and(|tx| !tx.is_closed()) {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        for (reply, receipt, bytes) in inner.kept.remove(&saga_id).unwrap_or_default() {
            inner.kept_bytes -= bytes;
            let _ = tx.send(Inbound::Reply(Box::new(reply), receipt));
        }
        inner.sagas.insert(saga_id, tx);
        Some(rx)
    }

    pub fn remove(&self, saga_id: &SagaId) {
        self.inner
            .lock()
            .expect("router lock")
            .sagas
            .remove(saga_id);
    }

    /// Delivers a reply to its saga; false when no saga here owns it (it
    /// is kept for a while in case its saga registers). `bytes` is the size
    /// of its entry, for the bound on what is kept.
    pub fn route(&self, reply: Box<Reply>, receipt: Option<Receipt>, bytes: usize) -> bool {
        let Some(saga_id) = reply.saga_id.clone() else {
            return false;
        };
        let mut inner = self.inner.lock().expect("router lock");
        let (reply, receipt) = match inner.sagas.get(&saga_id) {
            Some(tx) => match tx.send(Inbound::Reply(reply, receipt)) {
                Ok(()) => return true,
                Err(unsent) => match unsent.0 {
                    Inbound::Reply(reply, receipt) => (reply, receipt),
                    Inbound::Operator(_) => unreachable!("a reply was sent"),
                },
            },
            None => (reply, receipt),
        };
        let now = Instant::now();
        while let Some((at, _, _)) = inner.kept_order.front() {
            let fits =
                inner.kept_order.len() < KEPT_MAX && inner.kept_bytes + bytes <= KEPT_BYTES_MAX;
            if now.duration_since(*at) <= KEPT_FOR && fits {
                break;
            }
            let (_, old, _) = inner.kept_order.pop_front().expect("checked");
            let dropped: usize = inner
                .kept
                .remove(&old)
                .map_or(0, |replies| replies.iter().map(|(_, _, bytes)| bytes).sum());
            inner.kept_bytes -= dropped;
        }
        if bytes > KEPT_BYTES_MAX {
            return false;
        }
        inner.kept_bytes += bytes;
        inner
            .kept
            .entry(saga_id.clone())
            .or_default()
            .push((*reply, receipt, bytes));
        inner.kept_order.push_back((now, saga_id, bytes));
        false
    }

    /// True when a task of this daemon drives `saga_id`.
    pub fn drives(&self, saga_id: &SagaId) -> bool {
        let inner = self.inner.lock().expect("router lock");
        inner.sagas.get(saga_id).is_some_and(|tx| !tx.is_closed())
    }

    /// Hands an operator's request to its saga's task; false when no task
    /// of this daemon drives that saga.
    pub fn route_operator(&self, saga_id: &SagaId, request: OperatorRequest) -> bool {
        let inner = self.inner.lock().expect("router lock");
        inner
            .sagas
            .get(saga_id)
            .is_some_and(|tx| tx.send(Inbound::Operator(Box::new(request))).is_ok())
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("router lock").sagas.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ReplyStatus;

    fn reply(saga: &SagaId) -> Reply {
        Reply {
            saga_id: Some(saga.clone()),
            request_id: None,
            event_type: None,
            correlation_id: None,
            traceparent: None,
            status: ReplyStatus::Start,
            timestamp_ms: None,
        }
    }

    #[test]
    fn replies_that_come_first_wait_for_their_saga() {
        let router = Router::default();
        let (a, b) = (SagaId::generate(), SagaId::generate());
        assert!(!router.route(Box::new(reply(&a)), None, 100));
        assert!(!router.route(Box::new(reply(&b)), None, 100));
        let mut inbox = router.register(a.clone()).unwrap();
        let Inbound::Reply(first, _) = inbox.try_recv().unwrap() else {
            panic!("a reply")
        };
        assert_eq!(first.saga_id.as_ref(), Some(&a));
        assert!(inbox.try_recv().is_err());
        assert!(router.route(Box::new(reply(&a)), None, 100));
        assert!(router.register(a.clone()).is_none(), "driven already");
        let mut inbox_b = router.register(b.clone()).unwrap();
        let Inbound::Reply(first, _) = inbox_b.try_recv().unwrap() else {
            panic!("a reply")
        };
        assert_eq!(first.saga_id.as_ref(), Some(&b));
    }

    #[test]
    fn kept_replies_are_bounded() {
        let router = Router::default();
        for _ in 0..KEPT_MAX + 10 {
            router.route(Box::new(reply(&SagaId::generate())), None, 100);
        }
        {
            let inner = router.inner.lock().unwrap();
            assert!(inner.kept.len() <= KEPT_MAX && inner.kept_order.len() <= KEPT_MAX);
        }
        // A hundred replies of 1 MiB for sagas never seen: bounded by bytes.
        for _ in 0..100 {
            router.route(Box::new(reply(&SagaId::generate())), None, 1 << 20);
        }
        let inner = router.inner.lock().unwrap();
        assert!(inner.kept_bytes <= KEPT_BYTES_MAX, "{}", inner.kept_bytes);
    }
}
