/* Helpers shared by the TokenFlow pages (no build step, no dependencies). */
"use strict";
const TF = {
  cookie(name) {
    const match = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
    return match ? decodeURIComponent(match.split("=").slice(1).join("=")) : "";
  },
  /* JSON over fetch with the staff session; unsafe methods carry the CSRF token. */
  async api(path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET") headers["X-CSRFToken"] = TF.cookie("csrftoken");
    const response = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = (data && data.error) || {};
      throw new Error(`${response.status} ${error.code || ""}: ${error.message || response.statusText}`);
    }
    return data;
  },
  wsURL(path) {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
  },
  el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "style") node.setAttribute("style", value);
      else node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  },
  ms(value) {
    if (value === null || value === undefined) return "–";
    return value >= 10000 ? (value / 1000).toFixed(1) + " s" : Math.round(value) + " ms";
  },
  int(value) {
    return value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US");
  },
  pct(value) {
    return value === null || value === undefined ? "–" : (100 * value).toFixed(1) + " %";
  },
};
