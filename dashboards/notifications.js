// The operator's notifications panel: compose and send a notification over the
// WebSocket, show the hub's answer, and follow every campaign's delivery.
//
// Counts come live from NotificationProgress; the list is seeded from the REST API
// on connect so it is not empty after a reload. Which devices are still missing
// (the stragglers) is only available over REST, so each open campaign on screen is
// polled every STRAGGLER_POLL_MS, until it completes (plus once more for the final
// list), is gone from the hub (404: pruned), or is past its expiry. The REST answer
// carries the counts and `complete` too, and they are used: the hub only reports
// progress of campaigns still open when the page (re)connects, so a campaign that
// completed meanwhile would otherwise look open (and be polled) forever.

import { byId, clockTime, durationText, el, num, parseList, parseTags, relativeTime, setAttr, setText, showMessage, tagsText } from "./dom.js";
import { schedule } from "./frame.js";

// Campaigns kept in memory (completed ones are dropped first), and shown.
const MAX_KEPT = 50;
const MAX_SHOWN = 30;
const STRAGGLER_POLL_MS = 2000;
const STRAGGLER_LIMIT = 50;
// After expiresMs, one more fetch this much later (the hub expires the remaining
// deliveries then), and no more.
const EXPIRY_GRACE_MS = 2000;

/** How far a campaign's counts are: they only grow towards completion. */
function progressOf(c) {
  return c.complete ? Infinity : c.delivered + c.acknowledged + c.expired;
}

/** A REST summary (GET /v1/notifications and /v1/notifications/{id}) as campaign fields. */
function restFields(n) {
  const counts = n.counts || {};
  return {
    severity: String(n.severity || "info").toUpperCase(),
    title: n.title || "",
    targetsText: targetsText(n.targets),
    targets: num(counts.total),
    pending: num(counts.pending),
    delivered: num(counts.delivered),
    acknowledged: num(counts.acknowledged),
    expired: num(counts.expired),
    createdMs: num(n.created_ms),
    expiresMs: num(n.expires_ms),
    complete: Boolean(n.complete),
  };
}

/** An HTTP error with its status, so a 404 can be told from a hub that is down. */
class HttpError extends Error {
  constructor(path, status) {
    super(`${path}: HTTP ${status}`);
    this.status = status;
  }
}

/** integer 0..100: acknowledged/targets for CRITICAL, (delivered+acknowledged)/targets otherwise. */
export function percentDone(c) {
  if (!c.targets) return c.complete ? 100 : 0;
  const done = c.severity === "CRITICAL" ? c.acknowledged : c.delivered + c.acknowledged;
  return Math.max(0, Math.min(100, Math.floor((done * 100) / c.targets)));
}

/** A human description of a Targets selector (WebSocket or REST shape). */
function targetsText(targets) {
  if (!targets) return "";
  if (targets.all) return "all devices";
  const ids = targets.deviceIds || targets.device_ids;
  if (ids?.length) return `devices ${ids.join(", ")}`;
  if (targets.tags && Object.keys(targets.tags).length) return `tags ${tagsText(targets.tags)}`;
  return "";
}

let requestCounter = 0;
function newRequestId() {
  requestCounter++;
  const random = Math.floor(Math.random() * 0x100000000).toString(16).padStart(8, "0");
  return `r${Date.now().toString(36)}-${requestCounter}-${random}`;
}

export class Notifications {
  constructor({ conn }) {
    this.conn = conn;
    this.section = byId("notifications");
    this.form = byId("notify");
    this.target = byId("notify-target");
    this.ids = byId("notify-ids");
    this.tags = byId("notify-tags");
    this.severity = byId("notify-severity");
    this.title = byId("notify-title");
    this.body = byId("notify-body");
    this.ttl = byId("notify-ttl");
    this.result = byId("notify-result");
    this.list = byId("campaigns");
    this.empty = byId("campaigns-empty");
    this.operator = false;
    this.campaigns = new Map(); // id -> campaign (counts + its DOM)
    this.requests = new Map(); // requestId -> what was asked, until the hub answers
    this.render = this.render.bind(this);

    // Both selector inputs stay visible and editable (a hidden field cannot be
    // typed into, by a person or a test); typing into one selects its target.
    this.target.addEventListener("change", () => this.showTargetFields());
    this.tags.addEventListener("input", () => this.selectTarget("tags"));
    this.ids.addEventListener("input", () => this.selectTarget("ids"));
    this.showTargetFields();
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    setInterval(() => this.pollStragglers(), STRAGGLER_POLL_MS);
  }

  selectTarget(value) {
    this.target.value = value;
    this.showTargetFields();
  }

  /** Dims the selector input the chosen target does not use. */
  showTargetFields() {
    byId("notify-tags-field").classList.toggle("unused", this.target.value !== "tags");
    byId("notify-ids-field").classList.toggle("unused", this.target.value !== "ids");
  }

  /** After the hub's welcome: only operators see the panel and watch campaigns. */
  welcomed(role) {
    // Requests sent on an earlier connection will never be answered.
    if (this.requests.size) {
      this.requests.clear();
      this.setResult("error", "the connection dropped before the hub answered; check the campaigns, then send again if needed");
    }
    this.operator = role === "operator";
    this.section.hidden = !this.operator;
    if (!this.operator) return;
    this.conn.send({ watchNotifications: { watch: true } });
    this.loadRecent();
  }

  clear() {
    this.operator = false;
    this.section.hidden = true;
    this.campaigns.clear();
    this.requests.clear();
    this.list.replaceChildren();
    this.empty.hidden = false;
    showMessage(this.result, "");
  }

  setResult(state, text) {
    setAttr(this.result, "data-state", state);
    showMessage(this.result, text);
  }

  submit() {
    let targets;
    if (this.target.value === "all") targets = { all: true };
    else if (this.target.value === "tags") {
      const parsed = parseTags(this.tags.value);
      if (parsed.error || !Object.keys(parsed.tags).length) {
        return this.setResult("error", parsed.error ? `tags: ${parsed.error}` : "enter at least one tag, e.g. fleet=north");
      }
      targets = { tags: parsed.tags };
    } else {
      const ids = parseList(this.ids.value);
      if (!ids.length) return this.setResult("error", "enter at least one device id");
      targets = { deviceIds: ids };
    }
    const ttl = Math.floor(Number(this.ttl.value));
    const request = {
      requestId: newRequestId(),
      targets,
      severity: this.severity.value,
      title: this.title.value.trim(),
      body: this.body.value,
    };
    if (ttl > 0) request.ttlSeconds = ttl;
    if (!this.conn.send({ notificationRequest: request })) {
      return this.setResult("error", "not connected to the hub; try again when connected");
    }
    this.requests.set(request.requestId, request);
    setAttr(this.result, "data-state", "sending");
    showMessage(this.result, "sending…");
  }

  onAccepted(accepted) {
    const request = this.requests.get(accepted.requestId);
    if (!request) return; // another tab of the same operator; progress will show it
    this.requests.delete(accepted.requestId);
    const targets = num(accepted.targets);
    this.setResult("accepted", `accepted: ${accepted.id} for ${targets} device${targets === 1 ? "" : "s"}`);
    if (!this.campaigns.has(accepted.id)) {
      this.add(accepted.id, {
        severity: request.severity,
        title: request.title,
        targets,
        pending: targets,
        createdMs: Date.now(),
        expiresMs: num(accepted.expiresMs),
      });
    }
    this.campaigns.get(accepted.id).targetsText ||= targetsText(request.targets);
    schedule(this.render);
  }

  /** An Error; true if it answered one of our requests. */
  onError(error) {
    if (!error.requestId || !this.requests.has(error.requestId)) return false;
    this.requests.delete(error.requestId);
    this.setResult("error", `refused (${error.code || "ERROR"}): ${error.message || ""}`);
    return true;
  }

  onProgress(p) {
    this.add(p.id, {
      severity: p.severity || "INFO",
      title: p.title || "",
      targets: num(p.targets),
      pending: num(p.pending),
      delivered: num(p.delivered),
      acknowledged: num(p.acknowledged),
      expired: num(p.expired),
      createdMs: num(p.createdMs),
      expiresMs: num(p.expiresMs),
      complete: Boolean(p.complete),
    });
    schedule(this.render);
  }

  /** Creates or updates a campaign and keeps the list within MAX_KEPT. */
  add(id, fields) {
    const campaign = this.upsert(id, fields);
    this.prune();
    return campaign;
  }

  upsert(id, fields) {
    let campaign = this.campaigns.get(id);
    if (!campaign) {
      campaign = {
        id, severity: "INFO", title: "", targetsText: "", targets: 0, pending: 0, delivered: 0,
        acknowledged: 0, expired: 0, createdMs: 0, expiresMs: 0, complete: false,
        // gone: the hub no longer has it (404); expiredFetched: fetched after expiry.
        view: null, stragglers: null, fetching: false, finalFetched: false, gone: false, expiredFetched: false,
      };
      this.campaigns.set(id, campaign);
    }
    Object.assign(campaign, fields);
    return campaign;
  }

  /**
   * Keeps the MAX_KEPT newest campaigns, dropping the oldest finished ones (complete
   * or gone) first and only then the oldest open ones: a busy operator's tab would
   * otherwise keep (and poll) every campaign it ever saw.
   */
  prune() {
    let excess = this.campaigns.size - MAX_KEPT;
    if (excess <= 0) return;
    const oldestFirst = [...this.campaigns.values()].sort(newestFirst).reverse();
    for (const finishedOnly of [true, false]) {
      for (const c of oldestFirst) {
        if (excess <= 0) break;
        if (finishedOnly && !(c.complete || c.gone)) continue;
        if (this.campaigns.delete(c.id)) excess--;
      }
    }
    schedule(this.render);
  }

  async authorizedJson(path) {
    const response = await fetch(path, {
      headers: { Authorization: "Bearer " + this.conn.token },
      cache: "no-store",
    });
    if (!response.ok) throw new HttpError(path, response.status);
    return response.json();
  }

  /**
   * Applies a REST summary of a campaign we hold, unless live progress is already
   * further along (counts only grow towards completion).
   */
  merge(campaign, fields) {
    if (progressOf(campaign) > progressOf(fields)) {
      campaign.targetsText ||= fields.targetsText;
    } else {
      Object.assign(campaign, fields, { targetsText: campaign.targetsText || fields.targetsText });
    }
  }

  /** Recent campaigns from REST, so the list survives a reload. */
  async loadRecent() {
    let data;
    try {
      data = await this.authorizedJson("/v1/notifications?limit=20");
    } catch (err) {
      this.setResult("error", `could not load recent notifications: ${err.message}`);
      return;
    }
    for (const n of data.notifications || []) {
      // Progress messages may already be newer than this snapshot.
      const known = this.campaigns.get(n.id);
      if (known) this.merge(known, restFields(n));
      else this.add(n.id, restFields(n));
    }
    schedule(this.render);
  }

  render() {
    const ordered = [...this.campaigns.values()].sort(newestFirst);
    const shown = ordered.slice(0, MAX_SHOWN);
    for (const campaign of ordered.slice(MAX_SHOWN)) campaign.view = null;
    const now = Date.now();
    const nodes = shown.map((campaign) => {
      if (!campaign.view) {
        campaign.view = this.createView(campaign);
        if (campaign.complete && !campaign.stragglers) {
          // Finished before we saw it: nothing is outstanding, no need to ask.
          campaign.stragglers = { devices: [], more: false };
          campaign.finalFetched = true;
        } else if (this.needsFetch(campaign, now)) {
          this.fetchStragglers(campaign); // at once, not only at the next poll
        }
      }
      this.fill(campaign, now);
      return campaign.view.root;
    });
    const current = this.list.children;
    if (current.length !== nodes.length || nodes.some((n, i) => current[i] !== n)) this.list.replaceChildren(...nodes);
    this.empty.hidden = nodes.length > 0;
  }

  createView(campaign) {
    const v = {};
    v.severity = el("span", { class: "severity" });
    v.title = el("strong", { class: "campaign-title" });
    v.meta = el("div", { class: "campaign-meta" });
    v.fill = el("div", { class: "progress-fill" });
    v.bar = el("div", { class: "progress", attrs: { role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100 } }, v.fill);
    v.counts = el("div", { class: "campaign-counts" });
    v.stragglersBody = el("tbody");
    v.stragglersNote = el("p", { class: "hint stragglers-note" });
    v.table = el(
      "table",
      { class: "stragglers" },
      el("thead", {}, el("tr", {}, ...["device", "state", "attempts", "last sent"].map((t) => el("th", { text: t })))),
      v.stragglersBody,
    );
    v.root = el(
      "div",
      { class: "campaign", attrs: { "data-id": campaign.id } },
      el("div", { class: "campaign-head" }, v.severity, v.title),
      v.meta,
      v.bar,
      v.counts,
      el("div", { class: "table-wrap stragglers-wrap" }, v.table),
      v.stragglersNote,
    );
    return v;
  }

  fill(c, now) {
    const v = c.view;
    const percent = percentDone(c);
    const attrs = {
      "data-targets": c.targets, "data-pending": c.pending, "data-delivered": c.delivered,
      "data-acknowledged": c.acknowledged, "data-expired": c.expired,
      "data-complete": c.complete ? "true" : "false", "data-percent": percent,
      "data-severity": c.severity, "data-gone": c.gone ? "true" : "false",
    };
    for (const [name, value] of Object.entries(attrs)) setAttr(v.root, name, value);
    setText(v.severity, c.severity);
    setText(v.title, c.title || "(no title)");
    const expires = c.expiresMs > now ? `expires in ${durationText(c.expiresMs - now)}` : "past its expiry";
    const state = c.gone ? "no longer on the hub" : c.complete ? "complete" : expires;
    const parts = [c.id, `sent ${clockTime(c.createdMs)}`, c.targetsText, state];
    setText(v.meta, parts.filter(Boolean).join(" · "));
    v.fill.style.width = `${percent}%`;
    setAttr(v.bar, "aria-valuenow", percent);
    const needed = c.severity === "CRITICAL" ? "acknowledged" : "delivered or acknowledged";
    setText(
      v.counts,
      `${percent} % ${needed} · ${c.targets} target${c.targets === 1 ? "" : "s"}: ${c.pending} pending, ${c.delivered} delivered, ` +
        `${c.acknowledged} acknowledged, ${c.expired} expired`,
    );
    this.fillStragglers(c);
  }

  fillStragglers(c) {
    const v = c.view;
    const s = c.stragglers;
    if (!s) {
      showMessage(v.stragglersNote, c.complete ? "" : "loading devices not yet acknowledged…");
      return;
    }
    // Rows only change when a fetch brought news; the note also follows the counts.
    if (v.shownStragglers !== s) {
      v.shownStragglers = s;
      v.stragglersBody.replaceChildren(
        ...s.devices.map((d) =>
          el(
            "tr",
            { attrs: { "data-device": d.device_id || "" } },
            el("td", { class: "device", text: d.device_id || "" }),
            el("td", { class: "state", text: d.state || "" }),
            el("td", { class: "num", text: String(d.attempts || 0) }),
            el("td", { text: d.last_sent_ms ? relativeTime(d.last_sent_ms) : "never" }),
          ),
        ),
      );
    }
    let note = "";
    if (c.gone) note = "the hub has pruned this notification; its final state is unknown";
    else if (s.error) note = `could not load stragglers: ${s.error}`;
    else if (s.devices.length) {
      const n = `${s.devices.length}${s.more ? "+" : ""}`;
      note = `${n} device${s.devices.length === 1 ? "" : "s"} not acknowledged yet`;
    } else if (!c.complete) note = "every target has answered; waiting for the hub to close the campaign";
    else note = c.severity === "CRITICAL" ? "every target acknowledged or expired" : "every target reached or expired";
    showMessage(v.stragglersNote, note);
  }

  pollStragglers() {
    if (!this.operator || !this.conn.isOpen) return;
    const now = Date.now();
    for (const campaign of this.campaigns.values()) {
      if (campaign.view && this.needsFetch(campaign, now)) this.fetchStragglers(campaign);
    }
  }

  /**
   * Whether a campaign's stragglers are worth asking for: while it is open and not
   * past its expiry; once more after it completes (for the final list) and once
   * more after its expiry (in case its completion never reaches us); never once the
   * hub has forgotten it.
   */
  needsFetch(c, now) {
    if (c.gone) return false;
    if (c.complete) return !c.finalFetched;
    if (c.expiresMs && now > c.expiresMs + EXPIRY_GRACE_MS) return !c.expiredFetched;
    return true;
  }

  async fetchStragglers(campaign) {
    if (campaign.fetching || !this.operator) return;
    campaign.fetching = true;
    const startedMs = Date.now();
    const wasComplete = campaign.complete;
    const base = `/v1/notifications/${encodeURIComponent(campaign.id)}?limit=${STRAGGLER_LIMIT}&state=`;
    try {
      const [pending, delivered] = await Promise.all([
        this.authorizedJson(base + "pending"),
        this.authorizedJson(base + "delivered"),
      ]);
      campaign.stragglers = {
        devices: [...(pending.devices || []), ...(delivered.devices || [])],
        more: Boolean(pending.next || delivered.next),
      };
      // Each answer carries the counts and `complete` as of its moment; the later
      // one (further along) wins, unless live progress is further still.
      const [a, b] = [restFields(pending), restFields(delivered)];
      this.merge(campaign, progressOf(a) >= progressOf(b) ? a : b);
      // The lists are final only if both answers were taken after completion
      // (otherwise one more fetch follows).
      if (wasComplete || (pending.complete && delivered.complete)) campaign.finalFetched = true;
      if (campaign.expiresMs && startedMs > campaign.expiresMs + EXPIRY_GRACE_MS) campaign.expiredFetched = true;
    } catch (err) {
      if (err.status === 404) {
        // Pruned by the hub's retention: nothing more will ever come.
        campaign.gone = true;
        campaign.stragglers = { devices: [], more: false };
      } else {
        campaign.stragglers = { devices: campaign.stragglers?.devices || [], error: err.message };
      }
    } finally {
      campaign.fetching = false;
    }
    schedule(this.render);
  }
}

/** Campaign order on screen: newest first (ids break ties, so the order is stable). */
function newestFirst(a, b) {
  return b.createdMs - a.createdMs || (a.id < b.id ? 1 : -1);
}
