/* persistq dashboard: fills the pages from the JSON API and polls it.
 * Part of persistq_async, under its MIT licence. Hand-written, no dependencies, no build step.
 * Every value from the database goes into the page as text (textContent), never as HTML.
 */
"use strict";

(function () {
  const body = document.body;
  const BASE = body.dataset.base || "";
  const REFRESH_MS = Number(body.dataset.refreshMs || 2000);
  const WRITABLE = body.dataset.writable === "yes";
  const TOKEN_HEADER = body.dataset.tokenHeader || "X-PersistQ-Token";
  const TOKEN_KEY = "persistq-dashboard-token";
  const STATES = ["queued", "running", "done", "dead", "cancelled"];

  // ------------------------------------------------------------------ small helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const $ = (selector) => document.querySelector(selector);

  function when(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function ago(iso) {
    if (!iso) return "";
    return duration((Date.now() - new Date(iso).getTime()) / 1000) + " ago";
  }

  function until(iso) {
    if (!iso) return "";
    const left = (new Date(iso).getTime() - Date.now()) / 1000;
    return left > 0 ? "in " + duration(left) : "due";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const s = Math.max(0, seconds);
    if (s < 1) return (s * 1000).toFixed(0) + "ms";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d" + Math.floor((s % 86400) / 3600) + "h";
  }

  function lastLine(text) {
    if (!text) return "";
    const lines = String(text).trim().split("\n");
    return lines[lines.length - 1];
  }

  function pretty(value) {
    if (value === null || value === undefined) return "null";
    return JSON.stringify(value, null, 2);
  }

  function path(...parts) {
    return BASE + parts.join("");
  }

  function flash(message, kind) {
    const box = $("#flash");
    if (!box) return;
    box.textContent = message;
    box.className = "flash " + (kind || "ok");
    box.hidden = false;
    clearTimeout(flash.timer);
    flash.timer = setTimeout(() => { box.hidden = true; }, 8000);
  }

  // ------------------------------------------------------------------ the API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(url, options) {
    const init = { headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (options && options.method === "POST") {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (token) init.headers[TOKEN_HEADER] = token;
      init.body = JSON.stringify(options.body || {});
    }
    let response;
    try {
      response = await fetch(path(url), init);
    } catch (err) {
      throw new ApiError(0, "the dashboard server does not answer");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      throw new ApiError(response.status, (data && data.error) || response.statusText);
    }
    return data;
  }

  function confirmAction(text) {
    const dialog = $("#confirm");
    $("#confirm-text").textContent = text;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "cancel";
      dialog.showModal();
    });
  }

  function plural(n, word) {
    return n + " " + word + (n === 1 ? "" : "s");
  }

  // Asks, does, reports how many it touched; returns the answer or null.
  async function mutate(question, url, payload, verb) {
    if (!(await confirmAction(question))) return null;
    try {
      const answer = await api(url, { method: "POST", body: payload });
      let message = verb + " " + plural(answer.touched, "job");
      const skipped = Array.isArray(answer.skipped) ? answer.skipped.length : answer.skipped || 0;
      if (skipped) message += "; " + skipped + " skipped";
      if (Array.isArray(answer.skipped) && answer.skipped.length) {
        message += " (" + answer.skipped.slice(0, 3).map((s) => s.reason).join("; ") + ")";
      }
      flash(message, "ok");
      refreshNow();
      return answer;
    } catch (err) {
      flash(err.message, "error");
      return null;
    }
  }

  // ------------------------------------------------------------------ token

  function setupToken() {
    const form = $("#token-form");
    if (!form) return;
    const state = $("#token-state");
    const show = () => {
      const has = Boolean(sessionStorage.getItem(TOKEN_KEY));
      state.textContent = has ? "actions unlocked" : "actions locked";
      state.className = has ? "ok" : "muted";
    };
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const value = $("#token-input").value;
      sessionStorage.setItem(TOKEN_KEY, value);
      try {
        await api("/api/session", { method: "POST", body: {} });
        $("#token-input").value = "";
        flash("token accepted: actions unlocked", "ok");
      } catch (err) {
        sessionStorage.removeItem(TOKEN_KEY);
        flash(err.message, "error");
      }
      show();
    });
    show();
  }

  function disableActions() {
    if (WRITABLE) return;
    for (const button of document.querySelectorAll("[data-action], [data-bulk], #requeue-state, #purge-state")) {
      button.disabled = true;
      button.title = "the dashboard is read-only";
    }
  }

  // ------------------------------------------------------------------ polling

  let refresher = null;
  let timer = null;

  function refreshNow() {
    if (!refresher) return;
    clearTimeout(timer);
    run();
  }

  async function run() {
    try {
      await refresher();
      const updated = $("#updated");
      if (updated) {
        updated.textContent = "updated " + new Date().toLocaleTimeString();
        updated.className = "muted";
      }
    } catch (err) {
      const updated = $("#updated");
      if (updated) {
        updated.textContent = "update failed: " + err.message;
        updated.className = "error";
      }
    }
    timer = setTimeout(run, document.hidden ? REFRESH_MS * 5 : REFRESH_MS);
  }

  function poll(fn) {
    refresher = fn;
    run();
  }

  const { barChart, legend, timeline } = window.persistqCharts;

  // ------------------------------------------------------------------ overview

  function overviewPage() {
    let lastChart = 0;
    let throughput = null;
    poll(async () => {
      const data = await api("/api/overview");
      if (!throughput || Date.now() - lastChart > Math.max(REFRESH_MS, 10000)) {
        throughput = await api("/api/throughput");
        lastChart = Date.now();
        barChart($("#chart-total"), throughput.total, throughput.buckets, {});
        legend($("#chart-legend"), Object.keys(throughput.total).sort());
      }
      const tbody = $("#queues tbody");
      const rows = data.queues.map((q) => {
        const link = el("a", { href: path("/queues/", encodeURIComponent(q.name)), text: q.name });
        // Where flow control exists, the API says whether the queue is paused.
        const paused = q.paused ? el("span", { class: "state paused", text: "paused" }) : null;
        const spark = el("div", { class: "spark" });
        const series = throughput.queues[q.name];
        if (series) barChart(spark, series, throughput.buckets, { compact: true, width: 120, height: 24 });
        const dead = q.dead
          ? el("a", { href: path("/dead?queue=", encodeURIComponent(q.name)), text: q.dead })
          : document.createTextNode("0");
        return el("tr", { "data-queue": q.name },
          el("td", {}, link, paused ? " " : null, paused),
          el("td", { class: "num", "data-col": "queued", text: q.queued }),
          el("td", { class: "num", "data-col": "ready", text: q.ready }),
          el("td", { class: "num", "data-col": "scheduled", text: q.scheduled }),
          el("td", { class: "num", "data-col": "running", text: q.running }),
          el("td", { class: "num", "data-col": "done", text: q.done }),
          el("td", { class: "num dead", "data-col": "dead" }, dead),
          el("td", { class: "num", "data-col": "cancelled", text: q.cancelled }),
          el("td", { class: "num", "data-col": "total", text: q.total }),
          el("td", { class: "num", "data-col": "lag", text: q.lag_seconds === null ? "" : duration(q.lag_seconds) }),
          el("td", {}, spark));
      });
      tbody.replaceChildren(...rows);
      const t = data.totals;
      $("#queues tfoot").replaceChildren(el("tr", {},
        el("th", { text: "all queues" }),
        ...["queued", "ready", "scheduled", "running", "done", "dead", "cancelled", "total"].map(
          (k) => el("th", { class: "num", "data-col": k, text: t[k] })),
        el("th", {}), el("th", {})));
      $("#no-queues").hidden = data.queues.length > 0;
    });
  }

  // ------------------------------------------------------------------ job lists

  // The list pages (a queue's jobs, dead jobs) share selection, paging and bulk actions.
  function listPage(config) {
    const params = new URLSearchParams(location.search);
    const selected = new Set();
    let cursor = { before: params.get("before"), after: params.get("after") };
    let page = { older: null, newer: null };

    function filters() {
      const query = new URLSearchParams();
      for (const [key, value] of Object.entries(config.filters())) {
        if (value !== null && value !== undefined && value !== "") query.set(key, value);
      }
      if (cursor.before) query.set("before", cursor.before);
      if (cursor.after) query.set("after", cursor.after);
      return query;
    }

    function remember() {
      const query = filters();
      const text = query.toString();
      history.replaceState(null, "", location.pathname + (text ? "?" + text : ""));
    }

    function showSelection() {
      $("#selection").textContent = selected.size ? plural(selected.size, "job") + " selected" : "none selected";
      for (const b of document.querySelectorAll("[data-bulk]")) b.disabled = !WRITABLE || selected.size === 0;
    }

    async function refresh() {
      const query = filters();
      let data;
      try {
        data = await api(config.url + "?" + query.toString());
      } catch (err) {
        if (err.status === 400) flash(err.message, "error");
        throw err;
      }
      page = data;
      const tbody = $("#jobs tbody");
      tbody.replaceChildren(...data.jobs.map((job) => {
        const box = el("input", {
          type: "checkbox", "aria-label": "select job " + job.id, "data-id": job.id,
          checked: selected.has(job.id),
          onchange: (event) => {
            if (event.target.checked) selected.add(job.id); else selected.delete(job.id);
            showSelection();
          },
        });
        return el("tr", { "data-id": job.id, "data-state": job.state },
          el("td", {}, box), ...config.cells(job));
      }));
      $("#no-jobs").hidden = data.jobs.length > 0;
      $("#older").disabled = !data.older;
      $("#newer").disabled = !data.newer;
      $("#first").disabled = !(cursor.before || cursor.after);
      if (config.after) await config.after(data);
    }

    $("#older").addEventListener("click", () => {
      cursor = { before: page.older, after: null }; remember(); refreshNow();
    });
    $("#newer").addEventListener("click", () => {
      cursor = { before: null, after: page.newer }; remember(); refreshNow();
    });
    $("#first").addEventListener("click", () => {
      cursor = { before: null, after: null }; remember(); refreshNow();
    });
    $("#select-all").addEventListener("change", (event) => {
      for (const box of document.querySelectorAll("#jobs tbody input[type=checkbox]")) {
        box.checked = event.target.checked;
        const id = Number(box.dataset.id);
        if (box.checked) selected.add(id); else selected.delete(id);
      }
      showSelection();
    });
    for (const button of document.querySelectorAll("[data-bulk]")) {
      button.addEventListener("click", async () => {
        const action = button.dataset.bulk;
        const ids = [...selected];
        if (!ids.length) return;
        const answer = await mutate(
          `${action[0].toUpperCase() + action.slice(1)} ${plural(ids.length, "job")}?`,
          "/api/jobs/bulk", { action, ids }, { requeue: "requeued", cancel: "cancelled", delete: "deleted" }[action]);
        if (answer) { selected.clear(); $("#select-all").checked = false; showSelection(); }
      });
    }
    const resetCursor = () => { cursor = { before: null, after: null }; selected.clear(); showSelection(); remember(); };
    showSelection();
    remember();
    poll(refresh);
    return { resetCursor, params };
  }

  function payloadCell(job) {
    const cell = el("td", { class: "payload" });
    for (const tag of job.tags || []) cell.append(el("span", { class: "tag", text: tag }), " ");
    cell.append(job.preview !== undefined ? job.preview : job.decode_error || "");
    return cell;
  }

  function errorCell(job) {
    return el("td", { class: "error", title: job.last_error || "", text: lastLine(job.last_error) });
  }

  function jobLink(job) {
    return el("a", { href: path("/jobs/", job.id), text: job.id });
  }

  function queuePage() {
    const queue = body.dataset.queue;
    const params = new URLSearchParams(location.search);
    let state = params.get("state") || "";
    const form = $("#filters");
    for (const name of ["priority", "tag", "id"]) form.elements[name].value = params.get(name) || "";
    let counts = null;
    const list = listPage({
      url: "/api/queues/" + encodeURIComponent(queue) + "/jobs",
      filters: () => ({
        state, priority: form.elements.priority.value, tag: form.elements.tag.value, id: form.elements.id.value,
      }),
      cells: (job) => [
        el("td", { class: "num" }, jobLink(job)),
        el("td", {}, el("span", { class: "state " + job.state, text: job.state })),
        el("td", { class: "num", text: job.priority }),
        el("td", { class: "num", text: `${job.attempts}/${job.max_attempts}` }),
        el("td", { title: when(job.created_at), text: ago(job.created_at) }),
        payloadCell(job),
        errorCell(job),
      ],
      after: async () => {
        const overview = await api("/api/overview");
        counts = overview.queues.find((q) => q.name === queue) || null;
        tabs();
      },
    });
    function tabs() {
      const nav = $("#state-tabs");
      const make = (value, label) => el("a", {
        href: "#", "data-state": value, "aria-current": state === value ? "page" : null,
        onclick: (event) => { event.preventDefault(); state = value; list.resetCursor(); refreshNow(); },
      }, label);
      nav.replaceChildren(
        make("", `all (${counts ? counts.total : 0})`),
        ...STATES.map((s) => make(s, `${s} (${counts ? counts[s] : 0})`)));
      const requeue = $("#requeue-state");
      const purge = $("#purge-state");
      requeue.hidden = !["done", "dead", "cancelled"].includes(state);
      purge.hidden = !state || state === "running";
      requeue.textContent = `Requeue all ${state} jobs`;
      purge.textContent = `Purge all ${state} jobs`;
    }
    form.addEventListener("submit", (event) => { event.preventDefault(); list.resetCursor(); refreshNow(); });
    form.addEventListener("reset", () => { setTimeout(() => { list.resetCursor(); refreshNow(); }, 0); });
    $("#requeue-state").addEventListener("click", () => {
      const n = counts ? counts[state] : 0;
      mutate(`Requeue all ${plural(n, state + " job")} of queue ${queue}?`,
        "/api/queues/" + encodeURIComponent(queue) + "/requeue", { state }, "requeued");
    });
    $("#purge-state").addEventListener("click", () => {
      const n = counts ? counts[state] : 0;
      mutate(`Delete all ${plural(n, state + " job")} of queue ${queue}, with their history?`,
        "/api/queues/" + encodeURIComponent(queue) + "/purge", { state }, "deleted");
    });
  }

  function deadPage() {
    const params = new URLSearchParams(location.search);
    const select = $("#queue-select");
    let queue = params.get("queue") || "";
    let counts = {};
    const list = listPage({
      url: "/api/jobs",
      filters: () => ({ state: "dead", queue }),
      cells: (job) => [
        el("td", { class: "num" }, jobLink(job)),
        el("td", {}, el("a", { href: path("/queues/", encodeURIComponent(job.queue), "?state=dead"), text: job.queue })),
        el("td", { class: "num", text: `${job.attempts}/${job.max_attempts}` }),
        el("td", { title: when(job.finished_at), text: ago(job.finished_at) }),
        payloadCell(job),
        errorCell(job),
      ],
      after: async () => {
        const overview = await api("/api/overview");
        counts = Object.fromEntries(overview.queues.map((q) => [q.name, q.dead]));
        const options = [el("option", { value: "", text: "every queue" })];
        for (const q of overview.queues) {
          options.push(el("option", { value: q.name, selected: q.name === queue, text: `${q.name} (${q.dead})` }));
        }
        select.replaceChildren(...options);
        select.value = queue;
        $("#requeue-state").hidden = !queue;
        $("#purge-state").hidden = !queue;
      },
    });
    select.addEventListener("change", () => { queue = select.value; list.resetCursor(); refreshNow(); });
    $("#requeue-state").addEventListener("click", () => {
      mutate(`Requeue every dead job of queue ${queue} (${plural(counts[queue] || 0, "job")})?`,
        "/api/queues/" + encodeURIComponent(queue) + "/requeue", { state: "dead" }, "requeued");
    });
    $("#purge-state").addEventListener("click", () => {
      mutate(`Delete every dead job of queue ${queue} (${plural(counts[queue] || 0, "job")}), with their history?`,
        "/api/queues/" + encodeURIComponent(queue) + "/purge", { state: "dead" }, "deleted");
    });
  }

  // ------------------------------------------------------------------ one job

  function jobPage() {
    const id = body.dataset.jobId;
    let job = null;
    poll(async () => {
      try {
        job = await api("/api/jobs/" + id);
      } catch (err) {
        if (err.status === 404) {
          $("#gone").hidden = false;
          for (const b of document.querySelectorAll("[data-action]")) b.disabled = true;
          return;
        }
        throw err;
      }
      const state = $("#job-state");
      state.textContent = job.state;
      state.className = "state " + job.state;
      const fields = [
        ["queue", el("a", { href: path("/queues/", encodeURIComponent(job.queue)), text: job.queue })],
        ["state", job.state], ["priority", job.priority],
        ["attempts", `${job.attempts} of ${job.max_attempts}`],
        ["created", when(job.created_at)], ["enqueued", when(job.enqueued_at)],
        ["run at", when(job.run_at)], ["finished", when(job.finished_at)],
        ["lease expires", when(job.lease_expires_at)], ["dedupe key", job.dedupe_key || ""],
        ["tags", (job.tags || []).join(", ")],
      ];
      for (const [k, v] of Object.entries(job.headers || {})) fields.push(["header " + k, v]);
      $("#fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
      $("#payload").textContent = job.decode_error ? job.decode_error : pretty(job.payload);
      $("#result").textContent = pretty(job.result);
      $("#last-error").textContent = job.last_error || "";
      timeline($("#timeline"), job.history);
      $("#attempts tbody").replaceChildren(...job.history.map((a) => el("tr", { "data-outcome": a.outcome || "running" },
        el("td", { class: "num", text: a.attempt }),
        el("td", { text: when(a.started_at) }),
        el("td", { text: when(a.finished_at) }),
        el("td", { class: "num", text: a.finished_at ? duration((new Date(a.finished_at) - new Date(a.started_at)) / 1000) : "running" }),
        el("td", {}, el("span", { class: "outcome " + (a.outcome || "running"), text: a.outcome || "running" })),
        el("td", {}, el("pre", { class: "error", text: a.error || "" })))));
      $("#no-attempts").hidden = job.history.length > 0;
      if (WRITABLE) {
        const finished = ["done", "dead", "cancelled"].includes(job.state);
        document.querySelector("[data-action=requeue]").disabled = !finished;
        document.querySelector("[data-action=cancel]").disabled = finished;
      }
    });
    for (const button of document.querySelectorAll("[data-action]")) {
      button.addEventListener("click", async () => {
        const action = button.dataset.action;
        const question = {
          requeue: `Requeue job ${id}? Its attempts start again from 0.`,
          cancel: `Cancel job ${id}?`,
          delete: `Delete job ${id} and its history?`,
        }[action];
        const answer = await mutate(question, "/api/jobs/" + id + "/" + action, {},
          { requeue: "requeued", cancel: "cancelled", delete: "deleted" }[action]);
        if (answer && action === "delete" && job) location.assign(path("/queues/", encodeURIComponent(job.queue)));
      });
    }
  }

  // ------------------------------------------------------------------ workers

  function workersPage() {
    poll(async () => {
      const data = await api("/api/workers");
      const banner = $("#workers-unavailable");
      banner.hidden = data.available;
      banner.textContent = data.available ? "" : "Workers: not available. " + data.message;
      $("#workers").hidden = !data.available;
      $("#workers tbody").replaceChildren(...data.workers.map((w) => el("tr", { "data-worker": w.id },
        el("td", { text: w.id }), el("td", { text: w.host || "" }), el("td", { class: "num", text: w.pid || "" }),
        el("td", { title: when(w.started_at), text: ago(w.started_at) }),
        el("td", { title: when(w.last_seen), text: ago(w.last_seen) }),
        el("td", { text: w.alive ? "yes" : "no" }),
        el("td", {}, el("ul", { class: "pools" }, ...w.pools.map((p) => el("li", {
          text: `${p.name} on ${p.queue}: ${p.active}/${p.concurrency} active, ${p.processed} processed, ${p.failed} failed`,
        })))))));
      $("#no-workers").hidden = !data.available || data.workers.length > 0;
    });
  }

  // ------------------------------------------------------------------ schedules

  function schedulesPage() {
    poll(async () => {
      const data = await api("/api/schedules");
      $("#schedules tbody").replaceChildren(...data.schedules.map((s) => el("tr", { "data-schedule": s.queue + "/" + s.name },
        el("td", {}, el("a", { href: path("/queues/", encodeURIComponent(s.queue)), text: s.queue })),
        el("td", { text: s.name }),
        el("td", { class: "spec", text: s.spec }),
        s.paused ? el("td", { class: "next", text: "paused" })
          : el("td", { class: "next", title: when(s.next_run_at), text: s.next_run_at ? until(s.next_run_at) : "" }),
        el("td", { title: when(s.last_tick_at), text: s.last_tick_at ? ago(s.last_tick_at) : "never" }),
        el("td", { text: s.catch_up }),
        el("td", { class: "payload", text: s.decode_error || s.preview }))));
      $("#no-schedules").hidden = data.schedules.length > 0;
    });
  }

  // ------------------------------------------------------------------ start

  setupToken();
  disableActions();
  const pages = {
    overview: overviewPage, queue: queuePage, dead: deadPage, job: jobPage, workers: workersPage,
    schedules: schedulesPage,
  };
  const start = pages[body.dataset.page];
  if (start) start();
  else { const u = $("#updated"); if (u) u.textContent = ""; }
  disableActions();
})();
