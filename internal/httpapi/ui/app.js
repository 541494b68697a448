// flota dashboard: a small single-page app over /api/v1, live through the
// Server-Sent Events stream at /api/v1/events/stream. No dependencies.
//
// Every API call carries the operator's token (Authorization: Bearer),
// which the sign-in form keeps in sessionStorage: it lasts as long as the
// tab. EventSource cannot set headers, so the stream alone takes the token
// as the access_token query parameter.
"use strict";

const API = "/api/v1";
const PAGE = 50;

const STATES = ["queued", "offered", "accepted", "downloading", "downloaded", "verified",
  "installing", "rebooting", "succeeded", "rejected", "failed", "cancelled", "skipped", "offline"];
const TERMINAL = new Set(["succeeded", "rejected", "failed", "cancelled", "skipped", "offline"]);
const UPDATE_TERMINAL = new Set(["completed", "completed_with_failures", "aborted", "cancelled", "failed"]);

// Chart groups: devices per state over time, stacked; each terminal state
// has its own colour, in the progress bars as in the chart.
const GROUPS = [
  { name: "succeeded", color: "#1f9d55", states: ["succeeded"] },
  { name: "installing", color: "#8e5bd9", states: ["downloaded", "verified", "installing", "rebooting"] },
  { name: "transferring", color: "#2f6fde", states: ["offered", "accepted", "downloading"] },
  { name: "queued", color: "#c3cad6", states: ["queued"] },
  { name: "failed", color: "#d64545", states: ["failed", "rejected"] },
  { name: "offline", color: "#d98c1a", states: ["offline"] },
  { name: "skipped", color: "#3aa6a6", states: ["skipped"] },
  { name: "cancelled", color: "#59606e", states: ["cancelled"] },
];
const STATE_COLOR = {};
for (const g of GROUPS) for (const s of g.states) STATE_COLOR[s] = g.color;
// DONE_GROUPS are drawn in a progress bar, in this order.
const DONE_GROUPS = GROUPS.filter((g) => g.states.every((s) => TERMINAL.has(s)));

// Field accessors: the dashboard reads the API's renamable fields only
// through these, one per kind of object, so that a renamed field is a
// one-line change.
const PROGRESS = { // GET /updates/{id}/devices rows, /devices/{id}/history updates
  update: (p) => p.update, device: (p) => p.device, attempts: (p) => p.attempt,
  firmware: (p) => p.firmware, updateState: (p) => p.update_state,
};
const UPDATE = { // an update summary
  firmwareID: (u) => (u.firmware || {}).id, createdBy: (u) => u.created_by,
};
const EVENT = { // the event log and the live stream
  update: (e) => e.update, device: (e) => e.device, attempt: (e) => e.attempt,
};

// ---- helpers ----

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// ---- sign-in ----

const TOKEN_KEY = "flota.token";
const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

// signIn shows the sign-in form; a token that reads the fleet is kept.
function signIn(message = "") {
  for (const fn of cleanup) fn();
  cleanup = [];
  generation++;
  sessionStorage.removeItem(TOKEN_KEY);
  $("#logout").hidden = true;
  const view = $("#view");
  view.replaceChildren();
  mount(view, "tpl-login");
  $("#login-error").textContent = message;
  $("#login-error").hidden = !message;
  $("#login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const t = $("#login-token").value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    try {
      await api("/fleet/summary");
    } catch (err) {
      if (err.code !== "unauthorized") toast(err.message, true);
      return;
    }
    $("#logout").hidden = false;
    route();
  });
  $("#login-token").focus();
}

async function api(path, opts = {}) {
  const headers = { Accept: "application/json", Authorization: "Bearer " + token() };
  if (opts.contentType) headers["Content-Type"] = opts.contentType;
  const resp = await fetch(API + path, { method: opts.method, body: opts.body, headers });
  const body = await resp.json().catch(() => ({}));
  if (resp.status === 401) {
    signIn("That token was not accepted. Paste an API token (read or admin).");
  }
  if (!resp.ok) {
    const err = new Error(body.message || resp.statusText);
    err.code = body.code || "http_" + resp.status;
    throw err;
  }
  return body;
}

// bytes formats a byte count (or a rate) for people: 3.9 KiB, 17 B.
function bytes(n) {
  if (!n || n < 0) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(Math.round(n)) : n.toFixed(1)) + " " + units[i];
}

function rate(bps) {
  return bytes(bps) + "/s";
}

function duration(s) {
  if (!s || s <= 0) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
}

// when formats every time the dashboard shows: YYYY-MM-DD HH:MM:SS in the
// browser's time zone, with its offset from UTC. Go's zero time is "–".
function when(t) {
  if (!t) return "–";
  const d = new Date(t);
  if (isNaN(d.getTime()) || d.getUTCFullYear() <= 1) return "–";
  const p = (n) => String(n).padStart(2, "0");
  const off = -d.getTimezoneOffset();
  const zone = (off < 0 ? "-" : "+") + p(Math.floor(Math.abs(off) / 60)) + ":" + p(Math.abs(off) % 60);
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())} ${zone}`;
}

function finished(sum) {
  let n = 0;
  for (const [st, c] of Object.entries(sum.counts || {})) if (TERMINAL.has(st)) n += c;
  return n;
}

function percent(sum) {
  return sum.total > 0 ? Math.floor((100 * finished(sum)) / sum.total) : 0;
}

function badge(state) {
  return el("span", { class: "badge " + state, text: state.replaceAll("_", " ") });
}

function bar(frac, cls = "") {
  const b = el("div", { class: "bar " + cls });
  b.style.width = Math.max(0, Math.min(100, frac * 100)).toFixed(1) + "%";
  return el("div", { class: "progress small" }, b);
}

// paintDone fills a bar with the finished devices: one segment per
// terminal state group, each in its colour, the bar as wide as the share
// of devices finished.
function paintDone(b, sum) {
  const done = finished(sum);
  b.style.width = (sum.total ? (100 * done) / sum.total : 0).toFixed(2) + "%";
  b.style.background = "transparent";
  b.classList.add("segments");
  const segs = [];
  for (const g of DONE_GROUPS) {
    const n = g.states.reduce((a, st) => a + (sum.counts[st] || 0), 0);
    if (!n) continue;
    const seg = el("i", { "data-group": g.name, title: `${g.name}: ${n}` });
    seg.style.width = ((100 * n) / done).toFixed(2) + "%";
    seg.style.background = g.color;
    segs.push(seg);
  }
  b.replaceChildren(...segs);
}

// link returns an anchor to a dashboard page; text is shown as text.
function link(hash, text) {
  return el("a", { href: hash, text });
}

function deviceLink(id) {
  return link("#/devices/" + encodeURIComponent(id), id);
}

function updateLink(id) {
  return link("#/updates/" + encodeURIComponent(id), id);
}

// pager wires Prev/Next buttons and a range label to a page of size PAGE.
function pager(prefix, page, load) {
  $(`#${prefix}-prev`).onclick = () => { page.offset = Math.max(0, page.offset - PAGE); load(); };
  $(`#${prefix}-next`).onclick = () => { if (page.offset + PAGE < page.total) { page.offset += PAGE; load(); } };
  return (shown, total) => {
    page.total = total;
    const first = total ? page.offset + 1 : 0;
    $(`#${prefix}-range`).textContent = `${first}–${page.offset + shown} of ${total}`;
    $(`#${prefix}-prev`).disabled = page.offset === 0;
    $(`#${prefix}-next`).disabled = page.offset + PAGE >= total;
  };
}

let toastTimer;
function toast(msg, error = false) {
  const t = $("#toast");
  t.textContent = msg;
  t.className = "toast" + (error ? " error" : "");
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 5000);
}

// throttle returns fn limited to one call per ms; a call in between is run
// at the end of the interval.
function throttle(fn, ms) {
  let last = 0, timer = null;
  return () => {
    const wait = last + ms - Date.now();
    if (wait <= 0) { last = Date.now(); fn(); return; }
    if (!timer) timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, wait);
  };
}

// selectorText describes an update's targets.
function selectorText(sel) {
  const parts = [];
  if (sel.model) parts.push("model=" + sel.model);
  if (sel.version) parts.push("version " + sel.version);
  for (const [k, v] of Object.entries(sel.tags || {})) parts.push(`tag ${k}=${v}`);
  if (sel.devices && sel.devices.length) {
    const some = sel.devices.slice(0, 5).join(", ");
    parts.push(`${sel.devices.length} devices (${some}${sel.devices.length > 5 ? ", …" : ""})`);
  }
  if (sel.online) parts.push("online when created");
  return parts.length ? parts.join(" · ") : "every registered device";
}

// eventItem is one line of an event list; the device links to its page.
function eventItem(ev) {
  const li = el("li", { "data-seq": String(ev.seq) });
  const dev = EVENT.device(ev);
  const state = ev.from ? `${ev.from} → ${ev.state}` : ev.state;
  li.append(`#${ev.seq} ${when(ev.time)} ${ev.type} `);
  if (dev) li.append(deviceLink(dev), " ");
  li.append(state + (ev.reason ? " (" + ev.reason + ")" : "") + (EVENT.attempt(ev) ? ` attempt ${EVENT.attempt(ev)}` : ""));
  return li;
}

// ---- live stream ----

function openStream(query, handlers) {
  const sep = query ? "&" : "?";
  const es = new EventSource(API + "/events/stream" + query + sep + "access_token=" + encodeURIComponent(token()));
  const live = $("#live");
  live.hidden = false;
  es.onopen = () => { live.textContent = "live"; live.classList.add("on"); };
  es.onerror = () => { live.textContent = "reconnecting"; live.classList.remove("on"); };
  es.addEventListener("summary", (e) => handlers.summary && handlers.summary(JSON.parse(e.data)));
  es.addEventListener("event", (e) => handlers.event && handlers.event(JSON.parse(e.data)));
  return () => { es.close(); live.textContent = ""; live.hidden = true; live.classList.remove("on"); };
}

// ---- router ----

let cleanup = [];
// generation counts page changes: work started for an earlier page (a fetch
// in flight, a throttled call) checks it and stops.
let generation = 0;

function route() {
  if (!token()) { signIn(); return; }
  $("#logout").hidden = false;
  for (const fn of cleanup) fn();
  cleanup = [];
  generation++;
  const hash = location.hash.replace(/^#/, "") || "/updates";
  const parts = hash.split("/").filter(Boolean);
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === parts[0]);
  }
  const view = $("#view");
  view.replaceChildren();
  if (parts[0] === "updates" && parts[1]) updatePage(view, decodeURIComponent(parts[1]));
  else if (parts[0] === "devices" && parts[1]) devicePage(view, decodeURIComponent(parts[1]));
  else if (parts[0] === "fleet") fleetPage(view);
  else if (parts[0] === "new") newPage(view);
  else updatesPage(view);
}

function mount(view, id) {
  view.append($("#" + id).content.cloneNode(true));
}

function every(ms, fn) {
  const t = setInterval(fn, ms);
  cleanup.push(() => clearInterval(t));
}

// ---- updates list ----

function updatesPage(view) {
  mount(view, "tpl-updates");
  const gen = generation;
  const rows = new Map();
  const body = $("#updates-body");
  const page = { offset: 0, total: 0, q: "" };

  function row(sum) {
    const tr = el("tr", { "data-update": sum.id });
    fillRow(tr, sum);
    return tr;
  }
  function fillRow(tr, sum) {
    const fw = sum.firmware || {};
    const progress = bar(0);
    paintDone(progress.firstChild, sum);
    tr.replaceChildren(
      el("td", {}, updateLink(sum.id)),
      el("td", {}, badge(sum.state)),
      el("td", { text: `${fw.name || ""} ${fw.version || UPDATE.firmwareID(sum)}` }),
      el("td", { class: "wide" }, progress),
      el("td", { text: `${finished(sum)}/${sum.total} (${percent(sum)}%)` }),
      el("td", { text: String(sum.in_flight) }),
      el("td", { text: UPDATE_TERMINAL.has(sum.state) ? "–" : rate(sum.rate_bps) }),
      el("td", { text: UPDATE.createdBy(sum) || "–" }),
      el("td", { text: when(sum.created_at) }),
    );
  }
  const paged = pager("up", page, () => load());
  async function load() {
    const q = new URLSearchParams({ limit: PAGE, offset: page.offset });
    if (page.q) q.set("q", page.q);
    try {
      const list = await api("/updates?" + q);
      if (gen !== generation) return;
      rows.clear();
      body.replaceChildren(...list.updates.map((u) => { const tr = row(u); rows.set(u.id, tr); return tr; }));
      $("#updates-empty").hidden = list.total > 0 || !!page.q;
      paged(list.updates.length, list.total);
    } catch (e) {
      if (gen === generation) toast("updates: " + e.message, true);
    }
  }
  $("#up-search").oninput = throttle(() => { page.q = $("#up-search").value.trim(); page.offset = 0; load(); }, 300);
  const reload = throttle(load, 1000);
  load();
  every(5000, load);
  cleanup.push(openStream("", {
    summary(sum) {
      const tr = rows.get(sum.id);
      if (tr) fillRow(tr, sum); else if (page.offset === 0 && !page.q) reload();
    },
    event(ev) { if (ev.type === "update") reload(); },
  }));
}

// ---- one update ----

function updatePage(view, id) {
  mount(view, "tpl-update");
  const gen = generation;
  const alive = () => gen === generation;
  $("#u-id").textContent = id;
  let sum = null;
  let history = []; // {t, counts, total}: the timeline from the event log, then live summaries
  const page = { state: "", offset: 0, total: 0 };

  const stateSel = $("#d-state");
  for (const s of STATES) stateSel.append(el("option", { value: s, text: s }));
  stateSel.onchange = () => { page.state = stateSel.value; page.offset = 0; loadDevices(); };
  const paged = pager("d", page, () => loadDevices());

  function render(s) {
    if (!alive()) return;
    if (sum && s.time && sum.time && s.time < sum.time) return; // older than what is shown
    sum = s;
    const pct = percent(s);
    const failed = (s.counts.failed || 0) + (s.counts.rejected || 0);
    const stateEl = $("#u-state");
    stateEl.replaceWith(Object.assign(badge(s.state), { id: "u-state" }));
    paintDone($("#u-bar"), s);
    const pctEl = $("#u-pct");
    pctEl.textContent = pct + "%";
    pctEl.dataset.percent = String(pct);
    $("#u-done").textContent = `${finished(s)} / ${s.total} finished` + (failed ? `, ${failed} failed` : "");
    $("#u-inflight").textContent = String(s.in_flight);
    const active = !UPDATE_TERMINAL.has(s.state);
    $("#u-rate").textContent = active ? rate(s.rate_bps) : "–";
    $("#u-eta").textContent = active ? duration(s.eta_seconds) : "–";
    $("#u-bytes").textContent = `${bytes(s.bytes_acked)} / ${bytes(s.bytes_sent)}`;
    $("#u-resends").textContent = String(s.resends);
    let phase = s.phase ? `${s.phase} of ${(s.phases || []).length || s.phase}` + (s.gate ? ` (${s.gate.replaceAll("_", " ")})` : "") : "—";
    if (s.waiting_detail && active) phase += ` · ${s.waiting_detail}`;
    else if (s.waiting && active) phase += ` · waiting: ${s.waiting.replaceAll("_", " ")}`;
    else if (s.ended_reason && !active) phase += ` · ${s.ended_reason}`;
    $("#u-phase").textContent = phase;
    const fw = s.firmware || {};
    $("#u-fw").textContent = `${fw.name || UPDATE.firmwareID(s)} ${fw.version || ""} (${bytes(fw.size)})`;
    about(s);
    const failedNow = (s.counts.failed || 0) + (s.counts.rejected || 0) + (s.counts.offline || 0) +
      (s.counts.skipped || 0) + (s.counts.cancelled || 0);
    if (failedNow !== shownFailures) { shownFailures = failedNow; refreshFailures(); }

    const counts = $("#u-counts");
    counts.replaceChildren(...STATES.map((st) => {
      const n = s.counts[st] || 0;
      const d = el("div", { class: n ? "" : "zero", "data-state": st }, el("span", { text: st }), el("b", { text: String(n) }));
      d.style.borderLeftColor = STATE_COLOR[st];
      return d;
    }));

    $("#btn-pause").disabled = s.state !== "running";
    $("#btn-resume").disabled = s.state !== "paused";
    $("#btn-cancel").disabled = !active;
    $("#btn-retry").disabled = !(s.counts.failed > 0) || s.state === "cancelled";

    const now = Date.now();
    const lastPoint = history[history.length - 1];
    if (active && timelineLoaded && (!lastPoint || now - lastPoint.t >= 400)) {
      history.push({ t: now, counts: { ...s.counts }, total: s.total });
      if (history.length > 1200) history.splice(0, history.length - 1200);
    }
    drawChart();
  }

  // about shows who started the update, when, and what it targets.
  function about(s) {
    $("#u-created").textContent = when(s.created_at);
    $("#u-by").textContent = UPDATE.createdBy(s) || "–";
    $("#u-started").textContent = when(s.started_at);
    $("#u-finished").textContent = when(s.finished_at);
    $("#u-selector").textContent = selectorText(s.selector || {});
    $("#u-policy").replaceChildren(...Object.entries(s.policy || {}).map(([k, v]) =>
      el("div", {}, el("dt", { text: k.replaceAll("_", " ") }),
        el("dd", { text: k.endsWith("_at") ? when(v) : typeof v === "object" ? JSON.stringify(v) : String(v) }))));
  }

  // The chart and the recent events start from the event log: a finished
  // update shows its whole life.
  let timelineLoaded = false;
  async function loadTimeline() {
    try {
      const tl = await api(`/updates/${encodeURIComponent(id)}/timeline`);
      if (!alive()) return;
      const total = (p) => Object.values(p.counts).reduce((a, n) => a + n, 0);
      const live = history;
      history = tl.points.map((p) => ({ t: Date.parse(p.time), counts: p.counts, total: total(p) }));
      const last = history.length ? history[history.length - 1].t : 0;
      for (const p of live) if (p.t > last) history.push(p);
      timelineLoaded = true;
      for (const ev of tl.recent.slice().reverse()) addEvent(ev);
      $("#u-pruned").hidden = !tl.truncated;
      drawChart();
    } catch (e) {
      if (alive()) toast("timeline: " + e.message, true);
    }
  }

  let shownFailures = -1;
  async function loadFailures() {
    try {
      const f = await api(`/updates/${encodeURIComponent(id)}/failures`);
      if (!alive()) return;
      $("#u-fail-total").textContent = String(f.total);
      $("#u-fail-empty").hidden = f.groups.length > 0;
      $("#u-failures").replaceChildren(...f.groups.map((g) => {
        const devs = el("td", { class: "devs" });
        g.devices.forEach((d, i) => { if (i) devs.append(", "); devs.append(deviceLink(d)); });
        if (g.count > g.devices.length) devs.append(el("span", { class: "muted", text: ` … and ${g.count - g.devices.length} more` }));
        return el("tr", { "data-reason": g.reason || "none", "data-state": g.state },
          el("td", {}, badge(g.state)), el("td", { text: g.reason || "–" }), el("td", { class: "num", text: String(g.count) }), devs);
      }));
    } catch (e) {
      if (alive()) toast("failures: " + e.message, true);
    }
  }
  const refreshFailures = throttle(loadFailures, 2000);

  function drawChart() {
    const canvas = $("#u-chart");
    if (!canvas) return;
    canvas.dataset.points = String(history.length);
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 560, h = canvas.clientHeight || 200;
    canvas.width = w * ratio;
    canvas.height = h * ratio;
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.clearRect(0, 0, w, h);
    const pad = { l: 40, r: 8, t: 8, b: 18 };
    const total = Math.max(1, ...history.map((p) => p.total));
    ctx.strokeStyle = "#e1e4ea";
    ctx.fillStyle = "#6b7385";
    ctx.font = "11px system-ui, sans-serif";
    for (const f of [0, 0.5, 1]) {
      const y = pad.t + (1 - f) * (h - pad.t - pad.b);
      ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(w - pad.r, y); ctx.stroke();
      ctx.fillText(String(Math.round(f * total)), 4, y + 4);
    }
    if (history.length < 2) {
      ctx.fillText("collecting…", pad.l + 8, h / 2);
      drawLegend();
      return;
    }
    const t0 = history[0].t, t1 = history[history.length - 1].t;
    const x = (t) => pad.l + ((t - t0) / Math.max(1, t1 - t0)) * (w - pad.l - pad.r);
    const y = (v) => pad.t + (1 - v / total) * (h - pad.t - pad.b);
    const base = history.map(() => 0);
    for (const g of GROUPS) {
      const top = history.map((p, i) => base[i] + g.states.reduce((a, st) => a + (p.counts[st] || 0), 0));
      ctx.beginPath();
      history.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(top[i])) : ctx.moveTo(x(p.t), y(top[i]))));
      for (let i = history.length - 1; i >= 0; i--) ctx.lineTo(x(history[i].t), y(base[i]));
      ctx.closePath();
      ctx.fillStyle = g.color;
      ctx.fill();
      top.forEach((v, i) => { base[i] = v; });
    }
    ctx.fillStyle = "#6b7385";
    ctx.fillText(duration((t1 - t0) / 1000) + " shown", w - pad.r - 90, h - 4);
    drawLegend();
  }

  function drawLegend() {
    $("#u-legend").replaceChildren(...GROUPS.map((g) => {
      const i = el("i");
      i.style.background = g.color;
      return el("span", {}, i, g.name);
    }));
  }

  async function loadSummary() {
    try {
      render(await api("/updates/" + encodeURIComponent(id)));
    } catch (e) {
      if (alive()) toast("update: " + e.message, true);
    }
  }

  async function loadDevices() {
    const q = new URLSearchParams({ limit: PAGE, offset: page.offset });
    if (page.state) q.set("state", page.state);
    try {
      const list = await api(`/updates/${encodeURIComponent(id)}/devices?` + q);
      if (!alive()) return;
      const size = (sum && sum.firmware && sum.firmware.size) || 0;
      $("#d-body").replaceChildren(...list.devices.map((p) => {
        const off = el("td", { class: "wide" });
        if (size) off.append(bar(p.offset / size), el("span", { class: "muted", text: " " + bytes(p.offset) }));
        else off.textContent = bytes(p.offset);
        return el("tr", {},
          el("td", {}, deviceLink(PROGRESS.device(p))), el("td", {}, badge(p.state)), off,
          el("td", { text: String(PROGRESS.attempts(p)) }), el("td", { text: p.reason || "–" }),
          el("td", { text: when(p.updated_at) }));
      }));
      paged(list.devices.length, list.total);
    } catch (e) {
      if (alive()) toast("devices: " + e.message, true);
    }
  }
  const refreshDevices = throttle(loadDevices, 1000);
  const refreshSummary = throttle(loadSummary, 500);

  async function control(op, question) {
    if (!confirm(question)) return;
    try {
      const res = await api(`/updates/${encodeURIComponent(id)}/${op}`, { method: "POST" });
      if (op === "retry-failed") {
        render(res.update);
        toast(`${res.retried} failed devices queued again`);
        refreshDevices();
        return;
      }
      render(res);
      toast(`update ${res.id} ${res.state}`);
    } catch (e) {
      toast(`${op}: ${e.message}`, true);
    }
  }
  $("#btn-pause").onclick = () => control("pause", `Pause update ${id}? Transfers in flight finish; no new device starts.`);
  $("#btn-resume").onclick = () => control("resume", `Resume update ${id}?`);
  $("#btn-cancel").onclick = () => control("cancel", `Cancel update ${id}? Devices not yet installing stop.`);
  $("#btn-retry").onclick = () => control("retry-failed", `Retry the failed devices of ${id} with fresh attempts?`);

  const events = $("#u-events");
  const shown = new Set(); // seqs listed: the log and the stream overlap
  function addEvent(ev) {
    if (shown.has(ev.seq)) return;
    shown.add(ev.seq);
    events.prepend(eventItem(ev));
    while (events.childElementCount > 100) {
      shown.delete(Number(events.lastChild.dataset.seq));
      events.lastChild.remove();
    }
  }

  loadSummary().then(() => { loadDevices(); loadTimeline(); });
  every(2000, () => { if (!sum || !UPDATE_TERMINAL.has(sum.state)) refreshSummary(); });
  const onResize = throttle(drawChart, 200);
  window.addEventListener("resize", onResize);
  cleanup.push(() => window.removeEventListener("resize", onResize));
  cleanup.push(openStream("?update=" + encodeURIComponent(id), {
    summary: render,
    event(ev) {
      addEvent(ev);
      refreshDevices();
      if (ev.type === "update") refreshSummary();
    },
  }));
}

// ---- fleet ----

function fleetPage(view) {
  mount(view, "tpl-fleet");
  const gen = generation;
  const alive = () => gen === generation;
  const page = { offset: 0, total: 0 };
  const filters = () => {
    const q = new URLSearchParams({ limit: PAGE, offset: page.offset });
    for (const [k, id] of [["online", "#fd-online"], ["prefix", "#fd-prefix"], ["tag", "#fd-tag"],
      ["model", "#fd-model"], ["version", "#fd-version"]]) {
      const v = $(id).value.trim();
      if (v) q.set(k, v);
    }
    return q;
  };
  const refilter = () => { page.offset = 0; loadDevices(); };
  for (const id of ["#fd-online", "#fd-prefix", "#fd-tag", "#fd-model", "#fd-version"]) $(id).onchange = refilter;
  $("#fd-prefix").oninput = throttle(refilter, 300);
  const paged = pager("fd", page, () => loadDevices());

  function dist(target, rows, total) {
    target.replaceChildren(...rows.map((r) => el("div", { class: "row" },
      el("span", { class: "label", text: r.label, title: r.label }),
      bar(total ? r.n / total : 0),
      el("span", { class: "num", text: `${r.n}` + (r.online !== undefined ? ` (${r.online} on)` : "") }))));
    if (!rows.length) target.replaceChildren(el("p", { class: "muted", text: "no devices" }));
  }

  async function loadSummary() {
    try {
      const s = await api("/fleet/summary");
      if (!alive()) return;
      $("#f-total").textContent = s.total;
      $("#f-online").textContent = s.online;
      $("#f-offline").textContent = s.offline;
      const models = new Map();
      for (const v of s.versions) {
        const m = models.get(v.model) || { label: v.model || "(no model)", n: 0, online: 0 };
        m.n += v.devices; m.online += v.online;
        models.set(v.model, m);
      }
      dist($("#f-models"), [...models.values()].sort((a, b) => b.n - a.n), s.total);
      dist($("#f-versions"), s.versions.map((v) => ({ label: `${v.model || "(no model)"} ${v.version || "?"}`, n: v.devices, online: v.online }))
        .sort((a, b) => b.n - a.n), s.total);
    } catch (e) {
      if (alive()) toast("fleet: " + e.message, true);
    }
  }

  async function loadDevices() {
    try {
      const list = await api("/devices?" + filters());
      if (!alive()) return;
      $("#fd-body").replaceChildren(...list.devices.map((d) => el("tr", {},
        el("td", {}, deviceLink(d.id)), el("td", { text: d.model || "–" }), el("td", { text: d.version || "–" }),
        el("td", {}, badge(d.online ? "succeeded" : "skipped")),
        el("td", { text: when(d.last_seen) }),
        el("td", { text: Object.entries(d.tags || {}).map(([k, v]) => k + "=" + v).join(", ") || "–" }))));
      for (const b of document.querySelectorAll("#fd-body .badge")) b.textContent = b.classList.contains("succeeded") ? "online" : "offline";
      paged(list.devices.length, list.total);
    } catch (e) {
      if (alive()) toast("devices: " + e.message, true);
    }
  }
  loadSummary();
  loadDevices();
  every(5000, () => { loadSummary(); loadDevices(); });
}

// ---- one device ----

function devicePage(view, id) {
  mount(view, "tpl-device");
  const gen = generation;
  const alive = () => gen === generation;
  $("#dv-id").textContent = id;

  async function load() {
    try {
      const h = await api(`/devices/${encodeURIComponent(id)}/history`);
      if (!alive()) return;
      const d = h.device;
      $("#dv-online").replaceChildren(Object.assign(badge(d.online ? "succeeded" : "skipped"), { textContent: d.online ? "online" : "offline" }));
      $("#dv-model").textContent = d.model || "–";
      $("#dv-version").textContent = d.version || "–";
      $("#dv-seen").textContent = when(d.last_seen);
      $("#dv-first").textContent = when(d.first_seen);
      $("#dv-tags").textContent = Object.entries(d.tags || {}).map(([k, v]) => k + "=" + v).join(", ") || "–";
      const last = $("#dv-last");
      if (h.last_update) last.replaceChildren(badge(h.last_state), " in ", updateLink(h.last_update));
      else last.textContent = "in no update";
      $("#dv-updates-count").textContent = `${h.updates.length} of ${h.updates_total}`;
      $("#dv-updates").replaceChildren(...h.updates.map((u) => el("tr", { "data-update": PROGRESS.update(u) },
        el("td", {}, updateLink(PROGRESS.update(u))), el("td", {}, badge(PROGRESS.updateState(u))),
        el("td", { text: PROGRESS.firmware(u) }), el("td", {}, badge(u.state)),
        el("td", { text: String(PROGRESS.attempts(u)) }), el("td", { text: u.reason || "–" }),
        el("td", { text: when(u.updated_at) }))));
      $("#dv-events").replaceChildren(...h.events.map(eventItem));
      $("#dv-none").hidden = h.updates.length > 0;
    } catch (e) {
      if (alive()) toast("device: " + e.message, true);
    }
  }
  load();
  every(5000, load);
}

// ---- new update: upload firmware, then create the update ----

// The server validates both forms as it does for the CLI; its messages are
// shown as they are.
function newPage(view) {
  mount(view, "tpl-new");
  const gen = generation;
  const alive = () => gen === generation;

  async function loadFirmware(select) {
    try {
      const list = await api("/firmware");
      if (!alive()) return;
      const sel = $("#nu-firmware");
      const fws = list.firmware.slice().sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
      sel.replaceChildren(el("option", { value: "", text: "choose a firmware" }), ...fws.map((f) =>
        el("option", { value: f.id, text: `${f.name || "(no name)"} ${f.version}${f.model ? " for " + f.model : ""} · ${bytes(f.size)} · ${f.id}${f.signature ? "" : " · unsigned"}` })));
      if (select) sel.value = select;
    } catch (e) {
      if (alive()) toast("firmware: " + e.message, true);
    }
  }

  const show = (id, msg, ok) => {
    const p = $(id);
    p.textContent = msg;
    p.className = ok ? "ok" : "error";
    p.hidden = !msg;
  };

  $("#fw-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = $("#fw-file").files[0];
    if (!file) { show("#fw-result", "Choose an image file.", false); return; }
    const q = new URLSearchParams();
    for (const [k, id] of [["version", "#fw-version"], ["name", "#fw-name"], ["model", "#fw-model"], ["signature", "#fw-signature"]]) {
      const v = $(id).value.trim();
      if (v) q.set(k, v);
    }
    if ($("#fw-downgrade").checked) q.set("allow_downgrade", "true");
    $("#fw-submit").disabled = true;
    try {
      const fw = await api("/firmware?" + q, { method: "POST", body: file, contentType: "application/octet-stream" });
      if (!alive()) return;
      show("#fw-result", `Stored ${fw.name || ""} ${fw.version} as ${fw.id} (${bytes(fw.size)}, SHA-256 ${fw.sha256.slice(0, 12)}…).`, true);
      await loadFirmware(fw.id);
    } catch (err) {
      if (alive()) show("#fw-result", err.message, false);
    } finally {
      if (alive()) $("#fw-submit").disabled = false;
    }
  });

  // value sends what was typed: a whole number as a number, anything else
  // as typed, for the server to accept or refuse with its message.
  const value = (v) => (/^-?\d+$/.test(v) ? Number(v) : v);
  $("#nu-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const selector = {};
    const policy = {};
    const text = (id) => $(id).value.trim();
    if (text("#nu-model")) selector.model = text("#nu-model");
    if (text("#nu-version")) selector.version = text("#nu-version");
    if (text("#nu-tags")) {
      selector.tags = {};
      for (const kv of text("#nu-tags").split(",")) {
        const [k, ...rest] = kv.split("=");
        selector.tags[k.trim()] = rest.join("=").trim();
      }
    }
    if (text("#nu-devices")) selector.devices = text("#nu-devices").split(/[\s,]+/).filter(Boolean);
    if ($("#nu-online").checked) selector.online = true;
    for (const [k, id] of [["max_in_flight", "#nu-inflight"], ["max_attempts", "#nu-attempts"], ["rate", "#nu-rate"],
      ["failure_threshold", "#nu-fail"], ["soak", "#nu-soak"], ["offline_after", "#nu-offline-after"]]) {
      if (text(id)) policy[k] = k === "failure_threshold" || k === "soak" || k === "offline_after" ? text(id) : value(text(id));
    }
    if (text("#nu-phases")) policy.phases = text("#nu-phases").split(",").map((p) => p.trim());
    if (text("#nu-start")) {
      const t = new Date(text("#nu-start"));
      policy.start_at = isNaN(t.getTime()) ? text("#nu-start") : t.toISOString();
    }
    if (text("#nu-window-start") || text("#nu-window-end")) {
      policy.maintenance = { start: text("#nu-window-start"), end: text("#nu-window-end"), timezone: text("#nu-timezone") };
    }
    for (const [k, id] of [["manual_gates", "#nu-manual"], ["dynamic", "#nu-dynamic"], ["force", "#nu-force"], ["allow_downgrade", "#nu-downgrade"]]) {
      if ($(id).checked) policy[k] = true;
    }
    const body = { firmware: $("#nu-firmware").value, selector, policy };
    $("#nu-submit").disabled = true;
    try {
      const u = await api("/updates", { method: "POST", body: JSON.stringify(body), contentType: "application/json" });
      if (!alive()) return;
      toast(`update ${u.id} created`);
      location.hash = "#/updates/" + encodeURIComponent(u.id);
    } catch (err) {
      if (alive()) show("#nu-result", err.message, false);
    } finally {
      if (alive()) $("#nu-submit").disabled = false;
    }
  });
  loadFirmware();
}

window.addEventListener("hashchange", route);
$("#logout").addEventListener("click", (e) => { e.preventDefault(); signIn(); });
route();
