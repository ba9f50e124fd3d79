// The dashboard's WebSocket to the hub: where the token lives, the connection
// state shown in the header, and reconnecting after the hub restarts.
//
// The token travels as a WebSocket subprotocol ("bearer.<token>") because browsers
// cannot set an Authorization header on a WebSocket. It is kept in sessionStorage:
// it survives a reload of this tab but not the tab itself.

export const TOKEN_KEY = "telehub_token";

// Reconnect delays: 0.5 s doubling to 15 s, each drawn at random from the upper
// half of the current step so that many dashboards do not all come back in the
// same millisecond after a hub restart.
const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 15_000;
// The backoff starts over only once a connection has stayed up this long. Resetting
// it on the welcome would let a hub that accepts and then closes at once (a policy
// close, 1008, say) be hit every 0.5 s forever.
const STABLE_MS = 10_000;

/**
 * Reads the address bar's fragment: `#token=…` moves into sessionStorage and, like
 * the rest of the fragment, out of the address bar and history. Returns the
 * fragment's other parameters (e.g. `subscribe=*`, which `telehub demo` adds so a
 * new user sees charts at once).
 */
export function adoptFragment() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  if (!location.hash) return params;
  const token = params.get("token");
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  params.delete("token");
  history.replaceState(null, "", location.pathname + location.search);
  return params;
}

export class Connection {
  /**
   * onState(state, text): state is "login" | "connecting" | "open" | "closed".
   * onWelcome(welcome): the hub accepted the token; (re)send subscriptions now.
   * onEnvelope(envelope): every later message.
   * onClose(): the socket is gone (a reconnect may follow).
   * onRejected(message): the token was refused; the user must log in again.
   */
  constructor({ onState, onWelcome, onEnvelope, onClose, onRejected }) {
    Object.assign(this, { onState, onWelcome, onEnvelope, onClose, onRejected });
    this.ws = null;
    this.welcomed = false;
    // Whether this token was ever accepted: if not, a failed connection is more
    // likely a bad token than a hub that is down, so it is worth asking the hub.
    this.welcomedOnce = false;
    this.failures = 0;
    this.retryTimer = 0;
    this.stableTimer = 0; // resets `failures` once a connection has lasted STABLE_MS
    // Bumped by login/logout so that late callbacks of an old socket are ignored.
    this.generation = 0;
  }

  get token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  start() {
    if (this.token) this.connect();
    else this.onState("login", "login required");
  }

  login(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    this.reset();
    this.connect();
  }

  logout() {
    sessionStorage.removeItem(TOKEN_KEY);
    this.reset();
    this.onState("login", "logged out");
  }

  /** Sends one Envelope; false (nothing sent) unless the hub has welcomed us. */
  send(envelope) {
    if (!this.ws || !this.welcomed || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(envelope));
    return true;
  }

  get isOpen() {
    return Boolean(this.ws && this.welcomed && this.ws.readyState === WebSocket.OPEN);
  }

  reset() {
    this.generation++;
    clearTimeout(this.retryTimer);
    clearTimeout(this.stableTimer);
    const ws = this.ws;
    this.ws = null;
    this.welcomed = false;
    this.welcomedOnce = false;
    this.failures = 0;
    if (ws) {
      ws.close(1000, "logout");
      this.onClose();
    }
  }

  connect() {
    clearTimeout(this.retryTimer);
    const token = this.token;
    if (!token) {
      this.onState("login", "login required");
      return;
    }
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/dashboard";
    let ws;
    try {
      ws = new WebSocket(url, ["telehub.v1.json", "bearer." + token]);
    } catch {
      // The constructor throws when the token has characters a subprotocol cannot carry.
      this.reject("that is not a telehub token");
      return;
    }
    this.ws = ws;
    this.welcomed = false;
    this.onState("connecting", this.failures ? "reconnecting…" : "connecting…");

    ws.addEventListener("message", (event) => {
      if (ws !== this.ws) return;
      let envelope;
      try {
        envelope = JSON.parse(event.data);
      } catch {
        return; // the hub only sends JSON on this subprotocol; ignore anything else
      }
      if (envelope.welcome) {
        this.welcomed = true;
        this.welcomedOnce = true;
        clearTimeout(this.stableTimer);
        this.stableTimer = setTimeout(() => {
          if (ws === this.ws) this.failures = 0;
        }, STABLE_MS);
        this.onState("open", "connected");
        this.onWelcome(envelope.welcome);
      } else {
        this.onEnvelope(envelope);
      }
    });
    ws.addEventListener("close", (event) => {
      if (ws !== this.ws) return;
      clearTimeout(this.stableTimer);
      this.ws = null;
      const wasWelcomed = this.welcomed;
      this.welcomed = false;
      this.onClose();
      this.afterClose(event, wasWelcomed);
    });
  }

  async afterClose(event, wasWelcomed) {
    const generation = this.generation;
    // A refused upgrade looks like any other failure to the page (code 1006, no
    // reason), so ask the REST API what it thinks of the token: 401/403 mean
    // retrying is pointless. Only for a token the hub has not accepted yet: once
    // it has, a failure means the hub is down or restarting, and polling it over
    // HTTP as well would only add noise.
    if (!wasWelcomed && !this.welcomedOnce) {
      const verdict = await this.checkToken();
      if (generation !== this.generation) return;
      if (verdict) {
        this.reject(verdict);
        return;
      }
    }
    const step = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** this.failures);
    const delay = step / 2 + Math.random() * (step / 2);
    this.failures++;
    const why = event.reason ? ` (${event.reason})` : "";
    this.onState("closed", `disconnected${why}, retrying in ${Math.max(1, Math.round(delay / 1000))} s`);
    this.retryTimer = setTimeout(() => {
      if (generation === this.generation) this.connect();
    }, delay);
  }

  /** Why the hub refuses the token, or "" when it does not (or cannot be asked). */
  async checkToken() {
    try {
      const response = await fetch("/v1/notifications?limit=1", {
        headers: { Authorization: "Bearer " + this.token },
        cache: "no-store",
      });
      if (response.status === 401) return "the hub rejected this token (unknown, expired or revoked)";
      if (response.status === 403) return "this token is not for dashboards (use a viewer or operator token)";
    } catch {
      // The hub is unreachable: keep retrying.
    }
    return "";
  }

  reject(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    this.reset();
    this.onState("login", "login required");
    this.onRejected(message);
  }
}
