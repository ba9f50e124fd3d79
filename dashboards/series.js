// In-memory telemetry buffers, one per series (device, category).
//
// This is the only thing a Telemetry or History message touches: it appends to
// plain arrays and marks the series dirty; charts.js and latest.js draw the dirty
// ones once per frame. Everything is capped so memory stays flat however long the
// page runs, however hidden the tab is, and whatever devices choose to send: points
// per series, numeric columns per series, and series in all.

import { naturalCompare } from "./dom.js";

/** Points kept per series (and so drawn per chart). */
export const MAX_POINTS = 600;
/**
 * Series kept in all. Device ids and categories are chosen by devices, so a fleet
 * that churns through ids (or one device inventing categories) would otherwise grow
 * the page without bound; past the cap the least recently updated series goes.
 */
export const MAX_SERIES = 2000;
/**
 * Numeric readings charted per series. Reading names are chosen by devices too; a
 * device sending a new name in every message would otherwise add a column (and a
 * chart line) per message. Further names are ignored (the latest table still shows
 * them as text).
 */
export const MAX_COLUMNS = 16;

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
    // Set (once) when a reading name was ignored because of MAX_COLUMNS; the chart
    // says so, since the missing line would otherwise look like missing data.
    this.columnsCapped = false;
  }
}

/** Series order on screen: by device (demo-2 before demo-10), then category. */
export function compareSeries(a, b) {
  return naturalCompare(a.deviceId, b.deviceId) || naturalCompare(a.category, b.category);
}

/**
 * The first `limit` series in screen order among those for which keep(series) is
 * true, and how many matched in all. A partial selection rather than a sort: with
 * thousands of series and a few dozen shown, almost every series costs one
 * comparison with the last one kept.
 */
export function firstSeries(seriesList, limit, keep = () => true) {
  const shown = [];
  let matching = 0;
  for (const series of seriesList) {
    if (!keep(series)) continue;
    matching++;
    if (limit <= 0) continue;
    if (shown.length === limit && compareSeries(series, shown[limit - 1]) >= 0) continue;
    // Binary search for its place among those kept so far.
    let lo = 0;
    let hi = shown.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (compareSeries(shown[mid], series) <= 0) lo = mid + 1;
      else hi = mid;
    }
    shown.splice(lo, 0, series);
    if (shown.length > limit) shown.pop();
  }
  return { shown, matching };
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
    // key -> Series, least recently updated first: an accepted message moves its
    // series to the end, so eviction takes the first entry.
    this.series = new Map();
    // The newest receivedMs held (the hub's clock): what "stale" is measured from.
    this.newestReceivedMs = 0;
  }

  get size() {
    return this.series.size;
  }

  /**
   * Adds one Telemetry. Returns { series, created, evicted } or null when it is not
   * newer than what the series already holds (History and live overlap by design).
   * `evicted` is null or the series dropped to make room (MAX_SERIES): the views
   * must forget them.
   */
  add(telemetry) {
    const deviceId = telemetry.deviceId || "";
    const category = telemetry.category || "";
    const key = seriesKey(deviceId, category);
    let series = this.series.get(key);
    const created = !series;
    if (!series) series = new Series(deviceId, category);
    // uint64 fields arrive as strings; epoch milliseconds and sequence numbers are
    // far below 2^53, so Number is exact.
    const receivedMs = Number(telemetry.receivedMs || 0);
    const seq = Number(telemetry.seq || 0);
    if (receivedMs < series.lastReceivedMs || (receivedMs === series.lastReceivedMs && seq <= series.lastSeq)) {
      return null;
    }
    if (receivedMs > this.newestReceivedMs) this.newestReceivedMs = receivedMs;
    // Most recently updated last (re-inserting moves it to the Map's end).
    if (!created) this.series.delete(key);
    this.series.set(key, series);
    let evicted = null;
    while (this.series.size > MAX_SERIES) {
      const [oldestKey, oldest] = this.series.entries().next().value;
      this.series.delete(oldestKey);
      (evicted ||= []).push(oldest);
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
        // Ignored names are not remembered (that set would grow as well).
        if (series.columns.length >= MAX_COLUMNS) {
          if (!series.columnsCapped) {
            series.columnsCapped = true;
            series.layout++; // the chart rebuilds and shows its note
          }
          continue;
        }
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
    return { series, created, evicted };
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
