// inboxd moderation console: renders each page from /console/api/*, refreshed by short
// polling. DOM built with textContent only: nothing from a message is ever parsed as HTML.
"use strict";

const state = { session: null, timer: null, busy: false, rates: [], last: null, deadReason: "" };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function status(text, isError) {
  const node = document.getElementById("status");
  node.textContent = text || "";
  node.className = isError ? "error" : "";
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": state.session.csrf },
    body: JSON.stringify(body),
  };
  const response = await fetch("/console/api/" + path, options);
  if (response.status === 401) { location.href = "/console/login"; throw new Error("logged out"); }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

const moderator = () => state.session && state.session.role === "moderator";
const when = (ms) => (ms ? new Date(ms).toLocaleString() : "");
function age(ms) {
  if (!ms) return "";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}
const ms = (seconds) => (seconds === null || seconds === undefined ? "–" : (seconds * 1000).toFixed(seconds < 0.001 ? 3 : 1) + " ms");
const num = (n) => (n === undefined || n === null ? "0" : Number(n).toLocaleString());

function table(id, headings, rows) {
  return el("div", { class: "table-wrap" },
    el("table", { id, class: "stack" },
      el("thead", {}, el("tr", {}, headings.map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows)));
}
const cell = (label, value, cls) => el("td", { "data-label": label, class: cls, text: value });
const card = (label, value, extra) => el("div", { class: "card" }, el("div", { class: "label", text: label }), el("div", { class: "value", text: value }), extra);

function spark(values) {
  if (values.length < 2) values = [values[0] || 0, values[0] || 0];
  const max = Math.max(1, ...values);
  const points = values.map((v, i) => `${(i / Math.max(1, values.length - 1)) * 100},${38 - (v / max) * 36}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark"); svg.setAttribute("viewBox", "0 0 100 40"); svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img"); svg.setAttribute("aria-label", "messages per second, last minutes");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points);
  svg.append(line);
  return svg;
}

// Re-rendering keeps keyboard focus on the same control (same id, or same class and data-id).
function focusKey(node) {
  if (node.id) return "#" + CSS.escape(node.id);
  if (node.dataset && node.dataset.id && node.classList.length) return `${node.tagName.toLowerCase()}.${CSS.escape(node.classList[0])}[data-id="${CSS.escape(node.dataset.id)}"]`;
  return null;
}

function render(...nodes) {
  const page = document.getElementById("page");
  const active = document.activeElement;
  const key = active && page.contains(active) ? focusKey(active) : null;
  page.replaceChildren(...nodes);
  const again = key && page.querySelector(key);
  if (again) again.focus();
}

// ---- pages -----------------------------------------------------------------------------

const pages = {
  async overview() {
    const o = await api("overview");
    const total = Object.values(o.messages).reduce((a, b) => a + b, 0);
    if (state.last) {
      const dt = (o.at_ms - state.last.at) / 1000;
      if (dt > 0) state.rates.push(Math.max(0, (total - state.last.total) / dt));
      if (state.rates.length > 60) state.rates.shift();
    }
    state.last = { at: o.at_ms, total };
    const rate = state.rates.length ? state.rates[state.rates.length - 1].toFixed(1) : "…";
    const plugins = Object.entries(o.plugins).map(([name, p]) => el("tr", {},
      cell("Plugin", name, "id"),
      cell("Verdicts", Object.entries(p.verdicts || {}).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${num(n)}`).join(", ") || "none"),
      cell("Recent rejections by code", Object.entries((o.recent_rejections || {})[name] || {}).map(([k, n]) => `${k} ${num(n)}`).join(", ") || "none"),
      cell("Failures", Object.entries(p.failures || {}).map(([k, n]) => `${k} ${num(n)}`).join(", ") || "none"),
      cell("p50", ms(p.latency_seconds.p50)), cell("p90", ms(p.latency_seconds.p90)), cell("p99", ms(p.latency_seconds.p99))));
    const dead = Object.entries(o.dead_lettered).map(([reason, n]) => el("tr", {}, cell("Reason", reason), cell("Letters", num(n))));
    render(
      el("h1", { text: "Overview" }),
      el("div", { class: "cards" },
        card("Messages per second", rate, spark(state.rates.length ? state.rates : [0])),
        ...Object.entries(o.messages).map(([outcome, n]) => card("Messages " + outcome, num(n))),
        card("Held now", num(o.held)),
        card("Confirm latency p50 / p99", `${ms(o.confirm_seconds.p50)} / ${ms(o.confirm_seconds.p99)}`),
        card("Webhooks", Object.entries(o.webhooks).map(([k, n]) => `${k} ${num(n)}`).join(", ") || "none sent"),
        card("Chain reloads", Object.entries(o.reloads).map(([k, n]) => `${k} ${num(n)}`).join(", ") || "none")),
      el("h2", { text: "Plugins" }),
      plugins.length ? table("plugins-table", ["Plugin", "Verdicts", "Recent rejections by code", "Failures", "p50", "p90", "p99"], plugins) : el("p", { class: "muted", text: "No plugin has been called yet." }),
      el("h2", { text: "Dead-lettered by reason" }),
      dead.length ? table("dead-reasons", ["Reason", "Letters"], dead) : el("p", { class: "muted", text: "Nothing dead-lettered." }));
  },

  async held() {
    const data = await api("held");
    const open = new Set([...document.querySelectorAll("#held-table tr.details")].map((r) => r.dataset.for));
    const checked = new Set([...document.querySelectorAll("#held-table input.pick:checked")].map((c) => c.value));
    const rows = [];
    for (const e of data.entries) {
      const id = e.message_id || "";
      const actions = el("td", { class: "actions", "data-label": "Actions" },
        el("button", { type: "button", class: "open", "aria-expanded": open.has(id) ? "true" : "false", text: open.has(id) ? "Close" : "Open", onclick: () => toggle(id) }));
      if (moderator() && id) {
        actions.append(
          el("button", { type: "button", class: "release primary", "data-id": id, disabled: !e.releasable, text: "Release", onclick: () => held("release", [id]) }),
          el("button", { type: "button", class: "discard danger", "data-id": id, text: "Discard", onclick: () => held("discard", [id]) }));
      }
      rows.push(el("tr", { "data-id": id, class: "entry" },
        el("td", { "data-label": "Select" }, moderator() && id ? el("input", { type: "checkbox", class: "pick", value: id, checked: checked.has(id), "aria-label": "select " + id }) : ""),
        cell("Message", id || "(unreadable)", "id"),
        cell("Plugin", e.plugin), cell("Reason", e.reason), cell("Sender", e.sender, "id"),
        cell("Conversation", e.recipient, "id"), cell("Age", age(e.received_at_ms)), actions));
      rows.push(el("tr", { class: "details", "data-for": id, hidden: !open.has(id) },
        el("td", { colspan: "8" },
          e.problem ? el("p", { class: "error", text: e.problem }) : null,
          el("p", { class: "muted", text: "Received " + when(e.received_at_ms) + " · body as the chain left it:" }),
          el("pre", { class: "body", text: JSON.stringify(e.body, null, 2) }))));
    }
    const toolbar = moderator() && data.entries.length ? el("div", { class: "toolbar" },
      el("button", { type: "button", id: "release-selected", class: "primary", text: "Release selected", onclick: () => held("release", picked()) }),
      el("button", { type: "button", id: "discard-selected", class: "danger", text: "Discard selected", onclick: () => held("discard", picked()) })) : null;
    render(
      el("h1", { text: `Held messages (${num(data.total)})` }),
      toolbar,
      data.entries.length ? table("held-table", ["", "Message", "Plugin", "Reason", "Sender", "Conversation", "Age", "Actions"], rows)
        : el("p", { id: "held-empty", class: "muted", text: "Nothing is held." }));
  },

  async refusals() {
    const data = await api("refusals");
    const rows = data.refusals.map((r) => el("tr", { "data-id": r.message_id, class: "refusal" },
      cell("Time", when(r.at_ms)), cell("Outcome", r.outcome), cell("Plugin", r.plugin, "plugin"), cell("Code", r.code, "code"),
      cell("Reason", r.reason), cell("Sender", r.sender, "id"), cell("Conversation", r.recipient, "id"), cell("Message", r.message_id, "id"),
      el("td", { "data-label": "Body" }, r.body ? el("pre", { text: r.body }) : el("span", { class: "muted", text: data.bodies ? "" : "not kept" }))));
    render(
      el("h1", { text: "Recent refusals" }),
      el("p", { class: "muted", text: `The last ${num(data.capacity)} rejected or dropped messages, newest first; bodies ${data.bodies ? "kept" : "not kept (console.refusal_bodies)"}.` }),
      rows.length ? table("refusals-table", ["Time", "Outcome", "Plugin", "Code", "Reason", "Sender", "Conversation", "Message", "Body"], rows)
        : el("p", { class: "muted", text: "No refusal since the daemon started." }));
  },

  async dead() {
    const data = await api("dead?reason=" + encodeURIComponent(state.deadReason));
    const filters = el("div", { class: "toolbar", role: "group", "aria-label": "Filter by reason" },
      el("button", { type: "button", "aria-pressed": state.deadReason === "" ? "true" : "false", text: `All (${num(data.scanned)})`, onclick: () => { state.deadReason = ""; refresh(); } }),
      ...Object.entries(data.reasons).map(([reason, n]) => el("button", { type: "button", "aria-pressed": state.deadReason === reason ? "true" : "false", text: `${reason} (${num(n)})`, onclick: () => { state.deadReason = reason; refresh(); } })));
    const rows = [];
    for (const l of data.letters) {
      const actions = el("td", { class: "actions", "data-label": "Actions" },
        el("button", { type: "button", class: "open", text: "Inspect", onclick: () => toggle(l.id) }));
      if (moderator()) {
        actions.append(
          el("button", { type: "button", class: "replay primary", "data-id": l.id, disabled: !l.routing_key, text: "Replay", onclick: () => dead("replay", l.id) }),
          el("button", { type: "button", class: "discard danger", "data-id": l.id, text: "Discard", onclick: () => dead("discard", l.id) }));
      }
      rows.push(el("tr", { "data-id": l.id }, cell("Letter", l.id, "id"), cell("Reason", l.reason), cell("Error", l.error),
        cell("Routing key", l.routing_key, "id"), cell("Bytes", num(l.bytes)), actions));
      rows.push(el("tr", { class: "details", "data-for": l.id, hidden: true }, el("td", { colspan: "6" }, el("pre", { text: l.body }))));
    }
    render(
      el("h1", { text: `Dead letters (${num(data.total)})` }),
      filters,
      rows.length ? table("dead-table", ["Letter", "Reason", "Error", "Routing key", "Bytes", "Actions"], rows)
        : el("p", { class: "muted", text: "No dead letter here." }));
  },

  async chain() {
    const data = await api("chain");
    const plugins = data.plugins.map((p) => el("tr", {},
      cell("Plugin", p.name, "id"), cell("File", p.file, "id"), cell("SHA-256", p.sha256, "id"), cell("Hooks", p.hooks.join(", ")),
      cell("Limits", `deadline ${p.deadline_ms} ms, init ${p.init_deadline_ms} ms, memory ${p.memory_mb} MiB` + (p.fuel ? `, fuel ${p.fuel}` : "") + `, recycle after ${p.recycle_after}`),
      cell("On failure", p.failure), cell("Grants", p.grants.join(", ") || "none")));
    const reloads = data.reloads.map((r) => el("tr", {},
      cell("Time", when(r.at_ms)), cell("Trigger", r.trigger),
      el("td", { "data-label": "Outcome", class: r.error ? "error" : "ok", text: r.error ? "failed: " + r.error : `ok, ${r.plugins} plugins` }),
      cell("Took", r.elapsed_ms + " ms")));
    render(
      el("h1", { text: "Plugin chain" }),
      el("div", { class: "toolbar" },
        el("span", { class: "muted", text: "Loaded " + when(data.loaded_at_ms) }),
        moderator() ? el("button", { type: "button", id: "reload", class: "primary", text: "Reload chain", onclick: reload }) : null),
      plugins.length ? table("chain-table", ["Plugin", "File", "SHA-256", "Hooks", "Limits", "On failure", "Grants"], plugins)
        : el("p", { class: "muted", text: "The chain is empty: every message is accepted." }),
      el("h2", { text: "Recent reloads" }),
      reloads.length ? table("reloads-table", ["Time", "Trigger", "Outcome", "Took"], reloads) : el("p", { class: "muted", text: "No reload since start." }));
  },

  async audit() {
    const data = await api("audit");
    const rows = data.actions.map((a) => el("tr", {},
      cell("Time", when(a.at_ms)), cell("Who", a.user, "id"), cell("Action", a.action), cell("Messages", a.targets.join(", "), "id"), cell("Result", a.result)));
    render(
      el("h1", { text: "Audit log" }),
      rows.length ? table("audit-table", ["Time", "Who", "Action", "Messages", "Result"], rows) : el("p", { class: "muted", text: "No action yet." }));
  },
};

const POLL_MS = { overview: 3000, held: 4000, refusals: 3000, dead: 10000, chain: 5000, audit: 5000 };

function toggle(id) {
  const row = document.querySelector(`tr.details[data-for="${CSS.escape(id)}"]`);
  if (!row) return;
  row.hidden = !row.hidden;
  const button = row.previousElementSibling && row.previousElementSibling.querySelector("button.open");
  if (button && button.hasAttribute("aria-expanded")) {
    button.setAttribute("aria-expanded", row.hidden ? "false" : "true");
    button.textContent = row.hidden ? "Open" : "Close";
  }
}

const picked = () => [...document.querySelectorAll("#held-table input.pick:checked")].map((c) => c.value);

async function act(what, run) {
  if (state.busy) return;
  state.busy = true;
  document.querySelectorAll("main button").forEach((b) => { b.disabled = true; });
  status(what + "…");
  try {
    status(await run());
  } catch (err) {
    status(what + " failed: " + err.message, true);
  } finally {
    state.busy = false;
    await refresh();
  }
}

function held(action, ids) {
  if (!ids.length) { status("Select messages first.", true); return; }
  return act(action === "release" ? "Releasing" : "Discarding", async () => {
    const r = await api("held/" + action, { ids });
    if (action === "release") {
      const refused = r.refused.map((x) => `${x.message_id}: ${x.error}`).join("; ");
      return `Released ${r.released}` + (r.not_found ? `, ${r.not_found} already gone` : "") + (refused ? `; refused ${refused}` : "");
    }
    return `Discarded ${r.discarded}` + (r.not_found ? `, ${r.not_found} already gone` : "");
  });
}

function dead(action, id) {
  return act(action === "replay" ? "Replaying" : "Discarding", async () => {
    const r = await api("dead/" + action, { ids: [id] });
    return `${action === "replay" ? "Replayed" : "Discarded"} ${r.done}` + (r.not_found ? `, ${r.not_found} already gone` : "");
  });
}

function reload() {
  return act("Reloading", async () => {
    await api("chain/reload", {});
    return "Reload requested: its outcome appears under Recent reloads.";
  });
}

async function refresh() {
  if (state.busy) return;
  const name = current();
  try {
    await pages[name]();
    if (document.getElementById("status").className === "error" && !state.busy) status("");
  } catch (err) {
    status("Could not load this page: " + err.message, true);
  }
}

const current = () => { const name = location.hash.slice(1); return pages[name] ? name : "overview"; };

async function show() {
  clearInterval(state.timer);
  const name = current();
  for (const link of document.querySelectorAll("header nav a")) {
    if (link.getAttribute("href") === "#" + name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  status("");
  await refresh();
  state.timer = setInterval(refresh, POLL_MS[name]);
}

async function start() {
  try {
    state.session = await api("session");
  } catch (err) {
    status("Could not start: " + err.message, true);
    return;
  }
  document.getElementById("who").textContent = `${state.session.user} (${state.session.role})`;
  document.body.dataset.role = state.session.role;
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/console/logout", { method: "POST", headers: { "X-CSRF-Token": state.session.csrf } });
    location.href = "/console/login";
  });
  window.addEventListener("hashchange", () => { show(); document.getElementById("page").focus(); });
  await show();
}

start();
