// daskflow server UI: fills the live parts of each page from the JSON API and keeps them current
// from the server-sent events at /api/events. Written for this server; no library.
//
// Everything a user's code wrote (names, messages, log lines) is put in the page with textContent,
// never as markup. The page says which page it is, and which run, in data- attributes on <body>:
// the Content-Security-Policy allows no inline script.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;

  // -- helpers ----------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) node.append(child);
    return node;
  }

  function stateKey(type, name) {
    const lower = (name || "").toLowerCase();
    if (["completed", "cached", "timedout", "crashed"].includes(lower)) return lower;
    return {COMPLETED: "completed", FAILED: "failed", CRASHED: "crashed", CANCELLED: "cancelled",
            RUNNING: "running", PENDING: "pending", SCHEDULED: "pending"}[type] || "other";
  }

  function badge(type, name) {
    return el("span", {className: "badge", "data-state": stateKey(type, name), text: name});
  }

  function when(iso) {
    if (!iso) return "\u2014";
    return iso.replace("T", " ").replace(/\.(\d{3})\d*/, ".$1").replace("+00:00", "");
  }

  function seconds(value) {
    if (value === null || value === undefined) return "\u2014";
    if (value < 1) return (value * 1000).toFixed(0) + " ms";
    if (value < 120) return value.toFixed(2) + " s";
    return (value / 60).toFixed(1) + " min";
  }

  async function getJSON(url) {
    const response = await fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}});
    if (!response.ok) throw new Error(url + ": HTTP " + response.status);
    return response.json();
  }

  async function post(url, payload) {
    const response = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", Accept: "application/json"},
      body: JSON.stringify(payload || {}),
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return {status: response.status, data: data};
  }

  function detailText(data) {
    if (!data) return "the server did not say why";
    if (typeof data.detail === "string") return data.detail;
    return JSON.stringify(data.detail);
  }

  // Calls fn at most once per `wait` ms, and once more after the last request within it.
  function throttled(fn, wait) {
    let timer = null, again = false;
    return function () {
      if (timer) { again = true; return; }
      fn();
      timer = setTimeout(function tick() {
        timer = null;
        if (again) { again = false; fn(); timer = setTimeout(tick, wait); }
      }, wait);
    };
  }

  function listen(query, handlers) {
    const live = document.getElementById("live");
    const source = new EventSource("/api/events" + query);
    source.addEventListener("hello", () => { live.textContent = "live"; live.classList.add("on"); });
    source.addEventListener("error", () => { live.textContent = "reconnecting"; live.classList.remove("on"); });
    for (const [kind, handler] of Object.entries(handlers)) {
      source.addEventListener(kind, (event) => handler(JSON.parse(event.data)));
    }
    window.addEventListener("pagehide", () => source.close());
    return source;
  }

  function countChips(counts) {
    const box = document.createDocumentFragment();
    for (const [name, n] of Object.entries(counts).sort()) {
      const chip = badge(name.toUpperCase(), name);
      chip.textContent = name + " " + n;
      box.append(chip, " ");
    }
    return box;
  }

  // -- Runs -------------------------------------------------------------------------------------

  function runsPage() {
    const params = new URLSearchParams(location.search);
    for (const [key, value] of [...params.entries()]) if (!value) params.delete(key);
    const limit = 25;
    let offset = Number(params.get("offset") || 0);
    params.delete("offset");
    const tbody = document.getElementById("runs-body");
    const prev = document.getElementById("runs-prev"), next = document.getElementById("runs-next");

    async function load() {
      const data = await getJSON("/api/flow-runs?" + params.toString() + "&limit=" + limit + "&offset=" + offset);
      const rows = data.flow_runs.map((run) => el("tr", {"data-run-id": run.id},
        el("td", {}, el("a", {href: "/flow-runs/" + encodeURIComponent(run.id), text: run.flow_name + " / " + run.name})),
        el("td", {}, badge(run.state_type, run.state_name)),
        el("td", {text: when(run.start_time)}),
        el("td", {text: seconds(run.duration)}),
        el("td", {className: "chips"}, countChips(run.task_counts))));
      if (!rows.length) rows.push(el("tr", {}, el("td", {colSpan: 5, className: "note", text: "No flow runs match."})));
      tbody.replaceChildren(...rows);
      prev.disabled = offset === 0;
      next.disabled = !data.has_more;
      document.getElementById("runs-where").textContent =
        data.flow_runs.length ? (offset + 1) + "\u2013" + (offset + data.flow_runs.length) : "";
    }
    prev.addEventListener("click", () => { offset = Math.max(0, offset - limit); load(); });
    next.addEventListener("click", () => { offset += limit; load(); });
    const refresh = throttled(() => load().catch(console.warn), 500);
    listen("", {state: refresh, reset: refresh});
    load().catch(console.warn);
  }

  // -- Flow run ---------------------------------------------------------------------------------

  function flowRunPage() {
    const runId = body.dataset.flowRunId;
    const base = "/api/flow-runs/" + encodeURIComponent(runId);
    const taskLimit = 50;
    let taskOffset = 0, lastLogId = 0, pausedSeen = body.dataset.state === "PAUSED";
    const nameFilter = document.getElementById("task-name-filter");
    const stateFilter = document.getElementById("task-state-filter");
    const levelFilter = document.getElementById("log-level");
    const tail = document.getElementById("log-tail");

    async function loadHeader() {
      const run = await getJSON(base);
      document.getElementById("run-state").replaceChildren(badge(run.state_type, run.state_name));
      document.getElementById("run-name").textContent = run.name;  // a queued run gets its name when it starts
      document.getElementById("run-start").textContent = when(run.start_time);
      document.getElementById("run-end").textContent = when(run.end_time);
      document.getElementById("run-duration").textContent = seconds(run.duration);
      document.getElementById("run-message").textContent = run.state_message || "\u2014";
      document.getElementById("task-total").textContent = "(" + run.task_runs_total + ")";
      document.getElementById("task-counts").replaceChildren(countChips(run.task_counts));
      body.dataset.state = run.state_type;
      const ended = run.is_final;  // the server says which types are final (states.FINAL_TYPE_NAMES)
      const cancel = document.getElementById("cancel-button"), retry = document.getElementById("retry-button");
      if (cancel) cancel.hidden = ended;
      if (retry) retry.hidden = !ended || run.state_type === "COMPLETED";
      const resumeSection = document.getElementById("resume-section");
      if (resumeSection && run.state_type !== "PAUSED") resumeSection.hidden = true;
      else if (!resumeSection && run.state_type === "PAUSED" && !pausedSeen) { pausedSeen = true; location.reload(); }
    }

    async function loadTasks() {
      const query = new URLSearchParams({limit: taskLimit, offset: taskOffset});
      if (nameFilter.value) query.set("name", nameFilter.value);
      if (stateFilter.value) query.set("state", stateFilter.value);
      const data = await getJSON(base + "/task-runs?" + query.toString());
      const rows = data.task_runs.map((t) => el("tr", {"data-task-run-id": t.id},
        el("td", {}, el("a", {href: "/task-runs/" + encodeURIComponent(t.id), text: t.name})),
        el("td", {className: "task-state"}, badge(t.state_type, t.state_name)),
        el("td", {text: when(t.start_time)}),
        el("td", {text: seconds(t.duration)}),
        el("td", {text: String(t.retries)}),
        el("td", {text: t.cache_hit ? "hit" : (t.cache_key ? "miss" : "")}),
        el("td", {text: t.worker || ""}),
        el("td", {text: t.slot_wait ? seconds(t.slot_wait) : ""})));
      document.getElementById("task-body").replaceChildren(...rows);
      document.getElementById("task-prev").disabled = taskOffset === 0;
      document.getElementById("task-next").disabled = !data.has_more;
      document.getElementById("task-where").textContent =
        rows.length ? (taskOffset + 1) + "\u2013" + (taskOffset + rows.length) : "none";
    }

    // The drawings read every task run: they are asked for once the tables show, not before.
    function reloadImages() {
      for (const id of ["graph-img", "timeline-img"]) {
        const img = document.getElementById(id);
        img.src = img.dataset.src + "?t=" + Date.now();
      }
    }

    // A line may come twice: from the first read of the tail and from the event stream, which
    // opened before that read answered. Each record id is shown once.
    let shownLogs = new Set();

    function appendLog(log) {
      if (log.level < Number(levelFilter.value) || shownLogs.has(log.id)) return;
      shownLogs.add(log.id);
      const line = el("div", {className: "log level-" + (log.level_name || "").toLowerCase(), "data-log-id": log.id},
        el("span", {className: "time", text: when(log.created)}), " ",
        el("span", {className: "lvl", text: log.level_name || String(log.level)}), " ",
        el("span", {className: "msg", text: log.message}));
      if (log.exception) line.append(el("pre", {text: log.exception}));
      const atBottom = tail.scrollTop + tail.clientHeight >= tail.scrollHeight - 4;
      let after = tail.lastElementChild;  // in record order, whichever way a line arrived
      while (after && Number(after.dataset.logId) > log.id) after = after.previousElementSibling;
      if (after) after.after(line); else tail.prepend(line);
      if (atBottom) tail.scrollTop = tail.scrollHeight;
    }

    async function loadLogs() {
      for (;;) {
        const data = await getJSON(base + "/logs?after=" + lastLogId + "&level=" + levelFilter.value);
        data.logs.forEach(appendLog);
        lastLogId = Math.max(lastLogId, data.last_id);
        if (data.logs.length < 500) return;
      }
    }

    const levelNames = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"};
    const refreshAll = throttled(() => {
      loadHeader().catch(console.warn);
      loadTasks().catch(console.warn);
    }, 400);
    const refreshImages = throttled(reloadImages, 1500);
    listen("?flow_run_id=" + encodeURIComponent(runId), {
      state: () => { refreshAll(); refreshImages(); },
      log: (log) => appendLog({...log, level_name: levelNames[log.level] || String(log.level)}),
      reset: () => { refreshAll(); loadLogs().catch(console.warn); },
    });
    nameFilter.addEventListener("input", throttled(() => { taskOffset = 0; loadTasks().catch(console.warn); }, 300));
    stateFilter.addEventListener("change", () => { taskOffset = 0; loadTasks().catch(console.warn); });
    document.getElementById("task-prev").addEventListener("click", () => { taskOffset = Math.max(0, taskOffset - taskLimit); loadTasks(); });
    document.getElementById("task-next").addEventListener("click", () => { taskOffset += taskLimit; loadTasks(); });
    levelFilter.addEventListener("change", () => {
      tail.replaceChildren();
      shownLogs = new Set();
      lastLogId = 0;
      loadLogs().catch(console.warn);
    });

    const message = document.getElementById("action-message");
    const cancel = document.getElementById("cancel-button");
    if (cancel) cancel.addEventListener("click", async () => {
      const result = await post(base + "/cancel");
      message.textContent = result.status === 202 ? "Cancel requested: the run stops within a few seconds."
                                                  : "Not cancelled: " + detailText(result.data);
    });
    const retry = document.getElementById("retry-button");
    if (retry) retry.addEventListener("click", async () => {
      const result = await post(base + "/retry");
      if (result.status === 201) location.assign("/flow-runs/" + encodeURIComponent(result.data.flow_run_id));
      else message.textContent = "Not retried: " + detailText(result.data);
    });
    const resumeForm = document.getElementById("resume-form");
    if (resumeForm) wireForm(resumeForm, base + "/resume", "run_input", "Not resumed: ", () => {
      document.getElementById("resume-section").hidden = true;
      message.textContent = "Resumed: the run took the input.";
    });
    Promise.all([loadHeader(), loadTasks()]).catch(console.warn).finally(reloadImages);
    loadLogs().catch(console.warn);
  }

  // -- Deployments ------------------------------------------------------------------------------

  function deploymentsPage() {
    for (const button of document.querySelectorAll("button.pause-toggle")) {
      button.addEventListener("click", async () => {
        const action = button.dataset.paused === "true" ? "resume" : "pause";
        const result = await post("/api/deployments/" + encodeURIComponent(button.dataset.name) + "/" + action);
        if (result.status === 200) location.reload();
      });
    }
  }

  function parseField(input) {
    const raw = input.value.trim();
    const kind = input.dataset.input;
    if (raw === "") return undefined;
    if (kind === "integer" && /^-?\d+$/.test(raw)) return Number(raw);
    if (kind === "number" && raw !== "" && !Number.isNaN(Number(raw))) return Number(raw);
    if (kind === "boolean") return raw === "true";
    if (kind === "json") { try { return JSON.parse(raw); } catch (e) { return raw; } }
    return raw;  // a bad number stays text: the server names the parameter that does not fit
  }

  // A form of typed fields posted as {key: {field: value}}; a 422's problems are shown under their fields.
  function wireForm(form, url, key, refused, done) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      for (const error of form.querySelectorAll(".error")) error.textContent = "";
      const values = {};
      for (const input of form.querySelectorAll("[data-input]")) {
        const value = parseField(input);
        if (value !== undefined) values[input.name] = value;
      }
      const result = await post(url, {[key]: values});
      if (result.status === 200 || result.status === 201) { done(result.data); return; }
      const problems = result.data && Array.isArray(result.data.detail) ? result.data.detail : [];
      let shown = false;
      for (const problem of problems) {
        const slot = problem.parameter ? document.getElementById("error-" + problem.parameter) : null;
        if (slot) { slot.textContent = problem.message; shown = true; }
      }
      if (!shown) document.getElementById("form-error").textContent = refused + detailText(result.data);
    });
  }

  function deploymentPage() {
    const form = document.getElementById("run-form");
    if (!form) return;
    const url = "/api/deployments/" + encodeURIComponent(body.dataset.deployment) + "/runs";
    wireForm(form, url, "parameters", "Not run: ",
             (data) => location.assign("/flow-runs/" + encodeURIComponent(data.flow_run_id)));
  }

  // -- Concurrency ------------------------------------------------------------------------------

  function concurrencyPage() {
    const tbody = document.getElementById("limits-body");
    function runs(className, list) {
      const cell = el("td", {className}, el("span", {className: "count", text: String(list.length)}));
      for (const r of list) cell.append(" ", el("a", {href: "/task-runs/" + encodeURIComponent(r.task_run_id), text: r.name}));
      return cell;
    }
    async function load() {
      const data = await getJSON("/api/concurrency");
      if (!data.limits.length) return;  // the page says there are none
      tbody.replaceChildren(...data.limits.map((limit) => el("tr", {"data-limit": limit.name},
        el("td", {text: limit.name}), el("td", {text: String(limit.size)}),
        runs("holders", limit.holders), runs("waiters", limit.waiters))));
    }
    const refresh = throttled(() => load().catch(console.warn), 500);
    listen("", {state: refresh, reset: refresh});
  }

  function cachePage() {
    document.getElementById("live").hidden = true;
    for (const button of document.querySelectorAll("button.cache-clear")) {
      button.addEventListener("click", async () => {
        const result = await post("/api/cache/" + encodeURIComponent(button.dataset.task) + "/clear");
        if (result.status === 200) location.reload();
      });
    }
  }

  const pages = {"cache": cachePage, "runs": runsPage, "flow-run": flowRunPage, "deployments": deploymentsPage, "deployment": deploymentPage, "concurrency": concurrencyPage};
  if (pages[page]) pages[page]();
  else document.getElementById("live").hidden = true;  // nothing on this page changes live
})();
