//! Routes each reply read from the daemon's reply streams to the task that
//! drives its saga.
//!
//! A reply can arrive before its saga's task exists here: a saga being taken
//! over from another daemon is resumed a moment after the reader has read
//! what was waiting for it. Replies that belong to no saga here are
//! therefore kept for a while, as the fields they were read as (never
//! parsed: a reply's JSON can take many times its size once parsed, and
//! most kept replies are never asked for), and handed over, parsed, when a
//! saga of that id registers.

use super::replies::{parse_reply, Receipt};
use crate::protocol::{RawFields, Reply, SagaId};
use crate::saga::OperatorRequest;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Each saga's inbox is unbounded on purpose: a reply reader that waited on
/// one slow saga's inbox would hold up every other saga's replies, and a
/// saga receives only a handful of replies per attempt (start, progress,
/// final), so the inbox stays small; what all inboxes hold together is
/// bounded by the reader's budget of replies in hand (see
/// [`super::replies::IN_HAND_BYTES`]). Replies travel boxed: a channel
/// allocates its slots in blocks, and with thousands of sagas in flight
/// pointer-sized slots keep those blocks small.
pub type Inbox = mpsc::UnboundedReceiver<Inbound>;

/// What a saga's task receives. A reply comes with its [`Receipt`]: the
/// task drops it once the reply is applied; only then may its entry be
/// trimmed, and its share of the reader's budget be used again.
#[derive(Debug)]
pub enum Inbound {
    Reply(Box<Reply>, Receipt),
    Operator(Box<OperatorRequest>),
}

/// How many unrouted replies are kept at most, how many bytes of entries
/// in all, and for how long: enough to cover a takeover, little enough
/// that garbage (replies for sagas that will never come) costs little.
const KEPT_MAX: usize = 10_000;
const KEPT_BYTES_MAX: usize = 64 << 20;
const KEPT_FOR: Duration = Duration::from_secs(60);

/// A reply waiting for its saga: its fields as read, when it reached Redis,
/// its receipt, and its size.
type Kept = (RawFields, Option<u64>, Receipt, usize);

/// Names one registration of a saga with the router: a task removes its
/// own registration, never one made after it (see [`Router::remove`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registration(u64);

#[derive(Default)]
struct Inner {
    sagas: HashMap<SagaId, (Registration, mpsc::UnboundedSender<Inbound>)>,
    /// The number of the last registration made.
    registered: u64,
    /// Unrouted replies by saga, and the order they came in, for expiry.
    kept: HashMap<SagaId, Vec<Kept>>,
    kept_order: VecDeque<(Instant, SagaId)>,
    kept_bytes: usize,
}

#[derive(Default)]
pub struct Router {
    inner: Mutex<Inner>,
}

impl Router {
    /// The inbox of a saga, holding the replies that came for it before,
    /// and the registration to remove once done; `None` if a task of this
    /// daemon drives it already.
    pub fn register(&self, saga_id: SagaId) -> Option<(Inbox, Registration)> {
        let mut inner = self.inner.lock().expect("router lock");
        if inner
            .sagas
            .get(&saga_id)
            .is_some_and(|(_, tx)| !tx.is_closed())
        {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        for (fields, reached_ms, receipt, bytes) in inner.kept.remove(&saga_id).unwrap_or_default()
        {
            inner.kept_bytes -= bytes;
            match parse_reply(&fields) {
                Ok(mut reply) => {
                    reply.reached_ms = reached_ms;
                    let _ = tx.send(Inbound::Reply(Box::new(reply), receipt));
                }
                Err(why) => tracing::warn!(%why, "skipping a stray reply"),
            }
        }
        inner.registered += 1;
        let registration = Registration(inner.registered);
        inner.sagas.insert(saga_id, (registration, tx));
        Some((rx, registration))
    }

    /// Ends `registration` of `saga_id`. A saga taken over again by this
    /// daemon registers anew once the task of the earlier lease period let
    /// its inbox go, which may be just before that task removes its
    /// registration: the new one stays.
    pub fn remove(&self, saga_id: &SagaId, registration: Registration) {
        let mut inner = self.inner.lock().expect("router lock");
        if inner
            .sagas
            .get(saga_id)
            .is_some_and(|(r, _)| *r == registration)
        {
            inner.sagas.remove(saga_id);
        }
    }

    /// True when a task of this daemon drives `saga_id`.
    pub fn drives(&self, saga_id: &SagaId) -> bool {
        let inner = self.inner.lock().expect("router lock");
        inner
            .sagas
            .get(saga_id)
            .is_some_and(|(_, tx)| !tx.is_closed())
    }

    /// Delivers a parsed reply to the task driving its saga; gives it back
    /// when there is none (any more).
    pub fn deliver(
        &self,
        saga_id: &SagaId,
        reply: Box<Reply>,
        receipt: Receipt,
    ) -> Result<(), (Box<Reply>, Receipt)> {
        let inner = self.inner.lock().expect("router lock");
        let Some((_, tx)) = inner.sagas.get(saga_id) else {
            return Err((reply, receipt));
        };
        tx.send(Inbound::Reply(reply, receipt))
            .map_err(|unsent| match unsent.0 {
                Inbound::Reply(reply, receipt) => (reply, receipt),
                Inbound::Operator(_) => unreachable!("a reply was sent"),
            })
    }

    /// Keeps a reply for a saga no task here drives, as its fields, in
    /// case the saga registers soon. `bytes` is the size of its entry, for
    /// the bound on what is kept; the oldest go first.
    pub fn keep(
        &self,
        saga_id: SagaId,
        fields: RawFields,
        reached_ms: Option<u64>,
        receipt: Receipt,
        bytes: usize,
    ) {
        let mut inner = self.inner.lock().expect("router lock");
        let now = Instant::now();
        while let Some((at, _)) = inner.kept_order.front() {
            let fits =
                inner.kept_order.len() < KEPT_MAX && inner.kept_bytes + bytes <= KEPT_BYTES_MAX;
            if now.duration_since(*at) <= KEPT_FOR && fits {
                break;
            }
            let (_, old) = inner.kept_order.pop_front().expect("checked");
            let dropped: usize = inner.kept.remove(&old).map_or(0, |replies| {
                replies.iter().map(|(_, _, _, bytes)| bytes).sum()
            });
            inner.kept_bytes -= dropped;
        }
        if bytes > KEPT_BYTES_MAX {
            return;
        }
        inner.kept_bytes += bytes;
        inner
            .kept
            .entry(saga_id.clone())
            .or_default()
            .push((fields, reached_ms, receipt, bytes));
        inner.kept_order.push_back((now, saga_id));
    }

    /// Hands an operator's request to its saga's task; false when no task
    /// of this daemon drives that saga.
    pub fn route_operator(&self, saga_id: &SagaId, request: OperatorRequest) -> bool {
        let inner = self.inner.lock().expect("router lock");
        inner
            .sagas
            .get(saga_id)
            .is_some_and(|(_, tx)| tx.send(Inbound::Operator(Box::new(request))).is_ok())
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("router lock").sagas.len()
    }

    #[cfg(test)]
    fn kept_bytes(&self) -> usize {
        self.inner.lock().expect("router lock").kept_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(saga: &SagaId, status: &str) -> RawFields {
        [("saga_id", saga.as_str()), ("status", status)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn replies_that_come_first_wait_for_their_saga() {
        let router = Router::default();
        let (a, b) = (SagaId::generate(), SagaId::generate());
        router.keep(a.clone(), fields(&a, "start"), None, Receipt::none(), 100);
        router.keep(b.clone(), fields(&b, "start"), None, Receipt::none(), 100);
        let (mut inbox, _) = router.register(a.clone()).unwrap();
        let Inbound::Reply(first, _) = inbox.try_recv().unwrap() else {
            panic!("a reply")
        };
        assert_eq!(first.saga_id.as_ref(), Some(&a));
        assert!(inbox.try_recv().is_err());
        assert!(router.drives(&a));
        let reply = Box::new(parse_reply(&fields(&a, "start")).unwrap());
        assert!(router.deliver(&a, reply, Receipt::none()).is_ok());
        assert!(router.register(a.clone()).is_none(), "driven already");
        let (mut inbox_b, _) = router.register(b.clone()).unwrap();
        let Inbound::Reply(first, _) = inbox_b.try_recv().unwrap() else {
            panic!("a reply")
        };
        assert_eq!(first.saga_id.as_ref(), Some(&b));
    }

    /// A saga taken over again by this daemon registers anew as soon as
    /// the task of the earlier lease period let its inbox go; that task's
    /// removal, a moment later, must not take the new task's place.
    #[test]
    fn a_task_that_lets_go_removes_no_later_registration() {
        let router = Router::default();
        let saga = SagaId::generate();
        let (earlier, first) = router.register(saga.clone()).unwrap();
        drop(earlier);
        let (_later, _) = router.register(saga.clone()).expect("let go");
        router.remove(&saga, first);
        assert!(router.drives(&saga), "the later task lost its inbox");
    }

    #[test]
    fn kept_replies_are_bounded() {
        let router = Router::default();
        for _ in 0..KEPT_MAX + 10 {
            let saga = SagaId::generate();
            router.keep(
                saga.clone(),
                fields(&saga, "start"),
                None,
                Receipt::none(),
                100,
            );
        }
        {
            let inner = router.inner.lock().unwrap();
            assert!(inner.kept.len() <= KEPT_MAX && inner.kept_order.len() <= KEPT_MAX);
        }
        // A hundred replies of 1 MiB for sagas never seen: bounded by bytes.
        for _ in 0..100 {
            let saga = SagaId::generate();
            router.keep(
                saga.clone(),
                fields(&saga, "start"),
                None,
                Receipt::none(),
                1 << 20,
            );
        }
        assert!(
            router.kept_bytes() <= KEPT_BYTES_MAX,
            "{}",
            router.kept_bytes()
        );
    }
}
