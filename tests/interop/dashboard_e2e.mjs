#!/usr/bin/env node
// The dashboard end to end, in a real browser: Debian's Chromium (/usr/bin/chromium, or
// $TELEHUB_CHROMIUM) driven by playwright-core, against the hub of `telehub demo` that
// tests/dashboard_browser.rs started (hub + simulated fleet + one hostile device).
//
//   node dashboard_e2e.mjs URL SERVER_PEM OUT_DIR VIEWER_TOKEN
//
// URL is the demo's `https://127.0.0.1:PORT/#token=<operator>`; SERVER_PEM the hub's
// certificate, the only one the browser trusts (by its SPKI hash: no CA is installed
// and certificate errors are not ignored wholesale); OUT_DIR receives laptop.png,
// laptop-first-screen.png (1366x768), phone.png, viewer.png (the viewer's charts at
// 1366x768), and failure.png when a step fails.
//
// Steps (each wait bounded, each failure names what was expected and what was seen):
//   b. log in through #token= in the URL; the token leaves the address bar
//   c. subscribe env.* after ~6 s of fleet traffic: within 1 s of the hub's
//      confirmation a chart holds more points than live data could have brought
//      (the History replay), then live points follow
//   d. the fleet table: every demo device online, the hostile device's tags as text;
//      at 1366x768 the header's fleet summary is in the first screen, counts what the
//      table shows, and its link brings the fleet table into view
//   k. the registry lists every device of the fleet with the same tags (the hostile
//      one as text), pages by id (page size 5: "Load more" until complete), and an
//      operator registers a device through form#register: it is listed, GET
//      /v1/devices returns it with its tags, and a refusal shows the hub's own line
//   e. XSS: the hostile device's markup is shown as text, never run or rendered
//   f. a CRITICAL notification to fleet=north reaches 100 % acknowledged
//   g. a phone-width viewport has no horizontal page scroll; each table (fleet,
//      latest, registry) reflows inside the screen: every cell of every row is
//      within its box, nothing is left past the right edge to scroll to
//   h. the hub restarts (the Rust test does it when we print RESTART-HUB and answers
//      RESTARTED on stdin): the page reconnects, resubscribes, and charts grow again
//   i. a viewer token: the notifications section and the registration form stay
//      hidden (the registry is listed, the registered device included), and the demo
//      URL's `subscribe=*` fills a chart from History within 1 s of the page connecting
//   j. the viewer's charts (env, gps, battery) are readable: every y tick label fits
//      its axis (measured in the axis font), every line has an axis of its scale (or
//      its legend shows the scale's range), and each legend shows a number, not "–",
//      without hovering, while hovering, and after the pointer has left
//   a. (throughout) no console error or warning and no uncaught exception, except the
//      browser's own connection-failure messages while the hub is down in step h, and
//      its own log line of the 400 that step k provokes on purpose.
//
// Exit 0 when everything held; non-zero (after saving failure.png) otherwise.
//
// Timing: every wait has its own bound, and none reaches past the overall bound less
// REPORT_MS (bounded() below), so a stuck step fails with its own message and a
// screenshot instead of dying with the overall timer. A passing run takes about 20 s
// (also with two CPU-bound processes competing on a 2-core machine): the fixed waits
// are TRAFFIC_MS before (c) and up to TRAFFIC_MS after the restart before (i); the
// rest is mostly the hub restart and the page's reconnect backoff. The bounds that
// can add up to much more are those of the restart (up to 40 s for the hub to come
// back, 20 s to reconnect), and OVERALL_MS leaves room for them.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { launchChromium } from './chromium.mjs';

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  console.error(`dashboard_e2e.mjs: ${e.message}; playwright-core is missing: run \`bash .ci/run\` (it runs \`npm ci\` in tests/interop)`);
  process.exit(1);
}

const [demoUrl, serverPem, outDir, viewerToken] = process.argv.slice(2);
if (!demoUrl || !serverPem || !outDir || !viewerToken) {
  console.error('usage: dashboard_e2e.mjs URL SERVER_PEM OUT_DIR VIEWER_TOKEN');
  process.exit(2);
}
// The demo's URL subscribes a fresh tab to everything (`&subscribe=*`); the main
// flow subscribes by hand to see History fill a chart, so it drops that part; the
// viewer (step i) opens the URL as the demo prints it.
const url = demoUrl.replace(/&subscribe=[^&]*/, '');
check(url !== demoUrl, `the demo's dashboard URL has no &subscribe=: ${demoUrl}`);
const executablePath = process.env.TELEHUB_CHROMIUM || '/usr/bin/chromium';
mkdirSync(outDir, { recursive: true });

// The whole run is bounded even if a wait below forgets to be (the Rust test,
// tests/dashboard_browser.rs, kills us after 120 s: keep OVERALL_MS below that).
const OVERALL_MS = 110_000;
// Kept back from OVERALL_MS for reporting a failure (screenshot, closing the browser).
const REPORT_MS = 15_000;
setTimeout(() => {
  console.error(`dashboard_e2e.mjs: FAILED: the whole run took over ${OVERALL_MS} ms`);
  process.exit(3);
}, OVERALL_MS).unref();

// Live data brings 2 points a second per series (the demo's rate: each device
// publishes one category); the History replay brings everything since the device
// started (up to 120 points). Within HISTORY_WINDOW_MS of the moment that counts,
// a chart with HISTORY_POINTS points can only have been filled by History.
const HISTORY_POINTS = 8;
const HISTORY_WINDOW_MS = 1_000;
// Fleet traffic before a History check: 12 points per series at the demo's rate.
const TRAFFIC_MS = 6_000;
// The demo's devices (tests/dashboard_browser.rs), the hostile one not counted.
const DEMO_DEVICES = 12;
// The hub's longest device id (src/notify/request.rs MAX_ID), and its refusal of a longer one.
const MAX_ID = 128;
const LONG_ID_REFUSAL = `device ids are 1..=${MAX_ID} bytes`;

const HOSTILE_ID = 'evil<script>window.__pwned=1</script>';
const HOSTILE_TAG = '<img src=x onerror="window.__pwned=2">';
const HOSTILE_NAME = '<b>bold</b>';
const HOSTILE_TEXT = '<script>window.__pwned=3</script>';

const started = Date.now();
const deadline = started + OVERALL_MS - REPORT_MS;
/** `ms`, or what is left before the overall bound (less REPORT_MS) if that is sooner. */
function bounded(ms) {
  return Math.max(100, Math.min(ms, deadline - Date.now()));
}
const log = (msg) => console.log(`[e2e +${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);

// RESTARTED lines from the Rust test, on stdin.
const stdinLines = [];
let stdinWaiter = null;
createInterface({ input: process.stdin }).on('line', (line) => {
  stdinLines.push(line.trim());
  if (stdinWaiter) stdinWaiter();
});
async function waitForStdin(word, timeoutMs) {
  timeoutMs = bounded(timeoutMs);
  const end = Date.now() + timeoutMs;
  while (!stdinLines.includes(word)) {
    const left = end - Date.now();
    if (left <= 0) throw new Error(`no ${word} on stdin within ${timeoutMs} ms`);
    await new Promise((resolve) => {
      stdinWaiter = resolve;
      setTimeout(resolve, Math.min(left, 200));
    });
    stdinWaiter = null;
  }
}


// (a) Everything the page complains about. `allowNetworkErrors` is set while the hub is
// down on purpose (step h): the browser itself then logs each refused reconnect.
const problems = [];
let allowNetworkErrors = false;
// Set while step (k) has the hub refuse a registration on purpose: the browser itself
// logs every 4xx answer to a fetch, which a page cannot suppress.
let allowRefusal = null;
let tolerated = 0;
function watch(page, label) {
  page.on('console', (msg) => {
    if (msg.type() !== 'error' && msg.type() !== 'warning') return;
    const loc = msg.location();
    const text = `${label} console.${msg.type()}: ${msg.text()}${loc?.url ? ` (${loc.url}:${loc.lineNumber})` : ''}`;
    if (allowRefusal && allowRefusal.test(msg.text()) && loc?.url?.includes('/v1/devices/')) {
      tolerated++;
      return;
    }
    if (allowNetworkErrors && /WebSocket connection to 'wss:\/\/127\.0\.0\.1:\d+\/v1\/dashboard' failed|net::ERR_CONNECTION_(REFUSED|RESET|CLOSED)/.test(msg.text())) {
      tolerated++;
      return;
    }
    problems.push(text);
    console.log(`[e2e] ${text}`);
  });
  page.on('pageerror', (err) => {
    const text = `${label} uncaught: ${err.stack || err.message}`;
    problems.push(text);
    console.log(`[e2e] ${text}`);
  });
}

/** Waits until `fn(arg)` in the page is truthy, failing with `what` and a diagnostic. */
async function until(page, what, fn, arg, timeoutMs = 10_000, diag = null) {
  timeoutMs = bounded(timeoutMs);
  try {
    return await page.waitForFunction(fn, arg, { timeout: timeoutMs, polling: 100 });
  } catch (e) {
    let seen = '';
    if (diag) {
      try {
        seen = `; seen: ${JSON.stringify(await page.evaluate(diag, arg))}`;
      } catch (d) {
        seen = `; (diagnostic failed: ${d.message})`;
      }
    }
    throw new Error(`${what}: not within ${timeoutMs} ms${seen} (${e.message.split('\n')[0]})`);
  }
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

// In-page helpers (run with page.evaluate / waitForFunction; no closures over Node state).
const connState = () => document.querySelector('#conn-state')?.getAttribute('data-state') ?? null;
const chartPoints = (category) =>
  [...document.querySelectorAll('#charts div.chart')]
    .filter((c) => c.getAttribute('data-category') === category)
    .map((c) => ({ device: c.getAttribute('data-device'), points: Number(c.getAttribute('data-points') || 0) }));
const charts = () =>
  [...document.querySelectorAll('#charts div.chart')].map((c) => ({
    device: c.getAttribute('data-device'),
    category: c.getAttribute('data-category'),
    points: Number(c.getAttribute('data-points') || 0),
  }));

/** The registry's rows; the header's fleet summary. */
const registryRows = () =>
  [...document.querySelectorAll('table#registry tbody tr[data-device]')]
    .map((tr) => ({ id: tr.getAttribute('data-device'), cell: tr.querySelector('td.device')?.textContent, tags: tr.querySelector('td.tags')?.textContent.trim() }));
const fleetSummary = () => {
  const a = document.querySelector('#fleet-summary');
  const n = (id) => Number(document.querySelector(id)?.textContent);
  const r = a?.getBoundingClientRect();
  return a && {
    online: n('#fleet-online'), offline: n('#fleet-offline'), total: n('#fleet-total'),
    top: r.top, bottom: r.bottom, left: r.left, right: r.right, visible: r.width > 0 && r.height > 0 && getComputedStyle(a).visibility === 'visible',
    href: a.getAttribute('href'),
  };
};

/**
 * Whether each chart can be read, from its uPlot instance (div.chart's `uplot`):
 * per chart, what is wrong (nothing, when all is well), and its tick labels and
 * legend values for the log.
 */
const chartReadability = () => {
  const ctx = document.createElement('canvas').getContext('2d');
  return [...document.querySelectorAll('#charts div.chart')].filter((c) => c.uplot).map((c) => {
    const u = c.uplot;
    const problems = [];
    const labels = [];
    // Every y tick label fits in its axis: tick + gap + the label's width, measured
    // in the font uPlot draws it with (its font string is scaled by the pixel ratio).
    u.axes.forEach((axis, i) => {
      if (i === 0 || !axis.show || !axis._values) return;
      ctx.font = axis.font[0];
      const room = axis._size - axis.ticks.size - axis.gap;
      for (const label of axis._values) {
        const width = ctx.measureText(String(label)).width / devicePixelRatio;
        labels.push(String(label));
        if (width > room + 0.5) problems.push(`${axis.scale} tick "${label}" is ${width.toFixed(1)} px wide, its axis leaves ${room} px`);
        if (String(label) !== '' && !Number.isFinite(Number(String(label).replace('\u2212', '-')))) problems.push(`${axis.scale} tick "${label}" is not a number`);
      }
    });
    if (!(u.bbox.width > 0)) problems.push(`no room left for the plot (${u.bbox.width} px)`);
    // Every line can be read against something: an axis of its scale, or a legend
    // value that gives the scale's range; and its legend shows a number.
    const rows = c.querySelectorAll('.u-legend .u-series');
    const values = [];
    for (let s = 1; s < u.series.length; s++) {
      const value = rows[s]?.querySelector('.u-value')?.textContent ?? '(no legend row)';
      values.push(`${u.series[s].label}: ${value}`);
      const axis = u.axes.some((a) => a.show && a.scale === u.series[s].scale);
      if (!axis && !/\(.*\d.*\u2026.*\d.*\)/.test(value)) problems.push(`${u.series[s].label} has no axis and its legend (${value}) shows no range`);
      if (!/\d/.test(value)) problems.push(`${u.series[s].label}'s legend shows ${JSON.stringify(value)}, not a number`);
    }
    return { device: c.getAttribute('data-device'), category: c.getAttribute('data-category'), problems, labels, values };
  });
};

/**
 * Installed in every page before its scripts run: page-side timestamps
 * (performance.now()) of the first moment each condition held, so that "within 1 s
 * of X" is measured in the page itself, not through this script's polling.
 */
function recordMarks(historyPoints) {
  const marks = (window.__e2eMarks = {});
  const charted = (category) =>
    [...document.querySelectorAll('#charts div.chart')].some(
      (c) => c.getAttribute('data-category') === category && Number(c.getAttribute('data-points')) >= historyPoints,
    );
  const subscribed = (pattern) =>
    [...document.querySelectorAll('ul#subscriptions li')].some((li) => li.getAttribute('data-pattern') === pattern);
  const checks = {
    open: () => document.querySelector('#conn-state')?.getAttribute('data-state') === 'open',
    'subscribed env.*': () => subscribed('env.*'),
    'subscribed *': () => subscribed('*'),
    'env.temperature charted': () => charted('env.temperature'),
  };
  const observer = new MutationObserver(() => {
    const now = performance.now();
    let left = 0;
    for (const [name, check] of Object.entries(checks)) {
      if (name in marks) continue;
      if (check()) marks[name] = now;
      else left++;
    }
    if (!left) observer.disconnect();
  });
  observer.observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-state', 'data-points', 'data-pattern'] });
}
const marks = () => window.__e2eMarks;

/** Clicks `form`'s submit button (a <button> without type submits too). */
async function submit(page, form) {
  const button = page.locator(`${form} button[type=submit], ${form} input[type=submit], ${form} button:not([type])`).first();
  await button.click({ timeout: bounded(5_000) });
}

const browser = await launchChromium(chromium, { executablePath, serverPem });
let page = null;
let exitCode = 0;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.addInitScript(recordMarks, HISTORY_POINTS);
  page = await context.newPage();
  watch(page, 'operator page');

  // (b) Log in through the URL fragment.
  log(`opening ${url.replace(/#token=.*/, '#token=…')}`);
  await page.goto(url, { timeout: bounded(15_000), waitUntil: 'load' });
  await until(page, '#conn-state[data-state=open]', () => document.querySelector('#conn-state')?.getAttribute('data-state') === 'open',
    null, 10_000, connState);
  await until(page, '#role says "operator"', () => document.querySelector('#role')?.textContent.trim() === 'operator',
    null, 5_000, () => document.querySelector('#role')?.textContent ?? null);
  const address = page.url();
  check(!address.includes('token='), `the token is still in the address bar: ${address}`);
  const stored = await page.evaluate(() => sessionStorage.getItem('telehub_token'));
  check(stored && url.endsWith(stored), 'sessionStorage "telehub_token" does not hold the token from the URL');
  log('b: logged in as operator, token moved out of the address bar');

  // (c) Subscribe env.* after TRAFFIC_MS of fleet traffic: History fills a chart at
  // once, with more points than live data could bring in HISTORY_WINDOW_MS.
  await page.waitForTimeout(TRAFFIC_MS);
  const early = (await page.evaluate(chartPoints, 'env.temperature')).filter((c) => c.points > 0);
  check(early.length === 0, `env.temperature charts hold points before any subscription (${JSON.stringify(early)}): the History check below would prove nothing`);
  await page.fill('form#subscribe input#pattern', 'env.*', { timeout: bounded(5_000) });
  await submit(page, 'form#subscribe');
  await until(page, 'ul#subscriptions lists env.* (the hub\'s `subscribed`)', () => 'subscribed env.*' in window.__e2eMarks,
    null, 5_000, () => [...document.querySelectorAll('ul#subscriptions li')].map((li) => li.getAttribute('data-pattern')));
  // Waits a little longer than the window, to say by how much it was missed.
  await until(page, `a div.chart[data-category="env.temperature"] with data-points >= ${HISTORY_POINTS} (History replay)`,
    () => 'env.temperature charted' in window.__e2eMarks, null, HISTORY_WINDOW_MS + 4_000, charts);
  const c = await page.evaluate(marks);
  const fillMs = Math.round(c['env.temperature charted'] - c['subscribed env.*']);
  check(fillMs <= HISTORY_WINDOW_MS,
    `an env.temperature chart reached ${HISTORY_POINTS} points ${fillMs} ms after the hub confirmed env.*, not within ${HISTORY_WINDOW_MS} ms: History did not fill it`);
  const before = await page.evaluate(chartPoints, 'env.temperature');
  const best = before.reduce((a, b) => (b.points > a.points ? b : a));
  log(`c: History filled ${before.length} env.temperature charts ${fillMs} ms after the hub confirmed env.* (${best.device}: ${best.points} points)`);
  await until(page, `live points: the env.temperature chart of ${best.device} grows past ${best.points}`,
    ([device, n]) => [...document.querySelectorAll('#charts div.chart')].some((c) => c.getAttribute('data-category') === 'env.temperature' && c.getAttribute('data-device') === device && Number(c.getAttribute('data-points')) > n),
    [best.device, best.points], 5_000, charts);
  log('c: charts grow with live telemetry');

  // (d) The fleet table.
  await until(page, 'table#fleet has >= 12 rows whose td.state is "online"',
    () => [...document.querySelectorAll('table#fleet tbody tr[data-device]')].filter((tr) => tr.querySelector('td.state')?.textContent.trim() === 'online').length >= 12,
    null, 10_000, () => [...document.querySelectorAll('table#fleet tbody tr')].map((tr) => [tr.getAttribute('data-device'), tr.querySelector('td.state')?.textContent]));
  await until(page, 'table#fleet has the hostile device\'s row, its tags cell showing the markup as text',
    ([id, tag]) => {
      const tr = [...document.querySelectorAll('table#fleet tbody tr[data-device]')].find((r) => r.getAttribute('data-device') === id);
      return tr && tr.querySelector('td.tags')?.textContent.includes(tag) && tr.querySelector('td.device')?.textContent.includes(id);
    },
    [HOSTILE_ID, HOSTILE_TAG], 10_000,
    ([id]) => {
      const tr = [...document.querySelectorAll('table#fleet tbody tr[data-device]')].find((r) => r.getAttribute('data-device') === id);
      return tr ? { device: tr.querySelector('td.device')?.textContent, tags: tr.querySelector('td.tags')?.textContent } : 'no row';
    });
  const fleetCount = await page.evaluate(() => document.querySelector('#fleet-count')?.textContent ?? null);
  log(`d: fleet table complete (#fleet-count: ${JSON.stringify(fleetCount)})`);

  // (d) A laptop's first screen has the fleet's summary, counting what the table
  // shows; its link brings the table (far below the charts) into view.
  await page.setViewportSize({ width: 1366, height: 768 });
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.waitForTimeout(300);
  await until(page, '#fleet-summary inside the first 1366x768 screen, counting the fleet table\'s rows',
    ([devices]) => {
      const a = document.querySelector('#fleet-summary');
      const r = a?.getBoundingClientRect();
      if (!r || !(r.width > 0) || r.top < 0 || r.bottom > innerHeight || r.right > innerWidth) return false;
      const rows = [...document.querySelectorAll('table#fleet tbody tr[data-device]')];
      const online = rows.filter((tr) => tr.querySelector('td.state')?.textContent.trim() === 'online').length;
      const n = (id) => Number(document.querySelector(id)?.textContent);
      return rows.length >= devices && n('#fleet-online') === online && n('#fleet-offline') === rows.length - online && n('#fleet-total') === rows.length;
    },
    [DEMO_DEVICES + 1], 5_000,
    () => ({ summary: (() => {
      const a = document.querySelector('#fleet-summary');
      const r = a?.getBoundingClientRect();
      return a && { text: a.textContent.replace(/\s+/g, ' ').trim(), top: r.top, bottom: r.bottom, right: r.right, viewport: [innerWidth, innerHeight] };
    })(), rows: document.querySelectorAll('table#fleet tbody tr[data-device]').length }));
  const summary = await page.evaluate(fleetSummary);
  await page.screenshot({ path: join(outDir, 'laptop-first-screen.png'), timeout: bounded(10_000), animations: 'disabled' });
  await page.click('#fleet-summary', { timeout: bounded(5_000) });
  await until(page, 'after clicking #fleet-summary, the fleet table\'s card is in view below the header', () => {
    const card = document.querySelector('table#fleet')?.closest('section');
    const head = document.querySelector('header')?.getBoundingClientRect();
    const r = card?.getBoundingClientRect();
    return r && head && r.top >= head.bottom - 1 && r.top < innerHeight - 100;
  }, null, 5_000, () => ({ card: document.querySelector('table#fleet')?.closest('section')?.getBoundingClientRect().top, scrollY }));
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.setViewportSize({ width: 1280, height: 800 });
  log(`d: fleet summary in the first screen (${summary.online} online, ${summary.offline} offline, ${summary.total} devices, bottom at ${Math.round(summary.bottom)} px); its link scrolls to the table`);

  // (k) The registry: every device of the fleet, with the same tags, as text.
  await until(page, 'table#registry lists every device of the fleet table, with the same tags',
    () => {
      const fleet = Object.entries(Object.fromEntries([...document.querySelectorAll('table#fleet tbody tr[data-device]')]
        .map((tr) => [tr.getAttribute('data-device'), tr.querySelector('td.tags')?.textContent.trim()])));
      const registry = new Map([...document.querySelectorAll('table#registry tbody tr[data-device]')]
        .map((tr) => [tr.getAttribute('data-device'), { cell: tr.querySelector('td.device')?.textContent, tags: tr.querySelector('td.tags')?.textContent.trim() }]));
      return fleet.length > 0 && fleet.every(([id, tags]) => registry.get(id)?.cell === id && registry.get(id)?.tags === tags);
    },
    null, 20_000, () => ({ fleet: Object.keys(Object.fromEntries([...document.querySelectorAll('table#fleet tbody tr[data-device]')].map((tr) => [tr.getAttribute('data-device'), 1]))), registry: [...document.querySelectorAll('table#registry tbody tr[data-device]')].map((tr) => [tr.getAttribute('data-device'), tr.querySelector('td.tags')?.textContent]), note: document.querySelector('#registry-note')?.textContent }));
  const listed = await page.evaluate(registryRows);
  const hostileRow = listed.find((r) => r.id === HOSTILE_ID);
  check(hostileRow && hostileRow.cell === HOSTILE_ID && hostileRow.tags.includes(HOSTILE_TAG),
    `table#registry does not show the hostile device's id and tag as text: ${JSON.stringify(hostileRow)}`);
  check(listed.length >= DEMO_DEVICES + 1, `table#registry lists ${listed.length} devices, not at least ${DEMO_DEVICES + 1}`);
  // Paging: with 5 a page, "Load more" fetches the next ones (after the last id
  // shown) until the hub has no more; the result is the same list, in id order.
  await page.evaluate(() => { document.querySelector('table#registry').dataset.pageSize = '5'; });
  await page.click('#registry-refresh', { timeout: bounded(5_000) });
  await until(page, 'table#registry shows 5 rows and #registry-more after a refresh with data-page-size=5',
    () => document.querySelectorAll('table#registry tbody tr[data-device]').length === 5 && !document.querySelector('#registry-more').hidden,
    null, 5_000, () => ({ rows: document.querySelectorAll('table#registry tbody tr[data-device]').length, more: !document.querySelector('#registry-more')?.hidden }));
  for (let pages = 1; await page.evaluate(() => !document.querySelector('#registry-more').hidden); pages++) {
    check(pages < 20, 'table#registry still offers "Load more" after 20 pages');
    const shown = await page.evaluate(() => document.querySelectorAll('table#registry tbody tr[data-device]').length);
    await page.click('#registry-more', { timeout: bounded(5_000) });
    await until(page, `"Load more" adds the next page to table#registry (${shown} rows so far)`,
      (shown) => document.querySelectorAll('table#registry tbody tr[data-device]').length > shown || document.querySelector('#registry-more').hidden,
      shown, 5_000, () => document.querySelector('#registry-note')?.textContent);
  }
  const paged = (await page.evaluate(registryRows)).map((r) => r.id);
  const ids = listed.map((r) => r.id);
  check(JSON.stringify(paged) === JSON.stringify(ids),
    `paging through table#registry 5 at a time gave ${JSON.stringify(paged)}, not ${JSON.stringify(ids)}`);
  await page.evaluate(() => { document.querySelector('table#registry').dataset.pageSize = '100'; });
  log(`k: the registry lists the ${listed.length} devices of the fleet with their tags, also paged 5 at a time`);

  // (k) An operator registers a device ahead of its first connection.
  const NEW_DEVICE = `e2e-registered-${Date.now().toString(36)}`;
  const NEW_TAGS = { site: 'lab', note: '<i>pre</i>' };
  await page.fill('form#register input#register-id', NEW_DEVICE, { timeout: bounded(5_000) });
  await page.fill('form#register input#register-tags', 'site=lab, note=<i>pre</i>', { timeout: bounded(5_000) });
  await submit(page, 'form#register');
  await until(page, '#register-result[data-state=accepted]', () => document.querySelector('#register-result')?.getAttribute('data-state') === 'accepted',
    null, 5_000, () => ({ state: document.querySelector('#register-result')?.getAttribute('data-state'), text: document.querySelector('#register-result')?.textContent }));
  await until(page, `table#registry lists ${NEW_DEVICE} with its tags as text`, ([id]) => {
    const tr = [...document.querySelectorAll('table#registry tbody tr[data-device]')].find((r) => r.getAttribute('data-device') === id);
    return tr && tr.querySelector('td.tags')?.textContent.trim() === 'note=<i>pre</i> site=lab' && tr.querySelector('td.last-seen')?.textContent === 'never';
  }, [NEW_DEVICE], 5_000, registryRows);
  const rest = await page.evaluate(async (id) => {
    const response = await fetch('/v1/devices?limit=1000', { headers: { Authorization: 'Bearer ' + sessionStorage.getItem('telehub_token') } });
    return { status: response.status, device: (await response.json()).devices.find((d) => d.id === id) };
  }, NEW_DEVICE);
  check(rest.status === 200 && rest.device && JSON.stringify(rest.device.tags) === JSON.stringify({ note: NEW_TAGS.note, site: NEW_TAGS.site }) && rest.device.last_seen_ms == null,
    `GET /v1/devices after registering ${NEW_DEVICE}: ${JSON.stringify(rest)}`);
  check(await page.evaluate(() => document.querySelectorAll('i').length) === 0, 'an <i> element in the document: a registered tag was rendered as HTML');
  // A refusal is the hub's own line.
  allowRefusal = /^Failed to load resource: the server responded with a status of 400/;
  await page.fill('form#register input#register-id', 'x'.repeat(MAX_ID + 1), { timeout: bounded(5_000) });
  await page.fill('form#register input#register-tags', '', { timeout: bounded(5_000) });
  await submit(page, 'form#register');
  await until(page, `#register-result[data-state=error] saying "${LONG_ID_REFUSAL}"`, (text) => {
    const r = document.querySelector('#register-result');
    return r?.getAttribute('data-state') === 'error' && r.textContent === text;
  }, LONG_ID_REFUSAL, 5_000, () => ({ state: document.querySelector('#register-result')?.getAttribute('data-state'), text: document.querySelector('#register-result')?.textContent }));
  allowRefusal = null;
  await page.fill('form#register input#register-id', '', { timeout: bounded(5_000) });
  log(`k: ${NEW_DEVICE} registered through the form, listed, returned by GET /v1/devices; a ${MAX_ID + 1}-byte id refused with the hub's line`);

  // (e) XSS: the hostile device's telemetry is text only.
  await page.fill('form#subscribe input#pattern', 'env.evil', { timeout: bounded(5_000) });
  await submit(page, 'form#subscribe');
  await until(page, 'the #latest row of the hostile device in env.evil shows the reading name and text verbatim',
    ([id, name, text]) => {
      const tr = [...document.querySelectorAll('table#latest tbody tr[data-category="env.evil"]')].find((r) => r.getAttribute('data-device') === id);
      return tr && tr.textContent.includes(name) && tr.textContent.includes(text);
    },
    [HOSTILE_ID, HOSTILE_NAME, HOSTILE_TEXT], 10_000,
    () => [...document.querySelectorAll('table#latest tbody tr[data-category="env.evil"]')].map((r) => r.textContent));
  const xss = await page.evaluate(() => ({
    pwned: typeof window.__pwned === 'undefined' ? null : String(window.__pwned),
    img: document.querySelectorAll('img[src="x"]').length,
    bold: [...document.querySelectorAll('b')].filter((b) => b.textContent.includes('bold')).length,
    scripts: [...document.querySelectorAll('script')].filter((s) => s.textContent.includes('__pwned')).length,
  }));
  check(xss.pwned === null, `window.__pwned was set to ${xss.pwned}: hub data ran as script`);
  check(xss.img === 0, `${xss.img} <img src=x> element(s) in the document: hub data rendered as HTML`);
  check(xss.bold === 0, `${xss.bold} <b> element(s) containing "bold": hub data rendered as HTML`);
  check(xss.scripts === 0, `${xss.scripts} <script> element(s) with __pwned in the document`);
  log('e: hostile markup shown as text, nothing ran');

  // (f) A CRITICAL notification to fleet=north, acknowledged by every target.
  const known = await page.evaluate(() => [...document.querySelectorAll('#campaigns div.campaign')].map((c) => c.getAttribute('data-id')));
  await until(page, 'section#notifications is visible for an operator', () => {
    const s = document.querySelector('section#notifications');
    return s && !s.hasAttribute('hidden');
  }, null, 5_000);
  await page.selectOption('select#notify-target', 'tags', { timeout: bounded(5_000) });
  await page.fill('input#notify-tags', 'fleet=north', { timeout: bounded(5_000) });
  await page.selectOption('select#notify-severity', 'CRITICAL', { timeout: bounded(5_000) });
  await page.fill('input#notify-title', 'e2e: north fleet check', { timeout: bounded(5_000) });
  await page.fill('textarea#notify-body', 'Sent by tests/dashboard_browser.rs; please acknowledge.', { timeout: bounded(5_000) });
  await page.fill('input#notify-ttl', '300', { timeout: bounded(5_000) });
  await submit(page, 'form#notify');
  const sentAt = Date.now();
  await until(page, '#notify-result[data-state=accepted]', () => document.querySelector('#notify-result')?.getAttribute('data-state') === 'accepted',
    null, 5_000, () => {
      const r = document.querySelector('#notify-result');
      return r ? { state: r.getAttribute('data-state'), text: r.textContent } : null;
    });
  const handle = await until(page, 'a new div.campaign in #campaigns', (known) =>
    [...document.querySelectorAll('#campaigns div.campaign')].map((c) => c.getAttribute('data-id')).find((id) => !known.includes(id)),
    known, 5_000, () => [...document.querySelectorAll('#campaigns div.campaign')].map((c) => c.getAttribute('data-id')));
  const id = await handle.jsonValue();
  const resultText = await page.evaluate(() => document.querySelector('#notify-result').textContent);
  check(resultText.includes(id), `#notify-result (${JSON.stringify(resultText)}) does not name the campaign id ${id}`);
  const campaignState = (id) => {
    const c = [...document.querySelectorAll('#campaigns div.campaign')].find((d) => d.getAttribute('data-id') === id);
    if (!c) return null;
    const a = (n) => c.getAttribute(`data-${n}`);
    return {
      targets: a('targets'), pending: a('pending'), delivered: a('delivered'), acknowledged: a('acknowledged'), expired: a('expired'),
      complete: a('complete'), percent: a('percent'),
      stragglers: c.querySelector('.stragglers') ? c.querySelectorAll('.stragglers tbody tr').length : 'no .stragglers',
      text: c.textContent.replace(/\s+/g, ' ').slice(0, 200),
    };
  };
  await until(page, `campaign ${id} reaches data-complete="true" and data-percent="100"`, (id) => {
    const c = [...document.querySelectorAll('#campaigns div.campaign')].find((d) => d.getAttribute('data-id') === id);
    return c && c.getAttribute('data-complete') === 'true' && c.getAttribute('data-percent') === '100';
  }, id, Math.max(100, 20_000 - (Date.now() - sentAt)), campaignState);
  await until(page, `campaign ${id}: its .stragglers table is empty`, (id) => {
    const c = [...document.querySelectorAll('#campaigns div.campaign')].find((d) => d.getAttribute('data-id') === id);
    return c && c.querySelector('.stragglers') && c.querySelectorAll('.stragglers tbody tr').length === 0;
  }, id, 5_000, campaignState);
  const done = await page.evaluate(campaignState, id);
  check(Number(done.targets) >= 1 && done.acknowledged === done.targets,
    `campaign ${id} complete but acknowledged (${done.acknowledged}) != targets (${done.targets})`);
  log(`f: campaign ${id}: ${done.acknowledged}/${done.targets} acknowledged in ${Date.now() - sentAt} ms`);
  await page.screenshot({ path: join(outDir, 'laptop.png'), timeout: bounded(10_000), animations: 'disabled' });

  // (g) Phone width: no horizontal page scroll.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  const widths = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    wide: [...document.querySelectorAll('body *')]
      .filter((e) => e.getBoundingClientRect().right > 391)
      .slice(0, 5)
      .map((e) => `${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''}${e.className && typeof e.className === 'string' ? '.' + e.className.trim().split(/\s+/).join('.') : ''}`),
  }));
  await page.screenshot({ path: join(outDir, 'phone.png'), fullPage: true, timeout: bounded(10_000), animations: 'disabled' });
  check(widths.scroll <= 391, `at 390 px wide the page scrolls horizontally: scrollWidth ${widths.scroll}; widest: ${widths.wide.join(', ')}`);
  // Each table inside the screen: every cell of every row within the table's box,
  // the box within the screen (a phone shows no scroll bar to say there is more).
  const tables = await page.evaluate(() => ['fleet', 'latest', 'registry'].map((id) => {
    const table = document.getElementById(id);
    const box = table?.parentElement?.getBoundingClientRect();
    if (!table || !box) return { id, problem: 'missing' };
    const outside = [...table.querySelectorAll('tbody td')].filter((td) => {
      const r = td.getBoundingClientRect();
      return r.width > 0 && (r.left < box.left - 1 || r.right > box.right + 1);
    });
    return {
      id,
      rows: table.tBodies[0].rows.length,
      box: [Math.round(box.left), Math.round(box.right)],
      card: Math.round(table.closest('section').getBoundingClientRect().right),
      outside: outside.length,
      first: outside.slice(0, 3).map((td) => `td.${td.className} "${td.textContent.slice(0, 30)}" ${Math.round(td.getBoundingClientRect().left)}..${Math.round(td.getBoundingClientRect().right)}`),
    };
  }));
  for (const t of tables) {
    check(!t.problem, `table#${t.id}: ${t.problem}`);
    check(t.rows > 0, `table#${t.id} has no rows at phone width: nothing was tested`);
    check(t.box[0] >= 0 && t.box[1] <= 390 && t.card <= 390, `at 390 px table#${t.id}'s box or card reaches past the screen: ${JSON.stringify(t)}`);
    check(t.outside === 0, `at 390 px table#${t.id} has ${t.outside} cell(s) cut off past its box: ${t.first.join(', ')}`);
  }
  const phoneSummary = await page.evaluate(fleetSummary);
  check(phoneSummary?.visible && phoneSummary.right <= 390.5 && phoneSummary.bottom <= 844, `at 390x844 #fleet-summary is not in the first screen: ${JSON.stringify(phoneSummary)}`);
  log(`g: phone width ok (scrollWidth ${widths.scroll}); tables reflow within the screen: ${tables.map((t) => `${t.id} ${t.rows} rows`).join(', ')}`);
  await page.setViewportSize({ width: 1280, height: 800 });

  // (h) The hub restarts; the page reconnects and catches up.
  // Every state #conn-state passes through, however briefly.
  await page.evaluate(() => {
    window.__e2eStates = [];
    new MutationObserver(() => {
      const s = document.querySelector('#conn-state')?.getAttribute('data-state');
      if (window.__e2eStates.at(-1) !== s) window.__e2eStates.push(s);
    }).observe(document.body, { attributes: true, attributeFilter: ['data-state'], subtree: true, childList: true });
  });
  allowNetworkErrors = true;
  console.log('RESTART-HUB');
  await until(page, '#conn-state leaves "open" when the hub stops', () => window.__e2eStates.some((s) => s !== 'open'),
    null, 15_000, () => window.__e2eStates);
  // The hub is down: nothing arrives until the page reconnects.
  const beforeRestart = await page.evaluate(charts);
  log(`h: connection states so far: ${JSON.stringify(await page.evaluate(() => window.__e2eStates))}`);
  await waitForStdin('RESTARTED', 40_000);
  const restartedAt = Date.now();
  await until(page, '#conn-state back to "open" within 20 s of the restart', () => document.querySelector('#conn-state')?.getAttribute('data-state') === 'open',
    null, 20_000, connState);
  allowNetworkErrors = false;
  log(`h: states ${JSON.stringify(await page.evaluate(() => window.__e2eStates))}`);
  log(`h: reconnected ${Date.now() - restartedAt} ms after the restart (${tolerated} browser connection-failure messages tolerated meanwhile)`);
  const subs = await page.evaluate(() => [...document.querySelectorAll('ul#subscriptions li')].map((li) => li.getAttribute('data-pattern')));
  check(subs.includes('env.*'), `after the reconnect ul#subscriptions lists ${JSON.stringify(subs)}, not env.*`);
  await until(page, 'a chart\'s data-points grows after the restart', (before) =>
    [...document.querySelectorAll('#charts div.chart')].some((c) => {
      const old = before.find((b) => b.device === c.getAttribute('data-device') && b.category === c.getAttribute('data-category'));
      return old && Number(c.getAttribute('data-points')) > old.points;
    }), beforeRestart, 10_000, charts);
  log('h: charts grow again after the restart');

  // (i) A viewer sees no notification form. The restarted hub's History starts
  // empty, so the viewer comes only after TRAFFIC_MS of fleet traffic since then.
  await page.waitForTimeout(Math.max(0, restartedAt + TRAFFIC_MS - Date.now()));
  const viewer = await context.newPage();
  watch(viewer, 'viewer page');
  const viewerUrl = demoUrl.replace(/#token=[^&]*/, '#token=' + encodeURIComponent(viewerToken));
  await viewer.goto(viewerUrl, { timeout: bounded(15_000), waitUntil: 'load' });
  await until(viewer, 'viewer: #conn-state[data-state=open]', () => document.querySelector('#conn-state')?.getAttribute('data-state') === 'open',
    null, 10_000, connState);
  await until(viewer, 'viewer: #role says "viewer"', () => document.querySelector('#role')?.textContent.trim() === 'viewer',
    null, 5_000, () => document.querySelector('#role')?.textContent ?? null);
  const hidden = await viewer.evaluate(() => document.querySelector('section#notifications')?.hasAttribute('hidden') ?? 'missing');
  check(hidden === true, `viewer: section#notifications hidden attribute: ${hidden}`);
  // The registry, without the form; the device registered before the restart is kept.
  await until(viewer, `viewer: table#registry lists the fleet and ${NEW_DEVICE}`, ([id, n]) => {
    const ids = [...document.querySelectorAll('table#registry tbody tr[data-device]')].map((tr) => tr.getAttribute('data-device'));
    return ids.includes(id) && ids.length >= n;
  }, [NEW_DEVICE, DEMO_DEVICES + 2], 5_000, () => ({ rows: [...document.querySelectorAll('table#registry tbody tr[data-device]')].map((tr) => tr.getAttribute('data-device')), note: document.querySelector('#registry-note')?.textContent }));
  const form = await viewer.evaluate(() => {
    const f = document.querySelector('form#register');
    return f ? { hidden: f.hasAttribute('hidden'), shown: f.getBoundingClientRect().height > 0 } : 'missing';
  });
  check(form.hidden === true && form.shown === false, `viewer: form#register is not hidden: ${JSON.stringify(form)}`);
  check(!viewer.url().includes('token='), `viewer: the token is still in the address bar: ${viewer.url()}`);
  // The demo URL's `subscribe=*`: a fresh tab is subscribed to everything, and the
  // History replay fills its charts at once.
  await until(viewer, 'viewer: ul#subscriptions lists "*"', () => 'subscribed *' in window.__e2eMarks,
    null, 5_000, () => document.querySelector('ul#subscriptions')?.textContent ?? null);
  await until(viewer, `viewer: an env.temperature chart with >= ${HISTORY_POINTS} points (History replay)`,
    () => 'env.temperature charted' in window.__e2eMarks, null, HISTORY_WINDOW_MS + 4_000, charts);
  const v = await viewer.evaluate(marks);
  const viewerFillMs = Math.round(v['env.temperature charted'] - v.open);
  check(viewerFillMs <= HISTORY_WINDOW_MS,
    `viewer: an env.temperature chart reached ${HISTORY_POINTS} points ${viewerFillMs} ms after the page connected, not within ${HISTORY_WINDOW_MS} ms: History did not fill it`);
  log(`i: viewer logged in; notifications section and registration form hidden; subscribe=* filled a chart from History ${viewerFillMs} ms after connecting`);

  // (j) The viewer's charts can be read: every kind of the demo's, each drawn.
  await viewer.mouse.move(1, 1);
  const kinds = ['env.temperature', 'power.battery', 'gps.position'];
  await until(viewer, `viewer: charts of ${kinds.join(', ')} drawn by uPlot`, (kinds) =>
    kinds.every((k) => [...document.querySelectorAll('#charts div.chart')].some((c) => c.getAttribute('data-category') === k && c.uplot && Number(c.getAttribute('data-points')) > 1)),
  kinds, 10_000, charts);
  // Stated once more after a frame or two: the legend must hold through redraws.
  await viewer.waitForTimeout(500);
  const readable = await viewer.evaluate(chartReadability);
  const wrong = readable.filter((c) => c.problems.length);
  check(!wrong.length, `viewer: charts that cannot be read without hovering:\n  ${wrong.map((c) => `${c.device} ${c.category}: ${c.problems.join('; ')}`).join('\n  ')}`);
  const longest = readable.flatMap((c) => c.labels).reduce((a, b) => (b.length > a.length ? b : a), '');
  check(longest.length >= 6, `viewer: the longest y tick label is ${JSON.stringify(longest)}: no long label was tested (gps latitudes have 6 or more characters)`);
  const threeLines = readable.filter((c) => c.values.length >= 3);
  check(threeLines.length > 0, 'viewer: no chart with three or more lines (gps, battery): a third axis was not tested');
  // Hovering shows the value under the pointer; leaving goes back to the latest.
  const gps = viewer.locator('#charts div.chart[data-category="gps.position"] .u-over').first();
  await gps.scrollIntoViewIfNeeded({ timeout: bounded(5_000) });
  await gps.hover({ position: { x: 20, y: 20 }, timeout: bounded(5_000) });
  await viewer.waitForTimeout(200);
  const hovered = await viewer.evaluate(chartReadability);
  await viewer.mouse.move(1, 1);
  await viewer.waitForTimeout(300);
  const left = await viewer.evaluate(chartReadability);
  for (const [when, list] of [['while hovering a gps chart', hovered], ['after the pointer left', left]]) {
    const bad = list.filter((c) => c.problems.length);
    check(!bad.length, `viewer: ${when}: ${bad.map((c) => `${c.device} ${c.category}: ${c.problems.join('; ')}`).join('; ')}`);
  }
  await viewer.setViewportSize({ width: 1366, height: 768 });
  await viewer.waitForTimeout(300);
  await viewer.screenshot({ path: join(outDir, 'viewer.png'), timeout: bounded(10_000), animations: 'disabled' });
  const sample = readable.find((c) => c.category === 'gps.position');
  log(`j: ${readable.length} charts readable (longest y tick ${JSON.stringify(longest)}; ${sample.device} legend: ${sample.values.join(', ')})`);
  await viewer.close();

  // (a) Nothing complained along the way.
  check(problems.length === 0, `the page reported ${problems.length} console error(s)/warning(s) or uncaught exception(s):\n  ${problems.join('\n  ')}`);
  log('a: no console errors or warnings, no uncaught exceptions');
  log('PASSED');
} catch (e) {
  exitCode = 1;
  console.error(`dashboard_e2e.mjs: FAILED: ${e.message}`);
  if (problems.length) console.error(`console problems so far:\n  ${problems.join('\n  ')}`);
  if (page) {
    try {
      await page.screenshot({ path: join(outDir, 'failure.png'), fullPage: true, timeout: 10_000, animations: 'disabled' });
      console.error(`dashboard_e2e.mjs: screenshot in ${join(outDir, 'failure.png')}`);
    } catch (s) {
      console.error(`dashboard_e2e.mjs: no failure screenshot: ${s.message}`);
    }
  }
} finally {
  await browser.close().catch(() => {});
}
process.exit(exitCode);
