// The sagaflow dashboard: everything it shows is read from the API under
// /v1, with the bearer token kept in this tab's sessionStorage.
//
// Everything a saga carries (input, results, errors, correlation id,
// reasons) is written by whoever starts or handles it: it reaches the page
// only through text nodes (`el`, `textContent`), never as markup.
//
// Bounds, so that a long-open tab stays small:
// - a page of the list holds PAGE sagas, or `limit` in the address, at
//   most MAX_PAGE (the API's bound);
// - one saga's page keeps at most MAX_EVENTS events (the oldest progress
//   reports go first, then the oldest events);
// - one event of a stream may be at most MAX_EVENT_BYTES long: a stream
//   sending a longer one is dropped and opened again after it;
// - JSON shown at once is cut at MAX_JSON_CHARS characters;
// - the stuck view reads at most MAX_STUCK_DETAILS sagas in full;
// - the locks view shows at most MAX_WAITERS_SHOWN waiters of a lock, and
//   reads the locks (up to 10,000 saga records) at most every
//   STATS_EVERY_MS.
"use strict";

(() => {
  const TOKEN_KEY = "sagaflow.token";
  const PAGE = 50;
  const MAX_PAGE = 500;
  const MAX_EVENTS = 2000;
  const MAX_EVENT_BYTES = 1 << 20;
  const MAX_JSON_CHARS = 100000;
  const MAX_STUCK_DETAILS = 20;
  const MAX_WAITERS_SHOWN = 50;
  // A refresh waits this long for more events, and never longer than
  // REFRESH_MAX_DELAY after the first one.
  const REFRESH_DEBOUNCE_MS = 250;
  const REFRESH_MAX_DELAY_MS = 1000;
  // Read again now and then even while no event comes: a stream may be
  // refused (too many open) or a proxy may hold events back.
  const POLL_MS = 15000;
  // The counts are read at most this often: GET /v1/stats reads up to
  // 10,000 saga records.
  const STATS_EVERY_MS = 3000;
  const RECONNECT_MIN_MS = 500;
  const RECONNECT_MAX_MS = 10000;

  const STATES = ["running", "compensating", "completed", "compensated", "cancelled",
    "failed", "stuck", "abandoned", "ended"];
  const SHOWN_STATES = ["running", "compensating", "completed", "compensated", "cancelled",
    "stuck", "abandoned"];
  const SINCE = [["", "any time"], ["5m", "5 minutes"], ["1h", "1 hour"], ["24h", "24 hours"],
    ["7d", "7 days"]];

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------- DOM

  // An element with attributes and children; strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node, ...children) {
    node.replaceChildren();
    return append(node, children);
  }

  // JSON as indented text, cut at MAX_JSON_CHARS.
  function json(value) {
    let text = pretty(value, "");
    if (text === undefined) text = String(value);
    if (text.length > MAX_JSON_CHARS) {
      text = text.slice(0, MAX_JSON_CHARS) + `\n… (cut at ${MAX_JSON_CHARS} characters)`;
    }
    return el("pre", { class: "json" }, text);
  }

  // Indented JSON, with what fits on a short line kept on one line.
  function pretty(value, indent) {
    const flat = JSON.stringify(value);
    if (flat === undefined || flat.length <= 56 - indent.length || value === null
      || typeof value !== "object") return flat;
    const inner = `${indent}  `;
    if (Array.isArray(value)) {
      const items = value.map((v) => inner + (pretty(v, inner) ?? "null"));
      return `[\n${items.join(",\n")}\n${indent}]`;
    }
    const items = Object.entries(value).filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${inner}${JSON.stringify(k)}: ${pretty(v, inner)}`);
    return `{\n${items.join(",\n")}\n${indent}}`;
  }

  // JSON on one line, cut short, for tables.
  function brief(value, max = 120) {
    let text = typeof value === "string" ? value : JSON.stringify(value);
    if (text === undefined) return "";
    return text.length > max ? text.slice(0, max) + "…" : text;
  }

  function badge(state) {
    return el("span", { class: `badge state-${cssName(state)}`, "data-state": state }, state || "?");
  }

  function cssName(text) {
    return String(text || "unknown").replace(/[^a-z0-9_-]/gi, "_");
  }

  function sagaLink(id, text) {
    return el("a", { href: `#/sagas/${encodeURIComponent(id)}`, class: "saga-link" }, text || id);
  }

  function lockLink(name) {
    return el("a", { href: `#/locks${query({ name })}`, class: "lock-link" }, name);
  }

  function shortId(id) {
    return String(id || "").slice(0, 8);
  }

  function time(ms) {
    if (!ms) return "";
    const d = new Date(ms);
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    const clock = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
      + `.${pad(d.getMilliseconds(), 3)}`;
    const today = new Date();
    if (d.toDateString() === today.toDateString()) return clock;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock}`;
  }

  function duration(ms) {
    if (ms === null || ms === undefined || ms < 0) return "";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    const s = Math.round(ms / 1000);
    if (s < 3600) return `${Math.floor(s / 60)} m ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} m`;
  }

  function timeCell(ms) {
    return el("time", { datetime: ms ? new Date(ms).toISOString() : null }, time(ms));
  }

  // ------------------------------------------------------------- notices

  let noticeTimer = null;

  function notice(text, kind = "error") {
    const box = $("notice");
    clearTimeout(noticeTimer);
    if (!text) {
      box.hidden = true;
      return;
    }
    box.className = `notice ${kind}`;
    box.textContent = text;
    box.hidden = false;
    if (kind !== "error") noticeTimer = setTimeout(() => { box.hidden = true; }, 6000);
  }

  // ------------------------------------------------------------- the API

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function headers(extra) {
    const out = Object.assign({}, extra);
    const t = token();
    if (t) out.Authorization = `Bearer ${t}`;
    return out;
  }

  class ApiError extends Error {
    constructor(status, problem, text) {
      const detail = (problem && (problem.detail || problem.title)) || text || `HTTP ${status}`;
      super(String(detail).slice(0, 2000));
      this.status = status;
      this.problem = problem;
    }
  }

  async function problemOf(response) {
    const text = await response.text().catch(() => "");
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
    return new ApiError(response.status, body, text.slice(0, 500));
  }

  async function api(path, options = {}) {
    const init = { method: options.method || "GET", cache: "no-store", signal: options.signal };
    init.headers = headers(options.body !== undefined ? { "Content-Type": "application/json" } : {});
    if (options.body !== undefined) init.body = JSON.stringify(options.body);
    const response = await fetch(path, init);
    if (!response.ok) throw await problemOf(response);
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
    const s = q.toString();
    return s ? `?${s}` : "";
  }

  // ------------------------------------------------------ event streams

  // An event stream read with fetch(), which can send the token (an
  // EventSource cannot), parsed as the HTML standard says, reconnecting
  // after Last-Event-ID when it drops. `ends`: the server closing it means
  // there is nothing more (one saga's stream, once the saga is over).
  class EventStream {
    constructor(path, { onEvent, onState, ends }) {
      this.path = path;
      this.onEvent = onEvent;
      this.onState = onState || (() => {});
      this.ends = Boolean(ends);
      this.lastId = null;
      this.stopped = false;
      this.controller = null;
      this.wake = null;
      this.run();
    }

    stop() {
      this.stopped = true;
      if (this.controller) this.controller.abort();
      if (this.wake) this.wake();
    }

    async run() {
      let delay = RECONNECT_MIN_MS;
      while (!this.stopped) {
        this.controller = new AbortController();
        const h = headers({ Accept: "text/event-stream" });
        if (this.lastId) h["Last-Event-ID"] = this.lastId;
        let closed = false;
        try {
          const response = await fetch(this.path, {
            headers: h, cache: "no-store", signal: this.controller.signal,
          });
          if (!response.ok) throw await problemOf(response);
          this.onState("live");
          delay = RECONNECT_MIN_MS;
          await this.read(response.body.getReader());
          closed = true;
        } catch (e) {
          if (this.stopped) return;
          this.onState("down", e);
        }
        if (this.stopped) return;
        if (closed && this.ends) {
          this.onState("ended");
          return;
        }
        await new Promise((resolve) => {
          this.wake = resolve;
          setTimeout(resolve, delay);
        });
        delay = Math.min(delay * 2, RECONNECT_MAX_MS);
      }
    }

    async read(reader) {
      const decoder = new TextDecoder();
      let buffer = "";
      let event = { type: "", data: [], size: 0, id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += decoder.decode(value, { stream: true });
        let at;
        while ((at = buffer.search(/[\r\n]/)) >= 0) {
          // A CR at the very end may be the first half of a CRLF.
          if (buffer[at] === "\r" && at === buffer.length - 1) break;
          const line = buffer.slice(0, at);
          buffer = buffer.slice(at + (buffer[at] === "\r" && buffer[at + 1] === "\n" ? 2 : 1));
          if (line === "") {
            if (event.id !== null) this.lastId = event.id;
            if (event.data.length) {
              const kind = event.type || "message";
              const data = event.data.join("\n");
              if (kind === "error") throw new Error(`the stream failed: ${data.slice(0, 500)}`);
              let parsed = null;
              try { parsed = JSON.parse(data); } catch (_) { parsed = null; }
              if (parsed && typeof parsed === "object") this.onEvent(kind, parsed);
            }
            event = { type: "", data: [], size: 0, id: null };
            continue;
          }
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "data") {
            event.size += val.length;
            if (event.size > MAX_EVENT_BYTES) throw new Error("an event too large to show");
            event.data.push(val);
          } else if (field === "event") event.type = val;
          else if (field === "id" && !val.includes("\0")) event.id = val;
        }
        if (buffer.length > MAX_EVENT_BYTES) throw new Error("an event too large to show");
      }
    }
  }

  // ------------------------------------------------------ access and token

  let access = { read: false, write: false, name: null, scope: null, trace_url: null };

  async function loadAccess() {
    try {
      access = await api("/v1/access");
    } catch (e) {
      access = { read: false, write: false, name: null, scope: null, error: e };
    }
    const who = $("who");
    if (access.error) {
      who.textContent = access.error.status === 401 ? "token not accepted" : "API unreachable";
      who.dataset.access = "none";
      notice(`${access.error.message}`);
    } else if (access.name) {
      who.textContent = `${access.name} (${access.write ? "may act" : "read only"})`;
      who.dataset.access = access.write ? "write" : "read";
    } else {
      who.textContent = access.read ? "no token: read only" : "no token";
      who.dataset.access = access.read ? "read" : "none";
    }
    document.body.dataset.write = access.write ? "yes" : "no";
  }

  function setupToken() {
    const input = $("token");
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = input.value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      input.value = "";
      restart();
    });
    $("token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      input.value = "";
      restart();
    });
  }

  function showTokenState() {
    $("token").placeholder = token() ? "a token is in use (paste another)" : "paste a bearer token";
    $("token-forget").disabled = !token();
  }

  // ------------------------------------------------------ live updates

  // One stream of every saga's events, shared by the views: each view
  // registers what to do when sagas change.
  let feed = null;
  let onChange = null;

  function setLive(state, error) {
    const live = $("live");
    live.dataset.state = state;
    live.textContent = state === "live" ? "live" : state === "down" ? "reconnecting" : "not live";
    live.title = error ? String(error.message || error) : state;
  }

  function followAll() {
    if (feed) feed.stop();
    feed = null;
    if (!access.read) {
      setLive("off");
      return;
    }
    feed = new EventStream("/v1/events", {
      onEvent: () => changed(),
      onState: (state, e) => setLive(state, e),
    });
  }

  // `fn`, called once calls pause for REFRESH_DEBOUNCE_MS, and at the
  // latest REFRESH_MAX_DELAY_MS after the first call.
  function debounced(fn) {
    let timer = null;
    let first = 0;
    const call = () => {
      const now = Date.now();
      if (!timer) first = now;
      clearTimeout(timer);
      const wait = Math.max(0, Math.min(REFRESH_DEBOUNCE_MS, first + REFRESH_MAX_DELAY_MS - now));
      timer = setTimeout(() => {
        timer = null;
        fn();
      }, wait);
    };
    call.cancel = () => {
      clearTimeout(timer);
      timer = null;
    };
    return call;
  }

  // `fn`, at most once every `ms`: a call within that runs at its end.
  function throttled(fn, ms) {
    let last = 0;
    let timer = null;
    const call = () => {
      if (timer) return;
      const wait = last + ms - Date.now();
      if (wait <= 0) {
        last = Date.now();
        fn();
        return;
      }
      timer = setTimeout(() => {
        timer = null;
        last = Date.now();
        fn();
      }, wait);
    };
    call.cancel = () => {
      clearTimeout(timer);
      timer = null;
    };
    return call;
  }

  // Sagas changed: the view reads them again.
  const changed = debounced(() => {
    if (onChange) onChange();
    refreshStuckCount();
  });

  setInterval(() => {
    if (access.read && current && current.poll) current.poll();
    refreshStuckCount();
  }, POLL_MS);

  // The count beside "Stuck", read at most every 2 s.
  const refreshStuckCount = throttled(async () => {
    const count = $("stuck-count");
    if (!access.read) {
      count.hidden = true;
      return;
    }
    try {
      const page = await api(`/v1/sagas${query({ state: "stuck", limit: "100" })}`);
      const n = page.sagas.length;
      count.textContent = page.next_cursor ? `${n}+` : String(n);
      count.hidden = n === 0;
    } catch (_) {
      count.hidden = true;
    }
  }, 2000);

  // ------------------------------------------------------ routing

  let current = null;

  function route() {
    const hash = location.hash.replace(/^#/, "") || "/";
    const [path, search] = hash.split("?");
    const params = new URLSearchParams(search || "");
    if (current && current.stop) current.stop();
    current = null;
    onChange = null;
    notice("");
    const view = $("view");
    for (const a of document.querySelectorAll("nav a")) a.classList.remove("here");
    if (access.error && access.error.status !== 401) {
      clear(view, el("section", { class: "panel", id: "unreachable" },
        el("h1", {}, "The API does not answer"),
        el("p", { class: "error" }, access.error.message),
        el("button", { type: "button", onclick: () => restart() }, "Try again")));
      return;
    }
    if (!access.read) {
      clear(view, el("section", { class: "panel", id: "need-token" },
        el("h1", {}, "A token is needed"),
        el("p", {}, "Reading sagas needs a bearer token: paste one above. ",
          "`sagaflow api-token NAME` makes one (add --write to act on sagas)."),
      ));
      return;
    }
    const saga = path.match(/^\/sagas\/([0-9a-fA-F-]{1,64})$/);
    if (saga) {
      current = sagaView(view, saga[1]);
    } else if (path === "/stuck") {
      $("nav-stuck").classList.add("here");
      current = stuckView(view);
    } else if (path === "/locks") {
      $("nav-locks").classList.add("here");
      current = locksView(view, params);
    } else {
      $("nav-list").classList.add("here");
      current = listView(view, params);
    }
  }

  async function restart() {
    showTokenState();
    await loadAccess();
    followAll();
    refreshStuckCount();
    route();
  }

  // ------------------------------------------------------ the list

  function listView(view, params) {
    const filters = {
      state: params.get("state") || "",
      name: params.get("name") || "",
      since: params.get("since") || "",
      q: params.get("q") || "",
    };
    const wanted = Number(params.get("limit"));
    const limit = Number.isInteger(wanted) && wanted >= 1 && wanted <= MAX_PAGE ? wanted : PAGE;
    // Cursors of the pages before this one, for going back.
    const cursors = [];
    let cursor = params.get("cursor") || "";
    let stopped = false;
    let loading = null;

    const stateSelect = el("select", { id: "filter-state", name: "state" },
      el("option", { value: "" }, "every state"),
      STATES.map((s) => el("option", { value: s, selected: s === filters.state }, s)));
    const nameSelect = el("select", { id: "filter-name", name: "name" },
      el("option", { value: "" }, "every saga"));
    if (filters.name) nameSelect.append(el("option", { value: filters.name, selected: true }, filters.name));
    const sinceSelect = el("select", { id: "filter-since", name: "since" },
      SINCE.map(([v, label]) => el("option", { value: v, selected: v === filters.since }, label)));
    const search = el("input", {
      id: "filter-q", name: "q", type: "search", value: filters.q, maxlength: "128",
      placeholder: "saga id (or its start) or correlation id", spellcheck: "false",
    });
    const form = el("form", { class: "filters", id: "filters" },
      el("label", {}, "State ", stateSelect),
      el("label", {}, "Saga ", nameSelect),
      el("label", {}, "Since ", sinceSelect),
      el("label", { class: "grow" }, "Search ", search),
      el("button", { type: "submit" }, "Find"),
      el("button", { type: "button", id: "filters-clear" }, "Clear"));
    const go = () => {
      const next = {
        state: stateSelect.value, name: nameSelect.value, since: sinceSelect.value,
        q: search.value.trim(), limit: limit === PAGE ? "" : String(limit),
      };
      location.hash = `#/${query(next)}`;
    };
    form.addEventListener("submit", (e) => { e.preventDefault(); go(); });
    for (const s of [stateSelect, nameSelect, sinceSelect]) s.addEventListener("change", go);
    form.querySelector("#filters-clear").addEventListener("click", () => { location.hash = "#/"; });

    const counts = el("section", { class: "panel counts", id: "counts" });
    const table = el("section", { class: "panel", id: "sagas" });
    clear(view, counts, el("section", { class: "panel" }, form), table);

    definitionsInto(nameSelect, filters.name);

    const loadStats = throttled(async () => {
      if (stopped) return;
      try {
        const stats = await api("/v1/stats");
        if (!stopped) renderCounts(counts, stats);
      } catch (e) {
        if (!stopped) clear(counts, el("p", { class: "error" }, `Counts: ${e.message}`));
      }
    }, STATS_EVERY_MS);

    async function loadPage() {
      const mine = {};
      loading = mine;
      try {
        const page = await api(`/v1/sagas${query({ ...filters, cursor, limit: String(limit) })}`);
        if (stopped || loading !== mine) return;
        renderTable(page);
      } catch (e) {
        if (!stopped) clear(table, el("p", { class: "error" }, e.message));
      }
    }

    function renderTable(page) {
      const rows = page.sagas.map((s) => el("tr", { "data-saga-id": s.saga_id, "data-state": s.state },
        el("td", { class: "id" }, sagaLink(s.saga_id, shortId(s.saga_id))),
        el("td", { class: "name" }, s.saga),
        el("td", { class: "state" }, badge(s.state)),
        el("td", { class: "correlation" }, s.correlation_id),
        el("td", {}, timeCell(s.started_at_ms)),
        el("td", {}, s.ended_at_ms ? duration(s.ended_at_ms - s.started_at_ms)
          : duration(Date.now() - s.started_at_ms)),
        el("td", { class: "failure" }, s.failure ? failureText(s.failure) : ""),
      ));
      const pager = el("div", { class: "pager" },
        el("button", {
          type: "button", id: "page-first", disabled: !cursor,
          onclick: () => { cursors.length = 0; cursor = ""; loadPage(); },
        }, "Newest"),
        el("button", {
          type: "button", id: "page-newer", disabled: !cursor,
          onclick: () => { cursor = cursors.pop() || ""; loadPage(); },
        }, "Newer"),
        el("button", {
          type: "button", id: "page-older", disabled: !page.next_cursor,
          onclick: () => { cursors.push(cursor); cursor = page.next_cursor; loadPage(); },
        }, "Older"));
      clear(table,
        el("h2", {}, "Sagas ", el("span", { class: "muted" },
          filters.state || filters.name || filters.since || filters.q ? "(filtered)" : "(newest change first)")),
        rows.length
          ? el("table", { class: "list", id: "saga-table" },
            el("thead", {}, el("tr", {},
              ["saga id", "saga", "state", "correlation id", "started", "took", "failure"]
                .map((h) => el("th", {}, h)))),
            el("tbody", {}, rows))
          : el("p", { class: "muted", id: "no-sagas" }, cursor ? "No older saga." : "No saga matches."),
        pager);
    }

    function refresh() {
      loadStats();
      loadPage();
    }
    onChange = refresh;
    refresh();
    return {
      stop() {
        stopped = true;
        loadStats.cancel();
      },
      poll: refresh,
    };
  }

  async function definitionsInto(select, chosen) {
    try {
      const defs = await api("/v1/definitions");
      for (const name of defs.definitions || []) {
        if (name === chosen) continue;
        select.append(el("option", { value: name }, name));
      }
    } catch (_) { /* the list shows the error */ }
  }

  function failureText(failure) {
    if (!failure || typeof failure !== "object") return brief(failure);
    const where = failure.step ? `${failure.step}: ` : "";
    return brief(`${where}${failure.reason || failure.error || JSON.stringify(failure)}`, 160);
  }

  function renderCounts(box, stats) {
    const phases = stats.by_phase || {};
    const order = ["running", "compensating", "completed", "compensated", "failed"];
    const rank = (p) => (order.indexOf(p) + 1) || order.length + 1;
    const chips = Object.entries(phases).sort(([a], [b]) => rank(a) - rank(b)).map(([phase, n]) =>
      el("a", {
        class: `chip state-${cssName(phase)}`, href: `#/${query({ state: phase })}`,
        "data-phase": phase,
      }, el("span", { class: "n" }, String(n)), ` ${phase}`));
    const bySaga = (stats.recent && stats.recent.by_saga) || {};
    const names = Object.keys(bySaga).sort();
    const since = stats.recent && stats.recent.since_ms;
    const table = names.length
      ? el("table", { class: "list by-saga", id: "by-saga" },
        el("thead", {}, el("tr", {}, el("th", {}, "saga"), SHOWN_STATES.map((s) => el("th", {}, s)))),
        el("tbody", {}, names.map((name) => el("tr", { "data-saga": name },
          el("td", {}, el("a", { href: `#/${query({ name })}` }, name)),
          SHOWN_STATES.map((s) => {
            const n = bySaga[name][s] || 0;
            return el("td", { class: n ? "n" : "n zero", "data-state": s },
              n ? el("a", { href: `#/${query({ name, state: s })}` }, String(n)) : "0");
          })))))
      : el("p", { class: "muted" }, "No saga in this window.");
    clear(box,
      el("h2", {}, "Sagas kept, by phase"),
      el("div", { class: "chips", id: "by-phase" }, chips.length ? chips : el("span", { class: "muted" }, "none")),
      el("h2", {}, "Recent, by saga ",
        el("span", { class: "muted" }, since ? `(started or changed since ${time(since)}` : "(",
          stats.recent && stats.recent.complete === false ? ", the newest only)" : ")")),
      table);
  }

  // ------------------------------------------------------ one saga

  function sagaView(view, id) {
    let stopped = false;
    let saga = null;
    const events = new Map();
    let stream = null;
    let drawQueued = false;

    const head = el("section", { class: "panel", id: "saga-head" }, el("p", { class: "muted" }, "Loading…"));
    const stuckBox = el("section", { class: "panel stuck", id: "saga-stuck", hidden: true });
    const locksBox = el("section", { class: "panel", id: "saga-locks", hidden: true });
    const timeline = el("section", { class: "panel", id: "timeline" });
    const data = el("section", { class: "panel", id: "saga-data" });
    const log = el("section", { class: "panel", id: "events" });
    clear(view, head, stuckBox, locksBox, el("div", { class: "columns" }, timeline, data), log);

    async function load() {
      try {
        const got = await api(`/v1/sagas/${encodeURIComponent(id)}`);
        if (stopped) return;
        saga = got;
        draw();
        if (!stream) follow();
      } catch (e) {
        if (stopped) return;
        clear(head, el("h1", {}, "Saga ", id), el("p", { class: "error", id: "saga-error" }, e.message));
      }
    }

    function follow() {
      stream = new EventStream(`/v1/sagas/${encodeURIComponent(saga.saga_id)}/events`, {
        ends: true,
        onEvent: (kind, event) => {
          if (!event.id || events.has(event.id)) return;
          events.set(event.id, event);
          trim(events);
          queueDraw();
          reloadSoon();
        },
        onState: (state, e) => {
          if (stopped) return;
          setLive(state === "ended" ? (feed ? "live" : "off") : state, e);
          if (state === "ended") load();
        },
      });
    }

    // The saga's record changes with its events: read it again.
    const reloadSoon = debounced(() => { if (!stopped) load(); });

    function queueDraw() {
      if (drawQueued) return;
      drawQueued = true;
      requestAnimationFrame(() => {
        drawQueued = false;
        if (!stopped) draw();
      });
    }

    // Each part is drawn again only when what it shows changed, so that
    // a button is not replaced under the pointer.
    const drawn = new Map();
    function part(name, key, paint) {
      if (drawn.get(name) === key) return;
      drawn.set(name, key);
      paint();
    }

    function draw() {
      if (!saga) return;
      const list = [...events.values()];
      // Without what changes by itself (the time it is still kept).
      const sagaKey = `${access.write}|${JSON.stringify({ ...saga, expires_in_secs: null })}`;
      const last = list.length ? list[list.length - 1].id : "";
      const eventsKey = `${list.length}|${last}`;
      part("head", `${sagaKey}|${eventsKey}`, () => drawHead(head, saga, list));
      part("stuck", sagaKey, () => drawStuck(stuckBox, saga, load));
      part("locks", sagaKey, () => drawLocks(locksBox, saga));
      part("timeline", `${sagaKey}|${eventsKey}`, () => drawTimeline(timeline, saga, list));
      part("data", sagaKey, () => drawData(data, saga));
      part("log", `${saga.started_at_ms}|${eventsKey}`, () => drawLog(log, saga, list));
    }

    load();
    return {
      poll: load,
      stop() {
        stopped = true;
        reloadSoon.cancel();
        if (stream) stream.stop();
        setLive(feed ? "live" : "off");
      },
    };
  }

  // Keeps at most MAX_EVENTS: progress reports go first, oldest first.
  function trim(events) {
    if (events.size <= MAX_EVENTS) return;
    for (const [id, e] of events) {
      if (events.size <= MAX_EVENTS) return;
      if (/_progress$/.test(e.event_type)) events.delete(id);
    }
    for (const id of events.keys()) {
      if (events.size <= MAX_EVENTS) return;
      events.delete(id);
    }
  }

  function drawHead(box, saga, events) {
    const trace = traceLink(saga.links && saga.links.trace);
    const last = events.length ? events[events.length - 1].timestamp : null;
    const ended = saga.ended_at_ms;
    const facts = [
      ["saga id", el("code", { id: "saga-id" }, saga.saga_id)],
      ["correlation id", el("code", { id: "saga-correlation" }, saga.correlation_id)],
      ["started", timeCell(saga.started_at_ms)],
      [ended ? "ended" : "last event", timeCell(ended || last)],
      [ended ? "took" : "running for", duration((ended || Date.now()) - saga.started_at_ms)],
      ["trace", trace || el("code", {}, saga.trace_id)],
    ];
    if (saga.owner) facts.push(["driven by", saga.owner]);
    if (saga.rescues) facts.push(["taken over", `${saga.rescues} time(s)`]);
    if (saga.abandoned_by) facts.push(["abandoned by", brief(saga.abandoned_by, 300)]);
    if (saga.paused) {
      facts.push(["paused", el("span", { id: "saga-paused" },
        `by ${brief(saga.paused.by, 100)} since `, timeCell(saga.paused.since_ms),
        `: ${brief(saga.paused.reason, 300)}`)]);
    }
    if (saga.parked) facts.push(["parked", brief(saga.parked, 300)]);
    if (saga.expires_in_secs !== null && saga.expires_in_secs !== undefined && saga.expires_in_secs >= 0) {
      facts.push(["kept for", duration(saga.expires_in_secs * 1000)]);
    }
    const actions = el("div", { class: "actions", id: "saga-actions" });
    if (access.write && saga.state === "running") {
      actions.append(el("button", {
        type: "button", class: "danger", id: "action-cancel",
        onclick: () => act(saga, "cancel", () => {}),
      }, "Cancel…"));
    }
    if (access.write && (saga.state === "running" || saga.state === "compensating")) {
      const [action, label] = saga.paused ? ["resume", "Resume…"] : ["pause", "Pause…"];
      actions.append(el("button", {
        type: "button", id: `action-${action}`,
        onclick: () => act(saga, action, () => {}),
      }, label));
    }
    clear(box,
      el("div", { class: "title" },
        el("h1", {}, saga.saga, " ", el("span", { class: "muted" }, shortId(saga.saga_id))),
        badge(saga.state),
        saga.status !== saga.state ? el("span", { class: "muted status" }, saga.status) : null,
        actions),
      el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
      saga.failure ? el("div", { class: "failure", id: "saga-failure" },
        el("strong", {}, "Failure: "), failureText(saga.failure)) : null);
  }

  // A link to the trace, only if it is an http(s) address.
  function traceLink(url) {
    if (!url) return null;
    let parsed;
    try { parsed = new URL(url, location.href); } catch (_) { return null; }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return null;
    return el("a", {
      href: parsed.href, target: "_blank", rel: "noopener noreferrer", id: "trace-link",
    }, "open the trace");
  }

  function drawStuck(box, saga, reload) {
    const stuck = saga.stuck || [];
    if (saga.state !== "stuck" || !stuck.length) {
      box.hidden = true;
      clear(box);
      return;
    }
    box.hidden = false;
    clear(box, el("h2", {}, "Stuck: a compensation failed for good"), stuckDetails(saga, reload));
  }

  // The locks the saga holds, the locks its steps wait for (who holds each,
  // how many are ahead, as the saga last heard), and the signals its
  // `wait` steps wait for.
  function drawLocks(box, saga) {
    const held = Object.entries(saga.locks || {});
    const waits = saga.lock_waits || [];
    const signals = (saga.units || []).filter((u) => u.state === "awaiting");
    if (!held.length && !waits.length && !signals.length) {
      box.hidden = true;
      clear(box);
      return;
    }
    box.hidden = false;
    const heldTable = held.length
      ? el("table", { class: "list", id: "held-locks" },
        el("thead", {}, el("tr", {}, ["lock held", "taken by step", "since"].map((h) => el("th", {}, h)))),
        el("tbody", {}, held.map(([name, h]) => el("tr", { "data-lock": name },
          el("td", { class: "lock" }, lockLink(name)),
          el("td", { class: "held-step" }, h.step),
          el("td", {}, timeCell(h.since_ms))))))
      : null;
    const waitList = waits.length
      ? el("ul", { class: "waits", id: "lock-waits" }, waits.map((w) => el("li", {
        "data-step": w.step, "data-lock": w.lock || "",
      },
      el("strong", { class: "wait-step" }, w.step),
      w.lock ? [" waits for lock ", lockLink(w.lock)] : " holds its locks and starts next",
      w.lock && w.holder ? [": held by saga ", el("span", { class: "holder" }, sagaLink(w.holder, shortId(w.holder)))] : null,
      w.lock && !w.holder ? ": asking" : null,
      w.lock && w.ahead !== null && w.ahead !== undefined
        ? el("span", { class: "ahead" }, `, ${w.ahead} ahead`) : null,
      (w.pending || []).length > 1 ? `; then ${w.pending.slice(1).join(", ")}` : null,
      w.lock ? ["; fails at ", timeCell(w.deadline_ms), " if it still waits"] : null)))
      : null;
    const signalList = signals.length
      ? el("ul", { class: "waits", id: "signal-waits" }, signals.map((u) => el("li", {
        "data-step": u.step, "data-signal": u.signal,
      },
      el("strong", { class: "wait-step" }, unitName(u.step, u.branch)), " awaits signal ",
      el("code", { class: "signal" }, u.signal), " until ", timeCell(u.deadline_ms))))
      : null;
    clear(box, el("h2", {}, "Locks and waits"), heldTable, waitList, signalList);
  }

  function stuckDetails(saga, reload) {
    const stuck = saga.stuck || [];
    const rows = stuck.map((s) => el("li", { "data-step": s.step },
      el("strong", {}, unitName(s.step, s.branch)), ": ", el("span", { class: "error-text" }, s.error)));
    const buttons = access.write ? el("div", { class: "actions" },
      el("button", {
        type: "button", class: "action-retry", onclick: () => act(saga, "retry", reload),
      }, "Retry…"),
      el("button", {
        type: "button", class: "action-skip", onclick: () => act(saga, "skip", reload),
      }, "Skip…"),
      el("button", {
        type: "button", class: "action-abandon danger", onclick: () => act(saga, "abandon", reload),
      }, "Abandon…"))
      : el("p", { class: "muted read-only" }, "A write token may retry, skip or abandon it.");
    return [
      el("ul", { class: "stuck-list" }, rows),
      saga.failure ? el("p", {}, "It was undoing: ", failureText(saga.failure)) : null,
      buttons,
    ];
  }

  function unitName(step, branch) {
    return branch === null || branch === undefined ? step : `${step}[${branch}]`;
  }

  // ------------------------------------------------------ the timeline

  // Every unit of work (a step, or a branch of a fan-out) with its
  // attempts, from the events in their order.
  function unitsFrom(events) {
    const units = new Map();
    const unit = (step, branch) => {
      const key = unitName(step, branch);
      if (!units.has(key)) units.set(key, { step, branch, item: undefined, attempts: [], whole: null });
      return units.get(key);
    };
    for (const e of events) {
      if (!e.step || !/^(step|compensation)_/.test(e.event_type)) continue;
      const branch = e.branch === undefined || e.branch === null || e.branch === "" ? null : Number(e.branch);
      const u = unit(e.step, branch);
      const p = e.payload && typeof e.payload === "object" ? e.payload : {};
      if (p.item !== undefined && u.item === undefined) u.item = p.item;
      const [kind, what] = e.event_type.startsWith("compensation_")
        ? ["undo", e.event_type.slice("compensation_".length)]
        : ["do", e.event_type.replace(/^step_/, "")];
      if (what === "started" && p.branches !== undefined && branch === null) {
        u.whole = { branches: p.branches, started: e.timestamp, ended: null, result: undefined };
        continue;
      }
      if (u.whole && branch === null && kind === "do" && (what === "completed" || what === "failed")) {
        u.whole.ended = e.timestamp;
        u.whole.outcome = what;
        continue;
      }
      const open = [...u.attempts].reverse().find((a) => a.kind === kind && !a.end);
      if (what === "started" || what === "retrying" || !open) {
        if (what === "retrying") {
          if (open) open.end = { what: "retrying", at: e.timestamp, detail: p };
          continue;
        }
        u.attempts.push({
          kind, attempt: p.attempt || u.attempts.filter((a) => a.kind === kind).length + 1,
          started: e.timestamp, progress: null, end: null,
        });
        if (what === "started") continue;
      }
      const a = [...u.attempts].reverse().find((x) => x.kind === kind && !x.end);
      if (!a) continue;
      if (what === "progress") a.progress = p.progress !== undefined ? p.progress : a.progress;
      else a.end = { what, at: e.timestamp, detail: p };
    }
    return units;
  }

  // A step's state is its units' first in this order.
  const UNIT_STATE_ORDER = ["stuck", "undoing", "acting", "awaiting", "undone", "skipped", "ended",
    "completed"];

  // How far a unit has gone: a later state wins, so that the saga's
  // record, read a moment ago, and the events that came since agree.
  // A `wait` step's unit is awaiting its signal where its events say acting.
  const UNIT_STATE_RANK = {
    acting: 1, awaiting: 1, completed: 2, ended: 2, undoing: 3, stuck: 4, undone: 5, skipped: 5,
  };

  // A unit's state from its events alone.
  function eventState(u) {
    if (!u) return null;
    if (u.whole && u.whole.ended) return u.whole.outcome === "completed" ? "completed" : "acting";
    const last = u.attempts[u.attempts.length - 1];
    if (!last) return u.whole ? "acting" : null;
    const done = last.end && last.end.what === "completed";
    if (last.kind === "undo") return done ? "undone" : "undoing";
    return done ? "completed" : "acting";
  }

  function unitState(rec, u) {
    const recorded = rec ? rec.state : null;
    const seen = eventState(u);
    if (!recorded || !seen) return recorded || seen;
    return (UNIT_STATE_RANK[seen] || 0) > (UNIT_STATE_RANK[recorded] || 0) ? seen : recorded;
  }

  function drawTimeline(box, saga, events) {
    const units = unitsFrom(events);
    const steps = (saga.steps && saga.steps.length) ? [...saga.steps] : [];
    for (const u of units.values()) if (!steps.includes(u.step)) steps.push(u.step);
    for (const u of saga.units || []) if (!steps.includes(u.step)) steps.push(u.step);
    const stateOf = new Map();
    for (const u of saga.units || []) stateOf.set(unitName(u.step, u.branch), u);
    const items = steps.map((step, i) => {
      const whole = units.get(step);
      const branches = [...units.values()].filter((u) => u.step === step && u.branch !== null)
        .sort((a, b) => a.branch - b.branch);
      for (const u of saga.units || []) {
        if (u.step === step && u.branch !== undefined && u.branch !== null
          && !branches.some((b) => b.branch === u.branch)) {
          branches.push({ step, branch: u.branch, item: u.item, attempts: [] });
        }
      }
      branches.sort((a, b) => a.branch - b.branch);
      const fanOut = branches.length > 0 || (whole && whole.whole);
      const states = fanOut
        ? branches.map((b) => unitState(stateOf.get(unitName(step, b.branch)), b))
        : [unitState(stateOf.get(step), whole)];
      if (fanOut && whole && whole.whole) states.push(eventState(whole));
      const locking = (saga.lock_waits || []).some((w) => w.step === step);
      const state = states.filter(Boolean)
        .sort((a, b) => UNIT_STATE_ORDER.indexOf(a) - UNIT_STATE_ORDER.indexOf(b))[0]
        || (locking ? "locking" : "pending");
      const head = el("div", { class: "step-head" },
        el("span", { class: "step-no" }, String(i + 1)),
        el("span", { class: "step-name" }, step),
        badge(state),
        fanOut ? el("span", { class: "muted" }, ` fan-out: ${branches.length} branch(es)`) : null,
        whole && whole.whole && whole.whole.ended
          ? el("span", { class: "muted" }, ` in ${duration(whole.whole.ended - whole.whole.started)}`) : null);
      const body = fanOut
        ? el("ol", { class: "branches" }, branches.map((b) => {
          const rec = stateOf.get(unitName(step, b.branch));
          const bState = unitState(rec, b) || "pending";
          return el("li", { class: "branch", "data-branch": String(b.branch), "data-state": bState },
            el("div", { class: "branch-head" },
              el("span", { class: "branch-name" }, `branch ${b.branch}`),
              badge(bState),
              b.item !== undefined || (rec && rec.item !== undefined)
                ? el("code", { class: "item" }, brief(b.item !== undefined ? b.item : rec.item, 80)) : null),
            attemptsList(b.attempts, rec));
        }))
        : attemptsList(whole ? whole.attempts : [], stateOf.get(step));
      return el("li", { class: `step state-${cssName(state)}`, "data-step": step, "data-state": state }, head, body);
    });
    clear(box, el("h2", {}, "Steps"), el("ol", { class: "timeline", id: "steps" }, items));
  }

  function attemptsList(attempts, rec) {
    if (!attempts.length) {
      return rec && rec.error ? el("p", { class: "error-text" }, rec.error) : null;
    }
    return el("ul", { class: "attempts" }, attempts.map((a) => {
      const label = `${a.kind === "undo" ? "undo" : "attempt"} ${a.attempt}`;
      const parts = [el("span", { class: `attempt-kind ${a.kind}` }, label), " ", timeCell(a.started)];
      const atWork = !rec || rec.state === (a.kind === "undo" ? "undoing" : "acting");
      if (!a.end && rec && rec.state === "awaiting") {
        parts.push(" · awaiting signal ", el("code", { class: "signal" }, rec.signal));
      } else if (!a.end && !atWork) {
        parts.push(" · ", el("span", { class: "outcome outcome-unanswered" }, "no answer"));
      } else if (!a.end) {
        const value = a.progress === null ? NaN : Number(a.progress);
        parts.push(" ", Number.isFinite(value)
          ? el("progress", { max: "100", value: String(Math.max(0, Math.min(100, value))) }) : null,
        Number.isFinite(value) ? ` ${Math.round(value)}%` : " running");
      } else {
        const d = a.end.detail || {};
        const outcome = el("span", { class: `outcome outcome-${cssName(a.end.what)}` }, a.end.what.replace(/_/g, " "));
        parts.push(" · ", outcome, ` after ${duration(a.end.at - a.started)}`);
        const error = d.error || d.reason;
        if (error) parts.push(": ", el("span", { class: "error-text" }, brief(error, 400)));
      }
      return el("li", { class: `attempt ${a.kind}`, "data-kind": a.kind }, parts);
    }));
  }

  function drawData(box, saga) {
    const results = saga.results || {};
    // In the order of the steps, not of their names.
    const order = saga.steps || [];
    const names = Object.keys(results).sort((a, b) =>
      (order.indexOf(a) + 1 || Infinity) - (order.indexOf(b) + 1 || Infinity));
    clear(box,
      el("h2", {}, "Input"),
      el("div", { id: "saga-input" }, json(saga.input)),
      el("h2", {}, "Results"),
      Object.keys(results).length
        ? el("dl", { class: "results", id: "saga-results" },
          names.map((step) => [el("dt", {}, step), el("dd", {}, json(results[step]))]))
        : el("p", { class: "muted" }, "No step has a result yet."));
  }

  // What an event says, in a line.
  function eventDetail(type, p, payload) {
    const list = (xs) => (Array.isArray(xs) && xs.length ? xs.join(", ") : "nothing");
    switch (type) {
      case "operator_action":
        return `${p.action || ""} by ${p.by || "?"}${p.reason ? `: ${p.reason}` : ""}`
          + `${p.refused ? ` (refused: ${p.refused})` : ""}`;
      case "saga_started": return `input ${brief(p.input)}`;
      case "lock_waiting":
        return `waits for lock ${p.lock || "?"}${p.holder ? ` held by saga ${shortId(p.holder)}` : ""}`
          + `, ${p.ahead} ahead`;
      case "lock_acquired": return `took lock ${p.lock || "?"} after ${duration(p.waited_ms)}`;
      case "locks_released": return `let go of ${list(p.locks)}`;
      case "saga_completed": return `results of ${Object.keys(p.results || {}).length} step(s)`;
      case "saga_compensated":
        return `${p.failed_step || ""}: ${p.reason || ""}; undone: ${list(p.compensated)}`;
      case "saga_failed":
        return `${p.failed_step || ""}: ${p.reason || ""}; stuck undoing ${p.compensation || "?"}: ${p.error || ""}`;
      default: break;
    }
    if (p.branches !== undefined && p.result === undefined) return `${p.branches} branch(es)`;
    if (type === "step_started" && p.signal !== undefined) {
      return `awaits signal ${p.signal} until ${time(p.deadline_ms)}`;
    }
    if (/_started$/.test(type)) {
      return `attempt ${p.attempt} → ${p.command || "?"} on ${p.stream || "?"}`
        + `${p.item !== undefined ? ` for ${brief(p.item, 60)}` : ""}`;
    }
    if (/_retrying$/.test(type)) return `attempt ${p.attempt} in ${duration(p.delay_ms)}`;
    if (/_timed_out$/.test(type)) return `attempt ${p.attempt}: no ${p.timeout || ""} in time`;
    if (p.error) return `attempt ${p.attempt}: ${p.error}${p.retryable ? " (retryable)" : ""}`;
    if (/_progress$/.test(type)) {
      return `${p.progress === null || p.progress === undefined ? "" : `${p.progress}%`}`
        + `${p.details !== undefined ? ` ${brief(p.details)}` : ""}`;
    }
    if (p.result !== undefined) return brief(p.result);
    return payload === undefined || payload === null ? "" : brief(payload);
  }

  function drawLog(box, saga, events) {
    const start = saga.started_at_ms;
    const rows = events.map((e) => {
      const p = e.payload && typeof e.payload === "object" ? e.payload : {};
      const detail = eventDetail(e.event_type, p, e.payload);
      return el("tr", { "data-event": e.event_type },
        el("td", {}, timeCell(e.timestamp)),
        el("td", { class: "muted offset" }, `+${duration(e.timestamp - start)}`),
        el("td", {}, el("span", { class: `event-type ${cssName(e.event_type)}` }, e.event_type)),
        el("td", {}, e.step ? unitName(e.step, e.branch === undefined || e.branch === "" ? null : e.branch) : ""),
        el("td", { class: "detail" }, brief(detail, 300)));
    });
    clear(box,
      el("h2", {}, "Events ", el("span", { class: "muted" }, `(${events.length})`)),
      rows.length
        ? el("table", { class: "list events", id: "event-log" },
          el("thead", {}, el("tr", {}, ["time", "", "event", "step", "detail"].map((h) => el("th", {}, h)))),
          el("tbody", {}, rows))
        : el("p", { class: "muted" }, "No event kept (the events stream is trimmed)."));
  }

  // ------------------------------------------------------ stuck sagas

  function stuckView(view) {
    let stopped = false;
    let lastKey = null;
    const box = el("section", { class: "panel", id: "stuck" }, el("p", { class: "muted" }, "Loading…"));
    clear(view, box);

    async function refresh() {
      try {
        const page = await api(`/v1/sagas${query({ state: "stuck", limit: String(PAGE) })}`);
        const shown = page.sagas.slice(0, MAX_STUCK_DETAILS);
        const full = await Promise.all(shown.map((s) =>
          api(`/v1/sagas/${encodeURIComponent(s.saga_id)}`).catch(() => null)));
        if (stopped) return;
        // Unchanged: the buttons stay where they are.
        const key = `${access.write}|${page.sagas.length}|${page.next_cursor}|`
          + JSON.stringify(full.map((x) => x && { ...x, expires_in_secs: null }));
        if (key === lastKey) return;
        lastKey = key;
        const cards = full.filter(Boolean).map((saga) => el("article", {
          class: "stuck-saga", "data-saga-id": saga.saga_id,
        },
        el("h3", {}, sagaLink(saga.saga_id, `${saga.saga} ${shortId(saga.saga_id)}`), " ",
          badge(saga.state), " ", el("span", { class: "muted" }, "correlation id "),
          el("code", {}, saga.correlation_id)),
        stuckDetails(saga, refresh)));
        const more = page.sagas.length > shown.length || page.next_cursor
          ? el("p", { class: "muted" }, `Showing ${shown.length}; more are stuck: `,
            el("a", { href: `#/${query({ state: "stuck" })}` }, "list them all"))
          : null;
        clear(box,
          el("h1", {}, "Stuck sagas"),
          el("p", { class: "muted" },
            "A compensation of these failed for good. Retry it once the cause is fixed, ",
            "skip it once it was done by hand, or abandon the saga."),
          cards.length ? cards : el("p", { class: "muted", id: "none-stuck" }, "No saga is stuck."),
          more);
      } catch (e) {
        lastKey = null;
        if (!stopped) clear(box, el("p", { class: "error" }, e.message));
      }
    }
    onChange = refresh;
    refresh();
    return { stop() { stopped = true; }, poll: refresh };
  }

  // ------------------------------------------------------ locks

  // Every lock in use (GET /v1/locks), or the one named in the address
  // (`#/locks?name=robot:7`), with its holder and waiters, each linking
  // to its saga.
  function locksView(view, params) {
    const name = params.get("name") || "";
    let stopped = false;
    let lastKey = null;
    const input = el("input", {
      id: "lock-name", name: "name", type: "search", value: name, maxlength: "200",
      placeholder: "a lock's name, e.g. robot:7", spellcheck: "false",
    });
    const form = el("form", { class: "filters", id: "lock-form" },
      el("label", { class: "grow" }, "Lock ", input),
      el("button", { type: "submit" }, "Show"),
      el("button", { type: "button", id: "lock-all" }, "Every lock"));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      location.hash = `#/locks${query({ name: input.value.trim() })}`;
    });
    form.querySelector("#lock-all").addEventListener("click", () => { location.hash = "#/locks"; });
    const box = el("section", { class: "panel", id: "locks" }, el("p", { class: "muted" }, "Loading…"));
    clear(view, el("section", { class: "panel" }, form), box);

    const entry = (e, since) => [
      sagaLink(e.saga_id, shortId(e.saga_id)), " ",
      el("span", { class: "saga-name" }, e.saga), " · ",
      el("span", { class: "step-name" }, e.step), " since ", timeCell(since)];

    function render(data) {
      const rows = data.locks.map((q) => {
        const more = q.waiters.length - MAX_WAITERS_SHOWN;
        return el("tr", { "data-lock": q.lock },
          el("td", { class: "lock" }, lockLink(q.lock)),
          el("td", { class: "holder" }, q.holder
            ? entry(q.holder, q.holder.held_since_ms || q.holder.since_ms)
            : el("span", { class: "muted" }, "free")),
          el("td", { class: "waiters" }, q.waiters.length
            ? el("ol", { class: "waiters" },
              q.waiters.slice(0, MAX_WAITERS_SHOWN).map((w) => el("li", { "data-saga-id": w.saga_id },
                entry(w, w.since_ms))),
              more > 0 ? el("li", { class: "muted" }, `and ${more} more`) : null)
            : el("span", { class: "muted" }, "none")));
      });
      clear(box,
        el("h1", {}, name ? "Lock " : "Locks", name ? el("code", {}, name) : null),
        el("p", { class: "muted" },
          "A saga takes a step's locks before the step starts and holds them until it completes, ",
          "finishes compensating, or is abandoned; the others wait in the order they asked."),
        rows.length
          ? el("table", { class: "list", id: "lock-table" },
            el("thead", {}, el("tr", {}, ["lock", "held by", "waiting, in order"].map((h) => el("th", {}, h)))),
            el("tbody", {}, rows))
          : el("p", { class: "muted", id: "no-locks" }, "No lock is held or waited for."),
        data.complete === false
          ? el("p", { class: "muted", id: "locks-cut" },
            `Not every lock may be listed: ${data.looked_at} sagas looked at. Name a lock above to read it.`)
          : null);
    }

    const load = throttled(async () => {
      try {
        const data = name
          ? { locks: [await api(`/v1/locks/${encodeURIComponent(name)}`)], complete: true }
          : await api("/v1/locks");
        if (stopped) return;
        const key = JSON.stringify(data);
        if (key === lastKey) return;
        lastKey = key;
        render(data);
      } catch (e) {
        lastKey = null;
        if (!stopped) clear(box, el("p", { class: "error", id: "locks-error" }, e.message));
      }
    }, STATS_EVERY_MS);
    onChange = load;
    load();
    return {
      stop() {
        stopped = true;
        load.cancel();
      },
      poll: load,
    };
  }

  // ------------------------------------------------------ acting

  const VERBS = {
    cancel: ["Cancel the saga", "Cancel", "Its completed steps are undone."],
    retry: ["Retry the failed compensation", "Retry", "The failed compensation is sent again."],
    skip: ["Skip a failed compensation", "Skip",
      "The compensation of the chosen step is marked done: do it by hand first."],
    abandon: ["Abandon the saga", "Abandon",
      "Nothing more is done: what was not undone stays as it is."],
    pause: ["Pause the saga", "Pause",
      "The commands under way finish; nothing new is sent and no timeout runs until it is resumed."],
    resume: ["Resume the saga", "Resume",
      "It carries on; its timeouts are moved on by the time it was paused."],
  };

  // Asks for a reason (and for skip, the step), then sends the request.
  function act(saga, action, then) {
    const dialog = $("ask");
    const [title, verb, what] = VERBS[action];
    $("ask-title").textContent = title;
    $("ask-what").textContent = `${what} Saga ${saga.saga} ${saga.saga_id}.`;
    $("ask-confirm").textContent = verb;
    $("ask-error").hidden = true;
    const reason = $("ask-reason");
    reason.value = "";
    const stepRow = $("ask-step-row");
    const stepSelect = $("ask-step");
    const steps = [...new Set((saga.stuck || []).map((s) => s.step))];
    stepRow.hidden = action !== "skip";
    clear(stepSelect, steps.map((s) => el("option", { value: s }, s)));
    dialog.dataset.action = action;
    const form = $("ask-form");
    // Closed by a button or by Escape: either way the listeners go.
    const cleanup = () => {
      form.removeEventListener("submit", submit);
      $("ask-cancel").removeEventListener("click", done);
    };
    const done = () => {
      if (dialog.open) dialog.close();
    };
    const submit = async (e) => {
      e.preventDefault();
      const body = { reason: reason.value.trim() };
      if (!body.reason) return;
      if (action === "skip") body.step = stepSelect.value;
      $("ask-confirm").disabled = true;
      try {
        await api(`/v1/sagas/${encodeURIComponent(saga.saga_id)}/${action}`, { method: "POST", body });
        done();
        notice(`${verb}: accepted for saga ${shortId(saga.saga_id)}.`, "ok");
        then();
      } catch (err) {
        const box = $("ask-error");
        box.textContent = err.message;
        box.hidden = false;
      } finally {
        $("ask-confirm").disabled = false;
      }
    };
    form.addEventListener("submit", submit);
    $("ask-cancel").addEventListener("click", done);
    dialog.addEventListener("close", cleanup, { once: true });
    dialog.showModal();
    reason.focus();
  }

  // ------------------------------------------------------ start

  document.addEventListener("DOMContentLoaded", () => {
    setupToken();
    window.addEventListener("hashchange", route);
    restart();
  });
})();
