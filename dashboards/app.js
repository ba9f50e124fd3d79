// Wiring: creates the views, routes each hub message to the one that handles it,
// and keeps the header (connection state, role, message rate, dropped) current.
//
// Module map: connection.js (WebSocket, token, reconnect) -> app.js (routing) ->
// series.js (buffers) -> charts.js / latest.js; fleet.js; subscriptions.js;
// notifications.js. frame.js batches all DOM work into one animation frame.

import { Charts } from "./charts.js";
import { Connection, adoptFragment } from "./connection.js";
import { byId, num, setAttr, setText, showMessage } from "./dom.js";
import { FleetView } from "./fleet.js";
import { LatestTable } from "./latest.js";
import { Notifications } from "./notifications.js";
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

// Telemetry received this second (shown as msg/s) and this dashboard's drops: the
// hub's `total` counts per connection, so earlier connections' totals are added.
let telemetryThisSecond = 0;
let droppedEarlier = 0;
let droppedThisConnection = 0;
let hubErrorTimer = 0;

const conn = new Connection({
  onState(state, text) {
    setAttr(connState, "data-state", state);
    setText(connState, text);
    document.body.dataset.state = state;
    byId("login-card").hidden = state !== "login";
    logoutButton.hidden = state === "login";
    if (state === "login") setText(roleText, "–");
  },
  onWelcome(welcome) {
    setText(roleText, welcome.role || "viewer");
    showMessage(loginError, "");
    fleet.reconnected();
    // The hub keeps nothing for a dashboard across connections: ask again for
    // everything. History replays then fill the charts' gap.
    subscriptions.resend();
    conn.send({ watchFleet: { watch: true } });
    notifications.welcomed(welcome.role);
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
  charts.removed(removed);
  latest.removed(removed);
}

const subscriptions = new Subscriptions({ conn, onPrune: pruneSeries });
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
  if (added.created) subscriptions.addKnown(added.series.category);
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
  subscribed: (s) => subscriptions.onSubscribed(s),
  presence: (p) => fleet.onPresence(p),
  fleetStats: (f) => fleet.onFleetStats(f),
  dropped(d) {
    droppedThisConnection = num(d.total);
    setText(droppedText, droppedEarlier + droppedThisConnection);
  },
  notificationAccepted: (a) => notifications.onAccepted(a),
  notificationProgress: (p) => notifications.onProgress(p),
  error(e) {
    if (notifications.onError(e)) return;
    if (e.code === "INVALID_SUBSCRIPTION") return subscriptions.onError(e);
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
  notifications.clear();
  droppedEarlier = droppedThisConnection = 0;
  setText(droppedText, 0);
  showMessage(hubError, "");
});

setInterval(() => {
  setText(rateText, telemetryThisSecond);
  telemetryThisSecond = 0;
}, 1000);

conn.start();
