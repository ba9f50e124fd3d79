/*
 * telehub device client: the protocol core.
 *
 * Everything a device says and hears on `wss://HOST/v1/device` (telehub.v1, see
 * proto/telehub/v1/telehub.proto), with no I/O: the transport (libwebsockets on
 * Linux, esp_websocket_client on ESP-IDF) moves whole binary messages and tells
 * the core what happened; the core says what to write next and when it next
 * needs to be asked. It keeps:
 *
 * - a ring of the telemetry the hub has not confirmed yet (uplink confirmations):
 *   each message is encoded once, when published, and kept as bytes until a
 *   TelemetryConfirmed covers its seq; after a reconnect the rest is resent with
 *   the same seq, and seqs the rate limiter refused are resent after
 *   retry_after_ms;
 * - the notification ids seen recently (redeliveries reach the application once)
 *   and the acks waiting to be written;
 * - the pacing to the hub's rate limit (Welcome's rate and burst) and the
 *   reconnect back-off.
 *
 * Memory: one `telehub_client`, sized by the TELEHUB_* bounds below (about 9 KB
 * with the defaults), owned by the caller, usually as a static; the core never
 * allocates.
 * Threads: none. Call everything from one task.
 */
#ifndef TELEHUB_CLIENT_H
#define TELEHUB_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Bounds (override with -D) ------------------------------------------ */

/* Telemetry messages kept until the hub confirms them (while offline too). */
#ifndef TELEHUB_RING_SLOTS
#define TELEHUB_RING_SLOTS 32
#endif
/* Largest encoded telemetry envelope (bytes); larger ones are refused. */
#ifndef TELEHUB_FRAME_MAX
#define TELEHUB_FRAME_MAX 256
#endif
/* Longest notification id, NUL included (the hub's are 17 characters). */
#ifndef TELEHUB_ID_MAX
#define TELEHUB_ID_MAX 40
#endif
/* Acks waiting to be written. */
#ifndef TELEHUB_ACK_QUEUE
#define TELEHUB_ACK_QUEUE 4
#endif
/* Recent notification ids remembered for de-duplication. */
#ifndef TELEHUB_DEDUP
#define TELEHUB_DEDUP 16
#endif
/* Longest `Reading.text` (bytes, without NUL) and `Reading.raw`: fixed by
 * clients/c/proto/telehub.options. */
#define TELEHUB_TEXT_MAX 64
#define TELEHUB_RAW_MAX 64
/* Largest message the transport should buffer from the hub (bytes); larger
 * ones are dropped by the transport (a CRITICAL notification is then never
 * acked, and the hub redelivers it until it expires: size it for your payloads). */
#ifndef TELEHUB_RX_MAX
#define TELEHUB_RX_MAX 2048
#endif

/* ---- Results ------------------------------------------------------------ */

typedef enum {
    TELEHUB_OK = 0,
    /* The ring is full of unconfirmed messages: publish again later. */
    TELEHUB_ERR_FULL = -1,
    /* The encoded message is over TELEHUB_FRAME_MAX, or a value over its bound. */
    TELEHUB_ERR_TOO_BIG = -2,
    /* An invalid category, reading or argument. */
    TELEHUB_ERR_INVALID = -3
} telehub_result;

/* ---- What the application sends ----------------------------------------- */

typedef enum {
    TELEHUB_NUMBER = 2, /* double */
    TELEHUB_INTEGER = 3,
    TELEHUB_FLAG = 4,
    TELEHUB_TEXT = 5, /* up to TELEHUB_TEXT_MAX bytes */
    TELEHUB_RAW = 6   /* up to TELEHUB_RAW_MAX bytes */
} telehub_kind;

/* One named, typed value; the strings are read during telehub_publish only. */
typedef struct {
    const char *name;
    /* Optional unit ("Cel", "%", "V"); NULL or "" for none. */
    const char *unit;
    telehub_kind kind;
    union {
        double number;
        int64_t integer;
        bool flag;
        const char *text;
        struct {
            const uint8_t *data;
            size_t len;
        } raw;
    } value;
} telehub_reading;

/* ---- What the application hears ----------------------------------------- */

/* A string or bytes inside a received message: not NUL-terminated, valid only
 * during the callback it is given to. */
typedef struct {
    const char *ptr;
    size_t len;
} telehub_str;

typedef struct {
    telehub_str subject;
    telehub_str role;
    telehub_str server_version;
    uint32_t max_message_bytes;
    uint32_t rate_per_second;
    uint32_t burst;
    bool confirmations;
} telehub_welcome;

enum {
    TELEHUB_SEVERITY_INFO = 1,
    TELEHUB_SEVERITY_WARNING = 2,
    TELEHUB_SEVERITY_CRITICAL = 3
};

typedef struct {
    /* NUL-terminated. */
    const char *id;
    int severity;
    telehub_str title;
    telehub_str body;
    telehub_str payload;
    uint64_t created_ms;
    uint64_t expires_ms;
    /* The hub sent it again (no ack reached it in time). */
    bool redelivery;
} telehub_notification;

/* `Error.code` values (proto: telehub.v1.Error.Code). */
enum {
    TELEHUB_ERROR_MALFORMED = 1,
    TELEHUB_ERROR_RATE_LIMITED = 2,
    TELEHUB_ERROR_FORBIDDEN = 3,
    TELEHUB_ERROR_UNKNOWN_NOTIFICATION = 5,
    TELEHUB_ERROR_UNAVAILABLE = 6
};

/* Every callback may be NULL. They run inside the transport calls below and
 * must not call them again (telehub_publish and telehub_ack are fine). */
typedef struct {
    /* The hub's first message on a connection. */
    void (*welcome)(void *user, const telehub_welcome *w);
    /* Every message with seq <= through_seq is settled (accepted, or invalid and
     * never to be accepted) and was dropped from the ring; `rate_limited` seqs
     * will be resent after `retry_after_ms`. */
    void (*confirmed)(void *user, uint64_t through_seq, size_t rate_limited,
                      uint32_t retry_after_ms);
    /* A notification not seen recently. Return true to acknowledge it now;
     * false to call telehub_ack() later. CRITICAL ones must be acknowledged;
     * others are acknowledged only if `ack_all` is set (or by telehub_ack). */
    bool (*notification)(void *user, const telehub_notification *n);
    /* An ack was written for `id`. */
    void (*acked)(void *user, const char *id);
    /* An Error envelope from the hub (see README "Errors and closes"). */
    void (*error)(void *user, int code, telehub_str message, uint32_t retry_after_ms);
    /* The connection ended: `code` is the WebSocket close code, an HTTP status
     * (the upgrade was refused, e.g. 401), or 0 (failed or lost without a close).
     * The core reconnects by itself after `reconnect_in_ms`. */
    void (*closed)(void *user, int code, uint32_t reconnect_in_ms);
} telehub_callbacks;

typedef struct {
    /* Non-zero and new whenever seq starts again at 1 (a random 64-bit value at
     * every boot, or a counter kept in flash). */
    uint64_t boot_id;
    /* Reconnect back-off: doubles from min to max, with jitter (defaults 500 ms
     * and 30 s when 0). A refused upgrade (401, 403) or a revoked token (close
     * 4003) waits the max at once. */
    uint32_t backoff_min_ms;
    uint32_t backoff_max_ms;
    /* Do not pace telemetry to the hub's rate limit (tests of the rate limiter;
     * the confirmations make up for what the hub refuses). */
    bool unpaced;
    /* Acknowledge INFO and WARNING notifications too. */
    bool ack_all;
    telehub_callbacks cb;
    void *user;
} telehub_config;

/* ---- The client ---------------------------------------------------------- */

/* One unconfirmed telemetry message, encoded. */
typedef struct {
    /* TELEHUB_SLOT_*: free, to send, sent (awaiting its confirmation), held
     * (rate-limited: to send again at `due_ms`). */
    uint8_t state;
    /* Written at least once (a later write is a resend). */
    uint8_t sent;
    uint16_t len;
    uint64_t due_ms;
    uint8_t bytes[TELEHUB_FRAME_MAX];
} telehub_slot;

typedef struct {
    uint64_t published;     /* messages accepted by telehub_publish */
    uint64_t sent;          /* telemetry writes, resends included */
    uint64_t resent;        /* of which resends */
    uint64_t confirmed;     /* messages dropped from the ring as confirmed */
    uint64_t rate_limited;  /* seqs the hub listed as rate-limited */
    uint64_t notifications; /* notifications given to the application */
    uint64_t redeliveries;  /* notifications heard again and not given */
    uint64_t acks;          /* acks written */
    uint64_t connects;      /* Welcomes received */
} telehub_stats;

/* All state, sized at compile time. Fields are private: use the functions. */
typedef struct {
    telehub_config cfg;

    /* Unconfirmed telemetry: seqs [first_seq, next_seq), seq s in ring[s % N]. */
    telehub_slot ring[TELEHUB_RING_SLOTS];
    uint64_t first_seq;
    uint64_t next_seq;

    /* This connection: TELEHUB_CONN_*; whether the hub confirms, whether the
     * ConfirmTelemetry still has to be written and whether it was answered. */
    uint8_t conn;
    bool confirmations;
    bool confirm_unsent;
    bool confirm_answered;

    /* Pacing: a token bucket refilled at the Welcome's rate, in 1/1000 message. */
    uint32_t rate;
    uint32_t burst;
    uint64_t tokens;
    uint64_t tokens_at_ms;
    /* No telemetry before this (after Error RATE_LIMITED). */
    uint64_t paused_until_ms;

    /* Acks to write, oldest first. */
    char acks[TELEHUB_ACK_QUEUE][TELEHUB_ID_MAX];
    uint8_t ack_head;
    uint8_t ack_count;

    /* Recent notification ids (FNV-1a hashes) and whether each was acked. */
    uint64_t seen[TELEHUB_DEDUP];
    bool seen_acked[TELEHUB_DEDUP];
    uint8_t seen_next;
    uint8_t seen_count;

    /* Reconnect back-off. */
    uint32_t backoff_ms;
    uint64_t reconnect_at_ms;
    uint64_t rng;

    telehub_stats stats;
} telehub_client;

/* Prepares `c` (boot_id must be non-zero). Not connected: the transport asks
 * telehub_should_connect(). */
telehub_result telehub_init(telehub_client *c, const telehub_config *cfg);

/* Encodes one telemetry message with the next seq and keeps it until the hub
 * confirms it; sent when connected and within the rate. `timestamp_ms` is the
 * device clock (ms since the Unix epoch). `seq_out` may be NULL. */
telehub_result telehub_publish(telehub_client *c, const char *category, uint64_t timestamp_ms,
                               const telehub_reading *readings, size_t count,
                               uint64_t *seq_out);

/* Queues an ack for notification `id` (for notifications the callback did not
 * ack). TELEHUB_ERR_FULL when the ack queue is full. */
telehub_result telehub_ack(telehub_client *c, const char *id);

/* Messages in the ring: published and not yet confirmed. */
size_t telehub_unconfirmed(const telehub_client *c);
/* The last seq published (0 before the first). */
uint64_t telehub_last_seq(const telehub_client *c);
/* Whether a Welcome was received on the current connection. */
bool telehub_online(const telehub_client *c);
const telehub_stats *telehub_get_stats(const telehub_client *c);

/* ---- The transport's side -------------------------------------------------
 * `now_ms` is a monotonic clock in milliseconds (any origin). */

/* Whether to open a connection now (none open, back-off over). */
bool telehub_should_connect(const telehub_client *c, uint64_t now_ms);
/* The transport started connecting (TCP, TLS, upgrade). */
void telehub_transport_connecting(telehub_client *c, uint64_t now_ms);
/* The upgrade succeeded; the hub's Welcome comes next. */
void telehub_transport_connected(telehub_client *c, uint64_t now_ms);
/* One whole binary message from the hub. */
void telehub_transport_received(telehub_client *c, const uint8_t *data, size_t len,
                                uint64_t now_ms);
/* The connection ended or could not be made (`code`: see callbacks.closed). */
void telehub_transport_closed(telehub_client *c, int code, uint64_t now_ms);
/* Whether telehub_transport_next() has something to write now. */
bool telehub_transport_wants_write(telehub_client *c, uint64_t now_ms);
/* Writes the next message to send into `buf` (at least TELEHUB_FRAME_MAX
 * bytes) and returns its length; 0 when nothing is due. Send it as one binary
 * message. */
size_t telehub_transport_next(telehub_client *c, uint8_t *buf, size_t cap, uint64_t now_ms);
/* Milliseconds until the core next needs the transport's attention (a write
 * within the rate, a rate-limited resend, a reconnect); UINT32_MAX if nothing
 * is pending. */
uint32_t telehub_next_timeout_ms(telehub_client *c, uint64_t now_ms);

/* Reading constructors. */
static inline telehub_reading telehub_number(const char *name, double v, const char *unit)
{
    telehub_reading r;
    r.name = name;
    r.unit = unit;
    r.kind = TELEHUB_NUMBER;
    r.value.number = v;
    return r;
}

static inline telehub_reading telehub_integer(const char *name, int64_t v, const char *unit)
{
    telehub_reading r;
    r.name = name;
    r.unit = unit;
    r.kind = TELEHUB_INTEGER;
    r.value.integer = v;
    return r;
}

static inline telehub_reading telehub_flag(const char *name, bool v)
{
    telehub_reading r;
    r.name = name;
    r.unit = NULL;
    r.kind = TELEHUB_FLAG;
    r.value.flag = v;
    return r;
}

static inline telehub_reading telehub_text(const char *name, const char *v)
{
    telehub_reading r;
    r.name = name;
    r.unit = NULL;
    r.kind = TELEHUB_TEXT;
    r.value.text = v;
    return r;
}

#endif
