/* The playground: streams over ws/generate/ (generate, process, cancel), classifies and
   previews compression over /api/ with the staff session. */
"use strict";
(() => {
  const config = JSON.parse(document.getElementById("playground-config").textContent);
  const $ = (id) => document.getElementById(id);
  const form = $("request");
  const output = $("output");
  let socket = null;
  let job = null; // {id, mode, sentAt, firstAt, tokens, compress}
  let jobSeq = 0;

  // --- options ---------------------------------------------------------------------------
  for (const model of config.models) {
    const label = model.name === "auto" ? "auto (classify and route)" : `${model.name} · ${model.provider}`;
    $("model").append(TF.el("option", { value: model.name }, label));
  }
  $("model").value = config.models.some((m) => m.name === config.default_model) ? config.default_model : "auto";
  for (const pipeline of config.pipelines) {
    $("pipeline").append(TF.el("option", { value: pipeline.name }, pipeline.name));
  }
  if (config.pipelines.some((p) => p.name === config.default_pipeline)) $("pipeline").value = config.default_pipeline;
  $("max_tokens").max = config.max_output_tokens;

  const mode = () => form.querySelector("input[name=mode]:checked").value;
  const applyMode = () => {
    document.body.dataset.mode = mode();
    $("send").textContent = mode() === "classify" ? "Classify" : "Send";
  };
  form.querySelectorAll("input[name=mode]").forEach((input) => input.addEventListener("change", applyMode));
  applyMode();
  $("compress_by").addEventListener("change", () => {
    const ratio = $("compress_by").value === "ratio";
    $("compress_value").value = ratio ? "0.5" : "64";
    $("compress_value").step = ratio ? "any" : "1";
  });

  // --- the socket ------------------------------------------------------------------------
  function connect() {
    socket = new WebSocket(TF.wsURL("/ws/generate/"));
    socket.addEventListener("open", () => {
      $("connection").textContent = "connected";
      $("connection").className = "ok";
    });
    socket.addEventListener("close", () => {
      $("connection").textContent = "disconnected, reconnecting…";
      $("connection").className = "error";
      if (job && job.mode !== "classify") finish("disconnected");
      setTimeout(connect, 1000);
    });
    socket.addEventListener("message", (message) => onEvent(JSON.parse(message.data)));
  }
  connect();

  // --- rendering helpers -----------------------------------------------------------------
  function showError(text) {
    $("error").textContent = text;
    $("error").hidden = !text;
  }

  function reset() {
    showError("");
    output.textContent = "";
    output.classList.remove("failed");
    document.querySelectorAll("#answer-panel .note").forEach((note) => note.remove());
    $("answer-model").textContent = "";
    $("stats").hidden = true;
    $("route-panel").hidden = true;
    $("route-scores").replaceChildren();
    $("route-skipped").replaceChildren();
    $("route-summary").textContent = "";
    $("route-chain").textContent = "";
    $("agents-panel").hidden = true;
    $("agents").replaceChildren();
  }

  function busy(on) {
    $("send").disabled = on;
    $("stop").disabled = !on;
    document.body.classList.toggle("streaming", on);
  }

  function scoreBars(scores, top) {
    $("route-scores").replaceChildren(
      ...scores.map(({ category, score }) =>
        TF.el("div", { class: "bar" + (category === top ? " top" : ""), dataset: { category } },
          TF.el("span", { class: "label" }, category),
          TF.el("span", { class: "track" }, TF.el("span", { class: "fill", style: `width:${(100 * score).toFixed(1)}%` })),
          TF.el("span", { class: "value" }, score.toFixed(3)))));
  }

  function showRoute(meta) {
    $("route-panel").hidden = false;
    const route = meta.route || {};
    $("route-summary").replaceChildren(
      "Category ", TF.el("strong", { id: "route-category" }, meta.top_category),
      ` (confidence ${(100 * meta.confidence).toFixed(1)} %, ${meta.engine}) → `,
      TF.el("strong", { id: "route-model" }, meta.selected_model),
      route.routed ? "" : TF.el("span", { class: "muted" }, ` · ${route.reason || "default model"}`));
    scoreBars(meta.scores || [], meta.top_category);
    const chain = (route.candidates || []).join(" → ");
    $("route-chain").textContent = `Route: ${chain || meta.selected_model}` +
      (meta.fallbacks && meta.fallbacks.length ? ` · ready fallbacks: ${meta.fallbacks.join(", ")}` : " · no ready fallback");
    for (const skip of meta.skipped || []) {
      $("route-skipped").append(TF.el("li", {}, TF.el("strong", {}, skip.model), ` skipped (${skip.code}): ${skip.reason}`));
    }
  }

  /* Original vs compressed, word by word: compressors keep words in order, so a greedy walk
     (looking ahead for the next kept word) marks every original word kept or dropped. */
  function wordDiff(original, compressed) {
    const a = original.split(/\s+/).filter(Boolean);
    const b = compressed.split(/\s+/).filter(Boolean);
    const parts = [];
    let i = 0;
    for (const word of b) {
      let k = i;
      while (k < a.length && k - i < 400 && a[k] !== word) k++;
      if (k < a.length && a[k] === word) {
        for (; i < k; i++) parts.push(["dropped", a[i]]);
        parts.push(["kept", a[i++]]);
      } else {
        parts.push(["changed", word]);
      }
    }
    for (; i < a.length; i++) parts.push(["dropped", a[i]]);
    return parts;
  }

  function showCompression(compression) {
    $("compression-panel").hidden = false;
    const saved = compression.original_tokens - compression.compressed_tokens;
    $("compression-summary").textContent =
      `${TF.int(compression.original_tokens)} → ${TF.int(compression.compressed_tokens)} tokens` +
      ` (${TF.int(saved)} saved, ratio ${compression.ratio.toFixed(2)}, ${compression.engine}, ${TF.ms(compression.duration_ms)})` +
      (compression.skipped ? " · below the minimum length: unchanged" : "");
    const parts = wordDiff(compression.original_text || "", compression.compressed_text);
    $("compression-diff").replaceChildren(...parts.flatMap(([kind, word]) => [
      kind === "dropped" ? TF.el("del", { class: "dropped" }, word)
        : TF.el("span", { class: kind }, word), " "]));
  }

  async function loadCompressionOf(generationId) {
    try {
      const generation = await TF.api(`/api/generations/${generationId}`);
      if (generation.compression_id) showCompression(await TF.api(`/api/compressions/${generation.compression_id}`));
    } catch (error) {
      showError(`Could not load the compression: ${error.message}`);
    }
  }

  function agentPanel(agent) {
    const panel = TF.el("article", { class: "agent running", dataset: { agent: agent.name } },
      TF.el("header", {}, TF.el("strong", {}, agent.name), " ", TF.el("span", { class: "muted" }, agent.model),
        " ", TF.el("span", { class: "state" }, "running…")),
      TF.el("div", { class: "text" }));
    $("agents").append(panel);
    return panel;
  }

  function agentPanelOf(event) {
    return $("agents").querySelector(`[data-agent="${CSS.escape(event.agent)}"]`) || agentPanel(event);
  }

  function agentDelta(event) {
    // stream_agents: the agent's answer fills in chunk by chunk while it runs.
    agentPanelOf(event).querySelector(".text").append(event.text);
  }

  function agentFinished(event, ok) {
    const panel = agentPanelOf(event);
    panel.classList.remove("running");
    panel.classList.add(ok ? "done" : "failed");
    panel.querySelector(".state").textContent = ok ? `done in ${TF.ms(event.duration_ms)}` : `failed (${event.code})`;
    if (ok) panel.querySelector(".text").textContent = event.text;  // the stored answer
    else panel.append(TF.el("p", { class: "reason" }, event.reason));  // partial text stays
  }

  function setStat(id, content) {
    $(id).replaceChildren(content);
  }

  function finish(status, end = {}) {
    if (!job) return;
    const now = performance.now();
    $("stats").hidden = false;
    setStat("stat-status", status);
    const ttft = job.firstAt ? job.firstAt - job.sentAt : null;
    setStat("stat-ttft", job.firstAt ? TF.ms(ttft) : "no token");
    const usage = end.usage || {};
    const completion = usage.completion_tokens ?? job.tokens;
    const seconds = job.firstAt ? (now - job.firstAt) / 1000 : 0;
    setStat("stat-speed", seconds > 0 && completion > 1 ? `${(completion / seconds).toFixed(1)} tokens/s` : "–");
    setStat("stat-tokens", usage.prompt_tokens !== undefined
      ? `${TF.int(usage.prompt_tokens)} in · ${TF.int(usage.completion_tokens)} out` : `${TF.int(job.tokens)} chunks`);
    const generationId = end.generation_id || job.generationId;
    const links = [];
    if (generationId) {
      links.push(TF.el("a", { id: "generation-link", href: `/admin/routing/generation/${generationId}/change/` }, `Generation #${generationId}`));
    }
    if (end.run_id || job.runId) {
      const runId = end.run_id || job.runId;
      links.push(" · ", TF.el("a", { href: `/admin/pipelines/pipelinerun/${runId}/change/` }, `Run #${runId}`));
    }
    $("stat-link").replaceChildren(...(links.length ? links : ["–"]));
    job = null;
    busy(false);
  }

  // --- events from ws/generate/ ----------------------------------------------------------
  function onEvent(event) {
    if (event.type === "pong" || event.type === "authenticated") return;
    if (!job) {
      if (event.type === "error") showError(`${event.code}: ${event.message}`);
      return;
    }
    if (event.id !== undefined && event.id !== job.id && job.mode === "generate") return;
    switch (event.type) {
      case "metadata":
        if (job.mode === "fanout") {
          job.runId = event.run_id;
          $("agents-panel").hidden = false;
          (event.agents || []).forEach(agentPanel);
          $("answer-model").textContent = `aggregated by ${event.aggregator}`;
        } else {
          job.generationId = event.generation_id;
          $("answer-model").textContent = event.model;
          if (event.selected_model) showRoute(event);
          if (job.compress) loadCompressionOf(event.generation_id);
        }
        break;
      case "token":
        if (!job.firstAt) job.firstAt = performance.now();
        job.tokens += 1;
        output.append(event.text);
        break;
      case "info":
        if (event.fallback) {
          const f = event.fallback;
          output.before(TF.el("p", { class: "note" }, `Fallback: ${f.from}${f.to ? " → " + f.to : ""} (${f.code || ""} ${f.reason || ""})`));
        }
        break;
      case "agent_delta":
        agentDelta(event);
        break;
      case "agent_done":
        agentFinished(event, true);
        break;
      case "agent_failed":
        agentFinished(event, false);
        break;
      case "end":
        finish(event.finish_reason === "cancelled" ? "cancelled" : `completed (${event.finish_reason})`, event);
        break;
      case "error":
        output.classList.add("failed");
        showError(`${event.code}: ${event.message}`);
        finish(`failed (${event.code})`, event);
        break;
      default:
        break;
    }
  }

  // --- actions ---------------------------------------------------------------------------
  function compressOptions() {
    const value = Number($("compress_value").value);
    const options = { [$("compress_by").value]: $("compress_by").value === "ratio" ? value : Math.round(value) };
    if ($("question").value.trim()) options.question = $("question").value.trim();
    return options;
  }

  function messages() {
    const list = [];
    if ($("system").value.trim()) list.push({ role: "system", content: $("system").value });
    list.push({ role: "user", content: $("prompt").value });
    return list;
  }

  async function classify() {
    reset();
    busy(true);
    try {
      const result = await TF.api("/api/classify", { method: "POST", body: { prompt: $("prompt").value } });
      $("route-panel").hidden = false;
      $("route-summary").replaceChildren("Category ", TF.el("strong", { id: "route-category" }, result.top_category),
        ` (confidence ${(100 * result.confidence).toFixed(1)} %, ${result.engine}, ${TF.ms(result.duration_ms)})`);
      scoreBars(result.scores, result.top_category);
      $("route-chain").replaceChildren(TF.el("a", { href: `/admin/routing/classification/${result.id}/change/` }, `Classification #${result.id}`));
    } catch (error) {
      showError(error.message);
    } finally {
      busy(false);
    }
  }

  form.addEventListener("submit", (submit) => {
    submit.preventDefault();
    if (!$("prompt").value.trim()) return showError("Write a prompt first.");
    if (mode() === "classify") return classify();
    if (!socket || socket.readyState !== WebSocket.OPEN) return showError("Not connected yet; try again in a second.");
    reset();
    $("compression-panel").hidden = true;
    const id = `pg-${++jobSeq}`;
    job = { id, mode: mode(), sentAt: performance.now(), firstAt: null, tokens: 0, compress: false };
    let message;
    if (job.mode === "fanout") {
      message = { type: "process", id, message: $("prompt").value, message_id: `playground-${Date.now()}-${jobSeq}`, pipeline: $("pipeline").value, stream_agents: true };
    } else {
      message = { type: "generate", id, model: $("model").value, messages: messages() };
      if ($("temperature").value !== "") message.temperature = Number($("temperature").value);
      if ($("max_tokens").value !== "") message.max_tokens = Number($("max_tokens").value);
      if ($("compress").checked) {
        message.compress = compressOptions();
        job.compress = true;
      }
      if (message.model === "auto") {
        $("route-panel").hidden = false;
        $("route-summary").textContent = "Classifying…";
      }
    }
    busy(true);
    socket.send(JSON.stringify(message));
  });

  $("stop").addEventListener("click", () => {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "cancel" }));
  });

  $("compress-only").addEventListener("click", async () => {
    if (!$("prompt").value.trim()) return showError("Write a prompt first.");
    showError("");
    $("compress-only").disabled = true;
    try {
      showCompression({ ...(await TF.api("/api/compress", { method: "POST", body: { text: $("prompt").value, ...compressOptions() } })), original_text: $("prompt").value });
    } catch (error) {
      showError(error.message);
    } finally {
      $("compress-only").disabled = false;
    }
  });
})();
