// How a chart reads: its axes and its legend (used by charts.js).
//
// - Every reading has its own y scale (each line shows its own movement: latitude
//   next to longitude, volts next to percent), so every reading needs its own axis
//   to be read at all: the first MAX_AXES get one, alternating left and right and
//   drawn in their line's colour; a reading past those shows its scale's range in
//   its legend value instead.
// - A y axis is as wide as its widest tick label, measured in the font it is drawn
//   with (a fixed guess per character clipped "59.89525" to "9.89525"), and tick
//   labels carry exactly the decimals their step needs.
// - The legend shows each reading's latest value whenever the pointer is not on the
//   chart (uPlot would show "–" there), and the value under the pointer while it is.

import { formatValue } from "./dom.js";

export const PALETTE = ["#2563eb", "#e8590c", "#2f9e44", "#ae3ec9", "#d6336c", "#0c8599", "#74b816", "#f59f00"];
/** Readings with an axis of their own; beyond that the legend shows the range. */
export const MAX_AXES = 4;
/** The axes' font: set on every axis, so the labels are measured in what is drawn. */
const AXIS_FONT = '11px system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif';
const AXIS = {
  font: AXIS_FONT,
  stroke: "#5b6475",
  grid: { stroke: "#eceff3", width: 1 },
  ticks: { stroke: "#d5dae1", width: 1, size: 6 },
  gap: 4,
};
// Axis widths go up in steps of this, so a label gaining a digit now and then does
// not make the plot twitch sideways with every redraw.
const SIZE_STEP = 4;

// Tick formatters by number of decimals (Intl formatters are costly to create).
const tickFormats = new Map();

/** Decimals a tick step has: 0.0005 -> 4, 2.5 -> 1, 50 -> 0. */
function stepDecimals(step) {
  const text = String(Number(step.toPrecision(3)));
  const exp = text.indexOf("e-");
  if (exp >= 0) return Number(text.slice(exp + 2)) + (text.slice(0, exp).split(".")[1] || "").length;
  return (text.split(".")[1] || "").length;
}

/**
 * Y tick labels with exactly the decimals the tick step needs: uPlot's default
 * keeps at most three, which prints 59.865 twice for ticks 59.8645 and 59.865.
 */
function tickValues(self, splits, axisIndex, space, step) {
  const decimals = Math.min(20, stepDecimals(step));
  let format = tickFormats.get(decimals);
  if (!format) {
    format = new Intl.NumberFormat(undefined, { maximumFractionDigits: decimals, useGrouping: false });
    tickFormats.set(decimals, format);
  }
  return splits.map((v) => (v == null ? "" : format.format(v)));
}

// Time ticks as a 24-hour clock on one row. uPlot's default adds a second row with
// the date whose labels run into each other on narrow charts; a live chart spans
// minutes, and the date is not in doubt.
const clockSeconds = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
const clockMinutes = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hour12: false });

function timeTicks(self, splits, axisIndex, space, step) {
  const format = step >= 60 ? clockMinutes : clockSeconds;
  return splits.map((v) => (v == null ? "" : format.format(v * 1000)));
}

let measuring = null; // a 2D context kept for measuring label widths
/** Width in CSS pixels of `text` drawn in AXIS_FONT. */
export function labelWidth(text) {
  if (!measuring) {
    measuring = document.createElement("canvas").getContext("2d");
    measuring.font = AXIS_FONT;
  }
  return measuring.measureText(text).width;
}

/** uPlot `size` of a y axis: tick, gap and its widest label, so none is clipped. */
function axisSize(self, values, axisIndex) {
  const axis = self.axes[axisIndex];
  let widest = 0;
  for (const v of values || []) widest = Math.max(widest, labelWidth(String(v ?? "")));
  const size = axis.ticks.size + axis.gap + Math.max(widest, 16) + 2;
  return Math.ceil(size / SIZE_STEP) * SIZE_STEP;
}

/**
 * A y scale's range: uPlot's, except for a reading that has not changed (a flag
 * that stayed 0, a set point), which uPlot would stretch over 0…100.
 */
function yRange(u, min, max) {
  if (min == null) return [null, null];
  if (min === max) return [min - 1, max + 1];
  return uPlot.rangeNum(min, max, 0.1, true);
}

/**
 * uPlot's series, scales and axes options for `columns` (a series' [{ name, unit
 * }]): reading i is series i + 1 on scale `y${i}`.
 */
export function chartOptions(columns) {
  const scales = { x: { time: true } };
  columns.forEach((column, i) => (scales[`y${i}`] = { range: yRange }));
  const series = columns.map((column, i) => {
    const unit = column.unit ? " " + column.unit : "";
    const scale = `y${i}`;
    const withAxis = i < MAX_AXES;
    return {
      label: column.unit ? `${column.name} (${column.unit})` : column.name,
      scale,
      stroke: PALETTE[i % PALETTE.length],
      width: 1.5,
      spanGaps: true,
      points: { show: false },
      value(u, v) {
        if (v == null) return "–";
        if (withAxis) return formatValue(v) + unit;
        // No axis to read this line against: say what its height spans.
        const { min, max } = u.scales[scale];
        if (min == null || max == null) return formatValue(v) + unit;
        return `${formatValue(v)}${unit} (${formatValue(min)}…${formatValue(max)})`;
      },
    };
  });
  const axes = [{ ...AXIS, values: timeTicks, space: 70, size: 28 }];
  for (let i = 0; i < Math.min(MAX_AXES, columns.length); i++) {
    axes.push({
      ...AXIS,
      scale: `y${i}`,
      // Left, right, left, right: the first axis on each side sits next to the plot.
      side: i % 2 === 0 ? 3 : 1,
      stroke: PALETTE[i % PALETTE.length],
      size: axisSize,
      values: tickValues,
      grid: { ...AXIS.grid, show: i === 0 },
    });
  }
  return { series, scales, axes };
}

/**
 * Per uPlot series, the index of its newest value (null when it has none): the
 * legend's values while the pointer is away. A reading missing from the newest
 * messages shows its last known value.
 */
function latestIdxs(u) {
  const idxs = [u.data[0].length ? u.data[0].length - 1 : null];
  for (let s = 1; s < u.data.length; s++) {
    const ys = u.data[s];
    let i = ys.length - 1;
    while (i >= 0 && ys[i] == null) i--;
    idxs.push(i >= 0 ? i : null);
  }
  return idxs;
}

/**
 * uPlot `setLegend` hook: uPlot blanks the legend whenever the pointer is off the
 * chart (after every setData, and when the pointer leaves); show the latest values
 * instead. `false`: this setLegend does not fire the hook again.
 */
export function legendLatest(u) {
  if (u.cursor.idx == null) u.setLegend({ idxs: latestIdxs(u) }, false);
}
