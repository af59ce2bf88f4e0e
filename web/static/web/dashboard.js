/* The dashboard: everything arrives over ws/dashboard/ (stats, live snapshot, batch
   progress); charts are drawn with the vendored uPlot. */
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const COLORS = ["#3d5afe", "#e65100", "#2e7d32", "#8e24aa", "#00838f", "#c62828", "#6d4c41", "#f9a825"];
  const charts = {};
  let range = (document.querySelector("#ranges a[aria-current]") || {}).dataset?.range || "day";
  let socket = null;

  // --- charts ----------------------------------------------------------------------------
  function draw(id, axis, series) {
    const target = $(id);
    if (charts[id]) charts[id].destroy();
    const width = Math.max(320, target.clientWidth || 500);
    const opts = {
      width, height: 220,
      scales: { x: { time: true } },
      legend: { live: false },
      series: [{}, ...series.map((s, i) => ({
        label: s.label, stroke: s.color || COLORS[i % COLORS.length], width: 2,
        fill: s.fill ? (s.color || COLORS[i % COLORS.length]) + "22" : undefined,
        points: { show: false }, spanGaps: s.spanGaps || false,
      }))],
      axes: [{}, { size: 60 }],
    };
    if (!series.length) opts.series.push({ label: "no data", stroke: "#bbb" });
    const data = [axis, ...(series.length ? series.map((s) => s.values) : [axis.map(() => 0)])];
    charts[id] = new uPlot(opts, data, target);
  }

  function perModel(stats, key) {
    return Object.entries(stats.usage.series).map(([model, values]) => ({ label: model, values: values[key] }));
  }

  function usd(value) {
    // Per-call costs are fractions of a cent: more digits below a dollar.
    if (!value) return "$0";
    return value >= 1 ? `$${value.toFixed(2)}` : `$${value.toPrecision(3)}`;
  }

  function pair(p) {
    return p && p.p50 !== null ? `${TF.ms(p.p50)} / ${TF.ms(p.p95)}` : "–";
  }

  function renderStats(stats) {
    if (stats.range !== range) return;
    const totals = Object.values(stats.usage.totals);
    const sum = (key) => totals.reduce((acc, t) => acc + t[key], 0);
    const requests = sum("requests");
    $("card-requests").textContent = TF.int(requests);
    $("card-tokens").textContent = TF.int(sum("tokens"));
    $("card-errors").textContent = requests ? `${TF.int(sum("errors"))} (${TF.pct(sum("errors") / requests)})` : "0";
    $("card-ttft").textContent = pair(stats.ttft.overall);
    $("card-duration").textContent = pair(stats.duration.overall);
    const c = stats.compression;
    $("card-saved").textContent = c.count ? `${TF.int(c.saved_tokens)} tok · ${TF.pct(c.saved_share)}` : "–";
    const spend = stats.spend;
    $("card-cost").textContent = usd(spend.cost_usd);
    const hits = spend.cache_exact + spend.cache_semantic;
    $("card-cache").textContent = requests ? `${TF.int(hits)} · ${TF.pct(hits / requests)}` : "–";
    $("card-cache-detail").textContent =
      `cache hits: ${TF.int(spend.cache_exact)} exact, ${TF.int(spend.cache_semantic)} semantic, ${usd(spend.cost_saved_usd)} saved`;

    const axis = stats.axis;
    draw("chart-requests", axis, perModel(stats, "requests"));
    draw("chart-tokens", axis, perModel(stats, "tokens"));
    draw("chart-errors", axis, perModel(stats, "errors"));
    draw("chart-ttft", axis, [
      { label: "p50", values: stats.ttft.p50, spanGaps: true },
      { label: "p95", values: stats.ttft.p95, spanGaps: true },
    ]);
    draw("chart-duration", axis, [
      { label: "p50", values: stats.duration.p50, spanGaps: true },
      { label: "p95", values: stats.duration.p95, spanGaps: true },
    ]);
    draw("chart-saved", axis, [{ label: "tokens saved", values: c.saved_series, fill: true }]);

    const categories = stats.routing.categories;
    const classified = categories.reduce((acc, row) => acc + row.count, 0);
    $("routing-table").tBodies[0].replaceChildren(...(categories.length ? categories.map((row) => {
      const share = classified ? row.count / classified : 0;
      const models = Object.entries(stats.routing.models[row.category] || {}).map(([m, n]) => `${m} (${TF.int(n)})`).join(", ");
      return TF.el("tr", { dataset: { category: row.category } },
        TF.el("td", {}, row.category), TF.el("td", { class: "num" }, TF.int(row.count)),
        TF.el("td", {}, TF.el("div", { class: "progress", title: TF.pct(share) }, TF.el("span", { class: "done", style: `width:${(100 * share).toFixed(1)}%` }))),
        TF.el("td", {}, models || "–"));
    }) : [TF.el("tr", {}, TF.el("td", { colspan: 4, class: "muted" }, "No classification in this range."))]));

    const models = Object.keys(stats.usage.totals).sort();
    $("model-table").tBodies[0].replaceChildren(...(models.length ? models.map((model) => {
      const t = stats.usage.totals[model];
      return TF.el("tr", {},
        TF.el("td", {}, model), TF.el("td", { class: "num" }, TF.int(t.requests)),
        TF.el("td", { class: "num" }, TF.int(t.tokens)), TF.el("td", { class: "num" }, TF.int(t.errors)),
        TF.el("td", { class: "num" }, usd(t.cost_usd)), TF.el("td", { class: "num" }, TF.int(t.cache_hits)),
        TF.el("td", { class: "num" }, pair(stats.ttft.per_model[model])),
        TF.el("td", { class: "num" }, pair(stats.duration.per_model[model])));
    }) : [TF.el("tr", {}, TF.el("td", { colspan: 8, class: "muted" }, "No generation in this range."))]));
  }

  // --- live ------------------------------------------------------------------------------
  function batchRow(job) {
    const counts = job.counts || {};
    const total = job.total || 0;
    const width = (n) => (total ? (100 * n) / total : 0).toFixed(1);
    return TF.el("tr", { dataset: { job: job.job_id } },
      TF.el("td", {}, TF.el("a", { href: `/admin/batches/batchjob/${job.job_id}/change/` }, `#${job.job_id}`)),
      TF.el("td", {}, job.name || "–"),
      TF.el("td", {}, job.status),
      TF.el("td", {}, TF.el("div", { class: "progress", title: `${job.percent} %` },
        TF.el("span", { class: "done", style: `width:${width((counts.completed || 0) + (counts.cancelled || 0))}%` }),
        TF.el("span", { class: "failed", style: `width:${width(counts.failed || 0)}%` }))),
      TF.el("td", { class: "num" }, `${TF.int(job.done)} / ${TF.int(total)} (${job.percent} %)`));
  }

  const batches = new Map();
  function renderBatches() {
    const rows = [...batches.values()].sort((a, b) => b.job_id - a.job_id);
    $("batches").tBodies[0].replaceChildren(...(rows.length ? rows.map(batchRow)
      : [TF.el("tr", {}, TF.el("td", { colspan: 5, class: "muted" }, "No batch job running."))]));
  }

  function renderLive(live) {
    $("in-flight").tBodies[0].replaceChildren(...(live.generations.length ? live.generations.map((g) =>
      TF.el("tr", { dataset: { generation: g.id } },
        TF.el("td", {}, TF.el("a", { href: `/admin/routing/generation/${g.id}/change/` }, `#${g.id}`)),
        TF.el("td", {}, g.model_name), TF.el("td", {}, g.transport || "–"), TF.el("td", {}, g.status),
        TF.el("td", { class: "num" }, `${g.age_s} s`), TF.el("td", { class: "num" }, TF.ms(g.ttft_ms))))
      : [TF.el("tr", {}, TF.el("td", { colspan: 6, class: "muted" }, "Nothing in flight."))]));
    batches.clear();
    for (const job of live.batches) batches.set(job.job_id, job);
    renderBatches();
  }

  function connect() {
    socket = new WebSocket(TF.wsURL(`/ws/dashboard/?range=${encodeURIComponent(range)}`));
    socket.addEventListener("open", () => {
      $("live-status").textContent = "live";
      $("live-dot").classList.add("on");
    });
    socket.addEventListener("close", () => {
      $("live-status").textContent = "disconnected, reconnecting…";
      $("live-dot").classList.remove("on");
      setTimeout(connect, 2000);
    });
    socket.addEventListener("message", (message) => {
      const event = JSON.parse(message.data);
      if (event.type === "stats") renderStats(event);
      else if (event.type === "live") renderLive(event);
      else if (event.type === "batch") {
        const previous = batches.get(event.job_id) || {};
        batches.set(event.job_id, { ...previous, ...event });
        renderBatches();
      } else if (event.type === "error") $("live-status").textContent = `${event.code}: ${event.message}`;
    });
  }
  connect();

  $("ranges").addEventListener("click", (click) => {
    const link = click.target.closest("a[data-range]");
    if (!link) return;
    click.preventDefault();
    range = link.dataset.range;
    document.querySelectorAll("#ranges a").forEach((a) => a.toggleAttribute("aria-current", a === link));
    history.replaceState(null, "", `?range=${range}`);
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "range", range }));
  });
})();
