use super::*;
use std::io::Write;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

fn server(code: &str, detail: &str) -> RedisError {
    redis::make_extension_error(code.to_owned(), Some(detail.to_owned()))
}

fn io_error() -> RedisError {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset").into()
}

/// The bounds of the `n`th wait (from 0) of a run under `policy`.
fn bounds(policy: Policy, n: u32) -> (Duration, Duration) {
    let nominal = policy
        .first
        .saturating_mul(2u32.saturating_pow(n))
        .min(policy.cap);
    (nominal - nominal / 2, nominal)
}

#[test]
fn only_errors_that_cannot_pass_later_are_permanent() {
    assert!(is_permanent(&server(
        "WRONGTYPE",
        "Operation against a key"
    )));
    assert!(is_permanent(&server("ERR", "Error running script")));
    assert!(!is_permanent(&server("OOM", "command not allowed")));
    assert!(!is_permanent(&server("LOADING", "Redis is loading")));
    assert!(!is_permanent(&server("NOPERM", "no permissions")));
    assert!(!is_permanent(&server(
        "ERR",
        "max number of clients reached"
    )));
    assert!(!is_permanent(&io_error()));
}

#[test]
fn waits_double_up_to_the_cap_each_within_its_jitter() {
    for policy in [Policy::WRITES, Policy::RECONNECT, Policy::HANDLER] {
        let mut backoff = Backoff::seeded(policy, 7);
        for n in 0..12 {
            let (low, high) = bounds(policy, n);
            let delay = backoff.next_delay();
            assert!(
                low <= delay && delay <= high,
                "wait {n}: {delay:?} not in {low:?}..={high:?}"
            );
        }
        // Far into an outage, the cap is still the longest wait.
        assert_eq!(bounds(policy, 11).1, policy.cap);
    }
}

#[test]
fn the_same_seed_gives_the_same_waits_and_seeds_spread_them() {
    let run = |seed| {
        let mut backoff = Backoff::seeded(Policy::WRITES, seed);
        (0..8).map(|_| backoff.next_delay()).collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    // A hundred tasks stopped by one outage: their first retries are spread
    // over the jitter's range, not all at the same moment.
    let mut firsts: Vec<Duration> = (0..100).map(|seed| run(seed)[0]).collect();
    firsts.sort();
    firsts.dedup();
    assert!(firsts.len() > 90, "{} distinct waits of 100", firsts.len());
    let (low, high) = bounds(Policy::WRITES, 0);
    let spread = *firsts.last().unwrap() - firsts[0];
    assert!(spread > (high - low) / 2, "spread over {spread:?} only");
    // Backoffs made without a seed differ too.
    let unseeded: Vec<Duration> = (0..20)
        .map(|_| Backoff::new(Policy::WRITES).next_delay())
        .collect();
    assert!(unseeded.iter().any(|d| *d != unseeded[0]), "{unseeded:?}");
}

#[test]
fn a_success_starts_the_waits_anew() {
    let mut backoff = Backoff::seeded(Policy::HANDLER, 1);
    for _ in 0..6 {
        backoff.next_delay();
    }
    backoff.reset();
    let delay = backoff.next_delay();
    assert!(delay <= Policy::HANDLER.first, "{delay:?}");
}

/// A log of what an outage says, at `info` and above.
#[derive(Clone, Default)]
struct Logged(Arc<Mutex<Vec<u8>>>);

impl Write for Logged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logged {
    fn subscriber(&self) -> impl tracing::Subscriber {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
    }

    fn lines(&self) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }
}

static FAILED: AtomicUsize = AtomicUsize::new(0);
static RECOVERED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn an_outage_is_told_once_when_it_starts_and_once_when_it_ends_and_counted_throughout() {
    let meter = Meter {
        label: "write",
        failed: |label| {
            assert_eq!(label, "write");
            FAILED.fetch_add(1, Ordering::Relaxed);
        },
        recovered: |_| {
            RECOVERED.fetch_add(1, Ordering::Relaxed);
        },
    };
    let outage = Outage::new("writing saga transitions").metered(meter);
    let logged = Logged::default();
    tracing::subscriber::with_default(logged.subscriber(), || {
        outage.recovered(); // nothing to end
                            // Many tasks fail on the same outage.
        for _ in 0..50 {
            outage.failed(&io_error());
        }
        assert!(outage.is_failing());
        outage.refused();
        outage.recovered();
        outage.recovered();
        outage.record(&Err::<(), _>(io_error()));
        outage.record(&Ok::<_, RedisError>(()));
    });
    assert!(!outage.is_failing());
    assert_eq!(FAILED.load(Ordering::Relaxed), 52);
    assert_eq!(RECOVERED.load(Ordering::Relaxed), 2);
    let lines = logged.lines();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(
        lines[0].contains("WARN") && lines[0].contains("writing saga transitions fails; retrying")
    );
    assert!(
        lines[0].contains("reset"),
        "the first error is told: {}",
        lines[0]
    );
    assert!(lines[1].contains("INFO") && lines[1].contains("writing saga transitions works again"));
    assert!(lines[2].contains("WARN") && lines[3].contains("INFO"));
}

/// `retry` run to its end, which must come within an hour of paused time:
/// a policy that never gave up or never saw the shutdown fails the test
/// instead of hanging it.
async fn bounded<T>(tried: impl Future<Output = Tried<T>>) -> Tried<T> {
    tokio::time::timeout(Duration::from_secs(3600), tried)
        .await
        .expect("retry ended within an hour")
}

/// An operation that fails `failures` times with `error`, then returns
/// how many tries it took; each try's time is kept.
fn flaky(
    failures: usize,
    error: fn() -> RedisError,
    tries: &Mutex<Vec<Instant>>,
) -> impl FnMut() -> std::future::Ready<RedisResult<usize>> + '_ {
    move || {
        let mut tries = tries.lock().unwrap();
        tries.push(Instant::now());
        std::future::ready(match tries.len() {
            n if n > failures => Ok(n),
            _ => Err(error()),
        })
    }
}

#[tokio::test(start_paused = true)]
async fn retry_waits_doubling_jittered_waits_until_the_call_passes() {
    let tries = Mutex::new(Vec::new());
    let outage = Outage::new("a call");
    let shutdown = CancellationToken::new();
    let tried = retry(
        &shutdown,
        Policy::WRITES,
        &outage,
        flaky(8, io_error, &tries),
    )
    .await;
    assert!(matches!(tried, Tried::Done(9)), "{tried:?}");
    assert!(!outage.is_failing(), "the recovery is told");
    let tries = tries.into_inner().unwrap();
    for (n, pair) in tries.windows(2).enumerate() {
        let waited = pair[1] - pair[0];
        let (low, high) = bounds(Policy::WRITES, n as u32);
        assert!(
            low <= waited && waited <= high,
            "wait {n}: {waited:?} not in {low:?}..={high:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_at_once_on_a_permanent_error() {
    let tries = Mutex::new(Vec::new());
    let outage = Outage::new("a call");
    let started = Instant::now();
    let wrongtype = || server("WRONGTYPE", "Operation against a key");
    let op = flaky(usize::MAX, wrongtype, &tries);
    let tried = bounded(retry(
        &CancellationToken::new(),
        Policy::HANDLER,
        &outage,
        op,
    ))
    .await;
    assert!(
        matches!(&tried, Tried::Refused(e) if e.code() == Some("WRONGTYPE")),
        "{tried:?}"
    );
    assert_eq!(tries.lock().unwrap().len(), 1);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(!outage.is_failing(), "a refusal is no outage");
}

#[tokio::test(start_paused = true)]
async fn connecting_gives_up_on_nothing() {
    let tries = Mutex::new(Vec::new());
    let refused = || server("ERR", "unknown command 'HELLO'");
    let op = flaky(3, refused, &tries);
    let tried = retry(
        &CancellationToken::new(),
        Policy::RECONNECT,
        &Outage::new("connecting"),
        op,
    )
    .await;
    assert!(matches!(tried, Tried::Done(4)), "{tried:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_stops_on_shutdown_between_tries() {
    let tries = Mutex::new(Vec::new());
    let outage = Outage::new("a call");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop.cancel();
    });
    let started = Instant::now();
    let op = flaky(usize::MAX, io_error, &tries);
    let tried = bounded(retry(&shutdown, Policy::RECONNECT, &outage, op)).await;
    assert!(matches!(tried, Tried::Stopped), "{tried:?}");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(10),
        "at once, mid-wait"
    );
    // Waits of 100 ms doubling to 1 s: 13 tries in 10 s, 23 if every
    // wait is halved by its jitter.
    let n = tries.lock().unwrap().len();
    assert!((13..=23).contains(&n), "{n} tries");
    assert!(outage.is_failing());

    // Already stopping: one try, no wait.
    let tries = Mutex::new(Vec::new());
    let started = Instant::now();
    let op = flaky(usize::MAX, io_error, &tries);
    let tried = bounded(retry(&shutdown, Policy::RECONNECT, &outage, op)).await;
    assert!(matches!(tried, Tried::Stopped), "{tried:?}");
    assert_eq!(
        (tries.lock().unwrap().len(), started.elapsed()),
        (1, Duration::ZERO)
    );
}
