/* Batch job admin: progress bars of active jobs follow ws/batches/<id>/ (staff session). */
"use strict";
(() => {
  const ACTIVE = new Set(["pending", "running", "pausing"]);
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const follow = () => document.querySelectorAll("[data-batch-job]").forEach((bar) => {
    if (!ACTIVE.has(bar.dataset.status)) return;
    const socket = new WebSocket(`${scheme}${location.host}/ws/batches/${bar.dataset.batchJob}/`);
    socket.addEventListener("message", (message) => {
      const p = JSON.parse(message.data);
      if (p.type !== "progress" || !p.total) return;
      const failed = (p.counts && p.counts.failed) || 0;
      bar.querySelector(".tf-done").style.width = `${(100 * (p.done - failed)) / p.total}%`;
      bar.querySelector(".tf-failed").style.width = `${(100 * failed) / p.total}%`;
      bar.querySelector(".tf-label").textContent = `${p.done} / ${p.total} (${Math.round(p.percent)}%) · ${p.status}`;
      bar.dataset.status = p.status;
      if (!ACTIVE.has(p.status)) socket.close();
    });
  });
  // Admin media scripts load in <head>: wait for the bars.
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", follow);
  else follow();
})();
