#!/usr/bin/env node
// Browser rendering benchmark of the dashboard under live telemetry: opens the page
// headless in Debian's Chromium (/usr/bin/chromium, or $TELEHUB_CHROMIUM, or
// --chromium) through playwright-core (tests/interop/node_modules), subscribes to a
// pattern, waits a warm-up, and measures inside the page for a fixed window.
//
//   node benches/dashboard_fps.mjs --url 'https://127.0.0.1:9443/#token=TOKEN&subscribe=*' \
//       --server-pem /tmp/fps/certs/server.pem [--seconds 10] [--warmup 3] [--pattern '*'] \
//       [--label TEXT] [--offered MSG_PER_S] [--hub-pid PID] [--sim-pid PID] \
//       [--screenshot FILE.png] [--chromium PATH]
//
// The browser trusts exactly the hub's certificate (by its SPKI hash, as
// tests/interop/dashboard_e2e.mjs does); no CA is installed and certificate errors are
// not ignored wholesale. Viewport 1280x800, as the e2e test's "laptop".
//
// Measured over the window (page-side clock, performance.now(), so the numbers do not
// depend on how fast this script's round trips to the page are):
//   fps                 requestAnimationFrame callbacks of a counter loop started when
//                       the page starts (the frames the browser actually produced),
//                       and the frame-interval distribution (p50/p95/max, frames > 50 ms)
//   page_frames         the dashboard's own rAF callbacks (frame.js) and the time they took
//   long_tasks          PerformanceObserver 'longtask' entries (>= 50 ms): count, total,
//                       max ms
//   ws                  WebSocket messages received (window.WebSocket is wrapped by an
//                       init script that adds one 'message' listener; it reads only the
//                       first key of each JSON envelope), by kind, and bytes; telemetry/s
//                       and how bursty the telemetry is (frames with any, runs of
//                       messages < 2 ms apart, longest gap)
//   header_rate         the page's own "msg/s" figure (#rate), sampled every second
//   heap                performance.memory.usedJSHeapSize at start and end
//                       (--enable-precise-memory-info), plus CDP Performance metrics
//                       (JS heap, DOM nodes, script/layout/style time of the renderer);
//                       after the window, heap and DOM nodes once more after a forced GC
//   charts              #charts div.chart count and their data-points; #charts-note
//   page                #dropped, #fleet-count, latest/fleet rows, connection-state
//                       changes, console errors/warnings, uncaught exceptions
//   cpu                 Chromium's processes (the browser's process tree), and the hub
//                       and generator when --hub-pid/--sim-pid are given, as a share of
//                       one core, from /proc/PID/stat
//
// Output: one JSON line on stdout (progress on stderr). Exit 0 when measured, 1 on a
// failure (with what was expected and what was seen), 2 on bad usage.

import { readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';

import { launchChromium } from '../tests/interop/chromium.mjs';

const require = createRequire(import.meta.url);
let chromium;
try {
  ({ chromium } = require('../tests/interop/node_modules/playwright-core'));
} catch (e) {
  console.error(`dashboard_fps.mjs: ${e.message.split('\n')[0]}; playwright-core is missing: run \`npm ci\` in tests/interop`);
  process.exit(1);
}

// ---- arguments -------------------------------------------------------------------

const USAGE =
  'usage: node benches/dashboard_fps.mjs --url URL#token=...[&subscribe=PATTERN] --server-pem PEM ' +
  '[--seconds 10] [--warmup 3] [--pattern *] [--label TEXT] [--offered N] [--hub-pid PID] [--sim-pid PID] ' +
  '[--screenshot FILE] [--chromium PATH]';
function parseArgs(argv) {
  const opts = { seconds: 10, warmup: 3, pattern: null };
  const known = new Set(['url', 'server-pem', 'seconds', 'warmup', 'pattern', 'label', 'offered', 'hub-pid', 'sim-pid', 'screenshot', 'chromium']);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-h' || a === '--help') {
      console.log(USAGE);
      process.exit(0);
    }
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
    if (!m || !known.has(m[1])) usage(`unknown argument ${JSON.stringify(a)}`);
    const value = m[2] ?? argv[++i];
    if (value === undefined) usage(`${a} needs a value`);
    opts[m[1]] = value;
  }
  if (!opts.url) usage('--url is required');
  if (!opts['server-pem']) usage('--server-pem is required');
  for (const k of ['seconds', 'warmup']) {
    opts[k] = Number(opts[k]);
    if (!Number.isFinite(opts[k]) || opts[k] < (k === 'seconds' ? 1 : 0) || opts[k] > 600) usage(`--${k} must be a number of seconds (seconds 1..600, warmup 0..600)`);
  }
  for (const k of ['hub-pid', 'sim-pid', 'offered']) {
    if (opts[k] !== undefined) {
      opts[k] = Number(opts[k]);
      if (!Number.isFinite(opts[k]) || opts[k] < 0) usage(`--${k} must be a non-negative number`);
    }
  }
  let url;
  try {
    url = new URL(opts.url);
  } catch {
    usage(`--url is not a URL: ${opts.url}`);
  }
  const fragment = new URLSearchParams(url.hash.replace(/^#/, ''));
  if (!fragment.get('token')) usage('--url must carry the token in its fragment: https://HOST:PORT/#token=...');
  // The pattern: --pattern wins; else the URL's &subscribe=; else "*". The URL's
  // subscribe= is used when it names the same pattern (the page subscribes itself
  // when it loads); otherwise it is removed and the form is used.
  const urlPattern = fragment.get('subscribe');
  opts.pattern = opts.pattern ?? urlPattern ?? '*';
  opts.viaUrl = urlPattern === opts.pattern;
  if (!opts.viaUrl && urlPattern !== null) fragment.delete('subscribe');
  url.hash = fragment.toString();
  opts.pageUrl = url.toString();
  return opts;
}
function usage(msg) {
  console.error(`dashboard_fps.mjs: ${msg}\n${USAGE}`);
  process.exit(2);
}

const opts = parseArgs(process.argv.slice(2));
const executablePath = opts.chromium || process.env.TELEHUB_CHROMIUM || '/usr/bin/chromium';
const started = Date.now();
const log = (msg) => console.error(`[fps +${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);

// The whole run is bounded, whatever a step below does.
const OVERALL_MS = (opts.warmup + opts.seconds) * 1000 + 90_000;
setTimeout(() => {
  console.error(`dashboard_fps.mjs: FAILED: the whole run took over ${OVERALL_MS} ms`);
  process.exit(3);
}, OVERALL_MS).unref();


// ---- CPU time from /proc ------------------------------------------------------------

const CLK_TCK = 100; // USER_HZ on Linux
function procStat(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' '); // fields from 3 (state) on
    return { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]), comm: s.slice(s.indexOf('(') + 1, s.lastIndexOf(')')) };
  } catch {
    return null;
  }
}
/** Sum of utime+stime ticks of `root`'s descendants (live ones; `root` itself excluded). */
function treeTicks(root) {
  const stats = new Map();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = procStat(name);
    if (st) stats.set(Number(name), st);
  }
  const inTree = new Set([root]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, st] of stats) {
      if (!inTree.has(pid) && inTree.has(st.ppid)) {
        inTree.add(pid);
        grew = true;
      }
    }
  }
  inTree.delete(root);
  let ticks = 0;
  for (const pid of inTree) ticks += stats.get(pid)?.ticks ?? 0;
  return { ticks, processes: [...inTree].filter((p) => stats.has(p)).length };
}
function pidTicks(pid) {
  return pid === undefined ? null : procStat(pid)?.ticks ?? null;
}

// ---- in-page instrumentation (init script: runs before the dashboard's scripts) ------

function instrument() {
  const now = () => performance.now();
  const s = (window.__fps = {
    frames: 0, // counter-loop frames since load
    frameTimes: null, // frame timestamps while recording
    pageFrames: 0, // the dashboard's own rAF callbacks
    pageFrameMs: 0,
    pageFrameMaxMs: 0,
    ws: { messages: 0, bytes: 0, telemetry: 0, kinds: {}, sockets: 0 },
    longTasks: [], // [startTime, duration]
    states: [], // [time, conn-state]
    rateSamples: null,
    arrivals: null, // telemetry arrival times while recording
  });
  const origRaf = window.requestAnimationFrame.bind(window);
  // The counter loop: one callback per frame the browser produces.
  const tick = (t) => {
    s.frames++;
    if (s.frameTimes) s.frameTimes.push(t);
    origRaf(tick);
  };
  origRaf(tick);
  // The dashboard's own frame callbacks (frame.js calls the global requestAnimationFrame).
  window.requestAnimationFrame = (cb) =>
    origRaf((t) => {
      const t0 = now();
      try {
        cb(t);
      } finally {
        const d = now() - t0;
        s.pageFrames++;
        s.pageFrameMs += d;
        if (d > s.pageFrameMaxMs) s.pageFrameMaxMs = d;
      }
    });
  // WebSocket messages: a subclass adds one listener before the page adds its own.
  const Orig = window.WebSocket;
  const count = (event) => {
    const ws = s.ws;
    ws.messages++;
    const d = event.data;
    if (typeof d === 'string') {
      ws.bytes += d.length;
      // The envelope's first key ({"telemetry":{...}}): no JSON.parse here.
      const end = d.indexOf('"', 2);
      const kind = d.charCodeAt(0) === 123 && d.charCodeAt(1) === 34 && end > 2 ? d.slice(2, end) : '?';
      ws.kinds[kind] = (ws.kinds[kind] || 0) + 1;
      // Telemetry arrives alone ({"telemetry":...}) or in batches ({"batch":
      // {"telemetry":[...]}}, the page's default): each message carries one deviceId.
      let carried = kind === 'telemetry' ? 1 : 0;
      if (kind === 'batch') {
        for (let at = d.indexOf('"deviceId"'); at >= 0; at = d.indexOf('"deviceId"', at + 10)) carried++;
      }
      ws.telemetry += carried;
      if (s.arrivals && carried > 0) s.arrivals.push(now());
    } else {
      ws.kinds['<binary>'] = (ws.kinds['<binary>'] || 0) + 1;
    }
  };
  window.WebSocket = class extends Orig {
    constructor(...args) {
      super(...args);
      s.ws.sockets++;
      this.addEventListener('message', count);
    }
  };
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) s.longTasks.push([e.startTime, e.duration]);
    }).observe({ type: 'longtask', buffered: true });
    s.longTaskSupported = true;
  } catch {
    s.longTaskSupported = false;
  }
  // Connection-state changes (a reconnect under load would show here).
  document.addEventListener('DOMContentLoaded', () => {
    const el = document.querySelector('#conn-state');
    if (!el) return;
    const record = () => {
      const st = el.getAttribute('data-state');
      if (s.states.at(-1)?.[1] !== st) s.states.push([now(), st]);
    };
    record();
    new MutationObserver(record).observe(el, { attributes: true, attributeFilter: ['data-state'] });
  });
}

// Snapshots, run in the page. Counters are cumulative; rates come from differences.
function startWindow() {
  const s = window.__fps;
  s.frameTimes = [];
  s.arrivals = [];
  s.rateSamples = [];
  s.rateTimer = setInterval(() => s.rateSamples.push(Number(document.querySelector('#rate')?.textContent) || 0), 1000);
  return snapshot();
  function snapshot() {
    return {
      t: performance.now(),
      frames: s.frames,
      pageFrames: s.pageFrames,
      pageFrameMs: s.pageFrameMs,
      ws: { messages: s.ws.messages, bytes: s.ws.bytes, telemetry: s.ws.telemetry, kinds: { ...s.ws.kinds } },
      heap: performance.memory ? performance.memory.usedJSHeapSize : null,
    };
  }
}
function endWindow(t0) {
  const s = window.__fps;
  clearInterval(s.rateTimer);
  const t = performance.now();
  const frameTimes = s.frameTimes;
  s.frameTimes = null;
  const arrivals = s.arrivals;
  s.arrivals = null;
  // How telemetry arrives: in how many frames any came (the most frames in which the
  // charts can change), in how many bursts (runs of messages less than 2 ms apart),
  // and the longest silence. frameTimes are rAF timestamps (frame start), arrivals
  // performance.now(): both on the page's clock.
  let framesWithTelemetry = 0;
  for (let i = 1, j = 0; i < frameTimes.length; i++) {
    while (j < arrivals.length && arrivals[j] < frameTimes[i - 1]) j++;
    if (j < arrivals.length && arrivals[j] < frameTimes[i]) framesWithTelemetry++;
  }
  let bursts = arrivals.length ? 1 : 0;
  let maxGap = 0;
  for (let i = 1; i < arrivals.length; i++) {
    const gap = arrivals[i] - arrivals[i - 1];
    if (gap >= 2) bursts++;
    if (gap > maxGap) maxGap = gap;
  }
  const intervals = [];
  for (let i = 1; i < frameTimes.length; i++) intervals.push(frameTimes[i] - frameTimes[i - 1]);
  intervals.sort((a, b) => a - b);
  const q = (p) => (intervals.length ? intervals[Math.min(intervals.length - 1, Math.floor(p * intervals.length))] : null);
  const inWindow = s.longTasks.filter(([start]) => start >= t0 && start < t);
  const charts = [...document.querySelectorAll('#charts div.chart')].map((c) => Number(c.getAttribute('data-points') || 0));
  const text = (sel) => document.querySelector(sel)?.textContent.trim() ?? null;
  return {
    t,
    frames: s.frames,
    pageFrames: s.pageFrames,
    pageFrameMs: s.pageFrameMs,
    pageFrameMaxMs: s.pageFrameMaxMs,
    ws: { messages: s.ws.messages, bytes: s.ws.bytes, telemetry: s.ws.telemetry, kinds: { ...s.ws.kinds }, sockets: s.ws.sockets },
    heap: performance.memory ? performance.memory.usedJSHeapSize : null,
    heapLimit: performance.memory ? performance.memory.jsHeapSizeLimit : null,
    intervals: { n: intervals.length, p50: q(0.5), p95: q(0.95), p99: q(0.99), max: intervals.at(-1) ?? null, over50: intervals.filter((d) => d > 50).length },
    arrivalStats: { framesWithTelemetry, bursts, maxGap, n: arrivals.length },
    longTaskSupported: s.longTaskSupported,
    longTasks: { count: inWindow.length, totalMs: inWindow.reduce((a, [, d]) => a + d, 0), maxMs: inWindow.reduce((a, [, d]) => Math.max(a, d), 0) },
    rateSamples: s.rateSamples,
    states: s.states,
    charts: {
      count: charts.length,
      points: charts,
      note: text('#charts-note') || null,
      empty: !document.querySelector('#charts-empty')?.hidden,
    },
    dropped: Number(text('#dropped')) || 0,
    fleetCount: text('#fleet-count'),
    fleetRows: document.querySelectorAll('table#fleet tbody tr[data-device]').length,
    latestRows: document.querySelectorAll('table#latest tbody tr[data-device]').length,
    latestNote: text('#latest-note') || null,
    hubError: document.querySelector('#hub-error')?.hidden ? null : text('#hub-error'),
    connState: document.querySelector('#conn-state')?.getAttribute('data-state') ?? null,
    subscriptions: [...document.querySelectorAll('ul#subscriptions li')].map((li) => li.getAttribute('data-pattern')),
    visibility: document.visibilityState,
  };
}

// ---- helpers ----------------------------------------------------------------------------

/** page.evaluate with its own bound: a page too busy to answer fails with a message. */
async function evaluate(page, what, fn, arg, timeoutMs = 15_000) {
  let timer;
  try {
    return await Promise.race([
      page.evaluate(fn, arg),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: the page did not answer within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Waits until `fn(arg)` in the page is truthy, failing with `what` and what was seen. */
async function until(page, what, fn, arg, timeoutMs, diag) {
  try {
    await page.waitForFunction(fn, arg, { timeout: timeoutMs, polling: 200 });
  } catch (e) {
    let seen = '';
    if (diag) {
      try {
        seen = `; seen: ${JSON.stringify(await evaluate(page, 'diagnostic', diag, arg, 5_000))}`;
      } catch (d) {
        seen = `; (diagnostic failed: ${d.message})`;
      }
    }
    const timedOut = /Timeout \d+ms exceeded/.test(e.message);
    throw new Error(`${what}: ${timedOut ? `not within ${timeoutMs} ms` : 'failed'}${seen} (${e.message.split('\n')[0]})`);
  }
}

const MiB = (b) => (b == null ? null : Math.round((b / 1048576) * 10) / 10);
const r1 = (x) => (x == null ? null : Math.round(x * 10) / 10);
const r2 = (x) => (x == null ? null : Math.round(x * 100) / 100);

async function cdpMetrics(cdp) {
  if (!cdp) return null;
  try {
    const { metrics } = await cdp.send('Performance.getMetrics');
    return Object.fromEntries(metrics.map((m) => [m.name, m.value]));
  } catch {
    return null;
  }
}

// ---- the run --------------------------------------------------------------------------------

const problems = [];
let browser = null;
let page = null;
let exitCode = 0;
try {
  log(`launching ${executablePath}`);
  browser = await launchChromium(chromium, {
    executablePath,
    serverPem: opts['server-pem'],
    // performance.memory without its coarse bucketing.
    extraArgs: ['--enable-precise-memory-info'],
  });

  // Playwright's Browser does not expose its process: Chromium is this script's child,
  // so its processes are this process's descendants.
  const browserPid = process.pid;
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.addInitScript(instrument);
  page = await context.newPage();
  page.on('console', (msg) => {
    if (msg.type() === 'error' || msg.type() === 'warning') problems.push(`console.${msg.type()}: ${msg.text()}`.slice(0, 300));
  });
  page.on('pageerror', (err) => problems.push(`uncaught: ${err.message}`.slice(0, 300)));
  let cdp = null;
  try {
    cdp = await context.newCDPSession(page);
    await cdp.send('Performance.enable');
  } catch (e) {
    log(`no CDP Performance metrics: ${e.message}`);
    cdp = null;
  }

  log(`opening ${opts.pageUrl.replace(/#token=[^&]*/, '#token=…')}`);
  try {
    await page.goto(opts.pageUrl, { timeout: 20_000, waitUntil: 'load' });
  } catch (e) {
    // Playwright's message repeats the URL, token included: keep only its first line, redacted.
    const first = e.message.split('\n')[0].replace(/#token=[^&\s]*/g, '#token=…');
    throw new Error(`loading the dashboard (is the hub up at ${new URL(opts.pageUrl).origin}?): ${first}`);
  }
  // Also stops waiting when the page gives up on the token (back to the login form with
  // an error), so a bad token fails at once.
  await until(page, '#conn-state[data-state=open] (the hub welcomed the token)',
    () => {
      const st = document.querySelector('#conn-state')?.getAttribute('data-state');
      const err = document.querySelector('#login-error');
      if (st === 'login' && err && !err.hidden && err.textContent.trim()) throw new Error(`the page rejected the token: ${err.textContent.trim()}`);
      return st === 'open';
    }, null, 15_000,
    () => ({ state: document.querySelector('#conn-state')?.getAttribute('data-state'), text: document.querySelector('#conn-state')?.textContent,
      loginError: document.querySelector('#login-error')?.textContent }));
  if (!opts.viaUrl) {
    log(`subscribing to ${JSON.stringify(opts.pattern)} through form#subscribe`);
    await page.fill('form#subscribe input#pattern', opts.pattern, { timeout: 10_000 });
    await page.locator('form#subscribe button[type=submit]').first().click({ timeout: 10_000 });
  }
  await until(page, `ul#subscriptions lists ${JSON.stringify(opts.pattern)} (the hub's \`subscribed\`)`,
    (p) => [...document.querySelectorAll('ul#subscriptions li')].some((li) => li.getAttribute('data-pattern') === p), opts.pattern, 15_000,
    () => ({ subscriptions: [...document.querySelectorAll('ul#subscriptions li')].map((li) => li.getAttribute('data-pattern')),
      error: document.querySelector('#subscribe-error')?.textContent }));
  log(`subscribed; warm-up ${opts.warmup} s`);
  await page.waitForTimeout(opts.warmup * 1000);

  const cpu0 = { wall: process.hrtime.bigint(), chromium: browserPid ? treeTicks(browserPid) : null, hub: pidTicks(opts['hub-pid']), sim: pidTicks(opts['sim-pid']) };
  const m0 = await cdpMetrics(cdp);
  const a = await evaluate(page, 'starting the window', startWindow);
  log(`measuring ${opts.seconds} s`);
  await page.waitForTimeout(opts.seconds * 1000);
  const b = await evaluate(page, 'ending the window', endWindow, a.t);
  const m1 = await cdpMetrics(cdp);
  const wallS = Number(process.hrtime.bigint() - cpu0.wall) / 1e9;
  const chromiumEnd = browserPid ? treeTicks(browserPid) : null;
  const share = (t0, t1) => (t0 == null || t1 == null ? null : r2((t1 - t0) / CLK_TCK / wallS));

  // After the window (so it does not disturb it): a forced full GC tells garbage not
  // yet collected (detached rows of rebuilt tables, old chart data) from what the page
  // holds on to.
  let afterGc = null;
  if (cdp) {
    try {
      await cdp.send('HeapProfiler.collectGarbage');
      const g = await cdpMetrics(cdp);
      const heap = await evaluate(page, 'reading the heap after GC', () => (performance.memory ? performance.memory.usedJSHeapSize : null));
      afterGc = { heap_mib: MiB(heap), dom_nodes: g?.Nodes ?? null, js_event_listeners: g?.JSEventListeners ?? null };
    } catch (e) {
      log(`no after-GC figures: ${e.message.split('\n')[0]}`);
    }
  }

  if (opts.screenshot) {
    try {
      await page.screenshot({ path: opts.screenshot, timeout: 15_000, animations: 'disabled' });
    } catch (e) {
      log(`no screenshot: ${e.message.split('\n')[0]}`);
    }
  }

  const secs = (b.t - a.t) / 1000;
  const kinds = {};
  for (const k of new Set([...Object.keys(a.ws.kinds), ...Object.keys(b.ws.kinds)])) kinds[k] = (b.ws.kinds[k] || 0) - (a.ws.kinds[k] || 0);
  const points = b.charts.points.slice().sort((x, y) => x - y);
  const metric = (name) => (m0 && m1 && name in m1 ? m1[name] - (m0[name] || 0) : null);
  const result = {
    bench: 'dashboard_fps',
    date: new Date().toISOString(),
    label: opts.label ?? null,
    pattern: opts.pattern,
    subscribed_via: opts.viaUrl ? 'url' : 'form',
    offered_msg_per_s: opts.offered ?? null,
    window_s: r2(secs),
    warmup_s: opts.warmup,
    viewport: '1280x800',
    received: {
      telemetry_per_s: r1((b.ws.telemetry - a.ws.telemetry) / secs),
      ws_messages_per_s: r1((b.ws.messages - a.ws.messages) / secs),
      ws_kib_per_s: r1((b.ws.bytes - a.ws.bytes) / 1024 / secs),
      by_kind: kinds,
      header_rate_samples: b.rateSamples,
      websockets_opened: b.ws.sockets,
      // Burstiness of the telemetry as the page sees it (see endWindow).
      frames_with_telemetry_per_s: r1(b.arrivalStats.framesWithTelemetry / secs),
      bursts_per_s: r1(b.arrivalStats.bursts / secs),
      max_gap_ms: r1(b.arrivalStats.maxGap),
    },
    fps: r1((b.frames - a.frames) / secs),
    frame_interval_ms: { p50: r1(b.intervals.p50), p95: r1(b.intervals.p95), p99: r1(b.intervals.p99), max: r1(b.intervals.max), over_50ms: b.intervals.over50 },
    page_frames: {
      per_s: r1((b.pageFrames - a.pageFrames) / secs),
      ms_per_s: r1((b.pageFrameMs - a.pageFrameMs) / secs),
      max_ms_since_load: r1(b.pageFrameMaxMs),
    },
    long_tasks: b.longTaskSupported ? { count: b.longTasks.count, total_ms: Math.round(b.longTasks.totalMs), max_ms: Math.round(b.longTasks.maxMs) } : 'unsupported',
    heap_mib: { start: MiB(a.heap), end: MiB(b.heap), limit: MiB(b.heapLimit) },
    after_forced_gc: afterGc,
    renderer: m1 ? {
      // CDP Performance metrics over the window: seconds of main-thread time per second.
      task_s_per_s: r2(metric('TaskDuration') / secs),
      script_s_per_s: r2(metric('ScriptDuration') / secs),
      layout_s_per_s: r2(metric('LayoutDuration') / secs),
      style_s_per_s: r2(metric('RecalcStyleDuration') / secs),
      layouts_per_s: r1(metric('LayoutCount') / secs),
      js_heap_used_mib: { start: MiB(m0?.JSHeapUsedSize), end: MiB(m1.JSHeapUsedSize) },
      js_heap_total_mib: MiB(m1.JSHeapTotalSize),
      dom_nodes: { start: m0?.Nodes ?? null, end: m1.Nodes },
      js_event_listeners: m1.JSEventListeners,
    } : null,
    charts: {
      count: b.charts.count,
      points_min: points[0] ?? null,
      points_median: points.length ? points[Math.floor(points.length / 2)] : null,
      points_max: points.at(-1) ?? null,
      points_total: points.reduce((x, y) => x + y, 0),
      note: b.charts.note,
    },
    page: {
      conn_state: b.connState,
      conn_state_changes: b.states.map(([t, st]) => `${st}@${(t / 1000).toFixed(1)}s`),
      subscriptions: b.subscriptions,
      dropped_total: b.dropped,
      fleet_count: b.fleetCount,
      fleet_rows: b.fleetRows,
      latest_rows: b.latestRows,
      latest_note: b.latestNote,
      hub_error: b.hubError,
      visibility: b.visibility,
      console_problems: problems.length,
      console_problem_samples: problems.slice(0, 5),
    },
    cpu_of_one_core: {
      chromium: chromiumEnd && cpu0.chromium ? share(cpu0.chromium.ticks, chromiumEnd.ticks) : null,
      chromium_processes: chromiumEnd?.processes ?? null,
      hub: share(cpu0.hub, pidTicks(opts['hub-pid'])),
      sim: share(cpu0.sim, pidTicks(opts['sim-pid'])),
    },
    machine: {
      cpus: os.cpus().length,
      cpu_model: os.cpus()[0]?.model ?? null,
      // This script's CPU affinity (Chromium inherits it): `taskset -c 1 node ...` pins both.
      cpus_allowed: (/Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/self/status', 'utf8')) || [])[1] ?? null,
      chromium: browser.version(),
      node: process.version,
      headless: true,
      gpu: 'disabled (--disable-gpu): software rendering',
    },
  };
  if (b.connState !== 'open') log(`warning: #conn-state is ${b.connState} at the end of the window`);
  process.stdout.write(JSON.stringify(result) + '\n');
} catch (e) {
  exitCode = 1;
  console.error(`dashboard_fps.mjs: FAILED: ${e.message}`);
  if (problems.length) console.error(`console problems:\n  ${problems.slice(0, 10).join('\n  ')}`);
} finally {
  if (browser) {
    await Promise.race([browser.close().catch(() => {}), new Promise((r) => setTimeout(r, 10_000))]);
  }
}
process.exit(exitCode);
