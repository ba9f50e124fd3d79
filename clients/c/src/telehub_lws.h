/*
 * telehub device client: the libwebsockets transport (Linux; OpenSSL through
 * Debian's libwebsockets). The only file that knows about sockets, TLS and
 * WebSocket framing; the ESP-IDF port replaces it (see clients/c/README.md).
 *
 * One connection at a time to wss://HOST:PORT/v1/device, subprotocol
 * telehub.v1, `Authorization: Bearer <token>`, no permessage-deflate. It feeds
 * the core (telehub_client.h) whole binary messages, writes what the core hands
 * it, and reconnects when the core says so.
 */
#ifndef TELEHUB_LWS_H
#define TELEHUB_LWS_H

#include <stdbool.h>
#include <stdint.h>

#include "telehub_client.h"

typedef struct {
    /* wss://HOST:PORT[/PATH] (ws:// for a hub behind a TLS-terminating proxy);
     * PATH defaults to /v1/device. */
    const char *url;
    /* PEM file of the CA(s) to verify the hub with; NULL: the system's. */
    const char *ca_file;
    /* The device's token (JWT). */
    const char *token;
    /* Called on every wake-up of the loop (at least every 200 ms): the
     * application's own work (publishing). Sets `*next_ms` to when it wants to
     * be called again; returns false to stop the loop. */
    bool (*tick)(void *user, uint64_t now_ms, uint32_t *next_ms);
    /* Each upgrade that succeeded: the negotiated extensions ("" for none). */
    void (*connected)(void *user, const char *extensions);
    /* Each connection attempt that failed before the upgrade, with lws's reason. */
    void (*failed)(void *user, const char *reason);
    void *user;
    /* libwebsockets' own log lines (stderr): false: errors only. */
    bool verbose;
} telehub_lws_config;

/* Runs the client until `tick` returns false (then closes with 1000). Returns
 * 0, or -1 if the URL is invalid or libwebsockets could not start. */
int telehub_lws_run(telehub_client *c, const telehub_lws_config *cfg);

/* The monotonic clock the transport gives the core, in milliseconds. */
uint64_t telehub_lws_now_ms(void);

#endif
