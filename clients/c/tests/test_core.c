/*
 * Unit tests of the transport-independent core: the hub's side is played by
 * hand-made envelopes (encoded here with the same nanopb descriptors), the clock
 * by a variable. Also measured here, for clients/c/README.md: the size of the
 * client state, the heap the core uses (malloc & co. are wrapped at link time:
 * it must be none) and the stack it needs (each call run on a painted stack).
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "telehub/v1/telehub.pb.h"
#include "telehub_client.h"
#include "telehub_wire.h"

/* ---- Heap accounting (-Wl,--wrap=malloc,...) ------------------------------ */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);
void __wrap_free(void *p);

static unsigned long heap_calls;

void *__wrap_malloc(size_t n)
{
    heap_calls++;
    return __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t m)
{
    heap_calls++;
    return __real_calloc(n, m);
}

void *__wrap_realloc(void *p, size_t n)
{
    heap_calls++;
    return __real_realloc(p, n);
}

void __wrap_free(void *p)
{
    if (p != NULL) {
        heap_calls++;
    }
    __real_free(p);
}

/* ---- Checks ----------------------------------------------------------------- */

static int failures;
static const char *current;

#define CHECK(cond)                                                                                 \
    do {                                                                                            \
        if (!(cond)) {                                                                              \
            fprintf(stderr, "FAIL %s (%s:%d): %s\n", current, __FILE__, __LINE__, #cond);           \
            failures++;                                                                             \
        }                                                                                           \
    } while (0)

#define CHECK_EQ(a, b)                                                                              \
    do {                                                                                            \
        unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b);              \
        if (a_ != b_) {                                                                             \
            fprintf(stderr, "FAIL %s (%s:%d): %s is %llu, expected %llu\n", current, __FILE__,      \
                    __LINE__, #a, a_, b_);                                                          \
            failures++;                                                                             \
        }                                                                                           \
    } while (0)

/* ---- The hub's messages ----------------------------------------------------- */

static bool put_str(pb_ostream_t *s, const pb_field_iter_t *f, void *const *arg)
{
    const char *str = (const char *)*arg;
    return pb_encode_tag_for_field(s, f) && pb_encode_string(s, (const pb_byte_t *)str, strlen(str));
}

typedef struct {
    const uint64_t *seqs;
    size_t n;
} seq_list;

/* Packed, as the hub (prost) writes `repeated uint64`. */
static bool put_seqs(pb_ostream_t *s, const pb_field_iter_t *f, void *const *arg)
{
    const seq_list *l = (const seq_list *)*arg;
    pb_ostream_t sizing = PB_OSTREAM_SIZING;
    size_t i;
    for (i = 0; i < l->n; i++) {
        pb_encode_varint(&sizing, l->seqs[i]);
    }
    if (!pb_encode_tag(s, PB_WT_STRING, f->tag) || !pb_encode_varint(s, sizing.bytes_written)) {
        return false;
    }
    for (i = 0; i < l->n; i++) {
        if (!pb_encode_varint(s, l->seqs[i])) {
            return false;
        }
    }
    return true;
}

static uint8_t hub_buf[1024];

static size_t envelope(uint32_t tag, const pb_msgdesc_t *fields, const void *msg)
{
    pb_ostream_t s = pb_ostream_from_buffer(hub_buf, sizeof hub_buf);
    if (!pb_encode_tag(&s, PB_WT_STRING, tag) || !pb_encode_submessage(&s, fields, msg)) {
        fprintf(stderr, "test: cannot encode a hub message\n");
        exit(2);
    }
    return s.bytes_written;
}

static void hub_welcome(telehub_client *c, uint64_t now, uint32_t rate, uint32_t burst, bool confirmations)
{
    telehub_v1_Welcome w = telehub_v1_Welcome_init_zero;
    size_t n;
    w.subject.funcs.encode = put_str;
    w.subject.arg = (void *)"dev-1";
    w.role.funcs.encode = put_str;
    w.role.arg = (void *)"device";
    w.rate_per_second = rate;
    w.burst = burst;
    w.max_message_bytes = 65536;
    w.confirmations = confirmations;
    n = envelope(telehub_v1_Envelope_welcome_tag, telehub_v1_Welcome_fields, &w);
    telehub_transport_received(c, hub_buf, n, now);
}

static size_t encode_confirmed(uint64_t boot, uint64_t through, const uint64_t *limited, size_t n_limited,
                               uint32_t retry_after_ms)
{
    telehub_v1_TelemetryConfirmed m = telehub_v1_TelemetryConfirmed_init_zero;
    seq_list l;
    l.seqs = limited;
    l.n = n_limited;
    m.boot_id = boot;
    m.through_seq = through;
    if (n_limited > 0) {
        m.rate_limited.funcs.encode = put_seqs;
        m.rate_limited.arg = &l;
    }
    m.retry_after_ms = retry_after_ms;
    return envelope(telehub_v1_Envelope_telemetry_confirmed_tag, telehub_v1_TelemetryConfirmed_fields, &m);
}

static void hub_confirmed(telehub_client *c, uint64_t now, uint64_t boot, uint64_t through,
                          const uint64_t *limited, size_t n_limited, uint32_t retry_after_ms)
{
    size_t n = encode_confirmed(boot, through, limited, n_limited, retry_after_ms);
    telehub_transport_received(c, hub_buf, n, now);
}

static size_t encode_notification(const char *id, int severity, bool redelivery)
{
    telehub_v1_Notification m = telehub_v1_Notification_init_zero;
    m.id.funcs.encode = put_str;
    m.id.arg = (void *)id;
    m.severity = (telehub_v1_Notification_Severity)severity;
    m.title.funcs.encode = put_str;
    m.title.arg = (void *)"Firmware recall";
    m.body.funcs.encode = put_str;
    m.body.arg = (void *)"Stop and acknowledge";
    m.redelivery = redelivery;
    m.created_ms = 1700000000000ull;
    return envelope(telehub_v1_Envelope_notification_tag, telehub_v1_Notification_fields, &m);
}

static void hub_notification(telehub_client *c, const char *id, int severity, bool redelivery)
{
    size_t n = encode_notification(id, severity, redelivery);
    telehub_transport_received(c, hub_buf, n, 0);
}

/* ---- The device's messages, read back --------------------------------------- */

typedef struct {
    uint32_t tag; /* which envelope member */
    uint64_t seq; /* Telemetry */
    uint64_t boot_id; /* ConfirmTelemetry */
    char id[64]; /* Ack */
} sent_msg;

static bool get_str(pb_istream_t *s, const pb_field_iter_t *f, void **arg)
{
    char *out = (char *)*arg;
    size_t n = s->bytes_left < 63 ? s->bytes_left : 63;
    (void)f;
    if (!pb_read(s, (pb_byte_t *)out, n)) {
        return false;
    }
    out[n] = '\0';
    return pb_read(s, NULL, s->bytes_left);
}

static bool decode_sent(const uint8_t *buf, size_t len, sent_msg *m)
{
    pb_istream_t s = pb_istream_from_buffer(buf, len);
    pb_istream_t sub;
    pb_wire_type_t wt;
    bool eof;
    bool ok = false;
    memset(m, 0, sizeof *m);
    if (!pb_decode_tag(&s, &wt, &m->tag, &eof) || wt != PB_WT_STRING || !pb_make_string_substream(&s, &sub)) {
        return false;
    }
    if (m->tag == telehub_v1_Envelope_telemetry_tag) {
        telehub_v1_Telemetry t = telehub_v1_Telemetry_init_zero;
        ok = pb_decode(&sub, telehub_v1_Telemetry_fields, &t);
        m->seq = t.seq;
    } else if (m->tag == telehub_v1_Envelope_confirm_telemetry_tag) {
        telehub_v1_ConfirmTelemetry ct = telehub_v1_ConfirmTelemetry_init_zero;
        ok = pb_decode(&sub, telehub_v1_ConfirmTelemetry_fields, &ct);
        m->boot_id = ct.boot_id;
    } else if (m->tag == telehub_v1_Envelope_ack_tag) {
        telehub_v1_Ack a = telehub_v1_Ack_init_zero;
        a.notification_id.funcs.decode = get_str;
        a.notification_id.arg = m->id;
        ok = pb_decode(&sub, telehub_v1_Ack_fields, &a);
    }
    return ok && pb_close_string_substream(&s, &sub);
}

/* The next message the core writes at `now` (tag 0: nothing due). */
static sent_msg next(telehub_client *c, uint64_t now)
{
    uint8_t buf[TELEHUB_FRAME_MAX];
    sent_msg m;
    size_t n = telehub_transport_next(c, buf, sizeof buf, now);
    memset(&m, 0, sizeof m);
    if (n > 0 && !decode_sent(buf, n, &m)) {
        fprintf(stderr, "FAIL %s: the core wrote an undecodable envelope\n", current);
        failures++;
    }
    return m;
}

/* ---- The application's side ------------------------------------------------- */

typedef struct {
    int notifications;
    char last_id[TELEHUB_ID_MAX];
    bool ack_in_callback;
    uint64_t through;
    int confirmations;
    int closed;
} app_state;

static bool app_notification(void *user, const telehub_notification *n)
{
    app_state *a = (app_state *)user;
    a->notifications++;
    strcpy(a->last_id, n->id);
    CHECK(n->title.len == strlen("Firmware recall") && memcmp(n->title.ptr, "Firmware recall", n->title.len) == 0);
    CHECK(n->body.len == strlen("Stop and acknowledge"));
    return a->ack_in_callback;
}

static void app_confirmed(void *user, uint64_t through, size_t limited, uint32_t retry)
{
    app_state *a = (app_state *)user;
    (void)limited;
    (void)retry;
    a->through = through;
    a->confirmations++;
}

static void app_closed(void *user, int code, uint32_t in_ms)
{
    app_state *a = (app_state *)user;
    (void)code;
    (void)in_ms;
    a->closed++;
}

static telehub_client client;
static app_state app;

static void start(const char *name, bool unpaced)
{
    telehub_config cfg;
    current = name;
    memset(&app, 0, sizeof app);
    app.ack_in_callback = true;
    memset(&cfg, 0, sizeof cfg);
    cfg.boot_id = 42;
    cfg.backoff_min_ms = 100;
    cfg.backoff_max_ms = 1600;
    cfg.unpaced = unpaced;
    cfg.cb.notification = app_notification;
    cfg.cb.confirmed = app_confirmed;
    cfg.cb.closed = app_closed;
    cfg.user = &app;
    CHECK(telehub_init(&client, &cfg) == TELEHUB_OK);
}

static telehub_result publish(telehub_client *c)
{
    telehub_reading r[4];
    r[0] = telehub_number("temperature", 21.5, "Cel");
    r[1] = telehub_integer("sample", 7, NULL);
    r[2] = telehub_flag("ok", true);
    r[3] = telehub_text("state", "running");
    return telehub_publish(c, "env.temperature", 1700000000000ull, r, 4, NULL);
}

/* Connects, reads the Welcome and the ConfirmTelemetry it triggers. */
static void come_online(telehub_client *c, uint64_t now)
{
    sent_msg m;
    CHECK(telehub_should_connect(c, now));
    telehub_transport_connecting(c, now);
    CHECK(!telehub_should_connect(c, now));
    telehub_transport_connected(c, now);
    CHECK_EQ(next(c, now).tag, 0); /* nothing before the Welcome */
    hub_welcome(c, now, 100, 200, true);
    CHECK(telehub_online(c));
    m = next(c, now);
    CHECK_EQ(m.tag, telehub_v1_Envelope_confirm_telemetry_tag);
    CHECK_EQ(m.boot_id, 42);
}

/* ---- Tests --------------------------------------------------------------------- */

static void test_confirmations_drop_and_reconnect_resends_only_the_rest(void)
{
    uint64_t seq;
    start("confirmations", false);
    CHECK(publish(&client) == TELEHUB_OK);
    CHECK(publish(&client) == TELEHUB_OK);
    CHECK(publish(&client) == TELEHUB_OK);
    CHECK_EQ(telehub_unconfirmed(&client), 3);
    come_online(&client, 0);
    CHECK_EQ(next(&client, 0).tag, 0); /* telemetry waits for the answer */
    hub_confirmed(&client, 0, 42, 0, NULL, 0, 0);
    for (seq = 1; seq <= 3; seq++) {
        sent_msg m = next(&client, 0);
        CHECK_EQ(m.tag, telehub_v1_Envelope_telemetry_tag);
        CHECK_EQ(m.seq, seq);
    }
    CHECK_EQ(next(&client, 0).tag, 0);
    hub_confirmed(&client, 10, 42, 2, NULL, 0, 0);
    CHECK_EQ(telehub_unconfirmed(&client), 1);
    CHECK_EQ(app.through, 2);
    /* Another boot's confirmation changes nothing. */
    hub_confirmed(&client, 10, 7, 3, NULL, 0, 0);
    CHECK_EQ(telehub_unconfirmed(&client), 1);

    telehub_transport_closed(&client, 1001, 20);
    CHECK_EQ(app.closed, 1);
    CHECK(!telehub_should_connect(&client, 20));
    CHECK(publish(&client) == TELEHUB_OK); /* seq 4, while offline */
    come_online(&client, 1000);
    /* The hub had 3 already: only 4 goes again. */
    hub_confirmed(&client, 1000, 42, 3, NULL, 0, 0);
    {
        sent_msg m = next(&client, 1000);
        CHECK_EQ(m.seq, 4);
    }
    CHECK_EQ(next(&client, 1000).tag, 0);
    CHECK_EQ(telehub_get_stats(&client)->resent, 0);
}

static void test_a_hub_that_forgot_gets_everything_unconfirmed_again(void)
{
    start("restart", false);
    CHECK(publish(&client) == TELEHUB_OK);
    CHECK(publish(&client) == TELEHUB_OK);
    come_online(&client, 0);
    hub_confirmed(&client, 0, 42, 0, NULL, 0, 0);
    CHECK_EQ(next(&client, 0).seq, 1);
    CHECK_EQ(next(&client, 0).seq, 2);
    telehub_transport_closed(&client, 0, 5);
    come_online(&client, 5000);
    hub_confirmed(&client, 5000, 42, 0, NULL, 0, 0); /* a restarted hub: boot unknown */
    CHECK_EQ(next(&client, 5000).seq, 1);
    CHECK_EQ(next(&client, 5000).seq, 2);
    CHECK_EQ(telehub_get_stats(&client)->resent, 2);
    hub_confirmed(&client, 5010, 42, 2, NULL, 0, 0);
    CHECK_EQ(telehub_unconfirmed(&client), 0);
}

static void test_rate_limited_seqs_are_resent_after_retry_after(void)
{
    const uint64_t limited[] = {3, 5};
    uint64_t seq;
    start("rate_limited", true);
    for (seq = 1; seq <= 5; seq++) {
        CHECK(publish(&client) == TELEHUB_OK);
    }
    come_online(&client, 1000);
    hub_confirmed(&client, 1000, 42, 0, NULL, 0, 0);
    for (seq = 1; seq <= 5; seq++) {
        CHECK_EQ(next(&client, 1000).seq, seq);
    }
    hub_confirmed(&client, 1000, 42, 2, limited, 2, 100);
    CHECK_EQ(telehub_unconfirmed(&client), 3);
    CHECK_EQ(next(&client, 1050).tag, 0);
    CHECK_EQ(telehub_next_timeout_ms(&client, 1050), 50);
    CHECK_EQ(next(&client, 1100).seq, 3);
    CHECK_EQ(next(&client, 1100).seq, 5);
    CHECK_EQ(next(&client, 1100).tag, 0);
    hub_confirmed(&client, 1110, 42, 5, NULL, 0, 0);
    CHECK_EQ(telehub_unconfirmed(&client), 0);
    CHECK_EQ(telehub_get_stats(&client)->rate_limited, 2);
}

static void test_the_ring_is_bounded(void)
{
    int i;
    start("ring_full", false);
    for (i = 0; i < TELEHUB_RING_SLOTS; i++) {
        CHECK(publish(&client) == TELEHUB_OK);
    }
    CHECK(publish(&client) == TELEHUB_ERR_FULL);
    come_online(&client, 0);
    hub_confirmed(&client, 0, 42, 0, NULL, 0, 0);
    for (i = 0; i < TELEHUB_RING_SLOTS; i++) {
        CHECK_EQ(next(&client, 0).seq, (uint64_t)i + 1);
    }
    hub_confirmed(&client, 10, 42, TELEHUB_RING_SLOTS / 2, NULL, 0, 0);
    CHECK_EQ(telehub_unconfirmed(&client), TELEHUB_RING_SLOTS - TELEHUB_RING_SLOTS / 2);
    CHECK(publish(&client) == TELEHUB_OK);
    CHECK_EQ(telehub_last_seq(&client), TELEHUB_RING_SLOTS + 1);
}

static void test_notifications_are_acked_once_given_once(void)
{
    sent_msg m;
    start("notifications", false);
    come_online(&client, 0);
    hub_notification(&client, "n0000000000000001", TELEHUB_SEVERITY_CRITICAL, false);
    CHECK_EQ(app.notifications, 1);
    m = next(&client, 0);
    CHECK_EQ(m.tag, telehub_v1_Envelope_ack_tag);
    CHECK(strcmp(m.id, "n0000000000000001") == 0);
    /* Redelivered (the ack crossed it): not given again, acked again. */
    hub_notification(&client, "n0000000000000001", TELEHUB_SEVERITY_CRITICAL, true);
    CHECK_EQ(app.notifications, 1);
    CHECK_EQ(next(&client, 0).tag, telehub_v1_Envelope_ack_tag);
    CHECK_EQ(telehub_get_stats(&client)->redeliveries, 1);
    /* INFO: given, not acked. */
    hub_notification(&client, "n0000000000000002", TELEHUB_SEVERITY_INFO, false);
    CHECK_EQ(app.notifications, 2);
    CHECK_EQ(next(&client, 0).tag, 0);
    /* The application acks later: a redelivery meanwhile is not acked for it. */
    app.ack_in_callback = false;
    hub_notification(&client, "n0000000000000003", TELEHUB_SEVERITY_CRITICAL, false);
    CHECK_EQ(next(&client, 0).tag, 0);
    hub_notification(&client, "n0000000000000003", TELEHUB_SEVERITY_CRITICAL, true);
    CHECK_EQ(next(&client, 0).tag, 0);
    CHECK(telehub_ack(&client, app.last_id) == TELEHUB_OK);
    m = next(&client, 0);
    CHECK(strcmp(m.id, "n0000000000000003") == 0);
    CHECK_EQ(telehub_get_stats(&client)->acks, 3);
}

static void test_pacing_follows_the_welcome(void)
{
    int i;
    start("pacing", false);
    for (i = 0; i < 5; i++) {
        CHECK(publish(&client) == TELEHUB_OK);
    }
    CHECK(telehub_should_connect(&client, 0));
    telehub_transport_connecting(&client, 0);
    telehub_transport_connected(&client, 0);
    hub_welcome(&client, 0, 10, 3, true);
    CHECK_EQ(next(&client, 0).tag, telehub_v1_Envelope_confirm_telemetry_tag);
    hub_confirmed(&client, 0, 42, 0, NULL, 0, 0);
    /* Burst 3, one kept in reserve: two at once, then one per 100 ms. */
    CHECK_EQ(next(&client, 0).seq, 1);
    CHECK_EQ(next(&client, 0).seq, 2);
    CHECK_EQ(next(&client, 0).tag, 0);
    CHECK_EQ(telehub_next_timeout_ms(&client, 0), 100);
    CHECK_EQ(next(&client, 60).tag, 0);
    CHECK_EQ(next(&client, 100).seq, 3);
    CHECK_EQ(next(&client, 150).tag, 0);
    CHECK_EQ(next(&client, 200).seq, 4);
}

static void test_backoff_doubles_with_jitter_up_to_the_max(void)
{
    uint64_t now = 0;
    uint32_t expect = 100;
    int i;
    start("backoff", false);
    for (i = 0; i < 8; i++) {
        uint64_t at;
        CHECK(telehub_should_connect(&client, now));
        telehub_transport_connecting(&client, now);
        telehub_transport_closed(&client, 0, now);
        at = now;
        while (!telehub_should_connect(&client, at)) {
            at++;
        }
        CHECK(at - now >= expect / 2 && at - now <= expect);
        now = at;
        expect = expect * 2 > 1600 ? 1600 : expect * 2;
    }
    /* A Welcome resets it; a refused token waits the max at once. */
    come_online(&client, now);
    telehub_transport_closed(&client, 401, now);
    CHECK(!telehub_should_connect(&client, now + 799));
}

static void test_bad_input_is_refused_or_ignored(void)
{
    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0x01, 0x0a};
    /* Envelope{presence(7): {}} and an unknown field 99: skipped. */
    static const uint8_t unknown[] = {0x3a, 0x00, 0x9a, 0x06, 0x01, 0x00};
    char long_text[TELEHUB_TEXT_MAX + 2];
    telehub_reading r;
    telehub_reading many[40];
    int i;
    start("bad_input", false);
    CHECK(telehub_publish(&client, "", 0, NULL, 0, NULL) == TELEHUB_ERR_INVALID);
    CHECK(telehub_publish(&client, "env..t", 0, NULL, 0, NULL) == TELEHUB_ERR_INVALID);
    CHECK(telehub_publish(&client, "env t", 0, NULL, 0, NULL) == TELEHUB_ERR_INVALID);
    memset(long_text, 'x', sizeof long_text - 1);
    long_text[sizeof long_text - 1] = '\0';
    r = telehub_text("t", long_text);
    CHECK(telehub_publish(&client, "env.t", 0, &r, 1, NULL) == TELEHUB_ERR_TOO_BIG);
    for (i = 0; i < 40; i++) {
        many[i] = telehub_number("a_rather_long_reading_name", 1.0, "unit");
    }
    CHECK(telehub_publish(&client, "env.t", 0, many, 40, NULL) == TELEHUB_ERR_TOO_BIG);
    CHECK_EQ(telehub_last_seq(&client), 0); /* no seq spent on refusals */
    come_online(&client, 0);
    telehub_transport_received(&client, garbage, sizeof garbage, 0);
    telehub_transport_received(&client, unknown, sizeof unknown, 0);
    telehub_transport_received(&client, garbage, 0, 0);
    CHECK(telehub_online(&client));
    CHECK(telehub_ack(&client, "") == TELEHUB_ERR_INVALID);
}

static void test_a_hub_without_confirmations_gets_plain_telemetry(void)
{
    start("no_confirmations", false);
    CHECK(publish(&client) == TELEHUB_OK);
    CHECK(telehub_should_connect(&client, 0));
    telehub_transport_connecting(&client, 0);
    telehub_transport_connected(&client, 0);
    hub_welcome(&client, 0, 100, 200, false);
    CHECK_EQ(next(&client, 0).seq, 1);
    CHECK_EQ(telehub_unconfirmed(&client), 0);
}

/* ---- Stack: each call on its own painted stack ------------------------------- */

#define STACK_BYTES (64 * 1024)
#define PAINT 0xa5

typedef void (*stack_fn)(void);

static void *stack_entry(void *arg)
{
    (*(stack_fn *)arg)();
    return NULL;
}

/* Bytes of stack `fn` touched, thread start included. */
static size_t stack_used(stack_fn fn)
{
    static unsigned char stack[STACK_BYTES] __attribute__((aligned(64)));
    pthread_attr_t attr;
    pthread_t th;
    size_t i;
    memset(stack, PAINT, sizeof stack);
    pthread_attr_init(&attr);
    pthread_attr_setstack(&attr, stack, sizeof stack);
    if (pthread_create(&th, &attr, stack_entry, &fn) != 0) {
        return 0;
    }
    pthread_join(th, NULL);
    pthread_attr_destroy(&attr);
    for (i = 0; i < sizeof stack && stack[i] == PAINT; i++) {
    }
    return sizeof stack - i;
}

static void call_nothing(void)
{
}

static void call_publish(void)
{
    (void)publish(&client);
}

/* The hub's message, encoded before the measured call. */
static size_t prepared;

static void call_receive(void)
{
    telehub_transport_received(&client, hub_buf, prepared, 0);
}

static void call_next(void)
{
    uint8_t buf[TELEHUB_FRAME_MAX];
    (void)telehub_transport_next(&client, buf, sizeof buf, 100);
}

/* ---- Main ------------------------------------------------------------------------ */

int main(void)
{
    size_t base;
    size_t s_publish;
    size_t s_notification;
    size_t s_confirmation;
    size_t s_next;

    test_confirmations_drop_and_reconnect_resends_only_the_rest();
    test_a_hub_that_forgot_gets_everything_unconfirmed_again();
    test_rate_limited_seqs_are_resent_after_retry_after();
    test_the_ring_is_bounded();
    test_notifications_are_acked_once_given_once();
    test_pacing_follows_the_welcome();
    test_backoff_doubles_with_jitter_up_to_the_max();
    test_bad_input_is_refused_or_ignored();
    test_a_hub_without_confirmations_gets_plain_telemetry();
    current = "heap";
    CHECK_EQ(heap_calls, 0);

    /* Stack high-water marks, less a thread that does nothing. */
    start("stack", true);
    publish(&client);
    publish(&client);
    publish(&client);
    come_online(&client, 0);
    hub_confirmed(&client, 0, 42, 0, NULL, 0, 0);
    base = stack_used(call_nothing);
    s_publish = stack_used(call_publish) - base;
    prepared = encode_notification("n00000000000000ff", TELEHUB_SEVERITY_CRITICAL, false);
    s_notification = stack_used(call_receive) - base;
    s_next = stack_used(call_next) - base;
    {
        static const uint64_t limited[] = {2, 3};
        prepared = encode_confirmed(42, 1, limited, 2, 10);
        s_confirmation = stack_used(call_receive) - base;
    }

    printf("sizeof(telehub_client) = %lu bytes (ring %d x %lu-byte slots = %lu)\n",
           (unsigned long)sizeof(telehub_client), TELEHUB_RING_SLOTS, (unsigned long)sizeof(telehub_slot),
           (unsigned long)sizeof client.ring);
    printf("heap: %lu allocator calls by the core\n", heap_calls);
    printf("stack high-water (bytes): publish %lu, receive notification %lu, "
           "receive confirmation %lu, next %lu\n",
           (unsigned long)s_publish, (unsigned long)s_notification, (unsigned long)s_confirmation,
           (unsigned long)s_next);
    if (failures > 0) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("core tests passed\n");
    return 0;
}
