// DOM and formatting helpers shared by the dashboard's modules.
//
// Everything that comes from the hub or from devices (ids, tags, categories,
// reading names, units, text readings) is untrusted: it only ever reaches the page
// through textContent, attributes set one by one, or form control values. Nothing
// here parses HTML, so a device called "<script>" is shown as exactly that.

/** The element with this id (the page's fixed skeleton; missing ids are a bug). */
export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`index.html has no #${id}`);
  return node;
}

/**
 * Creates an element. `props`: `class`, `text` (textContent), `attrs` (set with
 * setAttribute; use it for data-* hooks), `on` (event listeners); anything else is
 * assigned as a property (e.g. `type`, `value`, `title`). Children are nodes or
 * strings (strings become text nodes, never markup).
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "attrs") for (const [name, v] of Object.entries(value)) node.setAttribute(name, String(v));
    else if (key === "on") for (const [type, fn] of Object.entries(value)) node.addEventListener(type, fn);
    else node[key] = value;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

/** Sets textContent only when it changed: cheap to call on every frame. */
export function setText(node, value) {
  const text = String(value);
  if (node.textContent !== text) node.textContent = text;
}

/** Sets an attribute only when it changed (avoids needless style recalculation). */
export function setAttr(node, name, value) {
  const text = String(value);
  if (node.getAttribute(name) !== text) node.setAttribute(name, text);
}

/** Shows `message` in a hint/error paragraph, or hides it when empty. */
export function showMessage(node, message) {
  setText(node, message || "");
  node.hidden = !message;
}

/** Collator for ids like demo-2 and demo-10: numeric parts compare as numbers. */
export const naturalCompare = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" }).compare;

/** "k=v, k2=v2" -> { tags: {k: "v", k2: "v2"} } or { error }. Empty input: no tags. */
export function parseTags(input) {
  const tags = {};
  for (const part of input.split(",").map((p) => p.trim()).filter(Boolean)) {
    const eq = part.indexOf("=");
    if (eq <= 0) return { error: `"${part}" is not key=value` };
    tags[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
  }
  return { tags };
}

/** "a, b c" -> ["a", "b", "c"]: device ids never contain commas or spaces. */
export function parseList(input) {
  return input.split(/[\s,]+/).filter(Boolean);
}

/**
 * Tags sorted by key: the hub's JSON maps come in no particular order, and a row
 * whose tags reshuffle every second would be both costly and hard to read.
 */
export function sortedTags(tags) {
  return Object.entries(tags || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** {model: "x", fleet: "north"} -> "fleet=north model=x". */
export function tagsText(tags) {
  return sortedTags(tags).map(([k, v]) => `${k}=${v}`).join(" ");
}

/** The proto3 JSON mapping sends 64-bit integers as strings and omits zeros. */
export function num(value) {
  if (value === undefined || value === null || value === "") return 0;
  const n = Number(value);
  return Number.isFinite(n) ? n : 0;
}

/** A duration as "12 s", "4 min", "3 h", "2 d" (rounded down). */
export function durationText(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

/** "just now", "12 s ago", "4 min ago"…; "never" for 0. */
export function relativeTime(ms, now = Date.now()) {
  if (!ms) return "never";
  if (now - ms < 2000) return "just now";
  return `${durationText(now - ms)} ago`;
}

/** Local wall-clock time of an epoch-ms value, e.g. "14:03:07". */
export function clockTime(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "–";
}

/** Short display of a reading value: numbers rounded to 4 decimal places. */
export function formatValue(value) {
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  return String(Math.round(value * 10000) / 10000);
}
