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
const UPDATE_TERMINAL = new Set(["completed", "completed_with_failures", "aborted", "cancelled"]);

// Chart groups: devices per state over time, stacked.
const GROUPS = [
  { name: "succeeded", color: "#1f9d55", states: ["succeeded"] },
  { name: "installing", color: "#8e5bd9", states: ["downloaded", "verified", "installing", "rebooting"] },
  { name: "transferring", color: "#2f6fde", states: ["offered", "accepted", "downloading"] },
  { name: "queued", color: "#c3cad6", states: ["queued"] },
  { name: "failed", color: "#d64545", states: ["failed", "rejected"] },
  { name: "other", color: "#888888", states: ["cancelled", "skipped", "offline"] },
];
const STATE_COLOR = {};
for (const g of GROUPS) for (const s of g.states) STATE_COLOR[s] = g.color;

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
  const resp = await fetch(API + path, { ...opts, headers });
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

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function duration(s) {
  if (!s || s <= 0) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
}

function when(t) {
  if (!t) return "–";
  return new Date(t).toLocaleString();
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

// paintDone colours a bar of finished devices: green, with the failed share
// in red at its end.
function paintDone(b, sum) {
  const done = finished(sum);
  const failed = (sum.counts.failed || 0) + (sum.counts.rejected || 0);
  b.style.width = (sum.total ? (100 * done) / sum.total : 0).toFixed(2) + "%";
  const okShare = done ? (100 * (done - failed)) / done : 100;
  b.style.background = failed
    ? `linear-gradient(to right, var(--ok) 0 ${okShare}%, var(--bad) ${okShare}% 100%)`
    : "var(--ok)";
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
  else if (parts[0] === "fleet") fleetPage(view);
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
      el("td", {}, el("a", { href: "#/updates/" + encodeURIComponent(sum.id), text: sum.id })),
      el("td", {}, badge(sum.state)),
      el("td", { text: `${fw.name || ""} ${fw.version || fw.id}` }),
      el("td", { class: "wide" }, progress),
      el("td", { text: `${finished(sum)}/${sum.total} (${percent(sum)}%)` }),
      el("td", { text: String(sum.in_flight) }),
      el("td", { text: UPDATE_TERMINAL.has(sum.state) ? "–" : bytes(sum.rate_bps) + "/s" }),
      el("td", { text: when(sum.created_at) }),
    );
  }
  async function load() {
    try {
      const list = await api("/updates");
      if (gen !== generation) return;
      const ups = list.updates.slice().sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
      rows.clear();
      body.replaceChildren(...ups.map((u) => { const tr = row(u); rows.set(u.id, tr); return tr; }));
      $("#updates-empty").hidden = ups.length > 0;
    } catch (e) {
      if (gen === generation) toast("updates: " + e.message, true);
    }
  }
  const reload = throttle(load, 1000);
  load();
  every(5000, load);
  cleanup.push(openStream("", {
    summary(sum) {
      const tr = rows.get(sum.id);
      if (tr) fillRow(tr, sum); else reload();
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
  const history = []; // {t, counts}
  const page = { state: "", offset: 0, total: 0 };

  const stateSel = $("#d-state");
  for (const s of STATES) stateSel.append(el("option", { value: s, text: s }));
  stateSel.onchange = () => { page.state = stateSel.value; page.offset = 0; loadDevices(); };
  $("#d-prev").onclick = () => { page.offset = Math.max(0, page.offset - PAGE); loadDevices(); };
  $("#d-next").onclick = () => { if (page.offset + PAGE < page.total) { page.offset += PAGE; loadDevices(); } };

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
    $("#u-rate").textContent = active ? bytes(s.rate_bps) + "/s" : "–";
    $("#u-eta").textContent = active ? duration(s.eta_seconds) : "–";
    $("#u-bytes").textContent = `${bytes(s.bytes_acked)} / ${bytes(s.bytes_sent)}`;
    $("#u-resends").textContent = String(s.resends);
    let phase = s.phase ? `${s.phase} of ${(s.phases || []).length || s.phase}` + (s.gate ? ` (${s.gate.replaceAll("_", " ")})` : "") : "—";
    if (s.waiting_detail && active) phase += ` · ${s.waiting_detail}`;
    else if (s.waiting && active) phase += ` · waiting: ${s.waiting.replaceAll("_", " ")}`;
    $("#u-phase").textContent = phase;
    const fw = s.firmware || {};
    $("#u-fw").textContent = `${fw.name || fw.id} ${fw.version || ""} (${bytes(fw.size)})`;

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
    if (!lastPoint || now - lastPoint.t >= 400 || !active) {
      history.push({ t: now, counts: { ...s.counts }, total: s.total });
      if (history.length > 600) history.splice(0, history.length - 600);
    }
    drawChart();
  }

  function drawChart() {
    const canvas = $("#u-chart");
    if (!canvas) return;
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
      page.total = list.total;
      const size = (sum && sum.firmware && sum.firmware.size) || 0;
      $("#d-body").replaceChildren(...list.devices.map((p) => {
        const off = el("td", { class: "wide" });
        if (size) off.append(bar(p.offset / size), el("span", { class: "muted", text: " " + bytes(p.offset) }));
        else off.textContent = bytes(p.offset);
        return el("tr", {},
          el("td", { text: p.device }), el("td", {}, badge(p.state)), off,
          el("td", { text: String(p.attempt) }), el("td", { text: p.reason || "–" }),
          el("td", { text: when(p.updated_at) }));
      }));
      const first = list.total ? page.offset + 1 : 0;
      $("#d-range").textContent = `${first}–${page.offset + list.devices.length} of ${list.total}`;
      $("#d-prev").disabled = page.offset === 0;
      $("#d-next").disabled = page.offset + PAGE >= list.total;
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
  function addEvent(ev) {
    const dev = ev.device ? ev.device + " " : "";
    const state = ev.from ? `${ev.from} → ${ev.state}` : ev.state;
    const t = new Date(ev.time).toLocaleTimeString();
    events.prepend(el("li", { text: `#${ev.seq} ${t} ${ev.type} ${dev}${state}${ev.reason ? " (" + ev.reason + ")" : ""}` }));
    while (events.childElementCount > 100) events.lastChild.remove();
  }

  loadSummary().then(loadDevices);
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
    for (const [k, id] of [["online", "#fd-online"], ["model", "#fd-model"], ["version", "#fd-version"]]) {
      const v = $(id).value.trim();
      if (v) q.set(k, v);
    }
    return q;
  };
  const refilter = () => { page.offset = 0; loadDevices(); };
  $("#fd-online").onchange = refilter;
  $("#fd-model").onchange = refilter;
  $("#fd-version").onchange = refilter;
  $("#fd-prev").onclick = () => { page.offset = Math.max(0, page.offset - PAGE); loadDevices(); };
  $("#fd-next").onclick = () => { if (page.offset + PAGE < page.total) { page.offset += PAGE; loadDevices(); } };

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
      page.total = list.total;
      $("#fd-body").replaceChildren(...list.devices.map((d) => el("tr", {},
        el("td", { text: d.id }), el("td", { text: d.model || "–" }), el("td", { text: d.version || "–" }),
        el("td", {}, badge(d.online ? "succeeded" : "skipped")),
        el("td", { text: when(d.last_seen) }),
        el("td", { text: Object.entries(d.tags || {}).map(([k, v]) => k + "=" + v).join(", ") || "–" }))));
      for (const b of document.querySelectorAll("#fd-body .badge")) b.textContent = b.classList.contains("succeeded") ? "online" : "offline";
      const first = list.total ? page.offset + 1 : 0;
      $("#fd-range").textContent = `${first}–${page.offset + list.devices.length} of ${list.total}`;
      $("#fd-prev").disabled = page.offset === 0;
      $("#fd-next").disabled = page.offset + PAGE >= list.total;
    } catch (e) {
      if (alive()) toast("devices: " + e.message, true);
    }
  }
  loadSummary();
  loadDevices();
  every(5000, () => { loadSummary(); loadDevices(); });
}

window.addEventListener("hashchange", route);
$("#logout").addEventListener("click", (e) => { e.preventDefault(); signIn(); });
route();
