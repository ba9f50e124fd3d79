// Launching Debian's headless Chromium for the dashboard's browser test
// (dashboard_e2e.mjs) and benchmark (benches/dashboard_fps.mjs), the same way.
//
// The browser trusts exactly the hub's certificate, by the SHA-256 of its public key
// (--ignore-certificate-errors-spki-list), for this browser only: no CA is installed
// and certificate errors are not ignored wholesale. The background-networking flags
// keep Chromium from calling out to Google's hosts, which this machine's closed
// network refuses (noise in the console, delays at start).

import { X509Certificate, createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';

/** Base64 SHA-256 of the certificate's SubjectPublicKeyInfo: Chromium's SPKI pin. */
export function spkiHash(pemFile) {
  let pem;
  try {
    pem = readFileSync(pemFile);
  } catch (e) {
    throw new Error(`cannot read the hub's certificate ${pemFile}: ${e.message}`);
  }
  const der = new X509Certificate(pem).publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest('base64');
}

/**
 * Launches Chromium (`chromium` from playwright-core) at `executablePath`, trusting
 * the hub's certificate in `serverPem`; `extraArgs` are added to the common flags.
 */
export function launchChromium(chromium, { executablePath, serverPem, extraArgs = [] }) {
  return chromium.launch({
    executablePath,
    headless: true,
    // Playwright adds a fresh temporary --user-data-dir of its own.
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      `--ignore-certificate-errors-spki-list=${spkiHash(serverPem)}`,
      ...extraArgs,
    ],
    timeout: 30_000,
  });
}
