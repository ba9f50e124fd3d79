// Category subscriptions: the subscribe form, the list of current subscriptions
// (as the hub confirms them), the datalist of known categories, and resending
// everything after a reconnect.
//
// Two views of the same thing are kept on purpose: `desired` is what the user asked
// for, with each pattern's filter, kept in sessionStorage and resent after every
// reconnect (the hub forgets a dashboard's subscriptions when it disconnects); the
// list on screen is the hub's `subscribed` reply, i.e. what is really in force.

import { byId, el, parseList, parseTags, showMessage, tagsText } from "./dom.js";
import { schedule } from "./frame.js";

const STORAGE_KEY = "telehub_subscriptions";

/** Whether a subscription pattern ("a.b", "a.*" or "*") covers a category, as the hub matches. */
export function patternMatches(pattern, category) {
  if (pattern === "*") return true;
  if (pattern.endsWith(".*")) {
    const prefix = pattern.slice(0, -2);
    return category === prefix || category.startsWith(prefix + ".");
  }
  return pattern === category;
}

function sameFilter(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

export class Subscriptions {
  /**
   * conn: the Connection (to send). onPrune(keep): drop series for which
   * keep(series) is false (their subscription was removed or its filter changed).
   */
  constructor({ conn, onPrune }) {
    this.conn = conn;
    this.onPrune = onPrune;
    this.form = byId("subscribe");
    this.pattern = byId("pattern");
    this.tagsInput = byId("filter-tags");
    this.devicesInput = byId("filter-devices");
    this.list = byId("subscriptions");
    this.empty = byId("subscriptions-empty");
    this.error = byId("subscribe-error");
    this.datalist = byId("known-categories");

    this.desired = this.load(); // pattern -> { deviceIds, tags }
    this.active = []; // patterns from the latest `subscribed`
    // The pattern of the latest Subscribe, to know which one an INVALID_SUBSCRIPTION refers to.
    this.lastSent = null;
    this.known = new Set(); // exact categories seen in telemetry or fleet stats
    this.renderDatalist = this.renderDatalist.bind(this);

    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
  }

  load() {
    try {
      return new Map(JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "[]"));
    } catch {
      return new Map();
    }
  }

  save() {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify([...this.desired]));
  }

  /** Adds `pattern` (no filter) when nothing is subscribed: sent once connected. */
  subscribeIfNone(pattern) {
    if (this.desired.size > 0) return;
    this.desired.set(pattern, { deviceIds: [], tags: {} });
    this.save();
  }

  submit() {
    const pattern = this.pattern.value.trim();
    const parsed = parseTags(this.tagsInput.value);
    if (!pattern) return showMessage(this.error, "enter a category pattern, e.g. env.* or *");
    if (parsed.error) return showMessage(this.error, `tags: ${parsed.error}`);
    showMessage(this.error, "");
    const filter = { deviceIds: parseList(this.devicesInput.value), tags: parsed.tags };
    const previous = this.desired.get(pattern);
    this.desired.set(pattern, filter);
    this.save();
    if (previous && !sameFilter(previous, filter)) {
      // The hub replaces the pattern's filter and replays History for the new one;
      // series only this pattern brought in may no longer match, so start afresh.
      this.onPrune((series) => !patternMatches(pattern, series.category) || this.coveredByOthers(pattern, series.category));
    }
    this.send(pattern, filter);
    if (!this.conn.isOpen) showMessage(this.error, "not connected: the subscription is sent when the hub is back");
  }

  send(pattern, filter) {
    const subscribe = { categories: [pattern] };
    if (filter.deviceIds.length) subscribe.deviceIds = filter.deviceIds;
    if (Object.keys(filter.tags).length) subscribe.tags = filter.tags;
    this.lastSent = pattern;
    this.conn.send({ subscribe });
  }

  unsubscribe(pattern) {
    this.desired.delete(pattern);
    this.save();
    this.conn.send({ unsubscribe: { categories: [pattern] } });
    this.onPrune((series) => this.coveredByOthers(null, series.category));
  }

  coveredByOthers(except, category) {
    for (const pattern of this.desired.keys()) {
      if (pattern !== except && patternMatches(pattern, category)) return true;
    }
    return false;
  }

  /** After (re)connecting: the hub starts with no subscriptions, so send them all. */
  resend() {
    for (const [pattern, filter] of this.desired) this.send(pattern, filter);
  }

  /** The hub's `subscribed`: the complete list now in force. */
  onSubscribed(subscribed) {
    this.active = subscribed.categories || [];
    const items = this.active.map((pattern) => {
      const filter = this.desired.get(pattern);
      const parts = [];
      if (filter?.deviceIds.length) parts.push(`devices ${filter.deviceIds.join(", ")}`);
      if (filter && Object.keys(filter.tags).length) parts.push(`tags ${tagsText(filter.tags)}`);
      return el(
        "li",
        { attrs: { "data-pattern": pattern } },
        el("code", { class: "pattern", text: pattern }),
        el("span", { class: "filter", text: parts.join(" · ") || "all devices" }),
        el("button", {
          type: "button",
          class: "unsubscribe ghost small",
          text: "Unsubscribe",
          title: `stop receiving ${pattern}`,
          on: { click: () => this.unsubscribe(pattern) },
        }),
      );
    });
    this.list.replaceChildren(...items);
    this.empty.hidden = items.length > 0;
  }

  /** An INVALID_SUBSCRIPTION error: the last pattern sent was refused. */
  onError(error) {
    showMessage(this.error, error.message || error.code);
    if (this.lastSent !== null && !this.active.includes(this.lastSent)) {
      this.desired.delete(this.lastSent);
      this.save();
    }
  }

  /** A category seen in telemetry or fleet stats, offered in the pattern picker. */
  addKnown(category) {
    if (!category || this.known.has(category)) return;
    this.known.add(category);
    schedule(this.renderDatalist);
  }

  renderDatalist() {
    // Every exact category, every dotted prefix as a wildcard, and "*".
    const values = new Set(["*"]);
    for (const category of this.known) {
      values.add(category);
      const parts = category.split(".");
      for (let i = 1; i < parts.length; i++) values.add(parts.slice(0, i).join(".") + ".*");
    }
    const sorted = [...values].sort((a, b) => (a === "*" ? -1 : b === "*" ? 1 : a.localeCompare(b)));
    this.datalist.replaceChildren(...sorted.map((value) => el("option", { value })));
  }

  /** Logout: forget everything (the next user starts with no subscriptions). */
  clear() {
    this.desired.clear();
    sessionStorage.removeItem(STORAGE_KEY);
    this.known.clear();
    this.onSubscribed({ categories: [] });
    this.renderDatalist();
    showMessage(this.error, "");
  }
}

