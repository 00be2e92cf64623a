//! The web dashboard in a real headless Chromium, against a real daemon,
//! its HTTP server and the simulated handlers on a real redis-server: the
//! list follows sagas as they run, a saga's page shows its steps as they
//! happen, a stuck saga is retried from the page, actions show only with a
//! write token, who holds each lock and who waits is shown with links to
//! the sagas, and what sagas carry is shown as text, never run.
//!
//! Screenshots of each view are saved under
//! `<target dir>/dashboard-screenshots/` (docs/images/ holds copies).

mod common;

use common::browser::{serve_http, Browser, PAGE_WAIT};
use common::*;
use sagaflow::handler::simulated::SimulationOptions;
use sagaflow::http::access::{new_token, ApiToken, ApiTokens, Scope};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Every test must end within this.
const TEST_BUDGET: Duration = Duration::from_secs(30);

/// The name of the write token: the name of the test operator's key, which
/// the daemon signs its requests with.
const WRITER: &str = "ops@test";

/// A daemon serving the dashboard, with the simulated handlers.
struct Dashboard {
    server: RedisServer,
    base: String,
    read_token: String,
    write_token: String,
    daemon: Option<Running<Ran>>,
    handlers: Option<Running<()>>,
    http: CancellationToken,
    started: Instant,
}

impl Dashboard {
    async fn start(handlers: SimulationOptions) -> Self {
        Self::start_with(mission_catalog(), handlers).await
    }

    /// A daemon running the sagas of `catalog`.
    async fn start_with(
        catalog: sagaflow::definition::Catalog,
        handlers: SimulationOptions,
    ) -> Self {
        let started = Instant::now();
        let server = RedisServer::start();
        let read_token = new_token();
        let write_token = new_token();
        let mut settings = test_settings(&server);
        settings.api_tokens = ApiTokens::parse(&format!(
            "{},{}",
            ApiToken::entry("viewer", Scope::Read, &read_token),
            ApiToken::entry(WRITER, Scope::Write, &write_token),
        ))
        .expect("the tokens");
        settings.trace_url = "http://127.0.0.1:3000/explore?trace={trace_id}".into();
        let daemon = start_daemon_with(settings.clone(), catalog.clone()).await;
        let (addr, http) = serve_http(&settings, &catalog).await;
        let handlers = start_simulated(&server, handlers);
        Self {
            server,
            base: format!("http://{addr}/"),
            read_token,
            write_token,
            daemon: Some(daemon),
            handlers: Some(handlers),
            http,
            started,
        }
    }

    /// Stops the handlers and starts others with `opts`.
    async fn swap_handlers(&mut self, opts: SimulationOptions) {
        if let Some(old) = self.handlers.take() {
            old.stop().await;
        }
        self.handlers = Some(start_simulated(&self.server, opts));
    }

    async fn start_mission(&self, correlation_id: &str, input: Value) {
        let mut conn = self.server.conn().await;
        start_mission(&mut conn, correlation_id, &input).await;
    }

    async fn stop(mut self, browser: Browser) {
        browser.close().await;
        self.http.cancel();
        if let Some(h) = self.handlers.take() {
            h.stop().await;
        }
        if let Some(d) = self.daemon.take() {
            d.stop().await;
        }
        let took = self.started.elapsed();
        eprintln!("took {took:?}");
        assert!(took < TEST_BUDGET, "took {took:?}");
    }
}

fn slow(work_ms: u64) -> SimulationOptions {
    SimulationOptions {
        work_ms,
        ..SimulationOptions::default()
    }
}

/// Handlers with which plan_route fails and releasing the resources then
/// fails for good: the saga is left stuck.
fn breaking() -> SimulationOptions {
    SimulationOptions {
        fail_step: Some("plan_route".into()),
        fail_compensation: Some("allocate_resources".into()),
        ..SimulationOptions::default()
    }
}

const ROWS: &str = "return [...document.querySelectorAll('#saga-table tbody tr')]\
    .map(r => [r.querySelector('td.correlation').textContent, r.dataset.state]);";

/// The count of `state` for `saga` in the "recent, by saga" table.
const COUNT: &str = "const c = document.querySelector(\
    `#by-saga tr[data-saga=\"${arguments[0]}\"] td[data-state=\"${arguments[1]}\"]`); \
    return c ? Number(c.textContent) : -1;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_follows_sagas_as_they_run() {
    let mut dash = Dashboard::start(slow(500)).await;
    let browser = Browser::start(1280, 900).await;
    browser.goto(&dash.base).await;
    browser.use_token(&dash.read_token, "read").await;
    browser
        .wait_js(
            "an empty list",
            "return document.getElementById('no-sagas') !== null;",
            vec![],
        )
        .await;
    // Served with a strict policy: no inline script, nothing from elsewhere.
    let headers = browser
        .js(
            "return Promise.all(['/', '/assets/app.js', '/assets/style.css'].map(async p => { \
               const r = await fetch(p); \
               return [r.headers.get('content-security-policy'), \
                       r.headers.get('x-content-type-options'), r.headers.get('cache-control'), \
                       r.headers.get('content-type')]; }));",
            vec![],
        )
        .await;
    for (file, kind) in headers
        .as_array()
        .unwrap()
        .iter()
        .zip(["html", "javascript", "css"])
    {
        let csp = file[0].as_str().unwrap();
        assert!(
            csp.starts_with("default-src 'self'; script-src 'self';"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(file[1], "nosniff");
        assert_eq!(file[2], "no-cache");
        assert!(file[3].as_str().unwrap().contains(kind), "{file}");
    }
    // The page is never loaded again: what changes comes from the events.
    browser.js("window.loadedOnce = true;", vec![]).await;

    let ids = ["live-000", "live-001", "live-002"];
    for id in ids {
        dash.start_mission(id, json!({"area": id, "robots": 2}))
            .await;
    }
    let running = browser
        .wait_js(
            "three sagas running",
            &format!(
                "const rows = (() => {{ {ROWS} }})(); \
                 return rows.length === 3 && rows.every(r => r[1] === 'running') && rows;"
            ),
            vec![],
        )
        .await;
    let mut shown: Vec<&str> = (running.as_array().unwrap().iter())
        .map(|r| r[0].as_str().unwrap())
        .collect();
    shown.sort();
    assert_eq!(shown, ids);
    browser
        .wait_js(
            "three sagas completed",
            &format!(
                "const rows = (() => {{ {ROWS} }})(); \
                 return rows.length === 3 && rows.every(r => r[1] === 'completed');"
            ),
            vec![],
        )
        .await;
    for (state, n) in [("completed", 3), ("running", 0)] {
        browser
            .wait_js(
                &format!("{n} {state}"),
                &format!("return ((() => {{ {COUNT} }})()) === {n};"),
                vec![json!("mission_start"), json!(state)],
            )
            .await;
    }

    // One that fails and is undone joins them.
    dash.swap_handlers(SimulationOptions {
        fail_step: Some("integrate_maps".into()),
        ..SimulationOptions::default()
    })
    .await;
    dash.start_mission("live-undone", json!({"area": "hall-b", "robots": 3}))
        .await;
    browser
        .wait_js(
            "the failed saga compensated",
            &format!(
                "const rows = (() => {{ {ROWS} }})(); \
                 return rows.length === 4 && rows[0][0] === 'live-undone' \
                   && rows[0][1] === 'compensated';"
            ),
            vec![],
        )
        .await;
    browser
        .wait_js(
            "1 compensated",
            &format!("return ((() => {{ {COUNT} }})()) === 1;"),
            vec![json!("mission_start"), json!("compensated")],
        )
        .await;
    let chips = browser
        .js(
            "return Object.fromEntries([...document.querySelectorAll('#by-phase .chip')]\
               .map(c => [c.dataset.phase, Number(c.querySelector('.n').textContent)]));",
            vec![],
        )
        .await;
    assert_eq!(chips["completed"], 3, "{chips}");
    assert_eq!(chips["compensated"], 1, "{chips}");
    let failure = browser
        .js(
            "return document.querySelector('#saga-table tbody tr td.failure').textContent;",
            vec![],
        )
        .await;
    assert!(
        failure.as_str().unwrap().contains("integrate_maps"),
        "{failure}"
    );
    assert_eq!(browser.js("return window.loadedOnce;", vec![]).await, true);
    browser.screenshot("dashboard-list").await;

    // Search by correlation id, then filter by state.
    browser.type_into("#filter-q", "live-001").await;
    browser.click("#filters button[type=submit]").await;
    browser
        .wait_js(
            "one saga found",
            &format!(
                "const rows = (() => {{ {ROWS} }})(); \
                 return rows.length === 1 && rows[0][0] === 'live-001';"
            ),
            vec![],
        )
        .await;
    browser.click("#filters-clear").await;
    // Two a page: the four in two pages, newest first.
    browser.js("location.hash = '#/?limit=2';", vec![]).await;
    let first = browser
        .wait_js(
            "a page of two",
            &format!(
                "const rows = (() => {{ {ROWS} }})(); \
                 return rows.length === 2 && !document.getElementById('page-older').disabled \
                   && rows.map(r => r[0]);"
            ),
            vec![],
        )
        .await;
    assert_eq!(first[0], "live-undone", "{first}");
    browser.click("#page-older").await;
    let second = browser
        .wait_js(
            "the older page",
            &format!(
                "const rows = (() => {{ {ROWS} }})(); \
                 return rows.length === 2 && rows[0][0] !== arguments[0] && rows.map(r => r[0]);"
            ),
            vec![first[0].clone()],
        )
        .await;
    let mut all: Vec<&str> = (first.as_array().unwrap().iter())
        .chain(second.as_array().unwrap())
        .map(|id| id.as_str().unwrap())
        .collect();
    all.sort();
    assert_eq!(all, ["live-000", "live-001", "live-002", "live-undone"]);
    browser.click("#page-newer").await;
    browser
        .wait_js(
            "the newest page again",
            &format!(
                "const rows = (() => {{ {ROWS} }})(); \
                 return rows.length === 2 && rows[0][0] === 'live-undone';"
            ),
            vec![],
        )
        .await;
    browser.click("#filters-clear").await;
    browser
        .js(
            "const s = document.getElementById('filter-state'); s.value = 'compensated'; \
             s.dispatchEvent(new Event('change'));",
            vec![],
        )
        .await;
    browser
        .wait_js(
            "only the compensated saga",
            &format!(
                "const rows = (() => {{ {ROWS} }})(); \
                 return location.hash.includes('state=compensated') && rows.length === 1 \
                   && rows[0][0] === 'live-undone';"
            ),
            vec![],
        )
        .await;
    dash.stop(browser).await;
}

/// The steps of the timeline, in order, each with its state and its
/// branches' states.
const STEPS: &str = "return [...document.querySelectorAll('#steps > li.step')].map(s => ({\
    step: s.dataset.step, state: s.dataset.state, \
    branches: [...s.querySelectorAll('li.branch')].map(b => [Number(b.dataset.branch), b.dataset.state]), \
    attempts: s.querySelectorAll('li.attempt').length }));";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_shows_its_steps_as_they_happen() {
    let dash = Dashboard::start(slow(800)).await;
    let browser = Browser::start(1280, 1500).await;
    browser.goto(&dash.base).await;
    browser.use_token(&dash.read_token, "read").await;
    dash.start_mission("timeline-1", json!({"area": "hall-c", "robots": 3}))
        .await;
    // From the list to the saga's page, as a user goes.
    browser
        .wait_js(
            "the saga listed",
            "return document.querySelector('#saga-table tbody tr a.saga-link') !== null;",
            vec![],
        )
        .await;
    browser.click("#saga-table tbody tr a.saga-link").await;

    // While it runs: the first step done, a later one at work, the last
    // one still to come.
    browser
        .wait_js(
            "a step done, the next at work, the last to come",
            &format!(
                "const steps = (() => {{ {STEPS} }})(); \
                 return steps.length === 4 && steps[0].state === 'completed' \
                   && steps.some(s => s.state === 'acting') && steps[3].state === 'pending';"
            ),
            vec![],
        )
        .await;
    let progress = browser
        .wait_js(
            "progress of a step at work",
            "return document.querySelectorAll('#steps progress').length;",
            vec![],
        )
        .await;
    assert!(progress.as_u64().unwrap() >= 1);

    let steps = browser
        .wait_js_for(
            PAGE_WAIT,
            "every step completed",
            &format!(
                "const steps = (() => {{ {STEPS} }})(); \
                 return document.querySelector('#saga-head .badge').dataset.state === 'completed' \
                   && steps.every(s => s.state === 'completed') \
                   && document.querySelector('#event-log tr[data-event=saga_completed]') && steps;"
            ),
            vec![],
        )
        .await;
    let names: Vec<&str> = (steps.as_array().unwrap().iter())
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(names, MISSION_STEPS);
    assert_eq!(
        steps[2]["branches"],
        json!([[0, "completed"], [1, "completed"], [2, "completed"]]),
        "{steps}"
    );
    for (i, step) in steps.as_array().unwrap().iter().enumerate() {
        let want = if i == 2 { 3 } else { 1 };
        assert_eq!(step["attempts"], want, "one attempt per unit: {step}");
    }
    // Every event in order, the first and last the saga's own.
    let events = browser
        .js(
            "return [...document.querySelectorAll('#event-log tbody tr')].map(r => r.dataset.event);",
            vec![],
        )
        .await;
    let events: Vec<&str> = (events.as_array().unwrap().iter())
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(events.first(), Some(&"saga_started"));
    assert_eq!(events.last(), Some(&"saga_completed"));
    assert_eq!(events.len(), mission_event_count(3), "{events:?}");
    let facts = browser
        .js(
            "return { input: document.getElementById('saga-input').textContent, \
               results: [...document.querySelectorAll('#saga-results dt')].map(d => d.textContent), \
               trace: document.getElementById('trace-link').href, \
               correlation: document.getElementById('saga-correlation').textContent };",
            vec![],
        )
        .await;
    assert!(
        facts["input"].as_str().unwrap().contains("hall-c"),
        "{facts}"
    );
    assert_eq!(facts["results"], json!(MISSION_STEPS), "{facts}");
    assert_eq!(facts["correlation"], "timeline-1");
    assert!(
        facts["trace"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:3000/explore?trace="),
        "{facts}"
    );
    browser.screenshot("dashboard-saga").await;
    dash.stop(browser).await;
}

/// Opens the stuck view and waits for the saga of `correlation_id` there.
async fn stuck_card(browser: &Browser, correlation_id: &str) -> String {
    browser.js("location.hash = '#/stuck';", vec![]).await;
    let id = browser
        .wait_js_for(
            Duration::from_secs(15),
            "the stuck saga",
            "const card = [...document.querySelectorAll('.stuck-saga')]\
               .find(c => c.querySelector('h3 code').textContent === arguments[0]); \
             return card && card.querySelector('.stuck-list li[data-step=allocate_resources]') \
               && card.dataset.sagaId;",
            vec![json!(correlation_id)],
        )
        .await;
    id.as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_saga_is_retried_from_the_page() {
    let mut dash = Dashboard::start(breaking()).await;
    let browser = Browser::start(1280, 900).await;
    browser.goto(&dash.base).await;
    browser.use_token(&dash.write_token, "write").await;
    dash.start_mission("stuck-1", json!({"area": "hall-d", "robots": 2}))
        .await;
    let saga_id = stuck_card(&browser, "stuck-1").await;
    let error = browser
        .js(
            "return document.querySelector('.stuck-list li .error-text').textContent;",
            vec![],
        )
        .await;
    assert!(
        error.as_str().unwrap().contains("release_resources"),
        "{error}"
    );
    browser
        .wait_js(
            "the stuck count",
            "return document.getElementById('stuck-count').textContent === '1';",
            vec![],
        )
        .await;
    browser.screenshot("dashboard-stuck").await;

    // The cause is fixed: handlers that release resources.
    dash.swap_handlers(SimulationOptions::default()).await;
    browser.click(".stuck-saga .action-retry").await;
    browser
        .wait_js(
            "the reason asked for",
            "return document.getElementById('ask').open \
               && document.getElementById('ask').dataset.action === 'retry';",
            vec![],
        )
        .await;
    // No reason, no request.
    browser.click("#ask-confirm").await;
    assert_eq!(
        browser
            .js("return document.getElementById('ask').open;", vec![])
            .await,
        true
    );
    browser
        .type_into("#ask-reason", "the resource service is back")
        .await;
    browser.click("#ask-confirm").await;
    browser
        .wait_js(
            "the retry accepted",
            "return !document.getElementById('ask').open \
               && document.getElementById('notice').className.includes('ok');",
            vec![],
        )
        .await;
    browser
        .js(
            "location.hash = '#/sagas/' + arguments[0];",
            vec![json!(saga_id)],
        )
        .await;
    browser
        .wait_js(
            "the saga compensated",
            "const b = document.querySelector('#saga-head .badge'); \
             return b && b.dataset.state === 'compensated' \
               && document.querySelector('#steps li.step[data-step=allocate_resources]').dataset.state === 'undone';",
            vec![],
        )
        .await;
    let action = browser
        .wait_js(
            "the operator's request in the events",
            "const r = document.querySelector('#event-log tr[data-event=operator_action] td.detail'); \
             return r && r.textContent;",
            vec![],
        )
        .await;
    assert!(
        action
            .as_str()
            .unwrap()
            .contains(&format!("retry by {WRITER}: the resource service is back")),
        "{action}"
    );
    assert_eq!(
        browser
            .js(
                "return document.getElementById('saga-stuck').hidden;",
                vec![]
            )
            .await,
        true
    );
    dash.stop(browser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_show_only_with_a_write_token() {
    let dash = Dashboard::start(breaking()).await;
    let browser = Browser::start(1280, 900).await;
    browser.goto(&dash.base).await;
    // Without a token nothing is read.
    browser
        .wait_js(
            "the request for a token",
            "return document.getElementById('need-token') !== null;",
            vec![],
        )
        .await;
    browser.use_token(&dash.read_token, "read").await;
    dash.start_mission("stuck-read", json!({"area": "hall-e", "robots": 1}))
        .await;
    let saga_id = stuck_card(&browser, "stuck-read").await;
    let buttons = "return document.querySelectorAll('.action-retry, .action-skip, .action-abandon, #action-cancel').length;";
    assert_eq!(browser.js(buttons, vec![]).await, 0);
    assert_eq!(
        browser
            .js(
                "return document.querySelectorAll('.stuck-saga .read-only').length;",
                vec![]
            )
            .await,
        1
    );
    browser
        .js(
            "location.hash = '#/sagas/' + arguments[0];",
            vec![json!(saga_id)],
        )
        .await;
    browser
        .wait_js(
            "the stuck saga's page",
            "return document.querySelector('#saga-stuck .stuck-list') !== null;",
            vec![],
        )
        .await;
    assert_eq!(browser.js(buttons, vec![]).await, 0);

    // The same page with a write token: retry, skip and abandon.
    browser.use_token(&dash.write_token, "write").await;
    browser
        .wait_js(
            "the actions",
            "return document.querySelectorAll('#saga-stuck .action-retry, #saga-stuck .action-skip, \
               #saga-stuck .action-abandon').length === 3;",
            vec![],
        )
        .await;
    browser.screenshot("dashboard-stuck-saga").await;
    // Skip asks which step, among those stuck.
    browser.click("#saga-stuck .action-skip").await;
    let steps = browser
        .wait_js(
            "the step asked for",
            "return document.getElementById('ask').open \
               && !document.getElementById('ask-step-row').hidden \
               && [...document.querySelectorAll('#ask-step option')].map(o => o.value);",
            vec![],
        )
        .await;
    assert_eq!(steps, json!(["allocate_resources"]));
    browser.click("#ask-cancel").await;
    // A token the daemon does not know reads nothing.
    browser
        .use_token("not-a-token-of-this-daemon", "none")
        .await;
    browser
        .wait_js(
            "the request for a token",
            "return document.getElementById('need-token') !== null;",
            vec![],
        )
        .await;
    dash.stop(browser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_sagas_carry_is_shown_as_text_and_never_run() {
    // plan_route never answers: the saga runs until it is cancelled.
    let dash = Dashboard::start(SimulationOptions {
        hang_step: Some("plan_route".into()),
        ..SimulationOptions::default()
    })
    .await;
    let browser = Browser::start(1280, 1200).await;
    browser.goto(&dash.base).await;
    browser.use_token(&dash.write_token, "write").await;
    let correlation = r#"<img src=x onerror="window.pwned='correlation'">"#;
    let area = r#"<script>window.pwned='area'</script><img src=x onerror=window.pwned='area'>"#;
    let reason = r#"<b>bold</b><img src=x onerror="window.pwned='reason'">"#;
    dash.start_mission(correlation, json!({"area": area, "robots": 1}))
        .await;
    let no_markup =
        "return document.querySelectorAll('img, b, main script, iframe, object').length === 0 \
        && document.scripts.length === 1 && window.pwned === undefined;";

    browser
        .wait_js(
            "the saga listed",
            "return document.querySelector('#saga-table tbody tr td.correlation') !== null;",
            vec![],
        )
        .await;
    let listed = browser
        .js(
            "return document.querySelector('#saga-table tbody tr td.correlation').textContent;",
            vec![],
        )
        .await;
    assert_eq!(listed, correlation, "shown literally");
    assert_eq!(browser.js(no_markup, vec![]).await, true, "no markup made");
    // Searched for by it, too.
    browser.type_into("#filter-q", correlation).await;
    browser.click("#filters button[type=submit]").await;
    browser
        .wait_js(
            "the saga found by its correlation id",
            "return location.hash.includes('q=') \
               && document.querySelectorAll('#saga-table tbody tr').length === 1;",
            vec![],
        )
        .await;
    browser.click("#saga-table tbody tr a.saga-link").await;
    let shown = browser
        .wait_js(
            "the saga's page with its input and a result",
            "const r = document.querySelector('#saga-results dd'); \
             return r && { correlation: document.getElementById('saga-correlation').textContent, \
               input: document.getElementById('saga-input').textContent, result: r.textContent };",
            vec![],
        )
        .await;
    assert_eq!(shown["correlation"], correlation);
    let input: Value = serde_json::from_str(shown["input"].as_str().unwrap()).unwrap();
    assert_eq!(input["area"], area, "the input shown literally");
    let result: Value = serde_json::from_str(shown["result"].as_str().unwrap()).unwrap();
    assert_eq!(result["area"], area, "the result shown literally");
    assert_eq!(browser.js(no_markup, vec![]).await, true);

    // Paused and resumed from the page; the pause's reason shown as written.
    browser.click("#action-pause").await;
    browser.type_into("#ask-reason", reason).await;
    browser.click("#ask-confirm").await;
    let paused = browser
        .wait_js(
            "the saga shown paused",
            "const p = document.getElementById('saga-paused');              return p && document.getElementById('action-resume') && p.textContent;",
            vec![],
        )
        .await;
    let paused = paused.as_str().unwrap();
    assert!(
        paused.starts_with(&format!("by {WRITER} since")) && paused.ends_with(reason),
        "{paused}"
    );
    assert_eq!(browser.js(no_markup, vec![]).await, true);
    browser.click("#action-resume").await;
    browser.type_into("#ask-reason", "inspected").await;
    browser.click("#ask-confirm").await;
    browser
        .wait_js(
            "the saga shown running again",
            "return document.getElementById('saga-paused') === null                && document.getElementById('action-pause') !== null;",
            vec![],
        )
        .await;

    // An operator's reason is shown as it was written.
    browser.click("#action-cancel").await;
    browser.type_into("#ask-reason", reason).await;
    browser.click("#ask-confirm").await;
    let action = browser
        .wait_js(
            "the cancel in the events",
            "const r = [...document.querySelectorAll('#event-log tr[data-event=operator_action] td.detail')] \
               .map(r => r.textContent).find(t => t.startsWith('cancel')); \
             return r;",
            vec![],
        )
        .await;
    assert_eq!(
        action.as_str().unwrap(),
        format!("cancel by {WRITER}: {reason}")
    );
    assert_eq!(browser.js(no_markup, vec![]).await, true);
    browser.screenshot("dashboard-markup-as-text").await;
    dash.stop(browser).await;
}

/// The lock job's saga and first step, named with markup: a definition's
/// names may hold any printable character but a space (a lock's name may
/// not hold `<`: it is shown by the same code as these).
const MARKED_SAGA: &str = "<i>locker</i>";
const MARKED_STEP: &str = "<b>take</b>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_show_who_holds_them_and_who_waits() {
    use common::locks::{lock_job_yaml, start_lock_job, wait_for_contention};
    let jobs = catalog(&lock_job_yaml(MARKED_SAGA, MARKED_STEP));
    let dash = Dashboard::start_with(jobs, SimulationOptions::default()).await;
    let browser = Browser::start(1280, 1000).await;
    browser.goto(&dash.base).await;
    browser.use_token(&dash.read_token, "read").await;
    let mut conn = dash.server.conn().await;
    start_lock_job(&mut conn, "holder", 7).await;
    wait_for_contention(&dash.server, &["holder"], &[]).await;
    start_lock_job(&mut conn, "waiter", 7).await;
    let ids = wait_for_contention(&dash.server, &["holder"], &["waiter"]).await;
    let (holder, waiter) = (&ids[0], &ids[1]);
    let no_markup =
        "return document.querySelectorAll('main i, main b, img, main script').length === 0 \
        && window.pwned === undefined;";

    // Every lock: robot:7, its holder and its waiter, each a link to its saga.
    browser.click("#nav-locks").await;
    let row = browser
        .wait_js(
            "robot:7 held and waited for",
            "const r = document.querySelector('#lock-table tr[data-lock=\"robot:7\"]'); \
             return r && r.querySelector('td.waiters li[data-saga-id]') && { \
               holder: r.querySelector('td.holder a.saga-link').getAttribute('href'), \
               saga: r.querySelector('td.holder .saga-name').textContent, \
               step: r.querySelector('td.holder .step-name').textContent, \
               waiters: [...r.querySelectorAll('td.waiters li[data-saga-id]')] \
                 .map(li => [li.dataset.sagaId, li.querySelector('a.saga-link').getAttribute('href'), \
                   li.querySelector('.step-name').textContent]) };",
            vec![],
        )
        .await;
    assert_eq!(row["holder"], format!("#/sagas/{holder}"), "{row}");
    assert_eq!(row["saga"], MARKED_SAGA, "shown as text: {row}");
    assert_eq!(row["step"], MARKED_STEP, "shown as text: {row}");
    assert_eq!(
        row["waiters"],
        json!([[waiter, format!("#/sagas/{waiter}"), MARKED_STEP]])
    );
    assert_eq!(browser.js(no_markup, vec![]).await, true, "no markup made");
    browser.screenshot("dashboard-locks").await;

    // The holder's page, from its link: the lock it holds, the signal it
    // waits for.
    browser
        .click("#lock-table tr[data-lock=\"robot:7\"] td.holder a.saga-link")
        .await;
    let shown = browser
        .wait_js(
            "the lock held and the signal awaited",
            "const held = document.querySelector('#held-locks tr[data-lock=\"robot:7\"]'); \
             const signal = document.querySelector('#signal-waits li[data-signal=approval]'); \
             const step = document.querySelector('#steps li[data-step=approve]'); \
             const attempts = step && step.querySelector('.attempts'); \
             return held && signal && attempts && { \
               held: held.querySelector('td.held-step').textContent, \
               signal: signal.textContent, step: step.dataset.state, \
               attempt: attempts.textContent };",
            vec![],
        )
        .await;
    assert_eq!(shown["held"], MARKED_STEP, "{shown}");
    assert!(
        (shown["signal"].as_str().unwrap()).starts_with("approve awaits signal approval until "),
        "{shown}"
    );
    assert_eq!(shown["step"], "awaiting", "{shown}");
    assert!(
        (shown["attempt"].as_str().unwrap()).ends_with("awaiting signal approval"),
        "{shown}"
    );
    assert_eq!(browser.js(no_markup, vec![]).await, true);
    browser.screenshot("dashboard-lock-held").await;

    // The waiter's page: the lock it waits for, who holds it, how many
    // are ahead, until when.
    browser
        .js(&format!("location.hash = '#/sagas/{waiter}';"), vec![])
        .await;
    let wait = browser
        .wait_js(
            "the lock waited for",
            "const w = document.querySelector('#lock-waits li[data-lock=\"robot:7\"]'); \
             return w && { step: w.querySelector('.wait-step').textContent, \
               holder: w.querySelector('.holder a.saga-link').getAttribute('href'), \
               ahead: w.querySelector('.ahead').textContent, text: w.textContent, \
               state: document.querySelector('#steps li.step').dataset.state };",
            vec![],
        )
        .await;
    assert_eq!(wait["step"], MARKED_STEP, "{wait}");
    assert_eq!(wait["holder"], format!("#/sagas/{holder}"), "{wait}");
    assert_eq!(wait["ahead"], ", 1 ahead", "{wait}");
    assert!(
        (wait["text"].as_str().unwrap()).contains(" if it still waits"),
        "{wait}"
    );
    assert_eq!(wait["state"], "locking", "{wait}");
    assert_eq!(browser.js(no_markup, vec![]).await, true);
    browser.screenshot("dashboard-lock-wait").await;

    // One lock by name, from the saga's page: a lock nobody holds is free.
    browser
        .click("#lock-waits li[data-lock=\"robot:7\"] a.lock-link")
        .await;
    browser
        .wait_js(
            "robot:7 alone",
            "return location.hash === '#/locks?name=robot%3A7' \
               && document.querySelectorAll('#lock-table tbody tr').length === 1;",
            vec![],
        )
        .await;
    browser.type_into("#lock-name", "robot:8").await;
    browser.click("#lock-form button[type=submit]").await;
    let free = browser
        .wait_js(
            "robot:8 free",
            "const r = document.querySelector('#lock-table tr[data-lock=\"robot:8\"]'); \
             return r && r.querySelector('td.holder').textContent;",
            vec![],
        )
        .await;
    assert_eq!(free, "free");
    dash.stop(browser).await;
}
