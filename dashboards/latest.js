// The "latest telemetry" table: one row per series with its newest readings as
// text (text readings verbatim), updated at most 4 times a second and only for the
// series that changed; at most MAX_ROWS rows so a large fleet cannot bog it down.

import { byId, clockTime, el, formatValue, setText, showMessage } from "./dom.js";
import { scheduleAtMost } from "./frame.js";
import { firstSeries } from "./series.js";

export const MAX_ROWS = 500;
// Readable text changes at most four times a second; a 500-row table relaid out
// 60 times a second would cost more than every chart together.
const REFRESH_MS = 250;

/** One reading as text: "temperature 21.5 Cel", "status <text as sent>", "blob (12 bytes)". */
export function readingText(reading) {
  let value;
  if ("number" in reading) value = typeof reading.number === "number" ? formatValue(reading.number) : String(reading.number);
  else if ("integer" in reading) value = String(reading.integer);
  else if ("flag" in reading) value = reading.flag ? "true" : "false";
  else if ("text" in reading) value = reading.text;
  else if ("raw" in reading) value = `(${Math.floor((String(reading.raw).replace(/=+$/, "").length * 3) / 4)} bytes)`;
  else value = "–";
  return [reading.name || "", value, reading.unit || ""].filter(Boolean).join(" ");
}

export class LatestTable {
  constructor({ store }) {
    this.store = store;
    this.tbody = byId("latest").tBodies[0];
    this.note = byId("latest-note");
    this.rows = new Map(); // series key -> { tr, cells }
    this.dirty = new Set();
    this.orderDirty = false;
    this.flush = this.flush.bind(this);
  }

  touched(series, created) {
    if (created) this.orderDirty = true;
    this.dirty.add(series.key);
    scheduleAtMost(this.flush, REFRESH_MS);
  }

  /** Series were dropped from the store: their rows go at the next refresh. */
  removed(seriesList) {
    if (!seriesList.length) return;
    for (const series of seriesList) this.dirty.delete(series.key);
    this.orderDirty = true;
    scheduleAtMost(this.flush, REFRESH_MS);
  }

  clear() {
    this.rows.clear();
    this.dirty.clear();
    this.tbody.replaceChildren();
    showMessage(this.note, "");
  }

  flush() {
    if (this.orderDirty) this.reorder();
    for (const key of this.dirty) {
      const row = this.rows.get(key);
      const series = this.store.series.get(key);
      if (row && series) this.fill(row, series);
    }
    this.dirty.clear();
  }

  reorder() {
    this.orderDirty = false;
    const { shown, matching: total } = firstSeries(this.store.series.values(), MAX_ROWS);
    const keep = new Set(shown.map((s) => s.key));
    for (const key of [...this.rows.keys()]) if (!keep.has(key)) this.rows.delete(key);
    const trs = shown.map((series) => {
      let row = this.rows.get(series.key);
      if (!row) {
        row = this.create(series);
        this.rows.set(series.key, row);
        this.fill(row, series);
      }
      return row.tr;
    });
    this.tbody.replaceChildren(...trs);
    showMessage(this.note, total > shown.length ? `showing ${shown.length} of ${total} series` : "");
  }

  create(series) {
    const cells = {
      device: el("td", { class: "device", text: series.deviceId }),
      category: el("td", { class: "category", text: series.category }),
      seq: el("td", { class: "seq num" }),
      received: el("td", { class: "received" }),
      readings: el("td", { class: "readings" }),
    };
    const tr = el(
      "tr",
      { attrs: { "data-device": series.deviceId, "data-category": series.category } },
      ...Object.values(cells),
    );
    return { tr, cells };
  }

  fill(row, series) {
    const t = series.latest;
    if (!t) return;
    setText(row.cells.seq, t.seq || "0");
    setText(row.cells.received, clockTime(Number(t.receivedMs || 0)));
    setText(row.cells.readings, (t.readings || []).map(readingText).join("  ·  "));
  }
}
