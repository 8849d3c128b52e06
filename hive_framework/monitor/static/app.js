// Hive Monitor: renders the snapshots the nexus pushes over server-sent events (api/stream).
// No framework and nothing from the network but this server: the page works offline.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const TOKEN_KEY = "hive-monitor-token";
  let last = null;          // the last snapshot
  let selectedTask = null;  // task id shown in the detail panel

  // --- small helpers ----------------------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  function setText(id, value) {
    const node = $(id);
    const text = String(value);
    if (node.textContent !== text) node.textContent = text;
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 2 : 1) + " s";
    const m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
    if (m < 60) return m + "m " + s + "s";
    return Math.floor(m / 60) + "h " + (m % 60) + "m";
  }

  function ago(iso, now) {
    if (!iso) return "–";
    const seconds = Math.max(0, (now - Date.parse(iso)) / 1000);
    if (seconds < 2) return "just now";
    return fmtDuration(seconds).replace(/\.\d+ s$/, " s") + " ago";
  }

  function shortId(id) {
    return id && id.length > 14 ? id.slice(0, 12) + "…" : (id || "–");
  }

  function badge(text, kind) {
    return el("span", { class: "badge " + kind, text: text });
  }

  function meter(percent) {
    const p = Math.max(0, Math.min(100, Number(percent) || 0));
    const inner = el("span");
    inner.style.width = p + "%";
    return el("span", { class: "meter" + (p > 85 ? " hot" : p > 60 ? " warm" : "") }, inner);
  }

  function flash(message, kind) {
    const toast = el("div", { class: "toast " + (kind || ""), text: message });
    $("flash").append(toast);
    setTimeout(() => toast.remove(), 5000);
  }

  // Rows keyed by id: existing rows are updated in place (a click or a selection survives an update).
  function syncRows(tbody, items, keyOf, build, update) {
    const existing = new Map();
    for (const row of Array.from(tbody.rows)) existing.set(row.dataset.key, row);
    const seen = new Set();
    let previous = null;
    for (const item of items) {
      const key = keyOf(item);
      seen.add(key);
      let row = existing.get(key);
      if (!row) {
        row = build(item);
        row.dataset.key = key;
      }
      update(row, item);
      const expected = previous ? previous.nextSibling : tbody.firstChild;
      if (row !== expected) tbody.insertBefore(row, expected);
      previous = row;
    }
    for (const [key, row] of existing) if (!seen.has(key)) row.remove();
  }

  function cells(row, values) {
    values.forEach((value, i) => {
      const cell = row.cells[i];
      if (value instanceof Node) {
        if (cell.firstChild === null || !cell.firstChild.isEqualNode(value)) cell.replaceChildren(value);
      } else {
        const text = value === null || value === undefined ? "–" : String(value);
        if (cell.textContent !== text) cell.textContent = text;
      }
    });
  }

  function blankRow(count, classes) {
    const row = el("tr");
    for (let i = 0; i < count; i++) row.append(el("td", { class: (classes && classes[i]) || "" }));
    return row;
  }

  // --- actions ----------------------------------------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function act(method, path, body) {
    const headers = { "Content-Type": "application/json" };
    if (token()) headers["Authorization"] = "Bearer " + token();
    let response;
    try {
      response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (error) {
      flash("Request failed: " + error, "bad");
      return null;
    }
    let data = null;
    try { data = await response.json(); } catch (error) { data = null; }
    if (!response.ok) {
      const why = (data && data.error) || response.statusText;
      flash((response.status === 401 || response.status === 403 ? "Refused: " : "Failed: ") + why, "bad");
      return null;
    }
    return data;
  }

  async function retryTask(taskId) {
    const data = await act("POST", "api/tasks/" + encodeURIComponent(taskId) + "/retry");
    if (data) flash("Task " + shortId(taskId) + " queued again", "ok");
    return data;
  }

  async function cancelTask(taskId) {
    const data = await act("POST", "api/tasks/" + encodeURIComponent(taskId) + "/cancel");
    if (data) flash("Task " + shortId(taskId) + " cancelled", "ok");
    return data;
  }

  async function nodeCommand(nodeId, command) {
    const data = await act("POST", "api/nodes/" + encodeURIComponent(nodeId) + "/" + command);
    if (data) {
      const replies = (data.replies || []).map((r) => r.node_name + ": " + r.detail).join(", ");
      flash(command + " " + nodeId + (replies ? " → " + replies : " (no reply yet)"), "ok");
    }
  }

  // --- rendering --------------------------------------------------------------------------------------

  function render(snap) {
    last = snap;
    const now = Date.parse(snap.generated_at) || Date.now();
    const banner = $("banner");
    if (snap.error) {
      banner.textContent = "The nexus cannot read the cluster: " + snap.error;
      banner.hidden = false;
      setLive("down", "Redis error");
      return;
    }
    banner.hidden = true;
    setLive("live", "live");
    setText("updated", "updated " + new Date(now).toLocaleTimeString());
    if (snap.nexus) {
      setText("nexus-info", "nexus " + snap.nexus.identity + (snap.nexus.leader ? " (leader)" : " (standby)"));
    }
    renderSummary(snap);
    renderNodes(snap.cluster, now);
    renderQueues(snap.queues, snap.cluster);
    renderJobs(snap.jobs);
    renderTasks(snap.tasks, now);
    renderTrouble(snap.trouble, now);
    renderSchedules(snap.schedules || [], now);
    renderOta(snap.ota);
    renderActions(snap);
  }

  function renderSummary(snap) {
    const stats = snap.queues.stats;
    setText("sum-nodes", snap.cluster.online_nodes + " / " + snap.cluster.total_nodes);
    setText("sum-running", stats.tasks_running);
    setText("sum-pending", stats.tasks_pending + stats.tasks_waiting);
    setText("sum-completed", stats.tasks_completed);
    setText("sum-failed", stats.tasks_failed);
    const minute = snap.queues.throughput.last_minute;
    setText("sum-rate", minute.completed + minute.failed);
    setText("sum-dead", snap.trouble.dead_letter_count);
    setText("sum-zombies", snap.trouble.zombies.length);
  }

  function renderNodes(cluster, now) {
    const tbody = $("nodes").tBodies[0];
    $("nodes-empty").hidden = cluster.nodes.length > 0;
    syncRows(tbody, cluster.nodes, (n) => n.node_id, () => {
      const row = blankRow(11, ["name"]);
      row.className = "node-row";
      const pause = el("button", { class: "small plain node-toggle", type: "button" });
      row.cells[10].append(pause);
      return row;
    }, (row, n) => {
      row.dataset.nodeId = n.node_id;
      const state = !n.is_online ? "offline" : n.paused ? "paused" : "online";
      const caps = el("span", { class: "caps" });
      for (const [key, value] of Object.entries(n.capabilities || {})) {
        if (key === "free_memory_mb" || key === "cpu_count" || value === false || value === null) continue;
        if (Array.isArray(value) && value.length === 0) continue;
        const shown = Array.isArray(value) ? key + ": " + value.join(", ") : value === true ? key : key + "=" + value;
        caps.append(el("span", { class: "cap", text: shown }));
      }
      const name = el("span", {}, el("strong", { text: n.node_name }), el("br"),
        el("span", { class: "muted", text: n.host + " · pid " + n.pid }));
      cells(row, [
        name,
        badge(state, "state-" + state),
        n.is_online ? el("span", {}, meter(n.cpu_usage), n.cpu_usage.toFixed(0) + "%") : "–",
        n.is_online ? el("span", {}, meter(n.memory_usage), n.memory_usage.toFixed(0) + "%") : "–",
        n.active_tasks + " / " + n.concurrency,
        n.load_score.toFixed(1),
        n.queued,
        caps,
        n.version || "–",
        ago(n.last_heartbeat, now),
      ]);
      const button = row.cells[10].firstChild;
      button.hidden = !n.is_online;
      const label = n.paused ? "Resume" : "Pause";
      if (button.textContent !== label) button.textContent = label;
      button.dataset.command = n.paused ? "resume" : "pause";
    });
  }

  function renderQueues(queues, cluster) {
    const box = $("queue-depths");
    const entries = [
      ["high priority", queues.depth.high_priority],
      ["background", queues.depth.background],
      ["node queues", cluster.nodes.reduce((sum, n) => sum + (n.queued || 0), 0)],
      ["waiting / parked", queues.stats.tasks_waiting],
      ["scheduled (delayed)", queues.stats.tasks_scheduled || 0],
      ["waiting for a spore", Object.values(queues.waiting_for_spores || {}).reduce((sum, w) => sum + w.tasks, 0)],
    ];
    box.replaceChildren(...entries.map(([k, n]) => el("div", { class: "depth" },
      el("div", { class: "n", text: n }), el("div", { class: "k", text: k }))));
    box.title = Object.values(queues.waiting_for_spores || {}).map((w) => w.tasks + " task(s): " + w.reason).join("\n");
    drawThroughput(queues.throughput);
    drawDepth(queues.depth_history);
  }

  function drawThroughput(t) {
    const W = 600, H = 150, pad = 22;
    const n = t.completed.length;
    const totals = t.completed.map((c, i) => c + t.failed[i]);
    const max = Math.max(1, ...totals);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
    const bw = (W - pad) / n;
    root.append(svg("line", { x1: pad, y1: H - 14, x2: W, y2: H - 14, class: "axis" }));
    for (let i = 0; i < n; i++) {
      const x = pad + i * bw + 1;
      const hc = (t.completed[i] / max) * (H - 30);
      const hf = (t.failed[i] / max) * (H - 30);
      if (hc > 0) root.append(svg("rect", { x, y: H - 14 - hc, width: Math.max(bw - 2, 1), height: hc, fill: "#1f9d55" }));
      if (hf > 0) root.append(svg("rect", { x, y: H - 14 - hc - hf, width: Math.max(bw - 2, 1), height: hf, fill: "#d64545" }));
    }
    const top = svg("text", { x: 0, y: 12 }); top.textContent = String(max); root.append(top);
    const zero = svg("text", { x: 0, y: H - 16 }); zero.textContent = "0"; root.append(zero);
    const minutes = Math.round((t.end - t.start) / 60);
    const left = svg("text", { x: pad, y: H - 2 }); left.textContent = "−" + minutes + " min"; root.append(left);
    const right = svg("text", { x: W - 22, y: H - 2 }); right.textContent = "now"; root.append(right);
    $("throughput-chart").replaceChildren(root);
    setText("throughput-caption", "(tasks per " + t.bucket_seconds + " s; last minute: " +
      t.last_minute.completed + " completed, " + t.last_minute.failed + " failed)");
  }

  function drawDepth(history) {
    const W = 600, H = 150, pad = 22;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
    root.append(svg("line", { x1: pad, y1: H - 14, x2: W, y2: H - 14, class: "axis" }));
    if (history.length > 0) {
      const t0 = history[0][0], t1 = Math.max(history[history.length - 1][0], t0 + 1);
      const max = Math.max(1, ...history.map((s) => Math.max(s[1], s[2])));
      for (const [index, color] of [[1, "#e8772e"], [2, "#3b6fd8"]]) {
        const points = history.map((s) => {
          const x = pad + ((s[0] - t0) / (t1 - t0)) * (W - pad);
          const y = H - 14 - (s[index] / max) * (H - 30);
          return x.toFixed(1) + "," + y.toFixed(1);
        });
        if (points.length === 1) points.push((W).toFixed(1) + "," + points[0].split(",")[1]);
        root.append(svg("polyline", { points: points.join(" "), fill: "none", stroke: color, "stroke-width": 2 }));
      }
      const top = svg("text", { x: 0, y: 12 }); top.textContent = String(max); root.append(top);
      setText("depth-caption", "(last " + fmtDuration(t1 - t0) + ", sampled by this nexus)");
    }
    const zero = svg("text", { x: 0, y: H - 16 }); zero.textContent = "0"; root.append(zero);
    $("depth-chart").replaceChildren(root);
  }

  function renderJobs(jobs) {
    $("jobs-empty").hidden = jobs.length > 0;
    const box = $("jobs");
    box.replaceChildren(...jobs.map((j) => {
      const bar = el("div", { class: "bar" });
      for (const [count, cls] of [[j.completed, "ok"], [j.failed, "bad"], [j.cancelled, "cn"]]) {
        const part = el("span", { class: cls });
        part.style.width = (j.tasks ? (100 * count) / j.tasks : 0) + "%";
        bar.append(part);
      }
      const state = j.finished ? (j.failed ? "finished with failures" : "finished") : "running";
      return el("div", { class: "job", "data-job-id": j.job_id },
        el("div", { class: "top" },
          el("strong", { text: j.task_type + (j.description ? " — " + j.description : "") }),
          el("span", { class: "muted", text: state })),
        bar,
        el("div", { class: "muted", text: j.done + " / " + j.tasks + " tasks (" + Math.round(j.progress * 100) +
          "%) · " + j.items + " items · " + j.completed + " completed, " + j.failed + " failed · job " + shortId(j.job_id) }));
    }));
  }

  function taskFilter() {
    const q = $("task-search").value.trim().toLowerCase();
    const status = $("task-status").value;
    return (t) => (!q || t.task_id.toLowerCase().includes(q)) && (!status || t.status === status);
  }

  function renderTasks(tasks, now) {
    const shown = tasks.filter(taskFilter());
    $("tasks-empty").hidden = shown.length > 0;
    $("tasks-empty").textContent = tasks.length ? "No recent task matches; press Enter to look the id up." : "No task yet.";
    syncRows($("tasks").tBodies[0], shown, (t) => t.task_id, () => blankRow(8, ["id", "", "status"]), (row, t) => {
      row.dataset.taskId = t.task_id;
      row.classList.toggle("selected", t.task_id === selectedTask);
      const when = t.completed_at || t.started_at || t.created_at;
      cells(row, [
        t.task_id,
        t.task_type,
        t.waiting_for_spore ? badge("waiting", "status-waiting") : badge(t.status, "status-" + t.status),
        t.node || "–",
        t.attempt + " / " + (t.max_retries + 1),
        fmtDuration(t.duration),
        t.job_id ? shortId(t.job_id) : "–",
        ago(when, now),
      ]);
      row.cells[0].title = t.task_id;
      row.title = t.error || t.reason || "";
    });
    if (selectedTask && !$("task-detail").hidden) {
      const fresh = tasks.find((t) => t.task_id === selectedTask);
      if (fresh && fresh.status !== $("detail-title").dataset.status) showTask(selectedTask);
    }
  }

  async function showTask(taskId) {
    let response;
    try {
      response = await fetch("api/tasks/" + encodeURIComponent(taskId));
    } catch (error) {
      flash("Lookup failed: " + error, "bad");
      return;
    }
    const data = await response.json();
    if (!response.ok) {
      flash(data.error || "not found", "bad");
      return;
    }
    selectedTask = taskId;
    $("task-detail").hidden = false;
    $("detail-title").textContent = data.task_type + " · " + data.task_id + " · " + data.status;
    $("detail-title").dataset.status = data.status;
    $("detail-retry").hidden = data.status === "completed";
    $("detail-cancel").hidden = ["completed", "failed", "cancelled"].includes(data.status);
    $("detail-body").textContent = JSON.stringify(data, null, 2);
  }

  function renderTrouble(trouble, now) {
    $("zombies-empty").hidden = trouble.zombies.length > 0;
    syncRows($("zombies").tBodies[0], trouble.zombies, (t) => t.task_id, () => blankRow(6, ["id"]), (row, t) => {
      row.dataset.taskId = t.task_id;
      cells(row, [t.task_id, t.task_type, t.node || "–", t.attempt, fmtDuration(t.duration), t.why]);
    });
    $("dead-empty").hidden = trouble.dead_letters.length > 0;
    setText("dead-caption", trouble.dead_letter_count ? "(" + trouble.dead_letter_count + " in all, newest first)" : "");
    syncRows($("dead").tBodies[0], trouble.dead_letters, (t) => t.task_id, () => {
      const row = blankRow(6, ["id", "", "", "", "err"]);
      row.cells[5].append(el("button", { class: "small retry", type: "button", text: "Retry" }));
      return row;
    }, (row, t) => {
      row.dataset.taskId = t.task_id;
      cells(row, [t.task_id, t.task_type, t.attempt, ago(t.completed_at, now), t.error || "–"]);
      row.cells[4].title = t.error || "";
    });
    setText("parked", trouble.parked ? trouble.parked + " task(s) parked, waiting for a node that meets their requirements" : "");
  }

  function renderSchedules(schedules, now) {
    $("schedules-section").hidden = schedules.length === 0;
    syncRows($("schedules").tBodies[0], schedules, (s) => s.name, () => blankRow(6, ["", "", "", "", "", "id"]),
      (row, s) => {
        const next = s.next_tick ? "in " + fmtDuration(Math.max(0, (Date.parse(s.next_tick) - now) / 1000)) : "–";
        cells(row, [s.name, s.task_type, s.when, ago(s.last_tick, now), next, s.last_task_id || "–"]);
      });
  }

  function renderOta(ota) {
    const nodes = Object.entries(ota || {});
    $("ota-section").hidden = nodes.length === 0;
    syncRows($("ota").tBodies[0], nodes, ([node]) => node, () => blankRow(5), (row, [node, state]) => {
      const extra = Object.entries(state)
        .filter(([k]) => !["state", "version", "updated_at", "at"].includes(k))
        .map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : v)).join(" ");
      cells(row, [node, state.state || "–", state.version || "–", extra || state.detail || "–",
        state.updated_at || state.at || "–"]);
    });
  }

  function renderActions(snap) {
    setText("actions-note", snap.actions_enabled
      ? "Retry, cancel, pause/resume and broadcast need the monitor token (sent as Authorization: Bearer)."
      : "Actions are disabled: the nexus has no HIVE_MONITOR_TOKEN.");
    const select = $("bc-target");
    const online = snap.cluster.nodes.filter((n) => n.is_online).map((n) => n.node_id);
    const have = Array.from(select.options).slice(1).map((o) => o.value);
    if (have.join("\n") !== online.join("\n")) {
      const chosen = select.value;
      select.replaceChildren(el("option", { value: "", text: "every spore" }),
        ...online.map((id) => el("option", { value: id, text: id })));
      select.value = online.includes(chosen) ? chosen : "";
    }
  }

  // --- live updates -----------------------------------------------------------------------------------

  function setLive(kind, text) {
    const pill = $("live");
    pill.className = "pill pill-" + kind;
    if (pill.textContent !== text) pill.textContent = text;
  }

  async function poll() {
    try {
      const response = await fetch("api/snapshot");
      render(await response.json());
    } catch (error) {
      setLive("down", "disconnected");
    }
    setTimeout(poll, 2000);
  }

  function connect() {
    if (!window.EventSource) {
      poll();
      return;
    }
    const source = new EventSource("api/stream");
    source.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
    source.onerror = () => setLive(source.readyState === EventSource.CLOSED ? "down" : "wait", "reconnecting…");
  }

  // --- wiring -----------------------------------------------------------------------------------------

  function init() {
    $("token").value = token();
    setText("token-state", token() ? "token set for this tab" : "no token");
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      setText("token-state", token() ? "token set for this tab" : "no token");
    });
    $("token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $("token").value = "";
      setText("token-state", "no token");
    });

    $("task-search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const q = $("task-search").value.trim();
      if (q) showTask(q);
    });
    for (const id of ["task-search", "task-status"]) {
      $(id).addEventListener("input", () => { if (last) renderTasks(last.tasks, Date.parse(last.generated_at)); });
    }
    $("tasks").tBodies[0].addEventListener("click", (event) => {
      const row = event.target.closest("tr");
      if (row && row.dataset.taskId) showTask(row.dataset.taskId);
    });
    $("detail-close").addEventListener("click", () => { $("task-detail").hidden = true; selectedTask = null; });
    $("detail-retry").addEventListener("click", async () => {
      if (selectedTask && await retryTask(selectedTask)) showTask(selectedTask);
    });
    $("detail-cancel").addEventListener("click", async () => {
      if (selectedTask && await cancelTask(selectedTask)) showTask(selectedTask);
    });
    $("dead").tBodies[0].addEventListener("click", async (event) => {
      const button = event.target.closest("button.retry");
      if (!button) return;
      button.disabled = true;
      await retryTask(button.closest("tr").dataset.taskId);
      button.disabled = false;
    });
    $("nodes").tBodies[0].addEventListener("click", async (event) => {
      const button = event.target.closest("button.node-toggle");
      if (!button) return;
      button.disabled = true;
      await nodeCommand(button.closest("tr").dataset.nodeId, button.dataset.command);
      button.disabled = false;
    });
    $("broadcast-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      let data = {};
      const raw = $("bc-data").value.trim();
      if (raw) {
        try { data = JSON.parse(raw); } catch (error) { flash("data is not valid JSON: " + error.message, "bad"); return; }
      }
      const target = $("bc-target").value;
      const result = await act("POST", "api/broadcast",
        { command: $("bc-command").value.trim(), data, nodes: target ? [target] : [], wait: 2 });
      if (result) {
        $("action-result").hidden = false;
        $("action-result").textContent = JSON.stringify(result, null, 2);
        flash(result.command + ": " + result.replies.length + " of " + result.expected + " spore(s) replied", "ok");
      }
    });
    connect();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
