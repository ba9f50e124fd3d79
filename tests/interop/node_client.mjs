#!/usr/bin/env node
// A telehub device and dashboard built on independent libraries: Node's `ws` for the
// transport and `protobufjs` (loading proto/telehub/v1/telehub.proto at run time) for
// the envelopes.
//
// tests/interop_clients.rs runs this script against a hub it started: a dashboard
// connects and subscribes to one category, a device connects and sends the telemetry
// envelopes of --telemetry (proto3 JSON, one Envelope a line), the dashboard receives
// them, both close normally. It prints exactly one JSON line: what each connection
// offered and negotiated, the Welcome and Subscribed it got, and the envelopes the
// dashboard received (proto3 JSON), for the Rust test to check. Anything unexpected
// throws and exits non-zero with the error on stderr.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

let protobuf, WebSocket;
try {
  protobuf = (await import('protobufjs')).default;
  WebSocket = (await import('ws')).default;
} catch (e) {
  console.error(`node_client.mjs: ${e.message}; the interop test dependencies are missing: run \`bash .ci/run\``);
  process.exit(1);
}

const PROTOCOL = 'telehub.v1';
// Bound on every single wait; the Rust test bounds the whole run as well.
const TIMEOUT_MS = 10_000;

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' }, // wss://127.0.0.1:PORT
    ca: { type: 'string' }, // PEM of the hub's CA
    proto: { type: 'string' }, // proto/telehub/v1/telehub.proto
    'device-token': { type: 'string' },
    'dashboard-token': { type: 'string' },
    category: { type: 'string' }, // what the dashboard subscribes to
    telemetry: { type: 'string' }, // file of Envelopes, proto3 JSON lines
    'no-compression': { type: 'boolean', default: false },
    'client-max-window-bits': { type: 'string' },
    'client-no-context-takeover': { type: 'boolean', default: false },
    'server-no-context-takeover': { type: 'boolean', default: false },
    // ws compresses only messages of at least this many bytes (its default: 1024).
    threshold: { type: 'string' },
  },
});
for (const name of ['url', 'ca', 'proto', 'device-token', 'dashboard-token', 'category', 'telemetry']) {
  if (args[name] === undefined) throw new Error(`--${name} is required`);
}

// The whole run is bounded even if a wait below forgets to be.
setTimeout(() => {
  console.error('node_client.mjs: timed out');
  process.exit(2);
}, 3 * TIMEOUT_MS).unref();

/** `perMessageDeflate` for ws: off, ws's default offer, or an offer with parameters. */
function perMessageDeflate() {
  if (args['no-compression']) return false;
  const options = {};
  if (args['client-max-window-bits'] !== undefined) {
    options.clientMaxWindowBits = Number(args['client-max-window-bits']);
  }
  if (args['client-no-context-takeover']) options.clientNoContextTakeover = true;
  if (args['server-no-context-takeover']) options.serverNoContextTakeover = true;
  if (args.threshold !== undefined) options.threshold = Number(args.threshold);
  return Object.keys(options).length ? options : true;
}

/** Messages of one connection, read one at a time with a bounded wait. */
class Inbox {
  constructor(ws) {
    this.items = [];
    this.waiter = null;
    ws.on('message', (data, isBinary) => this.push({ data, isBinary }));
    ws.on('close', (code, reason) => this.push({ close: { code, reason: reason.toString() } }));
    ws.on('error', (error) => this.push({ error }));
  }

  push(item) {
    this.items.push(item);
    if (this.waiter) {
      const wake = this.waiter;
      this.waiter = null;
      wake();
    }
  }

  async next(what) {
    if (this.items.length === 0) {
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), TIMEOUT_MS);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    return this.items.shift();
  }
}

/** Opens a WebSocket and returns it with its inbox and the handshake headers. */
function open(path, token) {
  return new Promise((resolve, reject) => {
    let offered = null;
    let extensions = null;
    const ws = new WebSocket(`${args.url}${path}`, [PROTOCOL], {
      headers: { Authorization: `Bearer ${token}` },
      ca: readFileSync(args.ca),
      perMessageDeflate: perMessageDeflate(),
      handshakeTimeout: TIMEOUT_MS,
      // The one place ws shows the request it built, offer included.
      finishRequest: (req) => {
        offered = req.getHeader('sec-websocket-extensions') ?? null;
        req.end();
      },
    });
    const inbox = new Inbox(ws);
    ws.on('upgrade', (res) => {
      extensions = res.headers['sec-websocket-extensions'] ?? null;
    });
    ws.on('unexpected-response', (_req, res) => reject(new Error(`${path}: HTTP ${res.statusCode}`)));
    ws.once('error', reject);
    ws.once('open', () => {
      // ws.extensions names what ws itself agreed to, next to the raw answer.
      resolve({ ws, inbox, handshake: { offered, extensions, protocol: ws.protocol, agreed: ws.extensions } });
    });
  });
}

const root = await protobuf.load(args.proto);
const Envelope = root.lookupType('telehub.v1.Envelope');
// Any decoded message, in proto3 JSON (64-bit integers as strings, bytes as base64).
const toJson = (message) => message.toJSON();

/** The next envelope of `kind`, skipping presence events (which may come first). */
async function expect(inbox, kind) {
  for (;;) {
    const item = await inbox.next(kind);
    if (item.error) throw item.error;
    if (item.close) throw new Error(`expected ${kind}, connection closed ${JSON.stringify(item.close)}`);
    if (!item.isBinary) throw new Error(`expected a binary frame, got text ${item.data}`);
    const env = Envelope.decode(item.data);
    if (env.body === kind) return env;
    if (env.body !== 'presence') throw new Error(`expected ${kind}, got ${JSON.stringify(toJson(env))}`);
  }
}

/** Closes normally and returns the code of the hub's answering Close. */
async function close({ ws, inbox }) {
  ws.close(1000, 'bye');
  for (;;) {
    const item = await inbox.next('the close handshake');
    if (item.close) return item.close.code;
    if (item.error) throw item.error;
  }
}

const send = (ws, env) =>
  new Promise((resolve, reject) =>
    ws.send(Envelope.encode(Envelope.fromObject(env)).finish(), { binary: true }, (e) => (e ? reject(e) : resolve())),
  );

const outgoing = readFileSync(args.telemetry, 'utf8')
  .split('\n')
  .filter((line) => line.trim())
  .map((line) => JSON.parse(line));
const report = {};

const dashboard = await open('/v1/dashboard', args['dashboard-token']);
report.dashboard = dashboard.handshake;
report.dashboard.welcome = toJson((await expect(dashboard.inbox, 'welcome')).welcome);
await send(dashboard.ws, { subscribe: { categories: [args.category] } });
report.dashboard.subscribed = (await expect(dashboard.inbox, 'subscribed')).subscribed.categories;

const device = await open('/v1/device', args['device-token']);
report.device = device.handshake;
report.device.welcome = toJson((await expect(device.inbox, 'welcome')).welcome);
for (const env of outgoing) await send(device.ws, env);

report.received = [];
while (report.received.length < outgoing.length) {
  report.received.push(toJson(await expect(dashboard.inbox, 'telemetry')));
}
report.device.close_code = await close(device);
report.dashboard.close_code = await close(dashboard);

console.log(JSON.stringify(report));
process.exit(0);
