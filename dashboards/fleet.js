// The fleet table: every device the hub knows, from FleetStats (counters, every
// second) and Presence (online/offline the moment it happens); and its counts in
// the header (#fleet-summary, a link down to the table).
//
// Messages only update the `devices` map; the table is rebuilt at most once per
// frame, sorted online first then by id, and capped at MAX_ROWS rows. Only the
// "last seen" cells change every second, so a timer refreshes just those.

import { byId, el, naturalCompare, num, relativeTime, setAttr, setText, showMessage, sortedTags, tagsText } from "./dom.js";
import { schedule } from "./frame.js";

export const MAX_ROWS = 500;

export class FleetView {
  /**
   * onCategories(categories): categories devices have published (for the picker).
   * onForgotten(ids): the hub forgot these devices (offline too long): their
   * series should go as well.
   */
  constructor({ onCategories, onForgotten }) {
    this.onCategories = onCategories;
    this.onForgotten = onForgotten;
    this.tbody = byId("fleet").tBodies[0];
    this.count = byId("fleet-count");
    // The header's summary: in the first screen, however far down the table is.
    this.summary = { online: byId("fleet-online"), offline: byId("fleet-offline"), total: byId("fleet-total") };
    this.note = byId("fleet-note");
    this.filterInput = byId("fleet-filter");
    this.devices = new Map(); // device id -> stats (DeviceStats fields, normalised)
    this.rows = new Map(); // device id -> { tr, cells }, only for rendered devices
    this.filter = "";
    this.render = this.render.bind(this);
    this.refreshLastSeen = this.refreshLastSeen.bind(this);

    this.filterInput.addEventListener("input", () => {
      this.filter = this.filterInput.value.trim().toLowerCase();
      schedule(this.render);
    });
    setInterval(() => schedule(this.refreshLastSeen), 1000);
  }

  /** After a (re)connect the online flags are stale until the hub's snapshot arrives. */
  reconnected() {
    for (const device of this.devices.values()) device.online = false;
    schedule(this.render);
  }

  onFleetStats(stats) {
    if (stats.full) this.devices.clear();
    for (const d of stats.devices || []) {
      // Each entry is the device's complete current state (zero fields omitted).
      this.devices.set(d.deviceId || "", {
        deviceId: d.deviceId || "",
        online: Boolean(d.online),
        tags: d.tags || {},
        lastSeenMs: num(d.lastSeenMs),
        messages: num(d.messages),
        rate: num(d.rate),
        rateLimited: num(d.rateLimited),
        dropped: num(d.dropped),
      });
      if (d.categories?.length) this.onCategories(d.categories);
    }
    // Their rows go with the next render; without this a long-running tab would
    // keep every device (and its charts) that ever came and went.
    const forgotten = stats.forgotten || [];
    for (const id of forgotten) this.devices.delete(id);
    if (forgotten.length) this.onForgotten(forgotten);
    schedule(this.render);
  }

  onPresence(presence) {
    const id = presence.deviceId || "";
    let device = this.devices.get(id);
    if (!device) {
      device = { deviceId: id, online: false, tags: {}, lastSeenMs: 0, messages: 0, rate: 0, rateLimited: 0, dropped: 0 };
      this.devices.set(id, device);
    }
    device.online = Boolean(presence.online);
    if (presence.tags) device.tags = presence.tags;
    device.lastSeenMs = Math.max(device.lastSeenMs, num(presence.atMs));
    if (!device.online) device.rate = 0;
    schedule(this.render);
  }

  clear() {
    this.devices.clear();
    schedule(this.render);
  }

  matches(device) {
    const f = this.filter;
    return !f || device.deviceId.toLowerCase().includes(f) || tagsText(device.tags).toLowerCase().includes(f);
  }

  render() {
    let online = 0;
    for (const d of this.devices.values()) if (d.online) online++;
    setText(this.count, `${online} online / ${this.devices.size} devices`);
    setText(this.summary.online, online);
    setText(this.summary.offline, this.devices.size - online);
    setText(this.summary.total, this.devices.size);

    const matching = [...this.devices.values()]
      .filter((d) => this.matches(d))
      .sort((a, b) => Number(b.online) - Number(a.online) || naturalCompare(a.deviceId, b.deviceId));
    const shown = matching.slice(0, MAX_ROWS);
    const keep = new Set(shown.map((d) => d.deviceId));
    for (const id of [...this.rows.keys()]) if (!keep.has(id)) this.rows.delete(id);

    const now = Date.now();
    const trs = shown.map((device) => {
      let row = this.rows.get(device.deviceId);
      if (!row) {
        row = this.createRow(device.deviceId);
        this.rows.set(device.deviceId, row);
      }
      this.fill(row, device, now);
      return row.tr;
    });
    // Re-append only when the order or the set changed (it rarely does).
    const current = this.tbody.children;
    if (current.length !== trs.length || trs.some((tr, i) => current[i] !== tr)) this.tbody.replaceChildren(...trs);

    let note = "";
    if (matching.length > shown.length) note = `showing ${shown.length} of ${matching.length} devices; filter to see others`;
    else if (this.filter) note = `${matching.length} of ${this.devices.size} devices match the filter`;
    showMessage(this.note, note);
  }

  createRow(id) {
    const cells = {};
    for (const name of ["device", "state", "last-seen", "tags", "rate", "messages", "rate-limited", "dropped"]) {
      cells[name] = el("td", { class: name });
    }
    for (const name of ["rate", "messages", "rate-limited", "dropped"]) cells[name].classList.add("num");
    cells.device.textContent = id;
    return { tr: el("tr", { attrs: { "data-device": id } }, ...Object.values(cells)), cells, tags: null };
  }

  fill(row, device, now) {
    const c = row.cells;
    const state = device.online ? "online" : "offline";
    setText(c.state, state);
    setAttr(c.state, "data-state", state);
    setText(c["last-seen"], relativeTime(device.lastSeenMs, now));
    const tags = tagsText(device.tags);
    if (row.tags !== tags) {
      // One chip per tag, separated by spaces so the cell's text reads "k=v k2=v2".
      row.tags = tags;
      const chips = sortedTags(device.tags).map(([k, v]) => el("span", { class: "tag", text: `${k}=${v}` }));
      c.tags.replaceChildren(...chips.flatMap((chip, i) => (i ? [" ", chip] : [chip])));
    }
    setText(c.rate, device.rate.toFixed(1));
    setText(c.messages, device.messages);
    setText(c["rate-limited"], device.rateLimited);
    setText(c.dropped, device.dropped);
  }

  refreshLastSeen() {
    const now = Date.now();
    for (const [id, row] of this.rows) {
      const device = this.devices.get(id);
      if (device) setText(row.cells["last-seen"], relativeTime(device.lastSeenMs, now));
    }
  }
}
