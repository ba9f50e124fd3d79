// How the hub delivers this page's telemetry (batched or conflated), the choice
// between the two, and #delivery-mode in the header that says which is in force.
//
// Batched by default: every message still arrives, but in one Batch per category
// at most every `maxDelayMs` (50 ms), so the page handles at most 20 envelopes a
// second per category, however many devices publish in it, for a delay of a few
// frames. Conflated while the page shows more than `conflateAbove` series (200):
// one Batch per category every `conflateMs` (500 ms) with only the latest value of
// each series that changed. Nobody reads hundreds of rows updating 20 times a
// second, and conflation cuts the hub's, the network's and the page's work to one
// message per series per interval. The page goes back to batched only once it
// shows at most BACK_TO_BATCHED of the threshold: a fleet hovering around it must
// not make the page flap, since every switch re-sends each Subscribe (the hub
// replaces the pattern's mode in place) and each replays the recent History.
//
// The values are the hub's `dashboard.page_*` configuration, read from
// GET /v1/dashboard/settings; DEFAULT_SETTINGS (the hub's defaults) stand in when
// it cannot be asked.

import { byId, setAttr, setText } from "./dom.js";

const SETTINGS_URL = "/v1/dashboard/settings";
const DEFAULT_SETTINGS = Object.freeze({ maxDelayMs: 50, conflateMs: 500, conflateAbove: 200 });
/** Conflated until the series shown fall to this share of `conflateAbove`. */
const BACK_TO_BATCHED = 0.8;
/** The mode is decided at most this often: a History replay creates series in bursts. */
const DECIDE_MS = 1000;
/** A hub that does not answer the settings request within this is not waited for. */
const SETTINGS_TIMEOUT_MS = 3000;
// What a Subscribe accepts (the hub refuses anything else).
const MAX_DELAY_MS = 10_000;
const MAX_CONFLATE_MS = 60_000;

function wholeIn(value, min, max) {
  return Number.isInteger(value) && value >= min && value <= max;
}

/**
 * The hub's settings for this page, or null when it cannot be asked or answers
 * something this page cannot use (then the caller keeps what it has).
 */
export async function fetchSettings() {
  try {
    const response = await fetch(SETTINGS_URL, {
      cache: "no-store",
      signal: AbortSignal.timeout(SETTINGS_TIMEOUT_MS),
    });
    if (!response.ok) return null;
    const body = await response.json();
    const settings = {
      maxDelayMs: body.max_delay_ms,
      conflateMs: body.conflate_ms,
      conflateAbove: body.conflate_above,
    };
    const usable =
      wholeIn(settings.maxDelayMs, 1, MAX_DELAY_MS) &&
      wholeIn(settings.conflateMs, 1, MAX_CONFLATE_MS) &&
      wholeIn(settings.conflateAbove, 0, Number.MAX_SAFE_INTEGER);
    return usable ? settings : null;
  } catch {
    return null; // unreachable, timed out, or not JSON
  }
}

export class DeliveryMode {
  /**
   * seriesShown(): how many series the page shows now. onChange(): the Subscribe
   * fields changed (the other mode, or new settings): re-send every subscription.
   */
  constructor({ seriesShown, onChange }) {
    this.seriesShown = seriesShown;
    this.onChange = onChange;
    this.node = byId("delivery-mode");
    this.settings = { ...DEFAULT_SETTINGS };
    this.conflated = false;
    this.shown = 0; // the count the current mode was decided on (for the text)
    this.decideTimer = 0;
    this.render();
  }

  /** The delivery fields of a Subscribe in the current mode (JSON mapping). */
  fields() {
    return this.conflated ? { conflateMs: this.settings.conflateMs } : { maxDelayMs: this.settings.maxDelayMs };
  }

  /** The hub's settings (see fetchSettings). */
  configure(settings) {
    const before = JSON.stringify(this.fields());
    this.settings = settings;
    this.decide(JSON.stringify(this.fields()) !== before);
  }

  /** Series were added or removed: the mode is reconsidered shortly. */
  seriesChanged() {
    if (this.decideTimer) return;
    // A timer rather than an animation frame: a hidden tab keeps receiving (and
    // should switch) even though it draws nothing.
    this.decideTimer = setTimeout(() => {
      this.decideTimer = 0;
      this.decide(false);
    }, DECIDE_MS);
  }

  /** Picks the mode for the series shown now; `changed`: re-send even if it stays. */
  decide(changed) {
    this.shown = this.seriesShown();
    const { conflateAbove } = this.settings;
    const conflated = this.conflated ? this.shown > conflateAbove * BACK_TO_BATCHED : this.shown > conflateAbove;
    if (conflated !== this.conflated) {
      this.conflated = conflated;
      changed = true;
    }
    this.render();
    if (changed) this.onChange();
  }

  render() {
    const { maxDelayMs, conflateMs, conflateAbove } = this.settings;
    setAttr(this.node, "data-mode", this.conflated ? "conflated" : "batched");
    if (this.conflated) {
      setText(this.node, `conflated every ${conflateMs} ms (${this.shown} series shown)`);
      setAttr(this.node, "title", `more than ${conflateAbove} series shown: the hub sends each series' latest value, when it changed, every ${conflateMs} ms`);
    } else {
      setText(this.node, `batched ≤ ${maxDelayMs} ms`);
      setAttr(this.node, "title", `the hub sends every message, in batches at most ${maxDelayMs} ms apart; above ${conflateAbove} series shown, only each series' latest value every ${conflateMs} ms`);
    }
  }

  /** Logout: no series, so batched again (nothing is subscribed to re-send). */
  clear() {
    clearTimeout(this.decideTimer);
    this.decideTimer = 0;
    this.conflated = false;
    this.shown = 0;
    this.render();
  }
}
