/*
 * telehub device client: the protocol core (see telehub_client.h).
 *
 * The ring: the unconfirmed messages are the seqs [first_seq, next_seq), at most
 * TELEHUB_RING_SLOTS of them, seq s in ring[s % TELEHUB_RING_SLOTS]. A message
 * is encoded once by telehub_publish and its bytes are what every send and
 * resend writes, so a resend keeps its seq by construction. Slot states:
 *
 *   PENDING  to send (new, or unconfirmed when a connection ended)
 *   SENT     written on this connection, awaiting a TelemetryConfirmed
 *   HELD     the hub's rate limiter refused it: to send again at due_ms
 *
 * A TelemetryConfirmed{through_seq} frees every slot up to through_seq. On a new
 * connection, telemetry waits for the answer to ConfirmTelemetry, which says
 * how much of this boot the hub already has, so nothing it has is sent again
 * (unless it forgot: a restarted hub answers 0 and gets every unconfirmed
 * message again, as the proto says: at least once, never lost).
 *
 * Order of writes: ConfirmTelemetry first, then acks, then telemetry oldest
 * first, paced by a token bucket at the Welcome's rate and burst.
 */
#include "telehub_client.h"

#include <string.h>

#include "telehub_wire.h"

enum { TELEHUB_SLOT_FREE = 0, TELEHUB_SLOT_PENDING, TELEHUB_SLOT_SENT, TELEHUB_SLOT_HELD };

enum {
    /* No connection; the next one at reconnect_at_ms. */
    TELEHUB_CONN_DOWN = 0,
    /* TCP, TLS and the upgrade under way. */
    TELEHUB_CONN_CONNECTING,
    /* Upgraded; the Welcome comes next. */
    TELEHUB_CONN_UPGRADED,
    /* Welcome received. */
    TELEHUB_CONN_ONLINE
};

#define TELEHUB_BACKOFF_MIN_MS 500u
#define TELEHUB_BACKOFF_MAX_MS 30000u
/* A message's worth of tokens. */
#define TOKEN 1000u
/* HELD slot whose retry time the current TelemetryConfirmed has not given yet. */
#define DUE_UNSET UINT64_MAX

static telehub_slot *slot_of(telehub_client *c, uint64_t seq)
{
    return &c->ring[seq % TELEHUB_RING_SLOTS];
}

/* xorshift64: jitter for the back-off, seeded from the boot id. */
static uint64_t next_random(telehub_client *c)
{
    uint64_t x = c->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c->rng = x;
    return x;
}

/* FNV-1a: notification ids are remembered as 64-bit hashes. */
static uint64_t hash_id(const char *id, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    size_t i;
    for (i = 0; i < len; i++) {
        h ^= (uint8_t)id[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

telehub_result telehub_init(telehub_client *c, const telehub_config *cfg)
{
    if (c == NULL || cfg == NULL || cfg->boot_id == 0) {
        return TELEHUB_ERR_INVALID;
    }
    memset(c, 0, sizeof *c);
    c->cfg = *cfg;
    if (c->cfg.backoff_min_ms == 0) {
        c->cfg.backoff_min_ms = TELEHUB_BACKOFF_MIN_MS;
    }
    if (c->cfg.backoff_max_ms < c->cfg.backoff_min_ms) {
        c->cfg.backoff_max_ms =
            c->cfg.backoff_min_ms > TELEHUB_BACKOFF_MAX_MS ? c->cfg.backoff_min_ms : TELEHUB_BACKOFF_MAX_MS;
    }
    c->first_seq = 1;
    c->next_seq = 1;
    c->conn = TELEHUB_CONN_DOWN;
    c->backoff_ms = c->cfg.backoff_min_ms;
    c->reconnect_at_ms = 0;
    c->rng = cfg->boot_id;
    return TELEHUB_OK;
}

/* Categories are dotted names of [A-Za-z0-9_-] segments, 1..128 bytes. */
static bool valid_category(const char *s)
{
    size_t n = 0;
    bool segment_empty = true;
    if (s == NULL) {
        return false;
    }
    for (; s[n] != '\0'; n++) {
        char ch = s[n];
        if (n >= 128) {
            return false;
        }
        if (ch == '.') {
            if (segment_empty) {
                return false;
            }
            segment_empty = true;
        } else if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                   ch == '_' || ch == '-') {
            segment_empty = false;
        } else {
            return false;
        }
    }
    return n > 0 && !segment_empty;
}

telehub_result telehub_publish(telehub_client *c, const char *category, uint64_t timestamp_ms,
                               const telehub_reading *readings, size_t count, uint64_t *seq_out)
{
    telehub_slot *slot;
    telehub_result err = TELEHUB_OK;
    size_t len;
    if (!valid_category(category) || (count > 0 && readings == NULL)) {
        return TELEHUB_ERR_INVALID;
    }
    if (c->next_seq - c->first_seq >= TELEHUB_RING_SLOTS) {
        return TELEHUB_ERR_FULL;
    }
    slot = slot_of(c, c->next_seq);
    len = telehub_wire_telemetry(slot->bytes, sizeof slot->bytes, category, c->next_seq,
                                 timestamp_ms, readings, count, &err);
    if (len == 0) {
        slot->state = TELEHUB_SLOT_FREE;
        return err;
    }
    slot->len = (uint16_t)len;
    slot->state = TELEHUB_SLOT_PENDING;
    slot->sent = 0;
    slot->due_ms = 0;
    if (seq_out != NULL) {
        *seq_out = c->next_seq;
    }
    c->next_seq++;
    c->stats.published++;
    return TELEHUB_OK;
}

telehub_result telehub_ack(telehub_client *c, const char *id)
{
    size_t n;
    if (id == NULL) {
        return TELEHUB_ERR_INVALID;
    }
    n = strlen(id);
    if (n == 0 || n >= TELEHUB_ID_MAX) {
        return TELEHUB_ERR_INVALID;
    }
    if (c->ack_count >= TELEHUB_ACK_QUEUE) {
        return TELEHUB_ERR_FULL;
    }
    memcpy(c->acks[(c->ack_head + c->ack_count) % TELEHUB_ACK_QUEUE], id, n + 1);
    c->ack_count++;
    return TELEHUB_OK;
}

size_t telehub_unconfirmed(const telehub_client *c)
{
    return (size_t)(c->next_seq - c->first_seq);
}

uint64_t telehub_last_seq(const telehub_client *c)
{
    return c->next_seq - 1;
}

bool telehub_online(const telehub_client *c)
{
    return c->conn == TELEHUB_CONN_ONLINE;
}

const telehub_stats *telehub_get_stats(const telehub_client *c)
{
    return &c->stats;
}

/* ---- Connection life ------------------------------------------------------ */

bool telehub_should_connect(const telehub_client *c, uint64_t now_ms)
{
    return c->conn == TELEHUB_CONN_DOWN && now_ms >= c->reconnect_at_ms;
}

void telehub_transport_connecting(telehub_client *c, uint64_t now_ms)
{
    (void)now_ms;
    c->conn = TELEHUB_CONN_CONNECTING;
}

void telehub_transport_connected(telehub_client *c, uint64_t now_ms)
{
    (void)now_ms;
    c->conn = TELEHUB_CONN_UPGRADED;
    c->confirm_unsent = false;
    c->confirm_answered = false;
}

void telehub_transport_closed(telehub_client *c, int code, uint64_t now_ms)
{
    uint64_t seq;
    uint32_t delay;
    for (seq = c->first_seq; seq < c->next_seq; seq++) {
        telehub_slot *slot = slot_of(c, seq);
        /* Whatever the hub has of them, the next ConfirmTelemetry answer says. */
        slot->state = TELEHUB_SLOT_PENDING;
        slot->due_ms = 0;
    }
    c->conn = TELEHUB_CONN_DOWN;
    c->confirm_unsent = false;
    c->confirm_answered = false;
    c->paused_until_ms = 0;
    /* Refused credentials or a revoked token will not get better soon. */
    if (code == 401 || code == 403 || code == 4003) {
        c->backoff_ms = c->cfg.backoff_max_ms;
    }
    /* Equal jitter: half the back-off, plus up to the other half at random. */
    delay = c->backoff_ms / 2 + (uint32_t)(next_random(c) % (c->backoff_ms / 2 + 1));
    c->reconnect_at_ms = now_ms + delay;
    c->backoff_ms = c->backoff_ms > c->cfg.backoff_max_ms / 2 ? c->cfg.backoff_max_ms : c->backoff_ms * 2;
    if (c->cfg.cb.closed != NULL) {
        c->cfg.cb.closed(c->cfg.user, code, delay);
    }
}

/* ---- What the hub says ---------------------------------------------------- */

static void on_welcome(telehub_client *c, const telehub_welcome *w, uint64_t now_ms)
{
    c->conn = TELEHUB_CONN_ONLINE;
    c->confirmations = w->confirmations;
    c->confirm_unsent = w->confirmations;
    /* Without confirmations (an older hub), telemetry goes at once. */
    c->confirm_answered = !w->confirmations;
    c->rate = w->rate_per_second;
    c->burst = w->burst > 0 ? w->burst : 1;
    /* The hub's limiter starts full on every connection; so does this one. */
    c->tokens = (uint64_t)c->burst * TOKEN;
    c->tokens_at_ms = now_ms;
    c->paused_until_ms = 0;
    c->backoff_ms = c->cfg.backoff_min_ms;
    c->stats.connects++;
    if (c->cfg.cb.welcome != NULL) {
        c->cfg.cb.welcome(c->cfg.user, w);
    }
}

/* A seq of TelemetryConfirmed.rate_limited: hold it until the retry time, set
 * once the whole message is decoded. */
static void on_rate_limited(void *ctx, uint64_t seq)
{
    telehub_client *c = (telehub_client *)ctx;
    telehub_slot *slot;
    if (seq < c->first_seq || seq >= c->next_seq) {
        return;
    }
    slot = slot_of(c, seq);
    slot->state = TELEHUB_SLOT_HELD;
    slot->due_ms = DUE_UNSET;
    c->stats.rate_limited++;
}

static void on_confirmed(telehub_client *c, const uint8_t *data, size_t len, const telehub_incoming *in,
                         uint64_t now_ms)
{
    uint64_t through = in->u.confirmed.through_seq;
    uint64_t seq;
    if (in->u.confirmed.boot_id != c->cfg.boot_id) {
        return;
    }
    if (in->u.confirmed.rate_limited > 0) {
        /* Again, now that the boot is known to be ours, marking each refused seq. */
        telehub_incoming again;
        (void)telehub_wire_decode(data, len, &again, on_rate_limited, c);
    }
    if (through >= c->next_seq) {
        /* More than was ever published in this boot: a hub that mixed up boots.
         * Keep what is unconfirmed. */
        through = c->first_seq - 1;
    }
    for (seq = c->first_seq; seq <= through; seq++) {
        slot_of(c, seq)->state = TELEHUB_SLOT_FREE;
        c->stats.confirmed++;
    }
    if (through >= c->first_seq) {
        c->first_seq = through + 1;
    }
    for (seq = c->first_seq; seq < c->next_seq; seq++) {
        telehub_slot *slot = slot_of(c, seq);
        if (slot->state == TELEHUB_SLOT_HELD && slot->due_ms == DUE_UNSET) {
            slot->due_ms = now_ms + in->u.confirmed.retry_after_ms;
        }
    }
    c->confirm_answered = true;
    if (c->cfg.cb.confirmed != NULL) {
        c->cfg.cb.confirmed(c->cfg.user, c->first_seq - 1, in->u.confirmed.rate_limited,
                            in->u.confirmed.retry_after_ms);
    }
}

/* The recent-ids entry of `h`, or -1. */
static int find_seen(const telehub_client *c, uint64_t h)
{
    int i;
    for (i = 0; i < c->seen_count; i++) {
        if (c->seen[i] == h) {
            return i;
        }
    }
    return -1;
}

static void on_notification(telehub_client *c, const telehub_incoming *in)
{
    char id[TELEHUB_ID_MAX];
    telehub_notification n;
    uint64_t h;
    int entry;
    bool ack;
    size_t len = in->u.notification.id.len;
    if (len == 0 || len >= TELEHUB_ID_MAX) {
        /* Cannot be acked as it is: reported, and redelivered until it expires. */
        if (c->cfg.cb.error != NULL) {
            c->cfg.cb.error(c->cfg.user, TELEHUB_ERROR_MALFORMED, in->u.notification.id, 0);
        }
        return;
    }
    memcpy(id, in->u.notification.id.ptr, len);
    id[len] = '\0';
    h = hash_id(id, len);
    entry = find_seen(c, h);
    if (entry >= 0) {
        /* Heard before: the application has it. If it was acked, the ack was lost
         * or crossed this redelivery: ack again. */
        c->stats.redeliveries++;
        if (c->seen_acked[entry]) {
            (void)telehub_ack(c, id);
        }
        return;
    }
    entry = c->seen_next;
    c->seen[entry] = h;
    c->seen_acked[entry] = false;
    c->seen_next = (uint8_t)((c->seen_next + 1) % TELEHUB_DEDUP);
    if (c->seen_count < TELEHUB_DEDUP) {
        c->seen_count++;
    }
    n.id = id;
    n.severity = in->u.notification.severity;
    n.title = in->u.notification.title;
    n.body = in->u.notification.body;
    n.payload = in->u.notification.payload;
    n.created_ms = in->u.notification.created_ms;
    n.expires_ms = in->u.notification.expires_ms;
    n.redelivery = in->u.notification.redelivery;
    c->stats.notifications++;
    ack = n.severity == TELEHUB_SEVERITY_CRITICAL || c->cfg.ack_all;
    if (c->cfg.cb.notification != NULL) {
        ack = c->cfg.cb.notification(c->cfg.user, &n) && ack;
    }
    if (ack) {
        /* If the queue is full the hub redelivers, and that redelivery is acked. */
        (void)telehub_ack(c, id);
        c->seen_acked[entry] = true;
    }
}

void telehub_transport_received(telehub_client *c, const uint8_t *data, size_t len, uint64_t now_ms)
{
    telehub_incoming in;
    if (!telehub_wire_decode(data, len, &in, NULL, NULL)) {
        return;
    }
    switch (in.kind) {
    case TELEHUB_IN_WELCOME:
        on_welcome(c, &in.u.welcome, now_ms);
        break;
    case TELEHUB_IN_CONFIRMED:
        on_confirmed(c, data, len, &in, now_ms);
        break;
    case TELEHUB_IN_NOTIFICATION:
        on_notification(c, &in);
        break;
    case TELEHUB_IN_ERROR:
        if (in.u.error.code == TELEHUB_ERROR_RATE_LIMITED) {
            c->paused_until_ms = now_ms + in.u.error.retry_after_ms;
        }
        if (c->cfg.cb.error != NULL) {
            c->cfg.cb.error(c->cfg.user, in.u.error.code, in.u.error.message, in.u.error.retry_after_ms);
        }
        break;
    case TELEHUB_IN_OTHER:
        break;
    }
}

/* ---- What to write -------------------------------------------------------- */

static void refill(telehub_client *c, uint64_t now_ms)
{
    uint64_t cap = (uint64_t)c->burst * TOKEN;
    if (now_ms > c->tokens_at_ms) {
        c->tokens += (now_ms - c->tokens_at_ms) * c->rate;
        if (c->tokens > cap) {
            c->tokens = cap;
        }
    }
    c->tokens_at_ms = now_ms;
}

/* Tokens kept back: one message's worth when the burst allows, so messages
 * that reach the hub closer together than they were sent (network jitter) do
 * not find its limiter empty. */
static uint64_t reserve(const telehub_client *c)
{
    return c->burst > 1 ? TOKEN : 0;
}

static bool paced(const telehub_client *c)
{
    return !c->cfg.unpaced && c->rate > 0;
}

/* The oldest slot to write now, or NULL; `*wait_ms` gets how long until one
 * is due, if none is now. */
static telehub_slot *next_telemetry(telehub_client *c, uint64_t now_ms, uint64_t *wait_ms)
{
    uint64_t seq;
    *wait_ms = UINT64_MAX;
    if (c->conn != TELEHUB_CONN_ONLINE || !c->confirm_answered) {
        return NULL;
    }
    for (seq = c->first_seq; seq < c->next_seq; seq++) {
        telehub_slot *slot = slot_of(c, seq);
        uint64_t due = 0;
        if (slot->state == TELEHUB_SLOT_PENDING) {
            due = c->paused_until_ms;
        } else if (slot->state == TELEHUB_SLOT_HELD) {
            due = slot->due_ms > c->paused_until_ms ? slot->due_ms : c->paused_until_ms;
        } else {
            continue;
        }
        if (due <= now_ms) {
            if (paced(c)) {
                uint64_t need = reserve(c) + TOKEN;
                refill(c, now_ms);
                if (c->tokens < need) {
                    uint64_t w = (need - c->tokens + c->rate - 1) / c->rate;
                    *wait_ms = w > 0 ? w : 1;
                    return NULL;
                }
            }
            return slot;
        }
        if (due - now_ms < *wait_ms) {
            *wait_ms = due - now_ms;
        }
    }
    return NULL;
}

bool telehub_transport_wants_write(telehub_client *c, uint64_t now_ms)
{
    uint64_t wait;
    if (c->conn != TELEHUB_CONN_ONLINE) {
        return false;
    }
    return c->confirm_unsent || c->ack_count > 0 || next_telemetry(c, now_ms, &wait) != NULL;
}

size_t telehub_transport_next(telehub_client *c, uint8_t *buf, size_t cap, uint64_t now_ms)
{
    telehub_slot *slot;
    uint64_t wait;
    size_t n;
    if (c->conn != TELEHUB_CONN_ONLINE) {
        return 0;
    }
    if (c->confirm_unsent) {
        n = telehub_wire_confirm(buf, cap, c->cfg.boot_id);
        if (n > 0) {
            c->confirm_unsent = false;
        }
        return n;
    }
    if (c->ack_count > 0) {
        const char *id = c->acks[c->ack_head];
        n = telehub_wire_ack(buf, cap, id);
        if (n > 0) {
            c->ack_head = (uint8_t)((c->ack_head + 1) % TELEHUB_ACK_QUEUE);
            c->ack_count--;
            c->stats.acks++;
            if (c->cfg.cb.acked != NULL) {
                c->cfg.cb.acked(c->cfg.user, id);
            }
        }
        return n;
    }
    slot = next_telemetry(c, now_ms, &wait);
    if (slot == NULL || slot->len > cap) {
        return 0;
    }
    memcpy(buf, slot->bytes, slot->len);
    if (paced(c)) {
        c->tokens -= TOKEN;
    }
    c->stats.sent++;
    if (slot->sent) {
        c->stats.resent++;
    }
    slot->sent = 1;
    if (c->confirmations) {
        slot->state = TELEHUB_SLOT_SENT;
    } else {
        /* A hub without confirmations: written is all there is to know. */
        slot->state = TELEHUB_SLOT_FREE;
        c->first_seq++;
        c->stats.confirmed++;
    }
    return slot->len;
}

uint32_t telehub_next_timeout_ms(telehub_client *c, uint64_t now_ms)
{
    uint64_t wait = UINT64_MAX;
    if (c->conn == TELEHUB_CONN_DOWN) {
        wait = c->reconnect_at_ms > now_ms ? c->reconnect_at_ms - now_ms : 0;
    } else if (c->conn == TELEHUB_CONN_ONLINE) {
        if (c->confirm_unsent || c->ack_count > 0) {
            wait = 0;
        } else if (next_telemetry(c, now_ms, &wait) != NULL) {
            wait = 0;
        }
    }
    return wait > UINT32_MAX ? UINT32_MAX : (uint32_t)wait;
}
