// Sandmill's web UI: a page per view, drawn from the HTTP API (the same
// one the CLI uses), updated from its live event stream. No build step,
// no dependencies: the binary serves this file as it is.
"use strict";

const TOKEN_KEY = "sandmill-token";
const PAGE = 50;
/** Bytes of a log or an output shown on a page (the rest is a download). */
const PREVIEW_BYTES = 64 * 1024;
const COLORS = { succeeded: "#1f8a4c", failed: "#c62f2f", blocked: "#7a4a9a", running: "#2f6fd0",
  cancelled: "#8a8f98", queued: "#b7791f", pending: "#b7791f" };

const $ = (sel, root = document) => root.querySelector(sel);
const main = () => $("#main");

function token() { return localStorage.getItem(TOKEN_KEY); }

function headers(extra = {}) {
  const h = { ...extra };
  if (token()) h.Authorization = "Bearer " + token();
  return h;
}

class Unauthorized extends Error {}

/** Requests `api` made, so live redraws can be spaced by what they cost. */
let fetches = 0;

async function api(path, options = {}) {
  fetches += 1;
  const r = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (r.status === 401) throw new Unauthorized();
  if (r.status === 204) return null;
  if (!r.ok) {
    let message = r.status + " " + r.statusText;
    try { const body = await r.json(); message = body.message || message; } catch (_) {}
    throw new Error(message);
  }
  return r.json();
}

/** The caller, `{ tenant, role }`, asked once per token. */
let me = null;
async function whoami() {
  if (!me) me = await api("/v1/whoami");
  return me;
}
/** Whether the caller may change things (a reader may not): actions are
 *  shown only then. */
const mayAct = () => me !== null && me.role !== "reader";

/** `method path` with a JSON body; the answer's JSON (null for 204). */
const send = (method, path, body) => api(path, body === undefined ? { method }
  : { method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

/** A button that asks before it acts: a click puts "question yes no" in
 *  its place; yes runs `act`, whose refusal is shown beside it. */
function action(id, label, question, act) {
  const box = el("span", { class: "action", id: id + "-box" });
  const reset = () => box.replaceChildren(el("button", { id, onclick: ask }, label));
  const ask = () => {
    const note = el("span", { class: "error", id: id + "-error" });
    box.replaceChildren(el("span", { class: "confirm" }, question, " "),
      el("button", { class: "danger", id: id + "-yes", onclick: async () => {
        try {
          await act();
        } catch (error) {
          if (error instanceof Unauthorized) return failure(error);
          note.textContent = " " + (error.message || error);
        }
      } }, "yes"), " ",
      el("button", { id: id + "-no", onclick: reset }, "no"), note);
  };
  reset();
  return box;
}

/** An element: el("td", {class: "num"}, "text", child, ...). */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs = {}, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

const badge = (s) => el("span", { class: "status " + s, "data-status": s }, s);
const link = (href, text) => el("a", { href }, text);
const when = (t) => (t ? t.replace("T", " ").replace(/\.\d+Z$/, "Z") : "—");
/** A count with thousands separators (19,224,033). */
const num = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
/** A header cell of a numeric column: right-aligned, as its cells are. */
const numTh = (label) => el("th", { class: "num" }, label);

/** Bytes in the largest binary unit that keeps a number of at least 1. */
function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n), i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/** A duration in ms as a person reads it: 2 ms, 1.4 s, 3 min 5 s, 2 h 4 min. */
function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

/** A job's time from submission to its end, or to now while it runs. */
function elapsedMs(job) {
  const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
  return end - Date.parse(job.created_at);
}

/** Tasks that ended (a cached task is counted among the succeeded). */
const ended = (t) => t.succeeded + t.failed + t.cancelled;

/** A progress bar of task counts, with its percentage as its title. */
function progress(t, id) {
  const total = Math.max(t.total, ended(t), 1);
  const pct = (100 * ended(t)) / total;
  const cls = t.failed ? "failing" : t.cancelled ? "stopped" : null;
  return el("progress", { id, max: total, value: ended(t), class: cls,
    title: `${pct.toFixed(1)}% · ${num(ended(t))} of ${num(t.total)}` });
}

/** Rate and ETA of a running job, from its ended tasks and its age. */
function pace(job) {
  const t = job.tasks;
  const secs = elapsedMs(job) / 1000;
  const done = ended(t);
  if (job.status !== "running" || secs <= 0 || !done) return null;
  const rate = done / secs;
  const left = Math.max(0, t.total - done);
  return `${num(Math.round(rate * 10) / 10)} tasks/s · about ${duration((left / rate) * 1000)} left`;
}

function table(head, rows, attrs = {}) {
  return el("table", attrs,
    el("thead", {}, el("tr", {}, head.map((h) => (h instanceof Node ? h : el("th", {}, h))))),
    el("tbody", {}, rows));
}

function show(...nodes) {
  // Nothing of a view that chose to leave a part out shows (no "null").
  main().replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
}

function failure(error) {
  if (error instanceof Unauthorized) return login();
  show(el("h1", {}, "Something went wrong"), el("p", { class: "error" }, String(error.message || error)));
}

function login(message) {
  const input = el("input", { id: "token", type: "password", size: 50, placeholder: "sandmill token create …" });
  const form = el("form", { id: "login", onsubmit: (e) => {
    e.preventDefault();
    localStorage.setItem(TOKEN_KEY, input.value.trim());
    me = null;
    route();
  } },
    el("h1", {}, "A token, please"),
    el("p", { class: "muted" }, message || "This server wants an API token (sandmill token create). It stays in this browser."),
    input, " ", el("button", { type: "submit" }, "Use it"));
  show(form);
  input.focus();
}

// ---- live events ---------------------------------------------------------

let lastEventId = null;
/** Bumped by each navigation: a view begun under an older one neither
 *  shows nor listens when its requests come back. */
let generation = 0;
/** The view's one listener, `{ gen, matches, redraw }`: a redraw sets it
 *  again (it replaces, never adds), a navigation clears it. */
let watcher = null;
/** A redraw waits at least a second per request its last one made, so a
 *  page makes about one request a second whatever the event rate. */
const REDRAW_EVERY_MS = 1000;
let redrawCost = 1;
let redrawTimer = null;
let redrawing = false;
let redrawWanted = false;

/** Follows `/v1/events` (through fetch, so the token goes along). */
async function follow() {
  const live = $("#live");
  for (;;) {
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (lastEventId) h["Last-Event-ID"] = lastEventId;
      const r = await fetch("/v1/events", { headers: h });
      if (!r.ok) throw new Error(String(r.status));
      live.textContent = "● live";
      live.classList.add("on");
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
            else if (line.startsWith("id:")) lastEventId = line.slice(3).trim();
          }
          if (data.length) {
            let event;
            try { event = JSON.parse(data.join("\n")); } catch (_) { continue; }
            heard(event);
          }
        }
      }
    } catch (_) { /* dropped: connect again */ }
    live.textContent = "○ offline";
    live.classList.remove("on");
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** Calls `redraw` on events `matches` accepts, until the view changes;
 *  `gen` is the generation the view was begun under. */
function onEvents(gen, matches, redraw) {
  if (gen !== generation) return;
  watcher = { gen, matches, redraw };
}

function heard(event) {
  if (watcher && watcher.matches(event)) wantRedraw();
}

/** Someone typing into a field of the page, or answering a question it
 *  asked (a confirmation, the resubmit form): a redraw would lose it. */
function typing() {
  const a = document.activeElement;
  if (a && main().contains(a) && ["INPUT", "SELECT", "TEXTAREA"].includes(a.tagName)) return true;
  return main().querySelector(".confirm, #resubmit-go") !== null;
}

function wantRedraw() {
  redrawWanted = true;
  if (redrawTimer || redrawing) return;
  redrawTimer = setTimeout(async () => {
    redrawTimer = null;
    const w = watcher;
    if (!w || w.gen !== generation) { redrawWanted = false; return; }
    if (typing()) { wantRedraw(); return; }
    redrawWanted = false;
    redrawing = true;
    const before = fetches;
    try {
      await w.redraw();
    } catch (error) {
      // A page already drawn stays; a dropped request is tried again.
      if (error instanceof Unauthorized) failure(error);
      else redrawWanted = true;
    }
    redrawCost = Math.max(1, fetches - before);
    redrawing = false;
    if (redrawWanted) wantRedraw();
  }, REDRAW_EVERY_MS * redrawCost);
}

// ---- views ---------------------------------------------------------------

const JOB_STATUSES = ["running", "succeeded", "failed", "cancelled", "blocked"];

/** The job list: filters and order live in the URL, pages by cursor. */
async function jobsView(params) {
  const gen = generation;
  const q = new URLSearchParams(params);
  const sort = q.get("sort") || "updated";
  const order = q.get("order") || "desc";
  const cursors = (q.get("at") || "").split(",").filter(Boolean);
  const query = new URLSearchParams({ limit: String(PAGE), sort, order });
  for (const k of ["status", "name", "label", "from", "to", "schedule"]) if (q.get(k)) query.set(k, q.get(k));
  // Schedules' runs are left out unless asked for (or one schedule's are):
  // sixty firings would swamp the list.
  const runs = q.get("schedule") ? "all" : q.get("scheduled") || "hide";
  if (runs === "hide") query.set("scheduled", "false");
  else if (runs === "only") query.set("scheduled", "true");
  if (cursors.length) query.set("cursor", cursors[cursors.length - 1]);
  const page = await api("/v1/jobs?" + query);

  const go = (changes) => {
    const next = new URLSearchParams(q);
    for (const [k, v] of Object.entries(changes)) { if (v) next.set(k, v); else next.delete(k); }
    location.hash = "#/jobs?" + next;
  };
  const field = (id, label, input) => el("label", { for: id }, label, input);
  const status = el("select", { id: "f-status", onchange: (e) => go({ status: e.target.value, at: "" }) },
    el("option", { value: "" }, "any"),
    JOB_STATUSES.map((s) => el("option", { value: s, selected: q.get("status") === s }, s)));
  const text = (id, key, placeholder) => el("input", { id, value: q.get(key) || "", placeholder,
    onchange: (e) => go({ [key]: e.target.value.trim(), at: "" }) });
  const scheduled = el("select", { id: "f-scheduled", onchange: (e) => go({ scheduled: e.target.value === "hide" ? "" : e.target.value, schedule: "", at: "" }) },
    [["hide", "hidden"], ["all", "shown"], ["only", "only them"]].map(([v, label]) => el("option", { value: v, selected: runs === v }, label)));
  const filters = el("div", { class: "filters" },
    field("f-status", "status", status),
    field("f-scheduled", "schedules' runs", scheduled),
    field("f-name", "name", text("f-name", "name", "part of the name")),
    field("f-label", "labels", text("f-label", "label", "k=v,k2=v2")),
    field("f-from", "created from", text("f-from", "from", "2026-12-01T00:00:00Z")),
    field("f-to", "created before", text("f-to", "to", "RFC 3339")));
  const header = (key, label, cls) => el("th", { "data-sort": key, class: [cls, sort === key ? "sorted" : "", sort === key && order === "asc" ? "asc" : ""].filter(Boolean).join(" "),
    onclick: () => go({ sort: key, order: sort === key && order === "desc" ? "asc" : "desc", at: "" }) }, label);
  const rows = page.items.map((j) => el("tr", { "data-job": j.id },
    el("td", { class: "num" }, link("#/jobs/" + j.id, j.id)),
    el("td", {}, link("#/jobs/" + j.id, j.name)),
    el("td", {}, j.kind, j.schedule ? [" · ", link("#/jobs?schedule=" + encodeURIComponent(j.schedule), "⏱ " + j.schedule)] : null),
    el("td", { class: "state" }, badge(j.status)),
    el("td", { class: "num" }, num(j.tasks.total)),
    el("td", { class: "num" }, num(j.tasks.succeeded)),
    el("td", { class: "num" }, num(j.tasks.failed)),
    el("td", { class: "bar" }, progress(j.tasks)),
    el("td", { class: "num elapsed" }, duration(elapsedMs(j))),
    el("td", {}, Object.entries(j.labels).map(([k, v]) => k + "=" + v).join(",")),
    el("td", {}, when(j.created_at)),
    el("td", {}, when(j.updated_at))));
  const list = table([header("id", "id", "num"), header("name", "name"), "kind", header("status", "status"),
    header("tasks", "tasks", "num"), numTh("ok"), numTh("failed"), "progress", numTh("elapsed"),
    "labels", header("created", "created"), header("updated", "updated")], rows, { id: "jobs" });
  const pager = el("div", { class: "pager" },
    el("button", { id: "prev", disabled: !cursors.length, onclick: () => go({ at: cursors.slice(0, -1).join(",") }) }, "← newer"),
    el("span", { class: "muted" }, page.items.length ? `${page.items.length} shown` : "no jobs match"),
    el("button", { id: "next", disabled: !page.next_cursor, onclick: () => go({ at: [...cursors, page.next_cursor].join(",") }) }, "more →"));
  if (gen !== generation) return;
  const title = q.get("schedule") ? el("h1", {}, "Jobs of schedule ", el("code", {}, q.get("schedule"))) : el("h1", {}, "Jobs");
  show(title, filters, list, pager);
  onEvents(gen, (e) => e.type === "job", () => jobsView(params));
}

function counts(tasks) {
  const order = ["total", "pending", "queued", "running", "succeeded", "failed", "cancelled", "cached"];
  return el("div", { class: "cards", id: "counts" }, order.map((k) =>
    el("div", { class: "card", "data-count": k }, el("div", { class: "n" }, num(tasks[k] ?? 0)), el("div", { class: "k" }, k))));
}

/** A pipeline drawn as layers: each step right of the steps it reads. */
function graph(view) {
  const depth = {};
  const reads = {};
  for (const s of view.steps) reads[s.name] = [];
  for (const e of view.edges) (reads[e.to] = reads[e.to] || []).push(e.from);
  const depthOf = (name, seen = new Set()) => {
    if (depth[name] !== undefined) return depth[name];
    if (seen.has(name)) return 0;
    seen.add(name);
    const d = Math.max(-1, ...(reads[name] || []).map((r) => depthOf(r, seen))) + 1;
    return (depth[name] = d);
  };
  const layers = [];
  for (const s of view.steps) (layers[depthOf(s.name)] = layers[depthOf(s.name)] || []).push(s);
  const W = 170, H = 54, GX = 60, GY = 20;
  const at = {};
  layers.forEach((layer, x) => layer.forEach((s, y) => { at[s.name] = { x: 20 + x * (W + GX), y: 20 + y * (H + GY) }; }));
  const width = 40 + layers.length * (W + GX) - GX;
  const height = 40 + Math.max(1, ...layers.map((l) => l.length)) * (H + GY) - GY;
  const defs = svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto" },
    svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#9aa3ad" })));
  const edges = view.edges.filter((e) => at[e.from] && at[e.to]).map((e) => {
    const a = at[e.from], b = at[e.to];
    return svg("path", { class: "edge", "data-from": e.from, "data-to": e.to,
      d: `M${a.x + W},${a.y + H / 2} C${a.x + W + GX / 2},${a.y + H / 2} ${b.x - GX / 2},${b.y + H / 2} ${b.x},${b.y + H / 2}` });
  });
  const nodes = view.steps.map((s) => {
    const p = at[s.name];
    const color = COLORS[s.status] || "#8a8f98";
    const done = ended(s.tasks);
    const node = svg("g", { class: "node", "data-step": s.name, "data-status": s.status, transform: `translate(${p.x},${p.y})` },
      svg("title", {}, `${s.name}: ${s.status}`),
      svg("rect", { width: W, height: H, stroke: color }),
      svg("text", { x: 10, y: 20, "font-weight": "600" }, s.name.length > 22 ? s.name.slice(0, 21) + "…" : s.name),
      svg("text", { x: 10, y: 40, fill: color }, `${s.status} · ${done}/${s.tasks.total}`));
    if (s.planned) {
      const a = svg("a", { href: "#/jobs/" + s.job_id }, node);
      return a;
    }
    return node;
  });
  return svg("svg", { id: "graph", width, height, viewBox: `0 0 ${width} ${height}` }, defs, edges, nodes);
}

async function jobView(id, params) {
  const gen = generation;
  const job = await api(`/v1/jobs/${id}`);
  const q = new URLSearchParams(params);
  const state = q.get("state") || "";
  const parts = [el("h1", {}, `Job ${job.id} · ${job.name} `, badge(job.status))];
  parts[0].querySelector(".status").id = "job-status";
  parts.push(el("dl", {},
    el("dt", {}, "kind"), el("dd", {}, `${job.kind} (${job.task_kind} tasks)`),
    el("dt", {}, "tenant"), el("dd", {}, job.tenant),
    el("dt", {}, "module"), el("dd", {}, el("code", {}, job.module)),
    el("dt", {}, "created"), el("dd", {}, when(job.created_at)),
    el("dt", {}, "finished"), el("dd", {}, when(job.finished_at)),
    el("dt", {}, "elapsed"), el("dd", { id: "job-elapsed" }, duration(elapsedMs(job))),
    pace(job) ? [el("dt", {}, "pace"), el("dd", { id: "job-pace" }, pace(job))] : null,
    el("dt", {}, "priority"), el("dd", {}, job.priority),
    el("dt", {}, "attempts"), el("dd", {}, `at most ${job.max_attempts} per task`),
    job.max_running ? [el("dt", {}, "at once"), el("dd", { id: "job-max-running" }, `at most ${num(job.max_running)} tasks queued or running`)] : null,
    el("dt", {}, "limits"), el("dd", { id: "job-limits" }, [`timeout ${job.limits.timeout}`, `memory ${job.limits.memory}`,
      `output ${job.limits.output}`, `log ${job.limits.log}`, job.limits.fuel ? `fuel ${num(job.limits.fuel)}` : null,
      `queue timeout ${job.queue_timeout}`].filter(Boolean).join(" · ")),
    el("dt", {}, "labels"), el("dd", { id: "job-labels" }, Object.entries(job.labels).map(([k, v]) => k + "=" + v).join(", ") || "none (any worker)"),
    job.pipeline ? [el("dt", {}, "pipeline"), el("dd", {}, link("#/jobs/" + job.pipeline, job.pipeline))] : null,
    job.schedule ? [el("dt", {}, "schedule"), el("dd", { id: "job-schedule" },
      link("#/jobs?schedule=" + encodeURIComponent(job.schedule), job.schedule), " (its runs)")] : null,
    job.waiting ? [el("dt", {}, "waiting"), el("dd", {}, job.waiting.reason)] : null));
  if (mayAct()) parts.push(jobActions(job));
  parts.push(el("h2", {}, "Tasks"), progress(job.tasks, "job-progress"), counts(job.tasks));
  if (job.mapreduce) {
    const m = job.mapreduce;
    parts.push(el("h2", {}, `Phases · now ${m.phase}`), table(["phase", "progress", numTh("total"), numTh("succeeded"), numTh("failed"), numTh("running")],
      [["map", m.maps], ["reduce", m.reduces]].map(([n, c]) => el("tr", { "data-phase": n },
        el("td", {}, n), el("td", { class: "bar" }, progress(c)), el("td", { class: "num" }, num(c.total)),
        el("td", { class: "num" }, num(c.succeeded)), el("td", { class: "num" }, num(c.failed)),
        el("td", { class: "num" }, num(c.running))))));
  }
  if (Object.keys(job.counters || {}).length) {
    parts.push(el("h2", {}, "Counters"), table(["counter", numTh("value")],
      Object.entries(job.counters).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, num(v))))));
  }
  if (job.kind === "pipeline") {
    const g = await api(`/v1/jobs/${id}/graph`);
    parts.push(el("h2", {}, "Pipeline"), graph(g));
  }
  const failures = await api(`/v1/jobs/${id}/failures`);
  if (failures.items.length) {
    parts.push(el("h2", {}, "Failures by reason"), el("ul", { id: "failures" }, failures.items.map((f) =>
      el("li", { "data-reason": f.reason }, el("b", {}, f.reason), ` × ${f.count} — e.g. `,
        link("#/tasks/" + f.sample_task, "task " + f.sample_task),
        f.sample_error ? el("span", { class: "muted" }, ": " + f.sample_error.slice(0, 200)) : null))));
  }
  if (job.kind !== "pipeline") {
    const query = new URLSearchParams({ limit: String(PAGE) });
    if (state) query.set("state", state);
    if (q.get("at")) query.set("cursor", q.get("at"));
    const tasks = await api(`/v1/jobs/${id}/tasks?` + query);
    const pick = el("select", { id: "t-state", onchange: (e) => { location.hash = `#/jobs/${id}?state=${e.target.value}`; } },
      el("option", { value: "" }, "any"),
      ["pending", "queued", "running", "succeeded", "failed", "cancelled", "cached"].map((s) => el("option", { value: s, selected: s === state }, s)));
    parts.push(el("h2", {}, "Task list "), el("div", { class: "filters" }, el("label", {}, "state", pick)));
    parts.push(table([numTh("id"), numTh("seq"), "state", numTh("attempt"), "reason", "started", "finished"], tasks.items.map((t) =>
      el("tr", { "data-task": t.id },
        el("td", { class: "num" }, link("#/tasks/" + t.id, t.id)), el("td", { class: "num" }, t.seq),
        el("td", {}, badge(t.state)), el("td", { class: "num" }, t.attempt), el("td", {}, t.reason || ""),
        el("td", {}, when(t.started_at)), el("td", {}, when(t.finished_at)))), { id: "tasks" }));
    if (tasks.next_cursor) {
      parts.push(el("div", { class: "pager" }, link(`#/jobs/${id}?state=${state}&at=${encodeURIComponent(tasks.next_cursor)}`, "more →")));
    }
  }
  if (gen !== generation) return;
  show(...parts);
  onEvents(gen, (e) => e.job_id === job.id || e.job_id === job.pipeline || (job.kind === "pipeline" && e.type === "job"),
    () => jobView(id, params));
}

/** What a job's page offers to do: cancel a running job; retry, resubmit
 *  (with other limits) or delete an ended one. */
function jobActions(job) {
  const bar = el("div", { class: "actions", id: "job-actions" });
  if (job.status === "running") {
    bar.append(action("cancel", "Cancel", `Cancel job ${job.id}, stopping its running tasks?`, async () => {
      await send("POST", `/v1/jobs/${job.id}/cancel`);
      route();
    }));
    return bar;
  }
  if (job.kind !== "mapreduce" && job.tasks.failed > 0) {
    bar.append(action("retry", "Retry failed", `Run its ${num(job.tasks.failed)} failed tasks again, in this job?`, async () => {
      await send("POST", `/v1/jobs/${job.id}/retry`);
      route();
    }));
  }
  if (job.kind === "task" || job.kind === "sweep") bar.append(resubmitForm(job));
  if (!job.pipeline) {
    bar.append(action("delete", "Delete", `Delete job ${job.id} with its tasks, outputs and logs?`, async () => {
      await send("DELETE", `/v1/jobs/${job.id}`);
      location.hash = "#/jobs";
    }));
  }
  return bar;
}

/** Resubmit: its tasks (or only those that did not succeed) as a new job,
 *  with other limits if given. */
function resubmitForm(job) {
  const form = el("span", { class: "resubmit", id: "resubmit-form" });
  const open = () => {
    const failed = el("input", { type: "checkbox", id: "resubmit-failed", checked: job.tasks.failed > 0 });
    const timeout = el("input", { id: "resubmit-timeout", size: 8, placeholder: job.limits.timeout });
    const memory = el("input", { id: "resubmit-memory", size: 8, placeholder: job.limits.memory });
    const note = el("span", { class: "error", id: "resubmit-error" });
    form.replaceChildren(el("label", {}, failed, " only tasks that did not succeed"), " timeout ", timeout, " memory ", memory, " ",
      el("button", { id: "resubmit-go", onclick: async () => {
        const limits = {};
        if (timeout.value.trim()) limits.timeout = timeout.value.trim();
        if (memory.value.trim()) limits.memory = memory.value.trim();
        try {
          const created = await send("POST", `/v1/jobs/${job.id}/resubmit`, { failed: failed.checked, limits });
          location.hash = "#/jobs/" + created.id;
        } catch (error) {
          if (error instanceof Unauthorized) return failure(error);
          note.textContent = " " + (error.message || error);
        }
      } }, "Resubmit as a new job"), " ", el("button", { id: "resubmit-cancel", onclick: close }, "never mind"), note);
  };
  const close = () => form.replaceChildren(el("button", { id: "resubmit", onclick: open }, "Resubmit…"));
  close();
  return form;
}

/** The first `PREVIEW_BYTES` of `path`, and whether there was more. */
async function preview(path) {
  const r = await fetch(path, { headers: headers() });
  if (!r.ok) return null;
  const reader = r.body.getReader();
  const chunks = [];
  let size = 0, more = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.length;
    if (size >= PREVIEW_BYTES) { more = true; reader.cancel(); break; }
  }
  const bytes = new Uint8Array(Math.min(size, PREVIEW_BYTES));
  let at = 0;
  for (const c of chunks) { const n = Math.min(c.length, bytes.length - at); bytes.set(c.subarray(0, n), at); at += n; if (at >= bytes.length) break; }
  return { text: new TextDecoder("utf-8", { fatal: false }).decode(bytes), more };
}

async function download(path, name) {
  const r = await fetch(path, { headers: headers() });
  const blob = await r.blob();
  const a = el("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  a.remove();
}

async function taskView(id) {
  const detail = await api(`/v1/tasks/${id}`);
  const t = detail.task;
  const parts = [el("h1", {}, `Task ${t.id} `, badge(t.state))];
  parts[0].querySelector(".status").id = "task-state";
  parts.push(el("dl", {},
    el("dt", {}, "job"), el("dd", {}, link("#/jobs/" + t.job_id, t.job_id)),
    el("dt", {}, "seq"), el("dd", {}, t.seq),
    el("dt", {}, "attempt"), el("dd", {}, t.attempt),
    el("dt", {}, "input"), el("dd", {}, JSON.stringify(t.input)),
    el("dt", {}, "params"), el("dd", {}, el("code", {}, JSON.stringify(t.params))),
    el("dt", {}, "started"), el("dd", {}, when(t.started_at)),
    el("dt", {}, "finished"), el("dd", {}, when(t.finished_at)),
    t.restart_of ? [el("dt", {}, "runs again"), el("dd", {}, link("#/tasks/" + t.restart_of, "task " + t.restart_of))] : null,
    t.replaced_by ? [el("dt", {}, "replaced by"), el("dd", {}, link("#/tasks/" + t.replaced_by, "task " + t.replaced_by))] : null));
  if (mayAct() && !["pending", "queued", "running"].includes(t.state)) {
    const restart = (downstream) => async () => {
      const run = await send("POST", `/v1/tasks/${t.id}/restart`, { downstream });
      location.hash = "#/tasks/" + run.task.id;
    };
    const job = await api(`/v1/jobs/${t.job_id}`);
    parts.push(el("div", { class: "actions", id: "task-actions" },
      action("restart", "Restart", `Run task ${t.id} again as a new task?`, restart(false)),
      job.pipeline ? action("restart-downstream", "Restart with what reads it",
        "Run it again, then every step after it?", restart(true)) : null));
  }
  if (t.error) parts.push(el("h2", {}, `Error · ${t.reason || ""}`), el("pre", { id: "task-error", class: "error" }, t.error));
  parts.push(el("h2", {}, "Attempts"), table([numTh("attempt"), "verdict", "reason", "worker", numTh("elapsed"), numTh("fuel"), numTh("memory"), numTh("log"), "finished"],
    detail.attempts.map((a) => el("tr", { "data-attempt": a.attempt },
      el("td", { class: "num" }, a.attempt), el("td", {}, badge(a.state)), el("td", {}, a.reason || ""),
      el("td", {}, a.worker), el("td", { class: "num" }, a.elapsed === "0s" ? "< 1 ms" : a.elapsed),
      el("td", { class: "num" }, a.fuel_used === null || a.fuel_used === undefined ? "—" : num(a.fuel_used)),
      el("td", { class: "num memory" }, a.memory_peak ?? "—"),
      el("td", { class: "num" }, `${bytes(a.log.size)}${a.log.truncated ? " (cut)" : ""}`), el("td", {}, when(a.finished_at)))), { id: "attempts" }));
  const log = await preview(`/v1/tasks/${id}/logs`);
  parts.push(el("h2", {}, "Log"), el("pre", { id: "task-log" }, log ? (log.text || "(empty)") + (log.more ? "\n…" : "") : "(none)"));
  if (t.output) {
    const out = await preview(t.output.href);
    parts.push(el("h2", {}, `Output · ${bytes(t.output.size)} `,
      el("button", { id: "download", onclick: () => download(t.output.href, `task-${t.id}.out`) }, "download")),
    el("pre", { id: "task-output" }, out ? out.text + (out.more ? "\n…" : "") : ""));
  }
  show(...parts);
  onEvents((e) => e.task_id === t.id, () => taskView(id).catch(failure));
}

function sparkline(points, key, max) {
  if (!points.length) return el("span", { class: "muted" }, "—");
  const W = 120, H = 24;
  const step = points.length > 1 ? W / (points.length - 1) : W;
  const d = points.map((p, i) => `${(i * step).toFixed(1)},${(H - (max ? (p[key] / max) * H : 0)).toFixed(1)}`).join(" ");
  return svg("svg", { width: W, height: H, class: "sparkline" }, svg("polyline", { class: "spark", points: d }));
}

async function workersView() {
  const gen = generation;
  const [workers, use] = await Promise.all([api("/v1/workers?limit=100"),
    api("/v1/utilization?step=1m&limit=100").catch(() => ({ workers: { items: [] }, total: [] }))]);
  const series = {};
  for (const s of use.workers.items) series[s.worker] = s.points;
  const rows = workers.items.map((w) => el("tr", { "data-worker": w.id },
    el("td", {}, w.id), el("td", {}, badge(w.status)), el("td", { class: "num" }, num(w.running.length)),
    el("td", { class: "num" }, num(w.capacity)), el("td", { class: "num" }, num(w.finished)),
    el("td", {}, Object.entries(w.labels).map(([k, v]) => k + "=" + v).join(",")),
    el("td", {}, sparkline(series[w.id] || [], "busy", w.capacity)), el("td", {}, when(w.last_seen))));
  const total = use.total || [];
  if (gen !== generation) return;
  show(el("h1", {}, "Workers"),
    el("p", { class: "muted" }, "Busy slots over the last hour, a point a minute, from /v1/utilization."),
    el("div", { class: "cards" }, el("div", { class: "card" }, el("div", { class: "n" }, sparkline(total, "busy", Math.max(1, ...total.map((p) => p.slots)))), el("div", { class: "k" }, "fleet busy slots"))),
    el("h2", {}, ""),
    table(["id", "status", numTh("busy"), numTh("slots"), numTh("finished"), "labels", "busy (1h)", "last seen"], rows, { id: "workers" }));
  onEvents(gen, (e) => e.type === "task" && (e.state === "running" || e.state === "succeeded"), () => workersView());
}

/** A list page; `acts(item)` gives a row's actions, shown to those who
 *  may act. */
async function listView(title, path, head, row, acts) {
  const page = await api(path);
  const rows = page.items.map((item) => {
    const tr = row(item);
    if (acts && mayAct()) tr.append(el("td", { class: "actions" }, acts(item)));
    return tr;
  });
  const heads = acts && mayAct() ? [...head, ""] : head;
  show(el("h1", {}, title), page.items.length ? table(heads, rows) : el("p", { class: "muted" }, "none yet"),
    page.next_cursor ? el("p", { class: "muted" }, "(first page)") : null);
}

async function specsView() {
  const [specs, modules] = await Promise.all([api("/v1/specs?limit=200"), api("/v1/modules?limit=200")]);
  const labels = (l) => Object.entries(l).map(([k, v]) => k + "=" + v).join(",");
  show(el("h1", {}, "Specs and modules"),
    el("h2", {}, "Specs"),
    specs.items.length ? table(["name", "version", "kind", "module", "labels", "created"], specs.items.map((s) =>
      el("tr", { "data-spec": s.name }, el("td", {}, s.name), el("td", {}, s.version), el("td", {}, s.kind),
        el("td", {}, el("code", {}, s.module)), el("td", {}, labels(s.labels)), el("td", {}, when(s.created_at)))), { id: "specs" })
      : el("p", { class: "muted" }, "none yet"),
    el("h2", {}, "Modules"),
    modules.items.length ? table(["module", numTh("size"), "exports", "uploaded"], modules.items.map((m) =>
      el("tr", { "data-module": m.module }, el("td", {}, el("code", {}, m.module)), el("td", { class: "num" }, bytes(m.size)),
        el("td", {}, m.exports.join(", ")), el("td", {}, when(m.created_at)))), { id: "modules" })
      : el("p", { class: "muted" }, "none yet"),
    specs.next_cursor || modules.next_cursor ? el("p", { class: "muted" }, "(the newest 200)") : null);
}

const schedulesView = () => listView("Schedules", "/v1/schedules?limit=200",
  ["name", "when", "paused", numTh("fired"), numTh("skipped"), "next", "last job", "runs"],
  (s) => el("tr", { "data-schedule": s.name }, el("td", {}, s.name), el("td", {}, s.schedule || ("every " + s.every)),
    el("td", {}, s.paused ? "yes" : "no"), el("td", { class: "num" }, num(s.fired)), el("td", { class: "num" }, num(s.skipped)),
    el("td", {}, when(s.next_at)), el("td", {}, s.last_job_id ? link("#/jobs/" + s.last_job_id, s.last_job_id) : "—"),
    el("td", {}, link("#/jobs?schedule=" + encodeURIComponent(s.name), "its jobs"))),
  (s) => {
    const at = `/v1/schedules/${encodeURIComponent(s.name)}`;
    const key = s.name.replace(/[^A-Za-z0-9_-]/g, "_");
    return [
      s.paused
        ? action(`resume-${key}`, "Resume", `Resume ${s.name}?`, async () => { await send("POST", at + "/resume"); route(); })
        : action(`pause-${key}`, "Pause", `Pause ${s.name}? It fires no more until resumed.`, async () => { await send("POST", at + "/pause"); route(); }),
      " ",
      action(`delete-${key}`, "Delete", `Delete schedule ${s.name}? Its jobs stay.`, async () => { await send("DELETE", at); route(); }),
    ];
  });

const subscriptionsView = () => listView("Subscriptions", "/v1/subscriptions?limit=200",
  ["name", numTh("version"), "subject", "queue group", numTh("in flight"), "job", "results to", "created"],
  (s) => el("tr", { "data-subscription": s.name }, el("td", {}, s.name), el("td", { class: "num" }, s.version),
    el("td", {}, el("code", {}, s.subject)), el("td", {}, s.queue ? "yes" : "no"), el("td", { class: "num" }, s.max_in_flight),
    el("td", {}, link("#/jobs/" + s.job_id, s.job_id)), el("td", {}, el("code", {}, s.results_subject)), el("td", {}, when(s.created_at))),
  (s) => action(`delete-${s.name.replace(/[^A-Za-z0-9_-]/g, "_")}`, "Delete",
    `Delete subscription ${s.name}? Its messages stop becoming tasks; its job ends.`,
    async () => { await send("DELETE", `/v1/subscriptions/${encodeURIComponent(s.name)}`); route(); }));

// ---- routing -------------------------------------------------------------

async function route() {
  generation += 1;
  watcher = null;
  redrawCost = 1;
  const hash = location.hash.replace(/^#\/?/, "") || "jobs";
  const [path, params = ""] = hash.split("?");
  const [section, id] = path.split("/");
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.dataset.nav === section);
  $("#logout").hidden = !token();
  try {
    await whoami();
    if (section === "jobs" && id) await jobView(Number(id), params);
    else if (section === "jobs") await jobsView(params);
    else if (section === "tasks" && id) await taskView(Number(id));
    else if (section === "workers") await workersView();
    else if (section === "specs") await specsView();
    else if (section === "schedules") await schedulesView();
    else if (section === "subscriptions") await subscriptionsView();
    else show(el("h1", {}, "Not here"), link("#/jobs", "the jobs"));
  } catch (error) {
    failure(error);
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  $("#logout").addEventListener("click", () => { localStorage.removeItem(TOKEN_KEY); me = null; route(); });
  route();
  follow();
});
