// FireGrid's operator console: plain JavaScript, no framework, no build step, no CDN.
// The page holds no data: everything comes from the admin API, each call carrying the
// admin token the operator typed (kept in this tab's sessionStorage, never in a URL).
// Behind IAM the `gcloud run services proxy` adds the identity token itself: the first
// call goes out without a token, and only a 401 asks for one.
"use strict";

const TOKEN_KEY = "firegrid.adminToken";
const REFRESH_MS = 3000;
const SVG = "http://www.w3.org/2000/svg";
// The admin function's root: the page is served at <root>/console.
const ROOT = location.pathname.replace(/\/console\/?$/, "/");

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  selected: null, // {name, version}
  status: null,
  rounds: [], // round summaries drawn so far, for `roundsOf`
  roundsOf: null,
  deadlineAt: null, // Date.now() ms at the current cycle's deadline, on the server's clock
  pickedCheckpoint: null, // the operator's choice; until then the list follows the latest
  timer: null,
};

class Unauthorized extends Error {}

const $ = (id) => document.getElementById(id);

function el(tag, attributes = {}, ...children) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function query(params) {
  return new URLSearchParams(
    Object.entries(params).filter(([, value]) => value !== null && value !== undefined),
  ).toString();
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(ROOT + path, { ...options, headers, cache: "no-store" });
  if (response.status === 401) throw new Unauthorized("the admin API refused the credentials");
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      message = (await response.json()).error || message;
    } catch (_) {
      /* not JSON: keep the status */
    }
    throw new Error(message);
  }
  return response;
}

const getJson = async (path, params = {}) => (await api(`${path}?${query(params)}`)).json();

function processParams() {
  return { name: state.selected.name, version: state.selected.version };
}

// -- signing in and out ---------------------------------------------------------------

function showLogin(message) {
  stopRefreshing();
  $("main").hidden = true;
  $("sign-out").hidden = true;
  clearData();
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

function showMain() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("sign-out").hidden = !state.token;
}

function clearData() {
  for (const id of ["processes", "cycles", "pushes"]) $(id).tBodies[0].replaceChildren();
  $("chart").replaceChildren();
  $("detail").hidden = true;
  state.status = null;
  state.rounds = [];
  state.roundsOf = null;
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  showLogin();
}

async function signIn(event) {
  event.preventDefault();
  state.token = $("token").value.trim();
  $("token").value = "";
  sessionStorage.setItem(TOKEN_KEY, state.token);
  await start();
}

// -- refreshing -----------------------------------------------------------------------

async function start() {
  try {
    await refresh();
  } catch (error) {
    if (error instanceof Unauthorized) {
      const refused = state.token ? "The admin API refused this token." : "";
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = null;
      showLogin(refused);
      return;
    }
    showMain();
    $("error").textContent = error.message;
  }
  showMain();
  stopRefreshing();
  state.timer = setInterval(() => refresh().catch(onRefreshError), REFRESH_MS);
}

function stopRefreshing() {
  if (state.timer !== null) clearInterval(state.timer);
  state.timer = null;
}

function onRefreshError(error) {
  if (error instanceof Unauthorized) showLogin("The admin API no longer accepts this token.");
  else $("error").textContent = error.message;
}

async function refresh() {
  const { processes } = await getJson("processes", { limit: 50 });
  renderProcesses(processes);
  if (state.selected) {
    const [status, listing] = await Promise.all([
      getJson("status", processParams()),
      getJson("cycles", { ...processParams(), limit: 20 }),
    ]);
    await loadRounds();
    renderStatus(status);
    renderCycles(listing.cycles);
    renderChart();
  }
  $("error").textContent = "";
  $("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function selectedFromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  return params.get("name") ? { name: params.get("name"), version: params.get("version") } : null;
}

function select(process) {
  state.selected = { name: process.name, version: process.version };
  state.pickedCheckpoint = null;
  history.replaceState(null, "", `#${query(state.selected)}`);
  refresh().catch(onRefreshError);
}

function renderProcesses(processes) {
  $("no-processes").hidden = processes.length > 0;
  if (!state.selected) {
    state.selected = selectedFromHash();
    const first = processes.find((p) => p.status === "training") || processes[0];
    if (!state.selected && first) state.selected = { name: first.name, version: first.version };
  }
  const rows = processes.map((p) => {
    const row = el(
      "tr",
      { "data-name": p.name, "data-version": p.version },
      el("td", {}, p.name),
      el("td", {}, p.version),
      el("td", {}, p.status),
      el("td", {}, p.current_cycle),
      el("td", {}, p.latest_checkpoint),
      el("td", {}, p.aggregation),
      el("td", {}, p.mode),
    );
    const chosen = state.selected && state.selected.name === p.name;
    if (chosen && state.selected.version === p.version) row.classList.add("selected");
    row.addEventListener("click", () => select(p));
    return row;
  });
  $("processes").tBodies[0].replaceChildren(...rows);
}

// -- one process ----------------------------------------------------------------------

function ofMax(count, max) {
  return max === null || max === undefined ? `${count}` : `${count} / ${max}`;
}

function renderStatus(status) {
  state.status = status;
  $("detail").hidden = false;
  $("process-title").textContent = `${status.name} ${status.version} · ${status.status}`;
  const cycle = status.current_cycle;
  const config = status.server_config;
  $("cycle-seq").textContent = cycle ? `#${cycle.seq}` : "";
  $("cycle-status").textContent = cycle ? `${cycle.status} (epoch ${cycle.epoch})` : "-";
  // Async (FedBuff): places are the process's (of max_concurrency), the cycle is the
  // open buffer (of buffer_size).
  const buffering = status.buffering;
  if (buffering) {
    $("places").textContent = ofMax(buffering.places_taken, buffering.max_concurrency);
    $("reported").textContent = ofMax(buffering.buffered, buffering.buffer_size);
  } else {
    $("places").textContent = cycle ? ofMax(cycle.assigned, config.max_workers) : "-";
    $("reported").textContent = cycle ? ofMax(cycle.reported, config.max_diffs) : "-";
  }
  const skipped = cycle ? Object.entries(cycle.skipped) : [];
  $("skipped").textContent = skipped.length
    ? skipped.map(([reason, n]) => `${reason}: ${n}`).join(", ")
    : "none";
  $("last-error").textContent = (cycle && cycle.last_error) || "none";
  const live = cycle && cycle.seconds_left !== null && status.status === "training";
  state.deadlineAt = live ? Date.now() + cycle.seconds_left * 1000 : null;
  renderCountdown();

  const pool = status.pool;
  for (const key of ["workers", "registered", "available", "invited", "assigned", "slow"]) {
    $(`pool-${key}`).textContent = pool[key];
  }
  renderPushes(pool.last_sends);
  renderCheckpoints(status.checkpoints);
}

function renderCountdown() {
  const cycle = state.status && state.status.current_cycle;
  if (!cycle || cycle.deadline === null) {
    $("countdown").textContent = "none";
    return;
  }
  if (state.deadlineAt === null) {
    $("countdown").textContent = new Date(cycle.deadline).toLocaleTimeString();
    return;
  }
  const left = Math.max(0, Math.round((state.deadlineAt - Date.now()) / 1000));
  const clock = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
  $("countdown").textContent = left > 0 ? `in ${clock}` : "passed (the next tick decides)";
}

function renderCheckpoints(checkpoints) {
  const select = $("checkpoint");
  const chosen = state.pickedCheckpoint;
  select.replaceChildren(...[...checkpoints].reverse().map((n) => el("option", { value: n }, n)));
  if (chosen !== null && checkpoints.includes(Number(chosen))) select.value = chosen;
}

function renderPushes(sends) {
  const rows = sends.map((s) =>
    el(
      "tr",
      {},
      el("td", {}, s.type),
      el("td", {}, s.cycle ?? ""),
      el("td", {}, s.recipients ?? ""),
      el("td", {}, s.sent ?? ""),
      el("td", {}, s.failed ?? ""),
      el("td", {}, s.created_at ? new Date(s.created_at).toLocaleTimeString() : ""),
    ),
  );
  $("pushes").tBodies[0].replaceChildren(...rows);
}

function seconds(value) {
  return value === null ? "" : `${value.toFixed(1)} s`;
}

function renderCycles(cycles) {
  const rows = cycles.map((c) =>
    el(
      "tr",
      { "data-seq": c.seq },
      el("td", {}, c.seq),
      el("td", {}, c.outcome),
      el("td", {}, c.num_diffs ?? ""),
      el("td", {}, c.total_samples ?? ""),
      el("td", {}, seconds(c.duration_s)),
      el("td", {}, c.resets),
      el("td", {}, c.extensions),
    ),
  );
  $("cycles").tBodies[0].replaceChildren(...rows);
}

// -- the chart: summaries come from admin/round-stats, never recomputed here -----------

async function loadRounds() {
  const key = `${state.selected.name}\u0000${state.selected.version}`;
  if (state.roundsOf !== key) {
    state.rounds = [];
    state.roundsOf = key;
  }
  let after = state.rounds.length ? state.rounds[state.rounds.length - 1].round : 0;
  for (;;) {
    const page = await getJson("round-stats", { ...processParams(), after });
    if (state.roundsOf !== key) return; // another process was chosen meanwhile
    state.rounds.push(...page.rounds);
    if (!page.more || page.through <= after) return;
    after = page.through;
  }
}

function renderChart() {
  const svg = $("chart");
  const width = 720;
  const height = 300;
  const margin = { left: 48, right: 16, top: 12, bottom: 36 };
  const rounds = state.rounds;
  const last = Math.max(2, ...rounds.map((r) => r.round));
  const x = (round) => margin.left + ((round - 1) / (last - 1)) * (width - margin.left - margin.right);
  const y = (value) => margin.top + (1 - value) * (height - margin.top - margin.bottom);
  const parts = [];
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(el("svg:line", { class: "grid-line", x1: margin.left, x2: width - margin.right, y1: y(tick), y2: y(tick) }));
    parts.push(el("svg:text", { class: "label", x: margin.left - 8, y: y(tick) + 4, "text-anchor": "end" }, tick.toFixed(2)));
  }
  const step = Math.max(1, Math.ceil(last / 10));
  for (let round = 1; round <= last; round += step) {
    parts.push(el("svg:text", { class: "label", x: x(round), y: height - margin.bottom + 16, "text-anchor": "middle" }, round));
  }
  parts.push(el("svg:line", { class: "axis", x1: margin.left, x2: margin.left, y1: margin.top, y2: height - margin.bottom }));
  parts.push(el("svg:line", { class: "axis", x1: margin.left, x2: width - margin.right, y1: height - margin.bottom, y2: height - margin.bottom }));
  parts.push(el("svg:text", { class: "label", x: (width + margin.left) / 2, y: height - 4, "text-anchor": "middle" }, "round (cycle)"));
  if (rounds.length) {
    const upper = rounds.map((r) => `${x(r.round)},${y(r.p90)}`);
    const lower = rounds.map((r) => `${x(r.round)},${y(r.p10)}`).reverse();
    parts.push(el("svg:polygon", { class: "band", points: [...upper, ...lower].join(" ") }));
    parts.push(el("svg:polyline", { class: "mean", points: rounds.map((r) => `${x(r.round)},${y(r.weighted_accuracy)}`).join(" ") }));
    for (const r of rounds) {
      const point = el("svg:circle", { class: "point", cx: x(r.round), cy: y(r.weighted_accuracy), r: 3.5, "data-round": r.round });
      point.append(el("svg:title", {}, `round ${r.round}: ${r.weighted_accuracy.toFixed(3)} (p10 ${r.p10.toFixed(3)}, p90 ${r.p90.toFixed(3)}; ${r.devices} devices)`));
      parts.push(point);
    }
  } else {
    parts.push(el("svg:text", { class: "label", x: width / 2, y: height / 2, "text-anchor": "middle" }, "no completed round with metrics yet"));
  }
  svg.replaceChildren(...parts);
}

// -- actions: each asks first ---------------------------------------------------------

function reportAction(text) {
  $("action-result").textContent = text;
}

function labels(list) {
  return list.length ? list.join(", ") : "none";
}

async function act(question, action) {
  if (!state.selected || !window.confirm(question)) return;
  try {
    reportAction(await action());
    await refresh();
  } catch (error) {
    if (error instanceof Unauthorized) showLogin("The admin API no longer accepts this token.");
    else reportAction(`failed: ${error.message}`);
  }
}

function tick() {
  return act("Run the tick now (close, reset or extend every expired cycle)?", async () => {
    const report = await (await api("tick", { method: "POST" })).json();
    return `tick: closed ${labels(report.closed)}; reset ${labels(report.reset)}; ` +
      `extended ${labels(report.extended)}; re-driven ${labels(report.redriven)}`;
  });
}

function push() {
  const type = $("push-type").value;
  const { name, version } = state.selected || {};
  return act(`Send "${type}" to every registered worker of ${name} ${version}?`, async () => {
    const body = JSON.stringify({ ...processParams(), type });
    const answer = await (await api("push", { method: "POST", body, headers: { "Content-Type": "application/json" } })).json();
    const record = answer.push || {};
    return `push ${type}: ${record.sent ?? 0} sent, ${record.failed ?? 0} failed`;
  });
}

function download() {
  const number = $("checkpoint").value;
  const { name, version } = state.selected || {};
  return act(`Download checkpoint ${number} of ${name} ${version}?`, async () => {
    const response = await api(`retrieve-model?${query({ ...processParams(), checkpoint: number })}`);
    const blob = await response.blob();
    const link = el("a", { href: URL.createObjectURL(blob), download: `${name}-${version}-checkpoint-${number}.safetensors` });
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    return `checkpoint ${number}: ${blob.size} bytes downloaded`;
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("tick").addEventListener("click", tick);
  $("push").addEventListener("click", push);
  $("download").addEventListener("click", download);
  $("checkpoint").addEventListener("change", () => {
    state.pickedCheckpoint = $("checkpoint").value;
  });
  setInterval(renderCountdown, 1000);
  start();
});
