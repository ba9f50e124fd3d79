// Category subscriptions: the subscribe form, the list of current subscriptions
// (as the hub confirms them), the datalist of known categories, and resending
// everything after a reconnect or when the delivery mode changes (delivery.js:
// every Subscribe carries the mode in force).
//
// Two views of the same thing are kept on purpose: `desired` is what the user asked
// for, with each pattern's filter, kept in sessionStorage and resent after every
// reconnect (the hub forgets a dashboard's subscriptions when it disconnects); the
// list on screen is the hub's `subscribed` reply, i.e. what is really in force.
//
// The hub answers each Subscribe with exactly one `subscribed` or one `error`, and
// each Unsubscribe with one `subscribed`, in the order they were sent. `inFlight`
// keeps what was sent in that order, so each reply is matched with its request:
// an INVALID_SUBSCRIPTION names no pattern, and series are pruned only once the
// hub confirms (until then its telemetry is still arriving and would recreate them;
// wants() drops that meanwhile). A Subscribe the hub's pacing held back
// (RATE_LIMITED: nothing applied) is answered by that error instead, and sent again.

import { byId, el, num, parseList, parseTags, showMessage, tagsText } from "./dom.js";
import { scheduleAtMost } from "./frame.js";

const STORAGE_KEY = "telehub_subscriptions";
// Categories offered in the picker: the most recently seen ones. Devices choose
// categories, so without a cap one inventing them would grow the page (and a
// datalist nobody can scroll) without bound.
const MAX_KNOWN = 500;
// The picker is rebuilt (and re-sorted) at most this often.
const DATALIST_MS = 1000;

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
   * keep(series) is false (their subscription was removed or its filter changed,
   * as the hub has confirmed). deliveryFields(): the delivery mode's Subscribe
   * fields (see delivery.js), added to every Subscribe.
   */
  constructor({ conn, onPrune, deliveryFields }) {
    this.conn = conn;
    this.onPrune = onPrune;
    this.deliveryFields = deliveryFields;
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
    // Subscribes and Unsubscribes sent on this connection and not answered yet,
    // oldest first: { kind, pattern, filter, previous, prune } (see send()).
    this.inFlight = [];
    // Subscribes the hub held back (RATE_LIMITED), waiting to be sent again.
    this.held = new Set();
    // Exact categories seen in telemetry or fleet stats, least recently seen first.
    this.known = new Set();
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
    // A changed filter: the hub replaces the pattern's filter and replays History
    // for the new one; series only this pattern brought in may no longer match, so
    // once the hub has switched, start afresh.
    const prune =
      previous && !sameFilter(previous, filter)
        ? () => this.onPrune((series) => !patternMatches(pattern, series.category) || this.coveredByOthers(pattern, series.category))
        : null;
    // What to go back to if the hub refuses: the filter in force, if there is one.
    const inForce = this.active.includes(pattern) ? previous : undefined;
    if (!this.send(pattern, filter, inForce, prune)) {
      prune?.(); // no reply will come; the resend after reconnecting replays History
      showMessage(this.error, "not connected: the subscription is sent when the hub is back");
    }
  }

  /**
   * Sends one Subscribe and remembers it until the hub answers. `previous`: the
   * filter to restore if it is refused (undefined: forget the pattern); `prune`:
   * what to drop once the hub confirms. False when not connected (nothing sent).
   */
  send(pattern, filter, previous = undefined, prune = null) {
    const subscribe = { categories: [pattern] };
    if (filter.deviceIds.length) subscribe.deviceIds = filter.deviceIds;
    if (Object.keys(filter.tags).length) subscribe.tags = filter.tags;
    Object.assign(subscribe, this.deliveryFields());
    if (!this.conn.send({ subscribe })) return false;
    this.inFlight.push({ kind: "subscribe", pattern, filter, previous, prune });
    return true;
  }

  unsubscribe(pattern) {
    this.desired.delete(pattern);
    this.save();
    // From now on wants() drops its telemetry; its series stay on screen until the
    // hub's `subscribed` confirms (messages already on their way would otherwise
    // recreate them right after the prune).
    const prune = () => this.onPrune((series) => this.coveredByOthers(null, series.category));
    if (this.conn.send({ unsubscribe: { categories: [pattern] } })) {
      this.inFlight.push({ kind: "unsubscribe", pattern, prune });
    } else {
      prune(); // not connected: nothing is in force on the hub anyway
    }
  }

  /**
   * Whether telemetry of `category` is still wanted: it matches a pattern the user
   * has not removed. Telemetry in flight when a pattern was removed is dropped here.
   */
  wants(category) {
    for (const pattern of this.desired.keys()) if (patternMatches(pattern, category)) return true;
    return false;
  }

  coveredByOthers(except, category) {
    for (const pattern of this.desired.keys()) {
      if (pattern !== except && patternMatches(pattern, category)) return true;
    }
    return false;
  }

  /** After (re)connecting: the hub starts with no subscriptions, so send them all. */
  resend() {
    // Requests of the previous connection will never be answered; what they would
    // have pruned goes now (the hub of this connection has none of it).
    const unanswered = [...this.inFlight, ...this.held];
    this.inFlight = [];
    this.held.clear();
    this.active = [];
    for (const request of unanswered) request.prune?.();
    for (const [pattern, filter] of this.desired) this.send(pattern, filter);
  }

  /**
   * The delivery mode changed: every subscription is sent again with it, with its
   * filter unchanged (the hub replaces the pattern's mode in place; the History it
   * replays again is dropped by the series' de-duplication). When not connected
   * nothing is sent: the resend after reconnecting carries the new mode.
   */
  redeliver() {
    for (const [pattern, filter] of this.desired) {
      this.send(pattern, filter, this.active.includes(pattern) ? filter : undefined);
    }
  }

  /** The hub's `subscribed`: the complete list now in force, answering our oldest request. */
  onSubscribed(subscribed) {
    const request = this.inFlight.shift();
    this.active = subscribed.categories || [];
    this.render();
    request?.prune?.();
  }

  render() {
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

  /** An INVALID_SUBSCRIPTION error: the hub refused our oldest unanswered Subscribe. */
  onError(error) {
    const request = this.inFlight.shift();
    const why = error.message || error.code;
    if (request?.kind !== "subscribe") {
      showMessage(this.error, why); // not ours to attribute (cannot happen with this hub)
      return;
    }
    showMessage(this.error, `${request.pattern}: ${why}`);
    // Unless the user has asked again meanwhile, go back to what the hub has: the
    // previous filter, or no such subscription (so it is not resent forever).
    if (this.desired.get(request.pattern) !== request.filter) return;
    if (request.previous) {
      this.desired.set(request.pattern, request.previous);
    } else {
      this.desired.delete(request.pattern);
      this.onPrune((series) => this.coveredByOthers(null, series.category));
    }
    this.save();
  }

  /**
   * A RATE_LIMITED error: the hub paces Subscribes (each replays History) and
   * applied nothing of our oldest unanswered one. It goes again once allowed, with
   * the pattern's filter and mode as they are then (a later Subscribe of the same
   * pattern may have been sent meanwhile: the last one the hub applies must be the
   * current one). False when it was not about a Subscribe.
   */
  onRateLimited(error) {
    if (this.inFlight[0]?.kind !== "subscribe") return false;
    const request = this.inFlight.shift();
    this.held.add(request);
    setTimeout(() => {
      if (!this.held.delete(request)) return; // a reconnect resent everything meanwhile
      const filter = this.desired.get(request.pattern);
      // Unsubscribed meanwhile, or not connected (the resend after reconnecting
      // sends it): no reply will come, so what it would have pruned goes now.
      if (!filter || !this.send(request.pattern, filter, request.previous, request.prune)) request.prune?.();
    }, Math.max(100, num(error.retryAfterMs)));
    return true;
  }

  /** A category seen in telemetry or fleet stats, offered in the pattern picker. */
  addKnown(category) {
    if (!category) return;
    if (this.known.has(category)) {
      // Seen again: move it to the recent end, so the cap evicts stale ones first.
      this.known.delete(category);
      this.known.add(category);
      return;
    }
    this.known.add(category);
    if (this.known.size > MAX_KNOWN) this.known.delete(this.known.values().next().value);
    scheduleAtMost(this.renderDatalist, DATALIST_MS);
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
    this.inFlight = [];
    this.held.clear();
    this.known.clear();
    this.active = [];
    this.render();
    this.renderDatalist();
    showMessage(this.error, "");
  }
}

