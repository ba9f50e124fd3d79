// Live uPlot charts: one div.chart per series (device, category), one line per
// numeric reading, drawn from the buffers in series.js.
//
// Cost control: at most MAX_CHARTS charts exist (the first ones in device order
// that match the chart filter); a chart is only redrawn in the frame after its
// series got new points, with one setData per chart per frame however many
// messages arrived; and sizes follow the container through one ResizeObserver.
// Choosing which series get charts looks at every series, so it runs at most every
// SELECT_MS rather than in every frame in which a series appeared (a History replay
// or a churning fleet creates series in most frames).

import { chartOptions, legendLatest } from "./axes.js";
import { byId, el, setAttr, showMessage } from "./dom.js";
import { schedule, scheduleAtMost } from "./frame.js";
import { MAX_COLUMNS, firstSeries } from "./series.js";

export const MAX_CHARTS = 24;
const SELECT_MS = 250;
/**
 * A series with nothing newer than this (by the hub's clock, relative to the newest
 * message the page holds) is stale: it keeps its data but yields its chart slot to
 * live series. Selection is redone this often too, since series go stale silently.
 */
const STALE_MS = 60_000;
const RESELECT_EVERY_MS = 5_000;
const PLOT_HEIGHT = 170;

export class Charts {
  constructor({ store }) {
    this.store = store;
    this.container = byId("charts");
    this.note = byId("charts-note");
    this.empty = byId("charts-empty");
    this.filterInput = byId("chart-filter");
    this.charts = new Map(); // series key -> chart record (see create)
    this.byPlotBox = new WeakMap(); // observed element -> chart record
    this.dirty = new Set(); // series keys with points not drawn yet
    this.selectionDirty = false; // series appeared or vanished, or the filter changed
    this.filter = "";
    this.flush = this.flush.bind(this);
    this.reselect = this.reselect.bind(this);

    // Resizes are applied in the next frame rather than inside the observer, so a
    // redraw never feeds back into the same layout pass (no ResizeObserver loops).
    this.resizeObserver = new ResizeObserver((entries) => {
      for (const entry of entries) {
        const chart = this.byPlotBox.get(entry.target);
        if (chart) chart.wantWidth = Math.floor(entry.contentRect.width);
      }
      schedule(this.flush);
    });
    setInterval(() => {
      this.selectionDirty = true;
      scheduleAtMost(this.reselect, SELECT_MS);
    }, RESELECT_EVERY_MS);
    this.filterInput.addEventListener("input", () => {
      this.filter = this.filterInput.value.trim().toLowerCase();
      this.selectionDirty = true;
      schedule(this.reselect); // typing: answer at once
    });
  }

  /** A series got a new point (called per message: only bookkeeping here). */
  touched(series, created) {
    if (created) {
      this.selectionDirty = true;
      scheduleAtMost(this.reselect, SELECT_MS);
    } else if (this.charts.has(series.key)) {
      this.dirty.add(series.key);
      schedule(this.flush);
    }
  }

  /**
   * Series were dropped from the store (unsubscribed, evicted, device forgotten):
   * their charts go at once; others may take their places at the next selection.
   */
  removed(seriesList) {
    if (!seriesList.length) return;
    for (const series of seriesList) this.destroy(series.key);
    this.selectionDirty = true;
    scheduleAtMost(this.reselect, SELECT_MS);
  }

  clear() {
    for (const key of [...this.charts.keys()]) this.destroy(key);
    this.selectionDirty = true;
    schedule(this.reselect);
  }

  matchesFilter(series) {
    const f = this.filter;
    return !f || series.deviceId.toLowerCase().includes(f) || series.category.toLowerCase().includes(f);
  }

  reselect() {
    if (this.selectionDirty) this.select();
  }

  /** Per frame: pending resizes and the charts whose series got points. */
  flush() {
    for (const chart of this.charts.values()) {
      if (chart.wantWidth && chart.wantWidth !== chart.width && chart.plot) {
        chart.width = chart.wantWidth;
        chart.plot.setSize({ width: chart.width, height: PLOT_HEIGHT });
      }
    }
    for (const key of this.dirty) {
      const chart = this.charts.get(key);
      if (chart) this.draw(chart);
    }
    this.dirty.clear();
  }

  /** Decides which series have charts and puts the charts in order. */
  select() {
    this.selectionDirty = false;
    const total = this.store.size;
    // Live series first, in screen order; stale ones only fill slots left over.
    const liveSince = this.store.newestReceivedMs - STALE_MS;
    const live = firstSeries(this.store.series.values(), MAX_CHARTS, (s) => s.lastReceivedMs >= liveSince && this.matchesFilter(s));
    let wanted = live.shown;
    let matching = live.matching;
    const stale = firstSeries(this.store.series.values(), MAX_CHARTS - wanted.length, (s) => s.lastReceivedMs < liveSince && this.matchesFilter(s));
    wanted = wanted.concat(stale.shown);
    matching += stale.matching;
    const wantedKeys = new Set(wanted.map((s) => s.key));
    for (const key of [...this.charts.keys()]) if (!wantedKeys.has(key)) this.destroy(key);

    let previous = null;
    for (const series of wanted) {
      let chart = this.charts.get(series.key);
      const isNew = !chart;
      if (isNew) chart = this.create(series);
      // Move nodes only when out of place: moving a canvas is cheap but not free.
      const expected = previous ? previous.nextSibling : this.container.firstChild;
      if (expected !== chart.root) this.container.insertBefore(chart.root, expected);
      previous = chart.root;
      if (isNew) this.draw(chart);
    }

    this.empty.hidden = total > 0;
    let note = "";
    if (matching > wanted.length) {
      note = `showing ${wanted.length} of ${matching} series; filter by device to see others`;
    } else if (this.filter && matching < total) {
      note = `${matching} of ${total} series match the filter`;
    }
    showMessage(this.note, note);
  }

  create(series) {
    const plotBox = el("div", { class: "chart-plot" });
    const placeholder = el("p", { class: "hint", text: "no numeric readings (see latest telemetry)" });
    const capNote = el("p", {
      class: "hint",
      text: `only the first ${MAX_COLUMNS} numeric readings are charted (see latest telemetry for the rest)`,
      hidden: true,
    });
    const root = el(
      "div",
      {
        class: "chart",
        attrs: { "data-device": series.deviceId, "data-category": series.category, "data-points": 0 },
      },
      el(
        "div",
        { class: "chart-head" },
        el("span", { class: "chart-device", text: series.deviceId, title: series.deviceId }),
        el("span", { class: "chart-category", text: series.category, title: series.category }),
      ),
      plotBox,
      placeholder,
      capNote,
    );
    const chart = { series, root, plotBox, placeholder, capNote, plot: null, layout: -1, width: 0, wantWidth: 0 };
    this.charts.set(series.key, chart);
    this.byPlotBox.set(plotBox, chart);
    this.resizeObserver.observe(plotBox);
    return chart;
  }

  destroy(key) {
    const chart = this.charts.get(key);
    if (!chart) return;
    this.resizeObserver.unobserve(chart.plotBox);
    chart.plot?.destroy();
    chart.root.remove();
    this.charts.delete(key);
    this.dirty.delete(key);
  }

  draw(chart) {
    const { series } = chart;
    if (chart.layout !== series.layout) this.build(chart);
    else chart.plot?.setData([series.xs, ...series.ys]);
    setAttr(chart.root, "data-points", series.xs.length);
  }

  /** (Re)creates the uPlot instance: first draw, or a reading appeared. */
  build(chart) {
    const { series } = chart;
    chart.plot?.destroy();
    chart.plot = chart.root.uplot = null;
    chart.layout = series.layout;
    chart.placeholder.hidden = series.columns.length > 0;
    chart.capNote.hidden = !series.columnsCapped;
    if (!series.columns.length) return; // text-only series: nothing to plot

    // One y scale and (up to MAX_AXES) one axis per reading: see axes.js.
    const { series: lines, scales, axes } = chartOptions(series.columns);

    chart.width = chart.wantWidth || chart.plotBox.clientWidth || 320;
    chart.plot = new uPlot(
      {
        width: chart.width,
        height: PLOT_HEIGHT,
        scales,
        series: [{ label: "time" }, ...lines],
        axes,
        legend: { live: true },
        // The latest values while the pointer is elsewhere (uPlot would show "–").
        hooks: { setLegend: [legendLatest] },
        // Drag-to-zoom fights with live data (every setData rescales), so it is off.
        cursor: { drag: { x: false, y: false, setScale: false } },
      },
      [series.xs, ...series.ys],
      chart.plotBox,
    );
    // For the end-to-end test: what uPlot really drew (axis sizes, tick labels).
    chart.root.uplot = chart.plot;
  }
}
