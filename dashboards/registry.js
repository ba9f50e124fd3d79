// The device registry: every device the hub knows (registered ahead of time, or
// seen connecting) with its tags, from `GET /v1/devices?after=ID&limit=N`, paged
// by id; and, for operators, the form that registers a device before its first
// connection (or replaces its tags): `PUT /v1/devices/{id}` with `{"tags": {...}}`.
//
// Read over REST with the page's token (Authorization: Bearer) when the hub
// welcomes the page, every REFRESH_MS while the tab is visible, and after a
// registration, each time for as many devices as are shown (pages loaded with "Load
// more" stay); "Refresh" starts over from the first page. A refusal is shown as the one line of text the
// hub answers with. Device ids and tags are untrusted: text only (dom.js).

import { byId, clockTime, el, num, parseTags, relativeTime, setAttr, setText, showMessage, sortedTags, tagsText } from "./dom.js";

// The hub's largest page; table#registry's data-page-size says the page size.
const MAX_PAGE = 1000;
const DEFAULT_PAGE = 100;
// Rows kept on screen: "Load more" stops here.
const MAX_ROWS = 5000;
const REFRESH_MS = 15_000;

/** The hub's one-line refusal ("HTTP 403" when it sent no text). */
async function refusal(response) {
  let text = "";
  try {
    text = (await response.text()).trim().split("\n")[0];
  } catch {
    // the body is lost: the status says enough
  }
  return text || `HTTP ${response.status}`;
}

/** When a registry time was: the clock today, the date before. */
function when(ms) {
  if (!ms) return "never";
  const date = new Date(ms);
  return date.toDateString() === new Date().toDateString() ? clockTime(ms) : date.toLocaleDateString();
}

export class Registry {
  constructor({ conn }) {
    this.conn = conn;
    this.table = byId("registry");
    this.tbody = this.table.tBodies[0];
    this.count = byId("registry-count");
    this.note = byId("registry-note");
    this.more = byId("registry-more");
    this.form = byId("register");
    this.idInput = byId("register-id");
    this.tagsInput = byId("register-tags");
    this.result = byId("register-result");
    this.devices = []; // as the hub pages them: by id
    this.complete = false; // the hub has no devices after the last one shown
    this.loading = false;
    // Bumped by every reload and by logout: answers to older requests are dropped.
    this.generation = 0;
    this.session = 0; // bumped by logout: a registration's answer is for this user only
    this.connected = false;

    // Refresh starts over from the first page; the timer keeps what is shown.
    byId("registry-refresh").addEventListener("click", () => this.reload(false));
    this.more.addEventListener("click", () => this.loadMore());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.register();
    });
    setInterval(() => {
      if (this.connected && !document.hidden && !this.loading) this.reload(true);
    }, REFRESH_MS);
  }

  get pageSize() {
    const size = Math.floor(num(this.table.dataset.pageSize));
    return size >= 1 ? Math.min(size, MAX_PAGE) : DEFAULT_PAGE;
  }

  /** After the hub's welcome: operators get the form; everyone gets the list. */
  welcomed(role) {
    this.connected = true;
    this.form.hidden = role !== "operator";
    this.reload();
  }

  clear() {
    this.generation++;
    this.session++;
    this.connected = false;
    this.loading = false;
    this.form.hidden = true;
    this.devices = [];
    this.complete = false;
    this.render();
    showMessage(this.note, "");
    showMessage(this.result, "");
  }

  /** Asks again from the first device: one page, or (`keep`) as many as are shown. */
  reload(keep = true) {
    const want = keep ? Math.max(this.pageSize, Math.min(this.devices.length, MAX_PAGE)) : this.pageSize;
    this.fetchPage(undefined, want, true);
  }

  loadMore() {
    if (this.loading || this.complete || !this.devices.length) return;
    this.fetchPage(this.devices.at(-1).id, this.pageSize, false);
  }

  /** One GET /v1/devices: replaces the list (`fresh`) or appends to it. */
  async fetchPage(after, limit, fresh) {
    const generation = fresh ? ++this.generation : this.generation;
    this.loading = true;
    this.more.disabled = true;
    const params = new URLSearchParams({ limit: String(limit) });
    if (after !== undefined) params.set("after", after);
    let message = "";
    try {
      const response = await fetch(`/v1/devices?${params}`, {
        headers: { Authorization: "Bearer " + this.conn.token },
        cache: "no-store",
      });
      if (generation !== this.generation) return;
      if (response.ok) {
        const page = (await response.json()).devices || [];
        if (generation !== this.generation) return;
        this.devices = (fresh ? [] : this.devices).concat(page).slice(0, MAX_ROWS);
        this.complete = page.length < limit;
      } else {
        message = `registry: ${await refusal(response)}`;
      }
    } catch {
      message = "registry: the hub cannot be reached";
    } finally {
      if (generation === this.generation) {
        this.loading = false;
        this.more.disabled = false;
      }
    }
    if (generation !== this.generation) return;
    showMessage(this.note, message);
    this.render();
  }

  render() {
    const rows = this.devices.map((d) => {
      const chips = sortedTags(d.tags).map(([k, v]) => el("span", { class: "tag", text: `${k}=${v}` }));
      return el(
        "tr",
        { attrs: { "data-device": d.id } },
        el("td", { class: "device", text: d.id }),
        // Chips separated by spaces, so the cell's text reads "k=v k2=v2".
        el("td", { class: "tags", title: tagsText(d.tags) }, ...chips.flatMap((chip, i) => (i ? [" ", chip] : [chip]))),
        el("td", { class: "registered", text: when(num(d.registered_ms)), title: new Date(num(d.registered_ms)).toLocaleString() }),
        el("td", { class: "last-seen", text: d.last_seen_ms ? relativeTime(num(d.last_seen_ms)) : "never" }),
      );
    });
    this.tbody.replaceChildren(...rows);
    setText(this.count, this.devices.length ? `${this.devices.length}${this.complete ? "" : "+"} devices` : "");
    this.more.hidden = this.complete || this.devices.length >= MAX_ROWS;
  }

  setResult(state, text) {
    setAttr(this.result, "data-state", state);
    showMessage(this.result, text);
  }

  /** The form: PUT /v1/devices/{id}; the hub's answer (or refusal) below it. */
  async register() {
    const id = this.idInput.value.trim();
    const parsed = parseTags(this.tagsInput.value);
    if (!id) return this.setResult("error", "enter a device id");
    if (parsed.error) return this.setResult("error", `tags: ${parsed.error}`);
    const session = this.session;
    this.setResult("sending", "registering…");
    let response;
    try {
      response = await fetch(`/v1/devices/${encodeURIComponent(id)}`, {
        method: "PUT",
        headers: { Authorization: "Bearer " + this.conn.token, "Content-Type": "application/json" },
        body: JSON.stringify({ tags: parsed.tags }),
      });
    } catch {
      if (session === this.session) this.setResult("error", "the hub cannot be reached; try again");
      return;
    }
    if (session !== this.session) return; // logged out meanwhile
    if (!response.ok) return this.setResult("error", await refusal(response));
    const device = await response.json().catch(() => ({ id, tags: parsed.tags }));
    const tags = tagsText(device.tags);
    this.setResult("accepted", `registered ${device.id}${tags ? ` with ${tags}` : " without tags"}`);
    this.idInput.value = "";
    this.tagsInput.value = "";
    this.reload();
  }
}
