// In-memory telemetry buffers, one per series (device, category).
//
// This is the only thing a Telemetry or History message touches: it appends to
// plain arrays and marks the series dirty; charts.js and latest.js draw the dirty
// ones once per frame. Buffers are capped so memory stays flat however long the
// page runs or however hidden the tab is.

/** Points kept per series (and so drawn per chart). */
export const MAX_POINTS = 600;

export class Series {
  constructor(deviceId, category) {
    this.key = seriesKey(deviceId, category);
    this.deviceId = deviceId;
    this.category = category;
    // One column per numeric reading name, in order of first appearance.
    this.columns = []; // [{ name, unit }]
    this.columnIndex = new Map();
    // Bumped whenever a column is added, so a chart knows to rebuild its lines.
    this.layout = 0;
    // uPlot's data layout: xs (seconds) and one array of y values per column.
    this.xs = [];
    this.ys = [];
    // Newest message held, for de-duplication against History replays.
    this.lastReceivedMs = -1;
    this.lastSeq = -1;
    this.latest = null; // the newest Telemetry itself, for the latest-values table
    this.messages = 0;
  }
}

export function seriesKey(deviceId, category) {
  return deviceId + "\u0000" + category;
}

/**
 * A reading's value for a chart: number, integer and flag (as 0/1) are numeric;
 * NaN and ±Infinity (sent as strings in the JSON mapping) become gaps.
 * Returns undefined for readings that are not numeric (text, raw).
 */
export function numericValue(reading) {
  let value;
  if ("number" in reading) value = Number(reading.number);
  else if ("integer" in reading) value = Number(reading.integer);
  else if ("flag" in reading) value = reading.flag ? 1 : 0;
  else return undefined;
  return Number.isFinite(value) ? value : null;
}

export class SeriesStore {
  constructor() {
    this.series = new Map(); // key -> Series
  }

  get size() {
    return this.series.size;
  }

  /**
   * Adds one Telemetry. Returns { series, created } or null when it is not newer
   * than what the series already holds (History and live overlap by design).
   */
  add(telemetry) {
    const deviceId = telemetry.deviceId || "";
    const category = telemetry.category || "";
    const key = seriesKey(deviceId, category);
    let series = this.series.get(key);
    const created = !series;
    if (!series) {
      series = new Series(deviceId, category);
      this.series.set(key, series);
    }
    // uint64 fields arrive as strings; epoch milliseconds and sequence numbers are
    // far below 2^53, so Number is exact.
    const receivedMs = Number(telemetry.receivedMs || 0);
    const seq = Number(telemetry.seq || 0);
    if (receivedMs < series.lastReceivedMs || (receivedMs === series.lastReceivedMs && seq <= series.lastSeq)) {
      return null;
    }
    series.lastReceivedMs = receivedMs;
    series.lastSeq = seq;
    series.latest = telemetry;
    series.messages++;

    const row = new Array(series.columns.length).fill(null);
    for (const reading of telemetry.readings || []) {
      const value = numericValue(reading);
      if (value === undefined) continue;
      const name = reading.name || "";
      let index = series.columnIndex.get(name);
      if (index === undefined) {
        index = series.columns.length;
        series.columns.push({ name, unit: reading.unit || "" });
        series.columnIndex.set(name, index);
        // Earlier points had no such reading: gaps, not zeros.
        series.ys.push(new Array(series.xs.length).fill(null));
        series.layout++;
        row.push(null);
      }
      row[index] = value;
    }
    // x is when the hub accepted it: one clock for every device, and increasing
    // within a series because of the check above (uPlot needs sorted x).
    series.xs.push((receivedMs || Number(telemetry.timestampMs || 0)) / 1000);
    for (let i = 0; i < row.length; i++) series.ys[i].push(row[i]);
    if (series.xs.length > MAX_POINTS) {
      series.xs.shift();
      for (const ys of series.ys) ys.shift();
    }
    return { series, created };
  }

  /** Removes every series for which keep(series) is false; returns the removed ones. */
  retain(keep) {
    const removed = [];
    for (const [key, series] of this.series) {
      if (!keep(series)) {
        this.series.delete(key);
        removed.push(series);
      }
    }
    return removed;
  }

  clear() {
    this.series.clear();
  }
}
