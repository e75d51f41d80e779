// The llm-router dashboard: one EventSource, four uPlot charts, tables built with textContent only
// (job fields come from tenants: nothing they send is ever parsed as HTML).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const QUEUES = ["interactive", "bulk"];
  const COLORS = { interactive: "#2e6fd8", bulk: "#d68910" };
  const MAX_POINTS = 300;
  const data = {
    t: [],
    depth: { interactive: [], bulk: [] },
    age: { interactive: [], bulk: [] },
    throughput: [],
    success: [],
  };
  const charts = {};
  let samples = 0;

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") node.className = v;
      else if (k === "data") Object.assign(node.dataset, v);
      else node.setAttribute(k, v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const fmtNum = (x, digits = 0) =>
    x === null || x === undefined ? "–" : Number(x).toLocaleString(undefined, { maximumFractionDigits: digits });
  const fmtUsd = (x) => (x === null || x === undefined ? "–" : "$" + Number(x).toFixed(x >= 1 ? 2 : 6));
  const fmtAge = (s) => {
    if (s === null || s === undefined) return "–";
    if (s < 1) return (s * 1000).toFixed(0) + " ms";
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  };
  const fmtTime = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "–");
  const badge = (cls, text) => el("span", { class: cls }, text);

  function chart(id, series, yRange) {
    const box = $(id);
    const opts = {
      width: Math.max(box.clientWidth - 4, 300),
      height: 180,
      series: [{}, ...series],
      axes: [{}, { size: 54 }],
      scales: { x: { time: true }, y: yRange ? { range: yRange } : { auto: true } },
      legend: { show: true },
    };
    const empty = [[], ...series.map(() => [])];
    return new uPlot(opts, empty, box);
  }

  function setupCharts() {
    const perQueue = (label) => ({ label, stroke: COLORS[label], width: 2, spanGaps: true });
    charts.depth = chart("chart-depth", QUEUES.map(perQueue));
    charts.age = chart("chart-age", QUEUES.map(perQueue));
    charts.throughput = chart("chart-throughput", [{ label: "jobs/s", stroke: "#1f8a4c", width: 2, fill: "#1f8a4c22" }]);
    charts.success = chart("chart-success", [{ label: "success", stroke: "#6c3fc5", width: 2, spanGaps: true }], [0, 1]);
    window.addEventListener("resize", () => {
      for (const [name, c] of Object.entries(charts)) c.setSize({ width: Math.max($("chart-" + name).clientWidth - 4, 300), height: 180 });
    });
  }

  function addPoint(p) {
    if (data.t.length && p.t <= data.t[data.t.length - 1]) return; // the history's last point again
    data.t.push(p.t);
    for (const q of QUEUES) {
      data.depth[q].push(p.depth && q in p.depth ? p.depth[q] : null);
      data.age[q].push(p.age && q in p.age ? p.age[q] : null);
    }
    data.throughput.push(p.throughput ?? null);
    data.success.push(p.success_rate ?? null);
    if (data.t.length > MAX_POINTS) {
      data.t.shift();
      for (const q of QUEUES) {
        data.depth[q].shift();
        data.age[q].shift();
      }
      data.throughput.shift();
      data.success.shift();
    }
  }

  function redraw() {
    charts.depth.setData([data.t, ...QUEUES.map((q) => data.depth[q])]);
    charts.age.setData([data.t, ...QUEUES.map((q) => data.age[q])]);
    charts.throughput.setData([data.t, data.throughput]);
    charts.success.setData([data.t, data.success]);
  }

  function renderQueues(sample) {
    const box = $("queues");
    box.replaceChildren(
      ...(sample.queues || []).map((q) => {
        const stuck = q.depth > 0 && q.workers === 0;
        return el(
          "div",
          { class: "card" + (stuck ? " alert" : ""), data: { queue: q.label } },
          el("h3", {}, q.label),
          el("div", { class: "big" }, fmtNum(q.depth), el("span", { class: "muted" }, " due")),
          el(
            "div",
            { class: "row" },
            el("span", {}, "workers ", fmtNum(q.workers)),
            el("span", {}, "oldest waiting ", fmtAge(q.oldest_age_s)),
            el("span", {}, "deferred ", fmtNum(q.deferred))
          )
        );
      })
    );
  }

  function renderBreakers(rows) {
    const body = $("breakers").tBodies[0];
    body.replaceChildren(
      ...rows.map((b) =>
        el(
          "tr",
          { data: { deployment: b.deployment, state: b.state } },
          el("td", {}, b.deployment),
          el("td", {}, badge("state state-" + b.state, b.state)),
          el("td", { class: "num" }, fmtNum(b.calls_in_window)),
          el("td", { class: "num" }, fmtNum(b.failures_in_window)),
          el("td", { class: "num" }, fmtNum(b.trips)),
          el("td", { class: "num" }, b.seconds_to_retry ? fmtAge(b.seconds_to_retry) : "–")
        )
      )
    );
    $("breakers-empty").hidden = rows.length > 0;
  }

  function renderCost(sample) {
    const fill = (id, rows, key) =>
      $(id).tBodies[0].replaceChildren(
        ...rows.map((r) =>
          el("tr", {}, el("td", {}, r[key]), el("td", { class: "num" }, fmtNum(r.jobs)), el("td", { class: "num" }, fmtUsd(r.cost)))
        )
      );
    fill("cost-model", sample.cost_by_model || [], "model");
    fill("cost-tenant", sample.cost_by_tenant || [], "tenant");
    $("credits").textContent =
      "Jobs today " + fmtNum(sample.jobs_today) + " (" + fmtNum(sample.failed_today) + " failed) · credit reserved by unfinished jobs " + fmtUsd(sample.credits_reserved);
  }

  function renderLanes(lanes) {
    const open = lanes.open_batches || [];
    $("lanes").tBodies[0].replaceChildren(
      ...open.map((b) =>
        el(
          "tr",
          { data: { batch: b.batch, deployment: b.deployment } },
          el("td", {}, b.batch),
          el("td", {}, b.deployment),
          el("td", {}, b.state || "–"),
          el("td", { class: "num" }, fmtAge(b.age_s)),
          el("td", { class: "num" }, fmtNum(b.size)),
          el("td", { class: "num" }, fmtNum(b.waiting)),
          el("td", { class: "num" }, fmtAge(b.expected_completion_in_s))
        )
      )
    );
    $("lanes-empty").hidden = open.length > 0;
    const waiting = Object.entries(lanes.waiting_for_a_batch || {});
    $("lanes-summary").textContent =
      "Waiting for a batch: " +
      (waiting.length ? waiting.map(([dep, n]) => dep + " " + fmtNum(n)).join(", ") : "none") +
      " · sent back to now before their deadline " +
      fmtNum(lanes.redispatched) +
      " · results after their job ended " +
      fmtNum(lanes.wasted_results) +
      " (" +
      fmtUsd(lanes.wasted_usd) +
      ", the operator's)";
  }

  function renderJobs(sample) {
    const seen = new Set();
    const rows = [];
    for (const j of sample.queued || []) {
      seen.add(j.tenant + "/" + j.id);
      rows.push(
        el(
          "tr",
          { data: { jobId: j.id, tenant: j.tenant, status: j.status } },
          el("td", {}, j.id),
          el("td", {}, j.tenant),
          el("td", {}, j.model || "–"),
          el("td", {}, "–"),
          el("td", {}, badge("badge badge-" + j.status, j.status)),
          el("td", { class: "num" }, "–"),
          el("td", { class: "num" }, "–"),
          el("td", {}, j.queue + " · " + fmtTime(j.created_at))
        )
      );
    }
    for (const j of sample.recent || []) {
      // a job id names a job inside its tenant: two tenants may both have a job "1"
      if (seen.has(j.tenant + "/" + j.id)) continue;
      seen.add(j.tenant + "/" + j.id);
      rows.push(
        el(
          "tr",
          { data: { jobId: j.id, tenant: j.tenant, status: j.status } },
          el("td", {}, j.id),
          el("td", {}, j.tenant),
          el("td", {}, j.model || "–"),
          el("td", {}, j.provider || "–"),
          el("td", {}, badge("badge badge-" + j.status, j.error ? j.status + " · " + j.error : j.status)),
          el("td", { class: "num" }, fmtNum(j.attempts)),
          el("td", { class: "num" }, fmtUsd(j.cost)),
          el("td", {}, fmtTime(j.finished_at))
        )
      );
    }
    $("jobs").tBodies[0].replaceChildren(...rows);
    $("jobs-empty").hidden = rows.length > 0;
  }

  async function openJob(tenant, id) {
    const dialog = $("job");
    $("job-title").textContent = "Job " + id;
    const summary = $("job-summary");
    summary.replaceChildren(el("dt", {}, "loading"), el("dd", {}, "…"));
    $("job-attempts").tBodies[0].replaceChildren();
    $("job-response").textContent = "";
    $("job-error").textContent = "";
    if (!dialog.open) dialog.showModal();
    const resp = await fetch(
      "/dashboard/api/jobs/" + encodeURIComponent(tenant) + "/" + encodeURIComponent(id),
      { credentials: "same-origin" }
    );
    const body = await resp.json();
    if (!resp.ok) {
      summary.replaceChildren(el("dt", {}, "error"), el("dd", {}, (body.error && body.error.message) || resp.status));
      return;
    }
    const usage = body.usage || {};
    const pairs = [
      ["status", body.status],
      ["tenant", body.tenant],
      ["model asked", body.model_requested],
      ["route", (body.route || []).join(" → ")],
      ["answered by", body.provider ? body.provider + " / " + body.model : "–"],
      ["cost", fmtUsd(usage.cost)],
      ["tokens", usage.prompt_tokens !== undefined ? fmtNum(usage.prompt_tokens) + " in, " + fmtNum(usage.completion_tokens) + " out" : "–"],
      ["runs", body.runs],
      ["created", fmtTime(body.created_at)],
      ["took", body.finished_at ? fmtAge(body.finished_at - body.created_at) : "–"],
    ];
    summary.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "–")]));
    $("job-attempts").tBodies[0].replaceChildren(
      ...(body.attempts || []).map((a, i) =>
        el(
          "tr",
          {},
          el("td", {}, i + 1),
          el("td", {}, a.provider),
          el("td", {}, a.upstream_model || a.model),
          el("td", {}, a.outcome),
          el("td", {}, a.error_code || "–"),
          el("td", { class: "num" }, a.http_status ?? "–"),
          el("td", { class: "num" }, a.latency_ms === null || a.latency_ms === undefined ? "–" : fmtNum(a.latency_ms, 1)),
          el("td", {}, a.breaker || "–")
        )
      )
    );
    $("job-response").textContent = body.response ? JSON.stringify(body.response, null, 2) : "–";
    $("job-error").textContent = body.error ? JSON.stringify(body.error, null, 2) : "–";
  }

  // a table is rebuilt only when what it shows changed: rows under the pointer stay put (a click
  // lands on the row that was pressed), and an idle page does no DOM work
  const shown = {};
  function changed(name, value) {
    const text = JSON.stringify(value);
    if (shown[name] === text) return false;
    shown[name] = text;
    return true;
  }

  function onSample(sample) {
    samples += 1;
    document.body.dataset.samples = String(samples);
    $("updated").textContent = "updated " + fmtTime(sample.t);
    const status = $("status");
    if (!sample.ok) {
      status.textContent = "redis: " + (sample.error || "unavailable");
      status.className = "status down";
      return;
    }
    status.textContent = "live";
    status.className = "status live";
    addPoint({
      t: sample.t,
      depth: Object.fromEntries((sample.queues || []).map((q) => [q.label, q.depth])),
      age: Object.fromEntries((sample.queues || []).map((q) => [q.label, q.oldest_age_s || 0])),
      throughput: sample.throughput,
      success_rate: sample.success_rate,
    });
    redraw();
    if (changed("queues", sample.queues)) renderQueues(sample);
    if (changed("breakers", sample.breakers)) renderBreakers(sample.breakers || []);
    if (changed("cost", [sample.cost_by_model, sample.cost_by_tenant, sample.jobs_today, sample.credits_reserved])) renderCost(sample);
    if (changed("jobs", [sample.queued, sample.recent])) renderJobs(sample);
    // ages tick every sample, so the table is rebuilt each time it shows an open batch
    if (sample.lanes && changed("lanes", sample.lanes)) renderLanes(sample.lanes);
  }

  setupCharts();
  $("jobs").addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-job-id]");
    if (row) openJob(row.dataset.tenant, row.dataset.jobId);
  });

  const source = new EventSource("/dashboard/events");
  source.addEventListener("open", () => {
    $("status").textContent = "live";
    $("status").className = "status live";
  });
  source.addEventListener("history", (event) => {
    for (const p of JSON.parse(event.data).history || []) addPoint(p);
    redraw();
  });
  source.addEventListener("snapshot", (event) => onSample(JSON.parse(event.data)));
  source.addEventListener("end", () => location.reload());
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      location.reload(); // refused (the key was revoked): the server shows the sign-in form
      return;
    }
    $("status").textContent = "reconnecting…";
    $("status").className = "status down";
  });
})();
