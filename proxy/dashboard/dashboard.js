/* warmproxy dashboard: polls the warming control API and renders it.
 *
 * No framework and no build step.  Every value that comes from the API is put
 * in the page with textContent (keys are URLs clients chose), never as HTML.
 * The control token, when the API asks for one, is kept in sessionStorage and
 * sent in the Authorization header only: never in a URL.
 */
"use strict";

(() => {
  const API = "/cache/warming";
  const TOKEN_KEY = "warmproxy.control-token";
  const POLL_MS = 1500; // status and timeline
  const SLOW_EVERY = 3; // stats and hot data every SLOW_EVERY polls
  const SCHEDULE_EVERY = 10; // the schedule (when not being edited)
  const DEFAULT_LEVELS = ["high", "medium", "low"];
  const SOURCE_TYPES = {
    urls: [{ key: "paths", label: "Paths, one per line", kind: "lines", full: true }],
    sitemap: [
      { key: "url", label: "Sitemap path on the origin", kind: "text", def: "/sitemap.xml" },
      { key: "max_urls", label: "At most (paths)", kind: "int", def: 50000 },
    ],
    file: [{ key: "path", label: "File of paths on the proxy's host", kind: "text", full: true }],
    sql: [
      { key: "dsn", label: "DSN (sqlite:///… or postgresql://…)", kind: "text", full: true },
      { key: "query", label: "Query", kind: "textarea", full: true },
      { key: "key_pattern", label: "Path pattern, e.g. /products/{id}", kind: "text" },
      { key: "max_rows", label: "At most (rows)", kind: "int", def: 100000 },
    ],
    hot: [{ key: "top_n", label: "Top N hot keys", kind: "int", def: 100 }],
  };

  const $ = (id) => document.getElementById(id);
  const proxyPort = document.body.dataset.proxyPort || "8080";
  const noTraffic = `No traffic yet: send requests through the proxy on :${proxyPort}.`;

  class AuthNeeded extends Error {}
  class Unreachable extends Error {}
  class ApiError extends Error {
    constructor(status, body) {
      const message = body && typeof body.error === "string" ? body.error : `HTTP ${status}`;
      super(message);
      this.status = status;
      this.field = body && typeof body.field === "string" ? body.field : null;
    }
  }

  // ------------------------------------------------------------ API access

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let waitingForToken = false;

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(API + path, init);
    } catch (error) {
      // The browser could not get an answer at all (refused, reset, offline).
      throw new Unreachable(`${error.message || "no answer"} (${path.split("?")[0]})`);
    }
    if (response.status === 401) {
      askForToken(Boolean(token));
      throw new AuthNeeded("the control API needs the token");
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function askForToken(refused) {
    if (waitingForToken) return;
    waitingForToken = true;
    const error = $("token-error");
    if (refused) {
      token = "";
      sessionStorage.removeItem(TOKEN_KEY);
      error.textContent = "That token was refused: check it and try again.";
      error.hidden = false;
    } else {
      error.hidden = true;
    }
    $("token-card").hidden = false;
    setConnection("waiting for the control token", true);
    $("token-input").focus();
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("token-input");
    const value = input.value.trim();
    if (!value) return;
    token = value;
    sessionStorage.setItem(TOKEN_KEY, value);
    input.value = "";
    $("token-card").hidden = true;
    waitingForToken = false;
    refresh(true);
  });

  // ------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(id, value) {
    $(id).textContent = value;
  }

  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const dash = "—";

  function pct(x, digits = 1) {
    return isNum(x) ? `${(x * 100).toFixed(digits)} %` : dash;
  }

  function points(x) {
    if (!isNum(x)) return dash;
    const v = (x * 100).toFixed(1);
    return `${x > 0 ? "+" : ""}${v} pp`;
  }

  function count(x) {
    return isNum(x) ? Math.round(x).toLocaleString("en-US") : dash;
  }

  function bytes(x) {
    if (!isNum(x)) return dash;
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = x;
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
  }

  function seconds(x) {
    if (!isNum(x)) return dash;
    if (Math.abs(x) < 1) return `${(x * 1000).toFixed(x < 0.01 ? 1 : 0)} ms`;
    if (Math.abs(x) < 120) return `${x.toFixed(1)} s`;
    if (Math.abs(x) < 7200) return `${(x / 60).toFixed(1)} min`;
    return `${(x / 3600).toFixed(1)} h`;
  }

  function span(secondsValue) {
    if (secondsValue > 172800) return `${secondsValue / 86400} d`;
    if (secondsValue >= 3600) return `${secondsValue / 3600} h`;
    if (secondsValue >= 60) return `${secondsValue / 60} min`;
    return `${secondsValue} s`;
  }

  function clock(date) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }

  // The server's clock minus the browser's (from the timeline's "now"), so
  // relative times are right even when the two clocks disagree.
  let serverOffsetMs = 0;
  const serverNow = () => Date.now() + serverOffsetMs;

  function fromIso(iso) {
    if (typeof iso !== "string") return null;
    const t = Date.parse(iso);
    return Number.isNaN(t) ? null : new Date(t);
  }

  function shortKey(entry) {
    if (entry && typeof entry.url === "string" && entry.url) return entry.url;
    const key = entry && typeof entry.key === "string" ? entry.key : String(entry);
    // Keys are "//host/path?query": the path is what operators recognise.
    const m = /^\/\/[^/]*(\/.*)$/.exec(key);
    return m ? m[1] : key;
  }

  function setConnection(message, down) {
    const node = $("conn");
    node.textContent = message;
    node.classList.toggle("down", Boolean(down));
  }

  // When the figures last all came in (browser clock), for the banner.
  let lastLive = null;

  /** The banner and the dimmed grid while polls fail; `failure` null clears them. */
  function showUnreachable(failure) {
    const banner = $("down-banner");
    $("main-grid").classList.toggle("stale", failure !== null);
    banner.hidden = failure === null;
    if (failure === null) return;
    banner.querySelector("strong").textContent =
      failure instanceof ApiError
        ? `The control API answered with an error (HTTP ${failure.status}).`
        : failure instanceof Unreachable
          ? "The control API is unreachable."
          : "The page could not show the control API's answer.";
    const since = lastLive
      ? `The figures below are from ${clock(lastLive)} (${seconds((Date.now() - lastLive.getTime()) / 1000)} ago) and may be stale.`
      : "Nothing could be loaded yet.";
    setText("down-detail", ` ${cleanMessage(failure.message)}. ${since} Retrying every ${POLL_MS / 1000} s.`);
  }

  function figure(dl, label, value, hint, cls) {
    const dd = el("dd", { class: cls || null }, value);
    if (hint) dd.append(el("span", { class: "hint" }, hint));
    dl.append(el("div", {}, el("dt", {}, label), dd));
  }

  // ------------------------------------------------------------ field errors

  // "sources.0.source.urls.paths.1" -> "sources.0.source.paths.1"; "urls[3]" -> "urls.3"
  function normaliseField(field) {
    return field
      .replace(/\[(\d+)\]/g, ".$1")
      .replace(/^(sources\.\d+\.source)\.(urls|file|sitemap|sql|hot)(?=\.|$)/, "$1");
  }

  function cleanMessage(message) {
    return message.replace(/^[\w.[\]]+: /, "").replace(/^Value error, /, "");
  }

  function clearErrors(form) {
    for (const node of form.querySelectorAll(".field-error[data-generated]")) node.remove();
    for (const node of form.querySelectorAll("[aria-invalid]")) {
      node.removeAttribute("aria-invalid");
      node.removeAttribute("aria-describedby");
    }
  }

  let errorSerial = 0;

  /** Show `message` next to the control of `form` that `field` names; false if none does. */
  function showFieldError(form, field, message) {
    if (!field) return false;
    const wanted = normaliseField(field);
    let best = null;
    let bestLength = -1;
    for (const control of form.querySelectorAll("[data-field]")) {
      for (const name of control.dataset.field.split(" ")) {
        if ((wanted === name || wanted.startsWith(`${name}.`)) && name.length > bestLength) {
          best = control;
          bestLength = name.length;
        }
      }
    }
    if (best === null) return false;
    errorSerial += 1;
    const id = `field-error-${errorSerial}`;
    const note = el("p", { class: "field-error", role: "alert", id, "data-generated": true,
      "data-error-for": best.dataset.field.split(" ")[0] }, cleanMessage(message));
    best.setAttribute("aria-invalid", "true");
    best.setAttribute("aria-describedby", id);
    // After the control's own line: its label wrapper or its row.
    const anchor = best.closest(".source label, .row") || best;
    anchor.after(note);
    best.focus();
    return true;
  }

  function setResult(id, message, ok) {
    const node = $(id);
    node.textContent = message;
    node.classList.toggle("ok", ok === true);
    node.classList.toggle("bad", ok === false);
  }

  // ------------------------------------------------------------ priorities

  let levels = DEFAULT_LEVELS;

  function fillPrioritySelect(select, current) {
    const want = current || select.value || levels[Math.floor(levels.length / 2)];
    const options = levels.includes(want) ? levels : [...levels, want];
    select.replaceChildren(...options.map((level) => el("option", { value: level }, level)));
    select.value = want;
  }

  function setLevels(next) {
    if (!Array.isArray(next) || next.length === 0) return;
    if (next.join("\n") === levels.join("\n")) return;
    levels = next;
    for (const select of document.querySelectorAll("#warm-card select.priority")) fillPrioritySelect(select);
    for (const select of document.querySelectorAll("#schedule-sources select.priority")) fillPrioritySelect(select, select.value);
  }

  // ------------------------------------------------------------ the run

  function renderStatus(s) {
    const executor = s.executor || {};
    if (executor.queue_by_priority) setLevels(Object.keys(executor.queue_by_priority));
    const active = Array.isArray(s.active_runs) ? s.active_runs : [];
    const running = active.length > 0;
    const badge = $("run-state");
    badge.textContent = running ? "running" : "idle";
    badge.className = `badge ${running ? "badge-running" : "badge-idle"}`;
    $("stop-button").disabled = !running;

    const hasRun = Boolean(s.run_id);
    $("run-empty").hidden = hasRun;
    $("run-body").hidden = !hasRun;
    if (!hasRun) {
      renderErrors([]);
      return;
    }
    const p = s.progress || {};
    const perf = s.performance || {};
    const batch = s.current_batch || {};
    setText("run-strategy", `${s.strategy} run · ${s.status}`);
    setText("run-id", s.run_id);
    const total = p.total_items || 0;
    const completed = p.completed || 0;
    const bar = $("run-bar");
    bar.setAttribute("aria-valuemax", String(total));
    bar.setAttribute("aria-valuenow", String(completed));
    bar.setAttribute("aria-valuetext", `${completed} of ${total} (${p.percentage} %)`);
    const okShare = total > 0 ? (100 * (p.success || 0)) / total : s.status === "running" ? 0 : 100;
    const failedShare = total > 0 ? (100 * (p.failed || 0)) / total : 0;
    $("run-bar-ok").style.width = `${Math.min(100, okShare)}%`;
    $("run-bar-failed").style.width = `${Math.min(100, failedShare)}%`;
    setText("run-completed", count(completed));
    setText("run-total", count(total));
    setText("run-percentage", isNum(p.percentage) ? p.percentage.toFixed(1) : dash);
    setText("run-success", count(p.success));
    setText("run-failed", count(p.failed));
    setText("run-rate", isNum(perf.items_per_second) ? `${perf.items_per_second.toFixed(1)} /s` : dash);
    setText("run-item-time", seconds(perf.average_time_per_item));
    const eta = fromIso(perf.estimated_completion);
    if (s.status === "running") {
      if (eta) {
        const left = Math.max(0, (eta.getTime() - serverNow()) / 1000);
        setText("run-eta", `${clock(eta)} (in ${seconds(left)})`);
      } else {
        setText("run-eta", "measuring…");
      }
    } else {
      const end = fromIso(s.finished_at);
      setText("run-eta", end ? `ended ${clock(end)}` : dash);
    }
    const started = fromIso(s.started_at);
    setText("run-started", started ? clock(started) : dash);
    setText("run-batch", batch.batch_size ? `${batch.processed} of ${batch.batch_size}` : dash);
    const queue = isNum(executor.queue_depth) ? `${count(executor.queue_depth)} queued · ${count(executor.in_flight)} in flight` : dash;
    setText("run-queue", executor.paused ? `${queue} (paused: CPU/memory guard)` : queue);
    const others = active.filter((r) => r.run_id !== s.run_id);
    const othersNode = $("run-others");
    othersNode.hidden = others.length === 0;
    othersNode.textContent = others.length
      ? `Also running: ${others.map((r) => `${r.strategy} ${r.run_id} (${r.percentage} %)`).join(", ")}`
      : "";
    renderErrors(Array.isArray(s.errors) ? s.errors : []);
  }

  function renderErrors(errors) {
    const shown = errors.slice(0, 25);
    $("errors-empty").hidden = errors.length > 0;
    $("errors-table").hidden = errors.length === 0;
    $("errors-body").replaceChildren(
      ...shown.map((e) =>
        el("tr", {}, el("td", { class: "mono" }, e.key), el("td", {}, e.error), el("td", { class: "num" }, count(e.retry_count))),
      ),
    );
  }

  $("stop-button").addEventListener("click", async () => {
    const button = $("stop-button");
    button.disabled = true;
    setResult("stop-result", "stopping…");
    try {
      const body = await api("POST", "/stop");
      const stopped = Array.isArray(body.stopped) ? body.stopped : [];
      setResult("stop-result", stopped.length ? `Stopped ${stopped.join(", ")}` : "Nothing was running.", true);
      if (body.status) renderStatus(body.status);
    } catch (error) {
      if (!(error instanceof AuthNeeded)) setResult("stop-result", `Not stopped: ${error.message}`, false);
    }
    refresh(false);
  });

  // ------------------------------------------------------------ the chart

  let chart = null;
  let chartRuns = [];
  let chartRange = [0, 1];
  let chartSeconds = Number($("chart-range").value);
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  function drawRuns(u) {
    if (!chartRuns.length) return;
    const { ctx } = u;
    const { left, top, width, height } = u.bbox;
    const dpr = window.devicePixelRatio || 1;
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    ctx.font = `${11 * dpr}px system-ui, sans-serif`;
    for (const run of chartRuns) {
      const end = isNum(run.finished_ts) ? run.finished_ts : serverNow() / 1000;
      const x0 = u.valToPos(run.started_ts, "x", true);
      const x1 = u.valToPos(end, "x", true);
      ctx.fillStyle = css("--run");
      ctx.fillRect(x0, top, Math.max(x1 - x0, 2 * dpr), height);
      ctx.fillStyle = css("--warm");
      ctx.fillRect(x0, top, dpr, height);
      ctx.fillText(run.strategy, x0 + 3 * dpr, top + 12 * dpr);
    }
    ctx.restore();
  }

  function updateLegend(u) {
    const data = u.data;
    let i = u.cursor.idx;
    if (i === null || i === undefined) {
      i = data[0].length - 1;
      while (i > 0 && data[1][i] === null) i -= 1;
    }
    const at = (series) => (i >= 0 && i < data[series].length ? data[series][i] : null);
    setText("legend-hit", isNum(at(1)) ? `${at(1).toFixed(1)} %` : dash);
    setText("legend-origin", isNum(at(2)) ? at(2).toFixed(2) : dash);
    setText("legend-warm", isNum(at(3)) ? at(3).toFixed(2) : dash);
  }

  function chartSize(id = "chart") {
    const width = Math.max(200, $(id).clientWidth);
    return { width, height: width < 500 ? 190 : 250 };
  }

  // The bucket width of the last timeline, so a tooltip can name its bucket.
  let bucketSeconds = 10;

  /** A setCursor hook showing, over the chart, the hovered bucket's time span
   * and `rows(i)` ([label, value] pairs) in the element `tipId`. */
  function tooltip(tipId, rows) {
    return (u) => {
      const tip = $(tipId);
      const i = u.cursor.idx;
      if (i === null || i === undefined || u.cursor.left === undefined || u.cursor.left < 0) {
        tip.hidden = true;
        return;
      }
      const start = u.data[0][i] - bucketSeconds / 2; // points sit mid-bucket
      const end = start + bucketSeconds;
      tip.dataset.ts = String(start);
      tip.replaceChildren(
        el("div", { class: "tip-time" }, `${clock(new Date(start * 1000))}–${clock(new Date(end * 1000))}`),
        ...rows(i).map(([label, value]) => el("div", {}, `${label}: `, el("strong", {}, value))),
      );
      tip.hidden = false;
      // Beside the cursor, flipped to its left near the right edge.
      const x = u.over.offsetLeft + u.cursor.left;
      const y = u.over.offsetTop + u.cursor.top;
      const box = tip.parentElement.clientWidth;
      const left = x + 14 + tip.offsetWidth > box ? x - 14 - tip.offsetWidth : x + 14;
      tip.style.left = `${Math.max(0, left)}px`;
      tip.style.top = `${Math.max(0, y - tip.offsetHeight - 8)}px`;
    };
  }

  const hitTip = tooltip("chart-tip", (i) => [
    ["hit rate", isNum(chart.data[1][i]) ? `${chart.data[1][i].toFixed(1)} %` : dash],
    ["origin requests/s", isNum(chart.data[2][i]) ? chart.data[2][i].toFixed(2) : dash],
    ["warm fetches/s", isNum(chart.data[3][i]) ? chart.data[3][i].toFixed(2) : dash],
  ]);

  function makeChart(data) {
    const muted = css("--muted");
    const grid = css("--line");
    const axis = { stroke: muted, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const tickTime = (u, ticks, space, axis, step) =>
      ticks.map((t) =>
        new Date(t * 1000).toLocaleTimeString([], {
          hour: "2-digit",
          minute: "2-digit",
          second: step < 60 ? "2-digit" : undefined,
          hour12: false,
        }),
      );
    const options = {
      ...chartSize(),
      legend: { show: false },
      cursor: { drag: { x: false, y: false }, points: { size: 6 } },
      scales: {
        x: { time: true, range: () => chartRange },
        pct: { range: [0, 100] },
        rate: { range: (u, min, max) => [0, Math.max(1, (max || 0) * 1.15)] },
      },
      axes: [
        { ...axis, space: 70, values: tickTime },
        { ...axis, scale: "pct", size: 48, values: (u, ticks) => ticks.map((v) => `${v}%`) },
        { ...axis, scale: "rate", side: 1, size: 48, grid: { show: false }, values: (u, ticks) => ticks.map((v) => `${v}/s`) },
      ],
      series: [
        {},
        { label: "hit rate", scale: "pct", stroke: css("--hit"), width: 2, spanGaps: false, points: { show: false } },
        { label: "origin requests/s", scale: "rate", stroke: css("--origin"), width: 1.5, points: { show: false } },
        { label: "warm fetches/s", scale: "rate", stroke: css("--warm"), width: 1.5, dash: [5, 4], points: { show: false } },
      ],
      hooks: { drawClear: [drawRuns], setCursor: [updateLegend, hitTip], setData: [updateLegend] },
    };
    return new uPlot(options, data, $("chart"));
  }

  function renderTimeline(t) {
    serverOffsetMs = t.now * 1000 - Date.now();
    const bs = t.bucket_seconds;
    bucketSeconds = bs;
    const buckets = Array.isArray(t.buckets) ? t.buckets : [];
    const xs = [];
    const hit = [];
    const origin = [];
    const warm = [];
    for (const b of buckets) {
      // The last bucket is still filling: its rate is over the time it has had.
      const elapsed = Math.min(bs, Math.max(1, t.now - b.ts));
      xs.push(b.ts + bs / 2);
      hit.push(isNum(b.hit_rate) ? b.hit_rate * 100 : null);
      origin.push(b.origin_requests / elapsed);
      warm.push(b.warm_fetches / elapsed);
    }
    chartRuns = Array.isArray(t.runs) ? t.runs : [];
    chartRange = [t.now - chartSeconds, t.now];
    renderTraffic(t); // on the same time range
    const requests = buckets.reduce((n, b) => n + b.requests, 0);
    const activity = requests + buckets.reduce((n, b) => n + b.warm_fetches, 0) + chartRuns.length;
    const empty = $("chart-empty");
    if (activity === 0) {
      empty.textContent = `${noTraffic} The hit rate is drawn here as it comes in.`;
    } else if (requests === 0) {
      empty.textContent = `No client requests in the last ${span(chartSeconds)}: only warm fetches. ${noTraffic}`;
    }
    empty.hidden = requests > 0;
    $("chart").hidden = activity === 0;
    if (activity > 0) {
      const data = [xs, hit, origin, warm];
      if (typeof uPlot === "undefined") throw new Error("the chart library did not load");
      if (chart === null) chart = makeChart(data);
      else chart.setData(data);
    }
    const caption = $("chart-caption");
    if (chartRuns.length === 0) {
      caption.textContent = `Shaded spans mark warm runs; none in the last ${span(chartSeconds)}.`;
    } else {
      const described = chartRuns.slice(-6).map((r) => {
        const start = clock(new Date(r.started_ts * 1000));
        const end = isNum(r.finished_ts) ? clock(new Date(r.finished_ts * 1000)) : "now";
        return `${r.strategy} ${start}–${end} (${r.completed}/${r.total_items}, ${r.status})`;
      });
      caption.textContent = `Warm runs (shaded): ${described.join(" · ")}`;
    }
  }

  $("chart-range").addEventListener("change", () => {
    chartSeconds = Number($("chart-range").value);
    refresh(false);
  });

  let resizeFrame = 0;
  const resizeObserver = new ResizeObserver(() => {
    cancelAnimationFrame(resizeFrame);
    resizeFrame = requestAnimationFrame(() => {
      for (const [u, id] of [[chart, "chart"], [trafficChart, "traffic-chart"]]) {
        if (u === null) continue;
        const size = chartSize(id);
        if (size.width !== u.width || size.height !== u.height) u.setSize(size);
      }
    });
  });
  resizeObserver.observe($("chart-card"));
  resizeObserver.observe($("traffic-card"));

  // ------------------------------------------------------------ cache vs origin

  let trafficChart = null;

  function updateTrafficLegend(u) {
    const data = u.data;
    let i = u.cursor.idx;
    if (i === null || i === undefined) i = data[0].length - 1;
    const at = (series) => (i >= 0 && i < data[series].length ? data[series][i] : null);
    setText("legend-cache-rps", isNum(at(1)) ? at(1).toFixed(2) : dash);
    setText("legend-origin-rps", isNum(at(2)) ? at(2).toFixed(2) : dash);
    setText("legend-cache-bps", isNum(at(3)) ? `${bytes(at(3))}/s` : dash);
    setText("legend-origin-bps", isNum(at(4)) ? `${bytes(at(4))}/s` : dash);
  }

  const trafficTip = tooltip("traffic-tip", (i) => {
    const d = trafficChart.data;
    return [
      ["from cache", `${d[1][i].toFixed(2)} req/s · ${bytes(d[3][i])}/s`],
      ["from origin", `${d[2][i].toFixed(2)} req/s · ${bytes(d[4][i])}/s`],
    ];
  });

  function makeTrafficChart(data) {
    const muted = css("--muted");
    const grid = css("--line");
    const axis = { stroke: muted, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const tickTime = (u, ticks, space, axis, step) =>
      ticks.map((t) =>
        new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: step < 60 ? "2-digit" : undefined, hour12: false }),
      );
    const line = (label, scale, color, dashed) => ({ label, scale, stroke: color, width: dashed ? 1.5 : 2, dash: dashed ? [5, 4] : undefined, points: { show: false } });
    return new uPlot(
      {
        ...chartSize("traffic-chart"),
        legend: { show: false },
        cursor: { drag: { x: false, y: false }, points: { size: 6 } },
        scales: {
          x: { time: true, range: () => chartRange },
          rps: { range: (u, min, max) => [0, Math.max(1, (max || 0) * 1.15)] },
          bps: { range: (u, min, max) => [0, Math.max(1024, (max || 0) * 1.15)] },
        },
        axes: [
          { ...axis, space: 70, values: tickTime },
          { ...axis, scale: "rps", size: 52, values: (u, ticks) => ticks.map((v) => `${v}/s`) },
          { ...axis, scale: "bps", side: 1, size: 84, grid: { show: false }, values: (u, ticks) => ticks.map((v) => `${bytes(v)}/s`) },
        ],
        series: [
          {},
          line("from cache req/s", "rps", css("--hit"), false),
          line("from origin req/s", "rps", css("--origin"), false),
          line("cache bytes/s", "bps", css("--hit"), true),
          line("origin bytes/s", "bps", css("--origin"), true),
        ],
        hooks: { setCursor: [updateTrafficLegend, trafficTip], setData: [updateTrafficLegend] },
      },
      data,
      $("traffic-chart"),
    );
  }

  const STATUS_CLASSES = ["2xx", "3xx", "4xx", "5xx"];

  function renderTraffic(t) {
    const bs = t.bucket_seconds;
    const buckets = Array.isArray(t.buckets) ? t.buckets : [];
    const xs = [];
    const cacheRps = [];
    const originRps = [];
    const cacheBps = [];
    const originBps = [];
    const sums = { requests: 0, from_cache: 0, cache_bytes: 0, origin_bytes: 0 };
    const statuses = Object.fromEntries(STATUS_CLASSES.map((c) => [c, 0]));
    for (const b of buckets) {
      const elapsed = Math.min(bs, Math.max(1, t.now - b.ts));
      const fromCache = b.from_cache || 0;
      xs.push(b.ts + bs / 2);
      cacheRps.push(fromCache / elapsed);
      originRps.push((b.requests - fromCache) / elapsed);
      cacheBps.push((b.cache_bytes || 0) / elapsed);
      originBps.push((b.origin_bytes || 0) / elapsed);
      for (const key of Object.keys(sums)) sums[key] += b[key] || 0;
      for (const c of STATUS_CLASSES) statuses[c] += b[`status_${c}`] || 0;
    }
    const lastSpan = `last ${span(chartSeconds)}`;
    setText("traffic-span", lastSpan);
    setText("status-span", `(${lastSpan})`);
    const empty = $("traffic-empty");
    empty.hidden = sums.requests > 0;
    empty.textContent = `No client requests in the ${lastSpan}. ${noTraffic}`;
    $("traffic-chart").hidden = sums.requests === 0;
    if (sums.requests > 0) {
      const data = [xs, cacheRps, originRps, cacheBps, originBps];
      if (typeof uPlot === "undefined") throw new Error("the chart library did not load");
      if (trafficChart === null) trafficChart = makeTrafficChart(data);
      else trafficChart.setData(data);
    }
    setText("traffic-cache-share", sums.requests ? `${pct(sums.from_cache / sums.requests)} of ${count(sums.requests)}` : dash);
    setText("traffic-cache-bytes", bytes(sums.cache_bytes));
    setText("traffic-origin-bytes", bytes(sums.origin_bytes));
    const answered = STATUS_CLASSES.reduce((n, c) => n + statuses[c], 0);
    for (const c of STATUS_CLASSES) {
      setText(`status-${c}`, count(statuses[c]));
      setText(`status-${c}-share`, answered ? pct(statuses[c] / answered, 0) : "");
    }
  }

  // ------------------------------------------------------------ the cache side (GET /cache)

  // Origin failures counted at each report of the last minute: the counters
  // run since start, so "failing now" is whether they grew lately.
  const errorHistory = [];
  const RECENT_MS = 60000;

  function originFailingNow(total) {
    const now = Date.now();
    errorHistory.push([now, total]);
    while (errorHistory.length > 1 && now - errorHistory[0][0] > RECENT_MS) errorHistory.shift();
    return total > errorHistory[0][1];
  }

  function percentileCells(p) {
    return ["p50", "p90", "p99"].map((q) => el("td", { class: "num" }, seconds(p && p[q])));
  }

  function renderCache(c) {
    const latency = c.latency || {};
    const none = !latency.requests;
    $("latency-empty").hidden = !none;
    $("latency-empty").textContent = noTraffic;
    for (const q of ["p50", "p90", "p99"]) setText(`latency-${q}`, seconds(latency[q]));
    const byOutcome = Object.entries(latency.by_outcome || {});
    $("latency-rows").replaceChildren(
      ...byOutcome.map(([outcome, p]) => el("tr", {}, el("td", {}, outcome), el("td", { class: "num" }, count(p.requests)), ...percentileCells(p))),
    );
    $("latency-table").hidden = byOutcome.length === 0;

    const store = c.store || {};
    const state = $("store-state");
    state.textContent = `${store.backend || "store"} · ${store.healthy ? "up" : "down"}`;
    state.className = `badge ${store.healthy ? "badge-completed" : "badge-failed"}`;
    setText("store-entries", store.max_entries ? `${count(store.entries)} of ${count(store.max_entries)}` : count(store.entries));
    setText("store-bytes", bytes(store.bytes));
    setText("store-evictions", count(store.evictions));
    const share = isNum(store.bytes) && isNum(store.max_bytes) && store.max_bytes > 0 ? store.bytes / store.max_bytes : null;
    const bar = $("store-bar");
    bar.hidden = share === null;
    if (share !== null) {
      $("store-bar-fill").style.width = `${Math.min(100, share * 100)}%`;
      bar.setAttribute("aria-valuenow", (share * 100).toFixed(1));
    }
    setText("store-fill-line", share !== null
      ? `${bytes(store.bytes)} of ${bytes(store.max_bytes)} (${pct(share)}) · memory counted as the store counts it`
      : store.entries === null || store.entries === undefined
        ? "Not counted yet (a Redis store is counted in the background)."
        : "Bounded by the Redis server's own maxmemory.");

    const origin = c.origin || {};
    const ol = origin.latency || {};
    for (const q of ["p50", "p90", "p99"]) setText(`origin-${q}`, seconds(ol[q]));
    const warming = c.warming || {};
    const backedOff = isNum(warming.concurrency_limit) && warming.concurrency_limit < warming.parallelism;
    setText("origin-limit", warming.paused
      ? `paused (CPU/memory guard)`
      : `${count(warming.concurrency_limit)} of ${count(warming.parallelism)}${backedOff ? " (backed off)" : ""}`);
    const errors = Object.entries(origin.errors || {}).filter(([, n]) => n > 0);
    const proxyErrors = Object.entries(origin.proxy_errors || {}).filter(([, n]) => n > 0);
    $("origin-errors").replaceChildren(
      ...(errors.length || proxyErrors.length
        ? [
            ...errors.map(([reason, n]) => el("li", { class: "alert" }, `origin ${reason}: ${count(n)}`)),
            ...proxyErrors.map(([reason, n]) => el("li", { class: "alert" }, `answered by the proxy, ${reason}: ${count(n)}`)),
          ]
        : [el("li", { class: "muted" }, "No origin errors since start.")]),
    );
    const badge = $("origin-state");
    const adaptive = warming.adaptive || {};
    const failing = originFailingNow(errors.reduce((n, [, k]) => n + k, 0));
    badge.textContent = failing ? "failing" : warming.paused ? "warming paused" : backedOff ? "backing off" : "healthy";
    badge.className = `badge ${failing || warming.paused || backedOff ? "badge-failed" : "badge-completed"}`;
    const parts = [`${count(ol.requests)} origin requests timed since start (${Object.keys(ol.by_purpose || {}).join(", ") || "none yet"}).`];
    if (isNum(adaptive.p50_latency)) parts.push(`Warm fetches: p50 ${seconds(adaptive.p50_latency)}, error rate ${pct(adaptive.error_rate)}; the warmer lowers its concurrency while the origin is slow or failing.`);
    setText("origin-caption", parts.join(" "));

    const missed = c.top_missed || {};
    const keys = Array.isArray(missed.keys) ? missed.keys : [];
    setText("missed-window", isNum(missed.window_seconds) ? `(last ${span(missed.window_seconds)})` : "");
    $("missed-empty").hidden = keys.length > 0;
    $("missed-empty").textContent = "No misses among the most requested paths.";
    $("missed-table").hidden = keys.length === 0;
    $("missed-rows").replaceChildren(
      ...keys.map((k) => el("tr", { title: k.key }, el("td", { class: "mono" }, shortKey(k)), el("td", { class: "num" }, count(k.misses)), el("td", { class: "num" }, count(k.requests)))),
    );
  }

  // ------------------------------------------------------------ purge

  for (const form of document.querySelectorAll("#purge-card form")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const by = form.dataset.by;
      const input = form.querySelector("input");
      const value = input.value.trim();
      clearErrors(form);
      if (!value) {
        showFieldError(form, by, `Give a ${by === "pattern" ? "glob" : by} to purge.`);
        return;
      }
      const soft = $("purge-soft").checked;
      const rewarm = $("purge-rewarm").checked;
      setResult("purge-result", "purging…");
      try {
        const body = await api("POST", "/purge", { [by]: value, soft, rewarm });
        const n = body.purged;
        let message = n === 0
          ? `Nothing cached matches ${value}.`
          : `${soft ? "Marked stale" : "Purged"} ${count(n)} response${n === 1 ? "" : "s"} for ${value}.`;
        if (body.rewarm) message += ` Warming again: run ${body.rewarm.run_id}.`;
        setResult("purge-result", message, true);
        refresh(true);
      } catch (error) {
        if (error instanceof AuthNeeded) {
          setResult("purge-result", "");
          return;
        }
        const shown = error instanceof ApiError && showFieldError(form, error.field, error.message);
        setResult("purge-result", shown ? "Not purged: see the field above." : `Not purged: ${error.message}`, false);
      }
    });
    form.addEventListener("input", () => clearErrors(form));
  }

  // ------------------------------------------------------------ stats

  function renderStats(s) {
    const e = s.effectiveness || {};
    const c = s.cost_benefit || {};
    const r = s.resource_usage || {};
    const t = s.timing || {};
    const eff = $("stats-effectiveness");
    eff.replaceChildren();
    figure(eff, "Hit rate before warming", pct(e.hit_rate_before), "users, before the first warm fill");
    figure(eff, "Hit rate since", pct(e.hit_rate_after), "users, since warming began");
    const imp = e.improvement;
    figure(eff, "Improvement", points(imp), "after minus before", isNum(imp) ? (imp >= 0 ? "good" : "bad") : null);
    if ("precision" in e) figure(eff, "Precision", pct(e.precision), "warmed entries hit before they went");
    if ("hits_gained" in e) figure(eff, "Hits gained", count(e.hits_gained), "hits on warmed entries");
    if ("counterfactual_hit_rate" in e) figure(eff, "Hit rate without warming", pct(e.counterfactual_hit_rate), "hits minus misses prevented");

    const cost = $("stats-cost");
    cost.replaceChildren();
    figure(cost, "Items warmed", count(c.items_warmed), "entries stored by warm fetches");
    figure(cost, "Misses prevented", count(c.cache_hits_prevented), "requests a warmed entry answered");
    figure(cost, "Response time saved", seconds(c.estimated_response_time_saved), "misses prevented × origin latency");
    if ("origin_fetches" in c) figure(cost, "Origin fetches by warming", count(c.origin_fetches), `${bytes(c.bytes)} fetched`);
    if ("success_rate" in c) {
      const sr = c.success_rate;
      figure(cost, "Warm fetch success", pct(sr), `${count(c.failed)} failed`, isNum(sr) && sr < 0.95 ? "bad" : null);
    }
    if ("net_origin_fetches" in c) figure(cost, "Net origin fetches", count(c.net_origin_fetches), "warm fetches minus misses prevented");

    const res = $("stats-resources");
    res.replaceChildren();
    figure(res, "CPU", isNum(r.cpu_utilization) ? `${r.cpu_utilization.toFixed(1)} %` : dash, "of one core, this process");
    figure(res, "Memory", bytes(r.memory_usage), "resident, this process");
    figure(res, "Network", bytes(r.network_io), "fetched by warming");
    figure(res, "Warming time", seconds(t.total_warming_time), "all runs");
    figure(res, "Per item", seconds(t.average_item_time), "mean fetch time");
    figure(res, "Peak concurrency", count(t.peak_concurrent), "warm fetches at once");

    const alerts = s.alerts && typeof s.alerts === "object" ? Object.entries(s.alerts) : [];
    $("stats-alerts").replaceChildren(
      ...(alerts.length
        ? alerts.map(([name, a]) => {
            const since = isNum(a.since) ? `, since ${clock(new Date(a.since * 1000))}` : "";
            return el("li", { class: "alert" }, `${name}: ${a.value} (threshold ${a.threshold}${since})`);
          })
        : [el("li", { class: "muted" }, "No active alerts.")]),
    );

    const warmed = c.items_warmed || 0;
    const empty = $("stats-empty");
    empty.hidden = warmed > 0;
    empty.textContent = "No warm run yet: warm a key below. These figures fill in as warmed entries are asked for.";
  }

  // ------------------------------------------------------------ hot data

  function trendItem(t) {
    const sign = t.slope > 0 ? "+" : "";
    return el(
      "li",
      { title: t.key },
      el("span", { class: "mono" }, shortKey(t)),
      " ",
      el("span", { class: "muted" }, `${sign}${t.slope} req/h per h, ${pct(t.adjusted_confidence ?? t.confidence, 0)} sure`),
    );
  }

  function renderHot(h) {
    const totals = h.totals || {};
    const none = !totals.requests;
    const empty = $("hot-empty");
    empty.hidden = !none;
    empty.textContent = noTraffic;
    $("hot-body").hidden = none;
    if (none) return;

    const windowSeconds = h.window_seconds;
    setText("hot-window", isNum(windowSeconds) ? `(last ${span(windowSeconds)})` : "");
    const hot = Array.isArray(h.hot_keys) ? h.hot_keys : [];
    const note = $("hot-note");
    let rows;
    if (hot.length) {
      note.hidden = true;
      rows = hot.map((k) =>
        el("tr", { title: k.key }, el("td", { class: "mono" }, shortKey(k)), el("td", { class: "num" }, count(k.count)),
          el("td", { class: "num" }, pct(k.share)), el("td", {}, k.priority || "")),
      );
    } else {
      const threshold = h.threshold && isNum(h.threshold.value) ? ` (${h.threshold.value} requests)` : "";
      note.hidden = false;
      note.textContent = `No path is above the hot threshold${threshold} yet. The most requested:`;
      const freq = (h.frequency && Array.isArray(h.frequency.keys) ? h.frequency.keys : []).slice(0, 10);
      const w = isNum(windowSeconds) ? String(windowSeconds) : null;
      rows = freq.map((k) => {
        const n = w && k.counts ? k.counts[w] : null;
        const share = isNum(n) && h.threshold && h.threshold.window_requests ? n / h.threshold.window_requests : null;
        return el("tr", { title: k.key }, el("td", { class: "mono" }, shortKey(k)), el("td", { class: "num" }, count(n)),
          el("td", { class: "num" }, pct(share)), el("td", { class: "muted" }, "not hot"));
      });
    }
    $("hot-rows").replaceChildren(...rows);
    const judged = (totals.hits || 0) + (totals.misses || 0);
    setText("hot-totals",
      `Since start: ${count(totals.requests)} requests, ${count(totals.hits)} hits, ${count(totals.misses)} misses, ` +
      `${count(totals.bypass)} not cacheable; hit rate ${judged ? pct(totals.hits / judged) : dash}.`);

    const trends = h.trends || {};
    const rising = Array.isArray(trends.rising) ? trends.rising : [];
    const falling = Array.isArray(trends.falling) ? trends.falling : [];
    const noneYet = (what) => el("li", { class: "muted" }, `No ${what} key yet.`);
    $("trend-rising").replaceChildren(...(rising.length ? rising.slice(0, 10).map(trendItem) : [noneYet("rising")]));
    $("trend-falling").replaceChildren(...(falling.length ? falling.slice(0, 10).map(trendItem) : [noneYet("falling")]));
    setText("trend-note", isNum(trends.hours)
      ? `Least-squares fit of requests per hour over the last ${trends.hours} h; ${count(trends.keys_with_trend)} of ${count(trends.tracked_keys)} followed keys have a significant trend (a trend needs at least 3 complete hours).`
      : "");

    const predictions = Array.isArray(h.predictions) ? h.predictions : [];
    $("predictions-box").hidden = predictions.length === 0;
    $("predictions").replaceChildren(
      ...predictions.slice(0, 10).map((p) =>
        el("li", { title: p.key }, el("span", { class: "mono" }, shortKey(p)), " ",
          el("span", { class: "muted" }, `${pct(p.confidence, 0)} within ${seconds(p.duration)}`)),
      ),
    );
    renderHours(h);
  }

  function renderHours(h) {
    const pattern = h.patterns || {};
    const observed = pattern.hours_observed || 0;
    const values = new Array(24).fill(0);
    let caption;
    if (observed >= 24 && Array.isArray(pattern.hour_of_day)) {
      for (const x of pattern.hour_of_day) if (isNum(x.mean_requests)) values[x.hour] = x.mean_requests;
      caption = `Mean requests in each hour of the day (UTC), over ${observed} complete hours observed.`;
    } else {
      for (const x of Array.isArray(h.hourly) ? h.hourly : []) {
        const start = fromIso(x.start);
        if (start) values[start.getUTCHours()] += x.requests;
      }
      const needed = pattern.hours_needed && pattern.hours_needed.peak_hours;
      caption = `Requests in each hour of the last 24 hours (UTC). The mean per hour of day shows after a full day; peak hours need ${needed || 48} hours of traffic.`;
    }
    const daily = h.seasonality && h.seasonality.daily;
    const peaks = new Set(daily && Array.isArray(daily.peak_hours) ? daily.peak_hours : []);
    if (peaks.size) caption += ` Peak hours (detected daily cycle) in orange.`;
    const top = Math.max(...values, 0);
    const nowHour = new Date(serverNow()).getUTCHours();
    $("hours").replaceChildren(
      ...values.map((v, hour) => {
        const bar = el("div", { class: "hour-bar" });
        bar.style.height = `${top > 0 ? Math.max(1, (100 * v) / top) : 1}%`;
        const classes = ["hour"];
        if (hour === nowHour) classes.push("now");
        if (peaks.has(hour)) classes.push("peak");
        const label = `${String(hour).padStart(2, "0")}:00 UTC: ${Number.isInteger(v) ? v : v.toFixed(1)} requests`;
        return el("div", { class: classes.join(" "), title: label, "data-hour": hour, "data-value": v },
          bar, el("span", { class: "hour-label" }, String(hour)));
      }),
    );
    setText("hours-caption", caption);
  }

  // ------------------------------------------------------------ warm forms

  function priorityOf(form) {
    const select = form.querySelector("select.priority");
    return select ? select.value : undefined;
  }

  function describeRun(run) {
    const p = run.progress || {};
    return `run ${run.run_id} (${run.strategy}): ${count(p.total_items)} item${p.total_items === 1 ? "" : "s"}`;
  }

  async function submitWarm(form, path, body, describe) {
    clearErrors(form);
    setResult("warm-result", "sending…");
    try {
      const run = await api("POST", path, body);
      setResult("warm-result", describe(run), true);
      refresh(false);
      return true;
    } catch (error) {
      if (error instanceof AuthNeeded) {
        setResult("warm-result", "");
        return false;
      }
      const shown = error instanceof ApiError && showFieldError(form, error.field, error.message);
      setResult("warm-result", shown ? "Not sent: see the field above." : `Not sent: ${error.message}`, false);
      return false;
    }
  }

  $("warm-key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const url = $("warm-key-url").value.trim();
    submitWarm(form, "/warm-key", { url, priority: priorityOf(form) }, (run) => `Warming ${url}: ${describeRun(run)}.`);
  });

  $("warm-pattern-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const pattern = $("warm-pattern-input").value.trim();
    submitWarm(form, "/warm-pattern", { pattern, priority: priorityOf(form) }, (run) =>
      run.progress && run.progress.total_items === 0
        ? `No known path matches ${pattern} (known: paths clients asked for, scheduled sources, the store).`
        : `Warming ${pattern}: ${describeRun(run)}.`);
  });

  $("warm-list-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const urls = $("warm-list-input").value.split(/\r?\n/).map((line) => line.trim()).filter((line) => line && !line.startsWith("#"));
    if (urls.length === 0) {
      clearErrors(form);
      showFieldError(form, "urls", "Paste at least one path, one per line.");
      return;
    }
    submitWarm(form, "/warm-key", { urls, priority: priorityOf(form) }, (run) => `Warming ${urls.length} paths: ${describeRun(run)}.`);
  });

  $("start-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const strategy = $("start-strategy").value;
    submitWarm(form, "/start", { strategy }, (run) => `Started ${describeRun(run)}.`);
  });

  for (const form of document.querySelectorAll("#warm-card form")) {
    form.addEventListener("input", (event) => {
      const target = event.target;
      if (target.getAttribute("aria-invalid")) clearErrors(form);
    });
  }

  // ------------------------------------------------------------ schedule

  let scheduleDoc = null; // what the server last said
  let scheduleDirty = false;
  const scheduleForm = $("schedule-form");

  function newSource(index) {
    return { name: `source-${index + 1}`, schedule: "", enabled: true, priority: levels[Math.floor(levels.length / 2)], ttl: null, source: { type: "urls", paths: [] } };
  }

  function sourceDefaults(type) {
    const spec = { type };
    for (const f of SOURCE_TYPES[type] || []) spec[f.key] = f.kind === "lines" ? [] : f.def !== undefined ? f.def : "";
    return spec;
  }

  function sourceField(f, value, prefix) {
    const dataField = `${prefix}.${f.key}`;
    let control;
    if (f.kind === "lines" || f.kind === "textarea") {
      control = el("textarea", { name: f.key, rows: f.kind === "lines" ? 3 : 2, spellcheck: "false", "data-field": dataField });
      control.value = f.kind === "lines" ? (Array.isArray(value) ? value.join("\n") : "") : value ?? "";
    } else {
      control = el("input", { name: f.key, spellcheck: "false", "data-field": dataField,
        type: f.kind === "int" ? "number" : "text", min: f.kind === "int" ? 1 : null, step: f.kind === "int" ? 1 : null });
      control.value = value === undefined || value === null ? "" : String(value);
    }
    return el("label", { class: f.full ? "full" : null }, f.label, control);
  }

  function sourceFieldset(s, index) {
    const fieldset = $("source-template").content.firstElementChild.cloneNode(true);
    const prefix = `sources.${index}`;
    fieldset.dataset.index = String(index);
    fieldset.querySelector(".source-index").textContent = `${index + 1}`;
    const named = (name) => fieldset.querySelector(`.source-grid [name="${name}"]`);
    for (const name of ["name", "schedule", "priority", "ttl", "enabled"]) named(name).dataset.field = `${prefix}.${name}`;
    named("type").dataset.field = `${prefix}.source ${prefix}.source.type`;
    named("name").value = s.name || "";
    named("schedule").value = s.schedule || "";
    fillPrioritySelect(named("priority"), s.priority);
    named("ttl").value = isNum(s.ttl) ? String(s.ttl) : "";
    named("enabled").checked = s.enabled !== false;
    const spec = s.source && typeof s.source === "object" ? s.source : { type: "urls" };
    const typeSelect = named("type");
    if (!SOURCE_TYPES[spec.type]) typeSelect.append(el("option", { value: spec.type }, spec.type));
    typeSelect.value = spec.type;
    fieldset.dataset.type = spec.type;
    const fields = fieldset.querySelector(".source-fields");
    for (const f of SOURCE_TYPES[spec.type] || []) fields.append(sourceField(f, spec[f.key], `${prefix}.source`));
    const status = [];
    if (scheduleDoc && scheduleDoc.next_runs && scheduleDoc.next_runs[s.name]) {
      const next = fromIso(scheduleDoc.next_runs[s.name]);
      if (next) status.push(`Next run ${next.toLocaleString([], { hour12: false })}.`);
    }
    if (scheduleDoc && scheduleDoc.errors && scheduleDoc.errors[s.name]) status.push(`Last error: ${scheduleDoc.errors[s.name]}`);
    fieldset.querySelector(".source-status").textContent = status.join(" ");
    fieldset.querySelector(".remove-source").addEventListener("click", () => {
      const draft = collectSchedule();
      draft.sources.splice(index, 1);
      renderEditor(draft);
      markDirty();
    });
    typeSelect.addEventListener("change", () => {
      const draft = collectSchedule();
      draft.sources[index].source = sourceDefaults(typeSelect.value);
      renderEditor(draft);
      markDirty();
      const again = $("schedule-sources").children[index];
      if (again) again.querySelector('[name="type"]').focus();
    });
    return fieldset;
  }

  function readSpec(fieldset) {
    const type = fieldset.dataset.type;
    const spec = { type };
    for (const f of SOURCE_TYPES[type] || []) {
      const control = fieldset.querySelector(`.source-fields [name="${f.key}"]`);
      const raw = control ? control.value : "";
      if (f.kind === "lines") spec[f.key] = raw.split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
      else if (f.kind === "int") {
        if (raw.trim() !== "") spec[f.key] = Number.isNaN(Number(raw)) ? raw : Number(raw);
      } else spec[f.key] = raw.trim();
    }
    return spec;
  }

  function collectSchedule() {
    const sources = [...$("schedule-sources").querySelectorAll("fieldset.source")].map((fieldset) => {
      const named = (name) => fieldset.querySelector(`.source-grid [name="${name}"]`);
      const ttl = named("ttl").value.trim();
      return {
        name: named("name").value.trim(),
        schedule: named("schedule").value.trim(),
        enabled: named("enabled").checked,
        priority: named("priority").value,
        ttl: ttl === "" ? null : Number.isNaN(Number(ttl)) ? ttl : Number(ttl),
        source: readSpec(fieldset),
      };
    });
    return { schedule: $("schedule-default").value.trim(), sources };
  }

  function renderEditor(draft) {
    clearErrors(scheduleForm);
    $("schedule-general-error").hidden = true;
    $("schedule-default").value = draft.schedule || "";
    const sources = Array.isArray(draft.sources) ? draft.sources : [];
    $("schedule-sources").replaceChildren(...sources.map((s, i) => sourceFieldset(s, i)));
    $("schedule-empty").hidden = sources.length > 0;
  }

  function renderSchedule(doc) {
    scheduleDoc = doc;
    scheduleDirty = false;
    renderEditor(doc);
    setText("schedule-persisted", doc.persisted_in ? `Kept in ${doc.persisted_in}; applied as soon as it is saved.` : "");
    renderProposal(doc.proposed);
  }

  function renderProposal(proposed) {
    const box = $("proposal");
    if (!proposed || typeof proposed !== "object") {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    const pattern = proposed.pattern ? `${proposed.pattern}: ` : "";
    setText("proposal-detail", `${pattern}${proposed.detail || ""} (mode: ${proposed.mode}).`);
    const actions = (Array.isArray(proposed.actions) ? proposed.actions : []).filter((a) => a.action !== "keep");
    $("proposal-actions").replaceChildren(
      ...(actions.length
        ? actions.map((a) => {
            const cron = a.proposed_cron ? ` → ${a.proposed_cron}` : "";
            return el("li", {}, el("strong", {}, `${a.action} ${a.source}`), `${cron}: ${a.reason || ""}`);
          })
        : [el("li", { class: "muted" }, "No change proposed.")]),
    );
  }

  function markDirty() {
    scheduleDirty = true;
    setResult("schedule-result", "Unsaved changes.");
  }

  scheduleForm.addEventListener("input", (event) => {
    markDirty();
    if (event.target.getAttribute && event.target.getAttribute("aria-invalid")) {
      event.target.removeAttribute("aria-invalid");
      const id = event.target.getAttribute("aria-describedby");
      if (id && $(id)) $(id).remove();
      event.target.removeAttribute("aria-describedby");
    }
  });

  $("schedule-add").addEventListener("click", () => {
    const draft = collectSchedule();
    draft.sources.push(newSource(draft.sources.length));
    renderEditor(draft);
    markDirty();
    const last = $("schedule-sources").lastElementChild;
    if (last) last.querySelector('[name="name"]').focus();
  });

  $("schedule-revert").addEventListener("click", async () => {
    try {
      renderSchedule(await api("GET", "/schedule"));
      setResult("schedule-result", "Changes discarded.");
    } catch (error) {
      if (!(error instanceof AuthNeeded)) setResult("schedule-result", `Could not load: ${error.message}`, false);
    }
  });

  scheduleForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const draft = collectSchedule();
    clearErrors(scheduleForm);
    const general = $("schedule-general-error");
    general.hidden = true;
    setResult("schedule-result", "saving…");
    try {
      const saved = await api("POST", "/schedule", draft);
      renderSchedule(saved);
      setResult("schedule-result", `Saved at ${clock(new Date())}.`, true);
    } catch (error) {
      if (error instanceof AuthNeeded) {
        setResult("schedule-result", "");
        return;
      }
      if (!(error instanceof ApiError && showFieldError(scheduleForm, error.field, error.message))) {
        general.textContent = error instanceof ApiError ? cleanMessage(error.message) : `Not saved: ${error.message}`;
        general.hidden = false;
      }
      setResult("schedule-result", "Not saved.", false);
    }
  });

  // ------------------------------------------------------------ polling

  let polls = 0;
  let busy = false;
  let pending = null; // null, or whether the refresh asked for while busy wants everything

  async function refresh(all) {
    if (waitingForToken) return;
    if (busy) {
      pending = Boolean(pending) || Boolean(all);
      return;
    }
    busy = true;
    try {
      const slow = all || polls % SLOW_EVERY === 0;
      const withSchedule = all || scheduleDoc === null || (polls % SCHEDULE_EVERY === 0 && !scheduleDirty && !scheduleForm.contains(document.activeElement));
      polls += 1;
      const jobs = [
        api("GET", "/status").then(renderStatus),
        api("GET", `/timeline?seconds=${chartSeconds}`).then(renderTimeline),
      ];
      if (slow) {
        jobs.push(api("GET", "/stats").then(renderStats));
        jobs.push(api("GET", "/hot-data?n=15").then(renderHot));
        jobs.push(api("GET", "/cache?n=10").then(renderCache));
      }
      if (withSchedule) jobs.push(api("GET", "/schedule").then((doc) => (scheduleDirty ? null : renderSchedule(doc))));
      const results = await Promise.allSettled(jobs);
      const failures = results.filter((r) => r.status === "rejected").map((r) => r.reason);
      if (failures.some((f) => f instanceof AuthNeeded)) return;
      if (failures.length) {
        const first = failures[0];
        setConnection(`cannot reach the control API (${first.message}); retrying`, true);
        showUnreachable(first);
      } else {
        lastLive = new Date();
        setConnection(`live · updated ${clock(lastLive)}`, false);
        showUnreachable(null);
      }
    } finally {
      busy = false;
      if (pending !== null) {
        const again = pending;
        pending = null;
        setTimeout(() => refresh(again), 0);
      }
    }
  }

  function start() {
    for (const select of document.querySelectorAll("#warm-card select.priority")) fillPrioritySelect(select);
    refresh(true);
    let ticks = 0;
    setInterval(() => {
      ticks += 1;
      // A tab in the background polls every 15 s instead.
      if (!document.hidden || ticks % 10 === 0) refresh(false);
    }, POLL_MS);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refresh(false);
    });
  }

  start();
})();
