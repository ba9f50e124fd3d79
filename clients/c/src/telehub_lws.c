/*
 * telehub device client: the libwebsockets transport (see telehub_lws.h).
 *
 * Everything happens on lws's service loop: its callbacks carry the connection's
 * events to the core, and one timer (`wake`, a lws_sorted_usec_list) runs the
 * application's tick, opens connections when the core's back-off is over and
 * asks for a writable callback when the core has something due. Any event that
 * may change what is due re-arms the timer at once, so the loop never polls
 * faster than it must and never sleeps past a deadline.
 */
#define _POSIX_C_SOURCE 200809L

#include "telehub_lws.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libwebsockets.h>

#define TELEHUB_PROTOCOL "telehub.v1"
#define DEFAULT_PATH "/v1/device"
/* The loop wakes at least this often (the application's tick, a stop). */
#define MAX_SLEEP_MS 200u
/* After the application stops: how long the close handshake may take. */
#define CLOSE_GRACE_MS 1000u

typedef struct {
    telehub_client *c;
    const telehub_lws_config *cfg;
    struct lws_context *ctx;
    /* The connection, while there is one (connecting included). */
    struct lws *wsi;
    /* A connection was started and its end is not yet reported to the core. */
    bool active;
    lws_sorted_usec_list_t sul;

    /* From the URL. */
    char address[256];
    char host_header[300];
    char path[256];
    int port;
    bool tls;
    char authorization[4200];

    /* The message being received; dropped whole if over TELEHUB_RX_MAX. */
    uint8_t rx[TELEHUB_RX_MAX];
    size_t rx_len;
    bool rx_overflow;
    /* The close code the hub sent, if it did. */
    int close_code;
    /* lws needs LWS_PRE bytes of headroom before what lws_write sends. */
    uint8_t tx[LWS_PRE + TELEHUB_FRAME_MAX];

    /* The application asked to stop: close, then leave the loop. */
    bool stopping;
    uint64_t stop_deadline_ms;
    bool finished;
} transport;

uint64_t telehub_lws_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* wss://HOST[:PORT][/PATH] or ws://... */
static bool parse_url(transport *t, const char *url)
{
    const char *rest;
    const char *slash;
    const char *colon;
    size_t host_len;
    if (strncmp(url, "wss://", 6) == 0) {
        t->tls = true;
        t->port = 443;
        rest = url + 6;
    } else if (strncmp(url, "ws://", 5) == 0) {
        t->tls = false;
        t->port = 80;
        rest = url + 5;
    } else {
        return false;
    }
    slash = strchr(rest, '/');
    if (slash == NULL) {
        slash = rest + strlen(rest);
    }
    colon = memchr(rest, ':', (size_t)(slash - rest));
    host_len = (size_t)((colon != NULL ? colon : slash) - rest);
    if (host_len == 0 || host_len >= sizeof t->address) {
        return false;
    }
    memcpy(t->address, rest, host_len);
    t->address[host_len] = '\0';
    if (colon != NULL) {
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (end != slash || port <= 0 || port > 65535) {
            return false;
        }
        t->port = (int)port;
    }
    if (*slash == '\0') {
        strcpy(t->path, DEFAULT_PATH);
    } else if (strlen(slash) < sizeof t->path) {
        strcpy(t->path, slash);
    } else {
        return false;
    }
    snprintf(t->host_header, sizeof t->host_header, "%s:%d", t->address, t->port);
    return true;
}

static void wake(lws_sorted_usec_list_t *sul);

/* Leaves the service loop (lws_service returns once the loop wakes). */
static void finish(transport *t)
{
    t->finished = true;
    lws_cancel_service(t->ctx);
}

/* Re-evaluates what is due as soon as the loop is free. */
static void kick(transport *t)
{
    if (t->finished) {
        return;
    }
    lws_sul_schedule(t->ctx, 0, &t->sul, wake, 1);
}

/* The connection ended: tells the core once. */
static void ended(transport *t, int code)
{
    t->wsi = NULL;
    if (t->active) {
        t->active = false;
        telehub_transport_closed(t->c, code, telehub_lws_now_ms());
    }
    if (t->stopping) {
        finish(t);
    }
}

static void deliver(transport *t, struct lws *wsi, const void *in, size_t len)
{
    if (!lws_frame_is_binary(wsi)) {
        /* The device endpoint speaks binary only. */
        t->rx_overflow = true;
    }
    if (!t->rx_overflow) {
        if (len > sizeof t->rx - t->rx_len) {
            t->rx_overflow = true;
        } else {
            memcpy(t->rx + t->rx_len, in, len);
            t->rx_len += len;
        }
    }
    if (lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0) {
        if (!t->rx_overflow) {
            telehub_transport_received(t->c, t->rx, t->rx_len, telehub_lws_now_ms());
        } else {
            lwsl_warn("telehub: dropped a message over %u bytes\n", (unsigned)TELEHUB_RX_MAX);
        }
        t->rx_len = 0;
        t->rx_overflow = false;
    }
}

static int on_event(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    transport *t = (transport *)lws_context_user(lws_get_context(wsi));
    switch (reason) {
    case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER: {
        unsigned char **p = (unsigned char **)in;
        unsigned char *end = *p + len;
        if (lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_AUTHORIZATION,
                                         (const unsigned char *)t->authorization,
                                         (int)strlen(t->authorization), p, end)) {
            return -1;
        }
        return 0;
    }
    case LWS_CALLBACK_CLIENT_ESTABLISHED: {
        char extensions[128] = "";
        if (lws_hdr_copy(wsi, extensions, sizeof extensions, WSI_TOKEN_EXTENSIONS) < 0) {
            extensions[0] = '\0';
        }
        t->rx_len = 0;
        t->rx_overflow = false;
        t->close_code = 0;
        telehub_transport_connected(t->c, telehub_lws_now_ms());
        if (t->cfg->connected != NULL) {
            t->cfg->connected(t->cfg->user, extensions);
        }
        kick(t);
        return 0;
    }
    case LWS_CALLBACK_CLIENT_RECEIVE:
        deliver(t, wsi, in, len);
        kick(t);
        return 0;
    case LWS_CALLBACK_CLIENT_WRITEABLE: {
        size_t n;
        if (t->stopping) {
            lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, NULL, 0);
            return -1;
        }
        n = telehub_transport_next(t->c, t->tx + LWS_PRE, TELEHUB_FRAME_MAX, telehub_lws_now_ms());
        if (n > 0 && lws_write(wsi, t->tx + LWS_PRE, n, LWS_WRITE_BINARY) < (int)n) {
            return -1;
        }
        kick(t);
        return 0;
    }
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        if (len >= 2) {
            const unsigned char *b = (const unsigned char *)in;
            t->close_code = (b[0] << 8) | b[1];
        }
        return 0;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR: {
        unsigned int status = lws_http_client_http_response(wsi);
        if (t->cfg->failed != NULL) {
            t->cfg->failed(t->cfg->user, in != NULL ? (const char *)in : "connection failed");
        }
        ended(t, status >= 200 && status < 600 && status != 101 ? (int)status : 0);
        kick(t);
        return 0;
    }
    case LWS_CALLBACK_CLIENT_CLOSED:
        /* Closed by the hub (its code), by this side on stop (1000), or lost (0). */
        ended(t, t->stopping ? 1000 : t->close_code);
        kick(t);
        return 0;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static const struct lws_protocols protocols[] = {
    {"telehub", on_event, 0, 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* Without traffic for 30 s lws pings the hub; without any for 60 s it hangs up
 * (the hub pings too, so a silent link means a dead one). */
static const lws_retry_bo_t idle_policy = {NULL, 0, 0, 30, 60, 0};

static void connect_now(transport *t, uint64_t now)
{
    struct lws_client_connect_info i;
    memset(&i, 0, sizeof i);
    i.context = t->ctx;
    i.address = t->address;
    i.port = t->port;
    i.ssl_connection = t->tls ? LCCSCF_USE_SSL : 0;
    i.path = t->path;
    i.host = t->host_header;
    i.origin = NULL;
    /* Sec-WebSocket-Protocol; no extensions are offered (no permessage-deflate). */
    i.protocol = TELEHUB_PROTOCOL;
    i.local_protocol_name = "telehub";
    i.ietf_version_or_minus_one = -1;
    i.alpn = "http/1.1";
    i.retry_and_idle_policy = &idle_policy;
    i.pwsi = &t->wsi;
    t->active = true;
    telehub_transport_connecting(t->c, now);
    if (lws_client_connect_via_info(&i) == NULL) {
        ended(t, 0);
    }
}

static void wake(lws_sorted_usec_list_t *sul)
{
    transport *t = lws_container_of(sul, transport, sul);
    uint64_t now = telehub_lws_now_ms();
    uint32_t wait = MAX_SLEEP_MS;
    uint32_t core;
    if (!t->stopping) {
        uint32_t app = MAX_SLEEP_MS;
        if (!t->cfg->tick(t->cfg->user, now, &app)) {
            t->stopping = true;
            t->stop_deadline_ms = now + CLOSE_GRACE_MS;
            if (t->wsi == NULL) {
                finish(t);
                return;
            }
            lws_callback_on_writable(t->wsi);
        } else if (app < wait) {
            wait = app;
        }
    }
    if (t->stopping) {
        if (t->wsi == NULL || now >= t->stop_deadline_ms) {
            finish(t);
            return;
        }
        lws_sul_schedule(t->ctx, 0, &t->sul, wake, (lws_usec_t)50 * LWS_US_PER_MS);
        return;
    }
    if (t->wsi == NULL && telehub_should_connect(t->c, now)) {
        connect_now(t, now);
    }
    if (t->wsi != NULL && telehub_transport_wants_write(t->c, now)) {
        /* The writable callback kicks again after writing; the timer still runs
         * the application's tick if the socket stays full. */
        lws_callback_on_writable(t->wsi);
    } else {
        core = telehub_next_timeout_ms(t->c, now);
        if (core < wait) {
            wait = core > 0 ? core : 1;
        }
    }
    lws_sul_schedule(t->ctx, 0, &t->sul, wake, (lws_usec_t)wait * LWS_US_PER_MS);
}

int telehub_lws_run(telehub_client *c, const telehub_lws_config *cfg)
{
    struct lws_context_creation_info info;
    transport *t;
    int rc = 0;
    /* The receive buffer and the token make this too big for some stacks. */
    t = (transport *)calloc(1, sizeof *t);
    if (t == NULL) {
        return -1;
    }
    t->c = c;
    t->cfg = cfg;
    if (cfg->url == NULL || !parse_url(t, cfg->url) || cfg->token == NULL ||
        strlen(cfg->token) + 8 > sizeof t->authorization) {
        free(t);
        return -1;
    }
    snprintf(t->authorization, sizeof t->authorization, "Bearer %s", cfg->token);
    lws_set_log_level(cfg->verbose ? LLL_ERR | LLL_WARN | LLL_NOTICE : LLL_ERR, NULL);

    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.client_ssl_ca_filepath = cfg->ca_file;
    info.fd_limit_per_thread = 4;
    info.timeout_secs = 10;
    info.connect_timeout_secs = 10;
    info.user = t;
    t->ctx = lws_create_context(&info);
    if (t->ctx == NULL) {
        free(t);
        return -1;
    }
    kick(t);
    while (!t->finished) {
        if (lws_service(t->ctx, 0) < 0) {
            rc = -1;
            break;
        }
    }
    t->finished = true;
    lws_sul_cancel(&t->sul);
    lws_context_destroy(t->ctx);
    free(t);
    return rc;
}
