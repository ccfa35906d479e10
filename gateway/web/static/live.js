// The live view: poll /console/live/data and draw each series as a small SVG line over the last hour.
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 360, H = 120, PAD = 4;
  const charts = document.getElementById("charts");
  const status = document.getElementById("live-status");

  function svg(tag, attrs) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }

  function format(value) {
    if (value === null || value === undefined) return "–";
    if (Math.abs(value) >= 100) return value.toFixed(0);
    if (Math.abs(value) >= 1) return value.toFixed(2);
    return value.toPrecision(2);
  }

  function chart(series) {
    const figure = document.createElement("figure");
    figure.className = "chart panel";
    const points = series.points;
    const latest = points.length ? points[points.length - 1][1] : null;
    const caption = document.createElement("figcaption");
    caption.textContent = `${series.title}: latest ${format(latest)}`;
    const detail = document.createElement("small");
    detail.textContent = ` ${series.name}, ${series.kind}, ${series.unit}`;
    caption.append(document.createElement("br"), detail);
    const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
      "aria-label": `${series.title} over the last hour, latest ${format(latest)}` });
    box.append(svg("rect", { x: 0, y: 0, width: W, height: H, class: "plot" }));
    if (points.length > 1) {
      // The last hour, or less while the gateway has not been up that long.
      const now = Date.now() / 1000;
      const t0 = Math.max(now - 3600, points[0][0]);
      const span = Math.max(now - t0, 1);
      const top = Math.max(...points.map((p) => p[1]), 0);
      const max = top || 1;
      const xy = points
        .filter(([t]) => t >= t0)
        .map(([t, v]) => [PAD + ((t - t0) / span) * (W - 2 * PAD), H - PAD - (v / max) * (H - 2 * PAD)]);
      box.append(svg("polyline", { points: xy.map((p) => p.join(",")).join(" "), class: "line" }));
      const label = svg("text", { x: PAD + 2, y: 14, class: "axis" });
      label.textContent = "max " + format(top);
      const since = svg("text", { x: PAD + 2, y: H - 6, class: "axis" });
      since.textContent = "since " + new Date(t0 * 1000).toLocaleTimeString();
      box.append(label, since);
    } else {
      const wait = svg("text", { x: PAD + 2, y: H / 2, class: "axis" });
      wait.textContent = points.length ? "collecting…" : "no value yet";
      box.append(wait);
    }
    figure.append(caption, box);
    return figure;
  }

  async function refresh() {
    try {
      const answer = await fetch("/console/live/data", { headers: { Accept: "application/json" } });
      const data = await answer.json();
      charts.replaceChildren(...data.series.map(chart));
      status.textContent = `Updated ${new Date().toLocaleTimeString()}: ${data.series.length} figure(s).`;
      setTimeout(refresh, Math.max(2, data.interval) * 1000);
    } catch (error) {
      status.textContent = "Could not read the figures: " + error.message;
      setTimeout(refresh, 10000);
    }
  }
  refresh();
})();
