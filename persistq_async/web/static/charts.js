/* persistq dashboard: the charts (inline SVG), drawn by dashboard.js.
 * Part of persistq_async, under its MIT licence. Hand-written, no dependencies, no build step.
 */
"use strict";

window.persistqCharts = (function () {
  const SVG = "http://www.w3.org/2000/svg";
  const OUTCOME_COLOURS = {
    acked: "#2e7d32",
    nacked: "#f9a825",
    failed: "#c62828",
    expired: "#6a1b9a",
    cancelled: "#757575",
    released: "#90a4ae",
  };

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, String(value));
    }
    return node;
  }

  function when(iso) {
    if (!iso) return "";
    return new Date(iso).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function duration(seconds) {
    const s = Math.max(0, seconds);
    if (s < 1) return (s * 1000).toFixed(0) + "ms";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  }

  function span(cls, text) {
    const node = document.createElement("span");
    node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }


  // Stacked bars, one per bucket, in outcome colours; values[outcome] is a list per bucket.
  function barChart(container, values, buckets, options) {
    const width = options.width || Math.max(300, container.clientWidth || 720);
    const height = options.height || 140;
    const pad = options.compact ? 1 : 24;
    const outcomes = Object.keys(values).sort();
    const totals = new Array(buckets).fill(0);
    for (const o of outcomes) values[o].forEach((v, i) => { totals[i] += v; });
    const max = Math.max(1, ...totals);
    const chart = svg("svg", {
      viewBox: `0 0 ${width} ${height}`, width: "100%", height: height, role: "img",
      class: "bars", preserveAspectRatio: "none",
    });
    const plotH = height - (options.compact ? 2 : pad + 6);
    const barW = (width - (options.compact ? 0 : pad)) / buckets;
    const x0 = options.compact ? 0 : pad;
    if (!options.compact) {
      chart.append(svg("text", { x: 0, y: 10, class: "axis", text: String(max) }));
      chart.append(svg("text", { x: 0, y: plotH, class: "axis", text: "0" }));
      chart.append(svg("text", { x: x0, y: height - 4, class: "axis", text: "-60 min" }));
      chart.append(svg("text", { x: width - 30, y: height - 4, class: "axis", text: "now" }));
    }
    for (let i = 0; i < buckets; i++) {
      let y = plotH;
      for (const o of outcomes) {
        const v = values[o][i];
        if (!v) continue;
        const h = (v / max) * (plotH - 2);
        y -= h;
        const rect = svg("rect", {
          x: x0 + i * barW + 0.5, y: y, width: Math.max(0.5, barW - 1), height: h,
          fill: OUTCOME_COLOURS[o] || "#455a64", "data-outcome": o,
        });
        rect.append(svg("title", { text: `${o}: ${v} (${60 - i} min ago)` }));
        chart.append(rect);
      }
    }
    container.replaceChildren(chart);
  }

  function legend(container, outcomes) {
    container.replaceChildren(...outcomes.map((o) => {
      const swatch = span("swatch");
      swatch.style.background = OUTCOME_COLOURS[o] || "#455a64"; // CSSOM: allowed by the CSP
      const key = span("key");
      key.append(swatch, o);
      return key;
    }));
  }

  function timeline(container, history) {
    if (!history.length) { container.replaceChildren(); return; }
    const starts = history.map((a) => new Date(a.started_at).getTime());
    const ends = history.map((a) => (a.finished_at ? new Date(a.finished_at) : new Date()).getTime());
    const t0 = Math.min(...starts);
    const span = Math.max(1, Math.max(...ends) - t0);
    const width = Math.max(300, container.clientWidth || 720);
    const rowH = 18;
    const height = history.length * rowH + 20;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", height, role: "img", class: "timeline" });
    history.forEach((a, i) => {
      const x = 40 + ((starts[i] - t0) / span) * (width - 60);
      const w = Math.max(3, ((ends[i] - starts[i]) / span) * (width - 60));
      chart.append(svg("text", { x: 0, y: i * rowH + 13, class: "axis", text: "#" + a.attempt }));
      const rect = svg("rect", {
        x, y: i * rowH + 3, width: w, height: rowH - 6,
        fill: OUTCOME_COLOURS[a.outcome] || "#1565c0", "data-outcome": a.outcome || "running",
      });
      rect.append(svg("title", { text: `attempt ${a.attempt}: ${a.outcome || "running"}, ${duration((ends[i] - starts[i]) / 1000)}` }));
      chart.append(rect);
    });
    chart.append(svg("text", { x: 40, y: height - 4, class: "axis", text: when(history[0].started_at) }));
    chart.append(svg("text", { x: width - 150, y: height - 4, class: "axis", text: "+" + duration(span / 1000) }));
    container.replaceChildren(chart);
  }

  return { barChart, legend, timeline };
})();
