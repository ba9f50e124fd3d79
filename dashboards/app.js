// Wiring: creates the views, routes each hub message to the one that handles it,
// and keeps the header (connection state, role, message rate, dropped) current.
//
// Module map: connection.js (WebSocket, token, reconnect) -> app.js (routing) ->
// series.js (buffers) -> charts.js / latest.js; fleet.js; subscriptions.js (with
// delivery.js: batched or conflated); notifications.js; registry.js (REST). frame.js
// batches all DOM work into one animation frame.

import { Charts } from "./charts.js";
import { Connection, adoptFragment } from "./connection.js";
import { DeliveryMode, fetchSettings } from "./delivery.js";
import { byId, num, setAttr, setText, showMessage } from "./dom.js";
import { FleetView } from "./fleet.js";
import { LatestTable } from "./latest.js";
import { Notifications } from "./notifications.js";
import { Registry } from "./registry.js";
import { SeriesStore } from "./series.js";
import { Subscriptions } from "./subscriptions.js";

// Before anything else: a token in the address bar must not linger there (or in
// the history, or in a screenshot of the page).
const fragment = adoptFragment();

const connState = byId("conn-state");
const roleText = byId("role");
const rateText = byId("rate");
const droppedText = byId("dropped");
const hubError = byId("hub-error");
const loginForm = byId("login");
const tokenInput = byId("token");
const loginError = byId("login-error");
const logoutButton = byId("logout");

const store = new SeriesStore();
const charts = new Charts({ store });
const latest = new LatestTable({ store });
// Batched, or conflated while many series are shown; a change re-sends every
// subscription with the new mode.
const delivery = new DeliveryMode({
  seriesShown: () => store.size,
  onChange: () => subscriptions.redeliver(),
});
// The hub's settings for the mode are read before the first connection (so the
// first Subscribes carry them) and again after every later welcome: the hub may
// have restarted with others, or not have answered the first time.
let settingsFresh = false; // read just before connecting; no need to ask again
async function readSettings() {
  const settings = await fetchSettings();
  if (!settings) return false;
  delivery.configure(settings);
  return true;
}

// Telemetry received this second (shown as msg/s) and this dashboard's drops: the
// hub's `total` counts per connection, so earlier connections' totals are added.
let telemetryThisSecond = 0;
let droppedEarlier = 0;
let droppedThisConnection = 0;
let hubErrorTimer = 0;
// A conflated batch the hub dropped (this page fell behind) may have held the only
// change of some series, which the hub will not send again while their value holds:
// a fresh Subscribe brings every current value back with its History. At most this
// often, so a page that keeps falling behind does not keep asking for replays.
const REPAIR_EVERY_MS = 10_000;
let lastRepair = -Infinity;

const conn = new Connection({
  onState(state, text) {
    setAttr(connState, "data-state", state);
    setText(connState, text);
    document.body.dataset.state = state;
    byId("login-card").hidden = state !== "login";
    logoutButton.hidden = state === "login";
    if (state === "login") {
      setText(roleText, "–");
      registry.clear();
    }
  },
  onWelcome(welcome) {
    setText(roleText, welcome.role || "viewer");
    showMessage(loginError, "");
    fleet.reconnected();
    if (!settingsFresh) readSettings();
    settingsFresh = false;
    // The hub keeps nothing for a dashboard across connections: ask again for
    // everything. History replays then fill the charts' gap.
    subscriptions.resend();
    conn.send({ watchFleet: { watch: true } });
    notifications.welcomed(welcome.role);
    registry.welcomed(welcome.role);
  },
  onEnvelope: route,
  onClose() {
    droppedEarlier += droppedThisConnection;
    droppedThisConnection = 0;
  },
  onRejected(message) {
    showMessage(loginError, message);
    tokenInput.focus();
  },
});

/** Drops the series for which keep(series) is false, with their charts and rows. */
function pruneSeries(keep) {
  const removed = store.retain(keep);
  if (!removed.length) return;
  charts.removed(removed);
  latest.removed(removed);
  delivery.seriesChanged();
}

const subscriptions = new Subscriptions({ conn, onPrune: pruneSeries, deliveryFields: () => delivery.fields() });
// `#subscribe=PATTERN` (what `telehub demo` prints) subscribes a tab that has no
// subscriptions yet; one that has some keeps them.
const initialPattern = fragment.get("subscribe");
if (initialPattern) subscriptions.subscribeIfNone(initialPattern);
const fleet = new FleetView({
  onCategories: (categories) => categories.forEach((c) => subscriptions.addKnown(c)),
  onForgotten(ids) {
    const forgotten = new Set(ids);
    pruneSeries((series) => !forgotten.has(series.deviceId));
  },
});
const notifications = new Notifications({ conn });
const registry = new Registry({ conn });

function addTelemetry(telemetry) {
  // Sent before an Unsubscribe reached the hub: its series are being pruned, and
  // this must not bring them back.
  if (!subscriptions.wants(telemetry.category || "")) return;
  const added = store.add(telemetry);
  if (!added) return; // already held (History overlapping live data)
  if (added.evicted) {
    // The store made room (MAX_SERIES): the least recently updated series went.
    charts.removed(added.evicted);
    latest.removed(added.evicted);
  }
  charts.touched(added.series, added.created);
  latest.touched(added.series, added.created);
  if (added.created) {
    subscriptions.addKnown(added.series.category);
    delivery.seriesChanged();
  }
}

// One handler per message kind.
const handlers = {
  telemetry(t) {
    telemetryThisSecond++;
    addTelemetry(t);
  },
  history(h) {
    for (const t of h.telemetry || []) addTelemetry(t);
  },
  // Batched or conflated delivery: each message exactly as if it had come alone.
  batch(b) {
    const telemetry = b.telemetry || [];
    telemetryThisSecond += telemetry.length;
    for (const t of telemetry) {
      // The Batch names the category of all it carries.
      if (!t.category) t.category = b.category;
      addTelemetry(t);
    }
  },
  subscribed: (s) => subscriptions.onSubscribed(s),
  presence: (p) => fleet.onPresence(p),
  fleetStats: (f) => fleet.onFleetStats(f),
  dropped(d) {
    droppedThisConnection = num(d.total);
    setText(droppedText, droppedEarlier + droppedThisConnection);
    if (delivery.conflated && performance.now() - lastRepair >= REPAIR_EVERY_MS) {
      lastRepair = performance.now();
      subscriptions.redeliver();
    }
  },
  // A node of a cluster lost (or regained) the other nodes: devices on them go
  // silent meanwhile, which the banner explains for as long as it lasts.
  clusterLink(c) {
    clearTimeout(hubErrorTimer);
    showMessage(hubError, c.linked ? "" : `cluster: ${c.message || "other nodes unreachable"}`);
  },
  notificationAccepted: (a) => notifications.onAccepted(a),
  notificationProgress: (p) => notifications.onProgress(p),
  error(e) {
    if (notifications.onError(e)) return;
    if (e.code === "INVALID_SUBSCRIPTION") return subscriptions.onError(e);
    if (e.code === "RATE_LIMITED" && subscriptions.onRateLimited(e)) return;
    // Anything else is shown for a while in the banner under the header.
    showMessage(hubError, `hub: ${e.code || "ERROR"}${e.message ? ": " + e.message : ""}`);
    clearTimeout(hubErrorTimer);
    hubErrorTimer = setTimeout(() => showMessage(hubError, ""), 10_000);
  },
};

function route(envelope) {
  for (const kind in envelope) {
    const handler = handlers[kind];
    if (handler) handler(envelope[kind]);
    // Unknown kinds are ignored: a newer hub may send messages this page predates.
  }
}

loginForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const token = tokenInput.value.trim();
  if (!token) return;
  tokenInput.value = "";
  showMessage(loginError, "");
  conn.login(token);
});

logoutButton.addEventListener("click", () => {
  conn.logout();
  // Nothing of the previous session stays on screen.
  store.clear();
  charts.clear();
  latest.clear();
  fleet.clear();
  subscriptions.clear();
  delivery.clear();
  notifications.clear();
  registry.clear();
  droppedEarlier = droppedThisConnection = 0;
  setText(droppedText, 0);
  showMessage(hubError, "");
});

setInterval(() => {
  setText(rateText, telemetryThisSecond);
  telemetryThisSecond = 0;
}, 1000);

// Not waited for longer than fetchSettings' own timeout: without the hub's values
// the page subscribes with the defaults.
settingsFresh = await readSettings();
conn.start();
