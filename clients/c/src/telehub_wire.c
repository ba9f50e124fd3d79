/*
 * telehub.v1.Envelope to and from bytes (see telehub_wire.h).
 *
 * The generated descriptors come from clients/c/proto/telehub.options: the
 * strings, bytes and repeated fields a device reads are nanopb callbacks, which
 * here either record where the value lies in the received buffer (read_view) or
 * visit each element (read_seq). Views rely on buffer streams
 * (pb_istream_from_buffer), whose `state` is the read position.
 */
#include "telehub_wire.h"

#include <string.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "telehub/v1/telehub.pb.h"

/* ---- Encoding ------------------------------------------------------------ */

/* A NUL-terminated string field; proto3 leaves an empty one out. */
static bool write_string(pb_ostream_t *s, const pb_field_iter_t *field, void *const *arg)
{
    const char *str = (const char *)*arg;
    if (str == NULL || str[0] == '\0') {
        return true;
    }
    return pb_encode_tag_for_field(s, field) &&
           pb_encode_string(s, (const pb_byte_t *)str, strlen(str));
}

typedef struct {
    const telehub_reading *readings;
    size_t count;
    /* Why the encoding stopped, when a reading was refused. */
    telehub_result err;
} readings_arg;

/* Fills one Reading from the application's; false if a value is out of bounds. */
static bool fill_reading(telehub_v1_Reading *m, const telehub_reading *r, telehub_result *err)
{
    size_t n;
    if (r->name == NULL || r->name[0] == '\0') {
        *err = TELEHUB_ERR_INVALID;
        return false;
    }
    m->name.funcs.encode = write_string;
    m->name.arg = (void *)r->name;
    m->unit.funcs.encode = write_string;
    m->unit.arg = (void *)r->unit;
    switch (r->kind) {
    case TELEHUB_NUMBER:
        m->which_value = telehub_v1_Reading_number_tag;
        m->value.number = r->value.number;
        return true;
    case TELEHUB_INTEGER:
        m->which_value = telehub_v1_Reading_integer_tag;
        m->value.integer = r->value.integer;
        return true;
    case TELEHUB_FLAG:
        m->which_value = telehub_v1_Reading_flag_tag;
        m->value.flag = r->value.flag;
        return true;
    case TELEHUB_TEXT:
        if (r->value.text == NULL) {
            *err = TELEHUB_ERR_INVALID;
            return false;
        }
        n = strlen(r->value.text);
        if (n >= sizeof m->value.text) {
            *err = TELEHUB_ERR_TOO_BIG;
            return false;
        }
        m->which_value = telehub_v1_Reading_text_tag;
        memcpy(m->value.text, r->value.text, n + 1);
        return true;
    case TELEHUB_RAW:
        n = r->value.raw.len;
        if (n > sizeof m->value.raw.bytes) {
            *err = TELEHUB_ERR_TOO_BIG;
            return false;
        }
        if (n > 0 && r->value.raw.data == NULL) {
            *err = TELEHUB_ERR_INVALID;
            return false;
        }
        m->which_value = telehub_v1_Reading_raw_tag;
        m->value.raw.size = (pb_size_t)n;
        if (n > 0) {
            memcpy(m->value.raw.bytes, r->value.raw.data, n);
        }
        return true;
    }
    *err = TELEHUB_ERR_INVALID;
    return false;
}

/* `repeated Reading readings`: one Reading struct on the stack at a time. */
static bool write_readings(pb_ostream_t *s, const pb_field_iter_t *field, void *const *arg)
{
    readings_arg *a = (readings_arg *)*arg;
    size_t i;
    for (i = 0; i < a->count; i++) {
        telehub_v1_Reading m = telehub_v1_Reading_init_zero;
        if (!fill_reading(&m, &a->readings[i], &a->err)) {
            return false;
        }
        if (!pb_encode_tag_for_field(s, field) ||
            !pb_encode_submessage(s, telehub_v1_Reading_fields, &m)) {
            return false;
        }
    }
    return true;
}

/* Envelope{<tag>: message}. */
static size_t write_envelope(uint8_t *buf, size_t cap, uint32_t tag, const pb_msgdesc_t *fields,
                             const void *message)
{
    pb_ostream_t s = pb_ostream_from_buffer(buf, cap);
    if (!pb_encode_tag(&s, PB_WT_STRING, tag) || !pb_encode_submessage(&s, fields, message)) {
        return 0;
    }
    return s.bytes_written;
}

size_t telehub_wire_telemetry(uint8_t *buf, size_t cap, const char *category, uint64_t seq,
                              uint64_t timestamp_ms, const telehub_reading *readings,
                              size_t count, telehub_result *err)
{
    telehub_v1_Telemetry t = telehub_v1_Telemetry_init_zero;
    readings_arg a;
    size_t n;
    a.readings = readings;
    a.count = count;
    a.err = TELEHUB_OK;
    t.category.funcs.encode = write_string;
    t.category.arg = (void *)category;
    t.timestamp_ms = timestamp_ms;
    t.seq = seq;
    t.readings.funcs.encode = write_readings;
    t.readings.arg = &a;
    n = write_envelope(buf, cap, telehub_v1_Envelope_telemetry_tag, telehub_v1_Telemetry_fields, &t);
    if (n == 0) {
        *err = a.err != TELEHUB_OK ? a.err : TELEHUB_ERR_TOO_BIG;
    }
    return n;
}

size_t telehub_wire_ack(uint8_t *buf, size_t cap, const char *id)
{
    telehub_v1_Ack a = telehub_v1_Ack_init_zero;
    a.notification_id.funcs.encode = write_string;
    a.notification_id.arg = (void *)id;
    return write_envelope(buf, cap, telehub_v1_Envelope_ack_tag, telehub_v1_Ack_fields, &a);
}

size_t telehub_wire_confirm(uint8_t *buf, size_t cap, uint64_t boot_id)
{
    telehub_v1_ConfirmTelemetry c = telehub_v1_ConfirmTelemetry_init_zero;
    c.boot_id = boot_id;
    return write_envelope(buf, cap, telehub_v1_Envelope_confirm_telemetry_tag,
                          telehub_v1_ConfirmTelemetry_fields, &c);
}

/* ---- Decoding ------------------------------------------------------------ */

/* A string or bytes field: where it lies in the buffer, without a copy. */
static bool read_view(pb_istream_t *s, const pb_field_iter_t *field, void **arg)
{
    telehub_str *v = (telehub_str *)*arg;
    (void)field;
    v->ptr = (const char *)s->state;
    v->len = s->bytes_left;
    return pb_read(s, NULL, s->bytes_left);
}

static void view(pb_callback_t *cb, telehub_str *into)
{
    cb->funcs.decode = read_view;
    cb->arg = into;
}

typedef struct {
    void (*fn)(void *ctx, uint64_t seq);
    void *ctx;
    size_t count;
} seq_visitor;

/* One element of a `repeated uint64` (packed or not). */
static bool read_seq(pb_istream_t *s, const pb_field_iter_t *field, void **arg)
{
    seq_visitor *v = (seq_visitor *)*arg;
    uint64_t seq;
    (void)field;
    if (!pb_decode_varint(s, &seq)) {
        return false;
    }
    v->count++;
    if (v->fn != NULL) {
        v->fn(v->ctx, seq);
    }
    return true;
}

/* Decodes the submessage at the stream's position into `dest`. */
static bool read_message(pb_istream_t *s, const pb_msgdesc_t *fields, void *dest)
{
    pb_istream_t sub;
    bool ok;
    if (!pb_make_string_substream(s, &sub)) {
        return false;
    }
    ok = pb_decode(&sub, fields, dest);
    return pb_close_string_substream(s, &sub) && ok;
}

static bool read_welcome(pb_istream_t *s, telehub_incoming *in)
{
    telehub_v1_Welcome m = telehub_v1_Welcome_init_zero;
    telehub_welcome *w = &in->u.welcome;
    memset(w, 0, sizeof *w);
    view(&m.subject, &w->subject);
    view(&m.role, &w->role);
    view(&m.server_version, &w->server_version);
    if (!read_message(s, telehub_v1_Welcome_fields, &m)) {
        return false;
    }
    w->max_message_bytes = m.max_message_bytes;
    w->rate_per_second = m.rate_per_second;
    w->burst = m.burst;
    w->confirmations = m.confirmations;
    in->kind = TELEHUB_IN_WELCOME;
    return true;
}

static bool read_notification(pb_istream_t *s, telehub_incoming *in)
{
    telehub_v1_Notification m = telehub_v1_Notification_init_zero;
    memset(&in->u.notification, 0, sizeof in->u.notification);
    view(&m.id, &in->u.notification.id);
    view(&m.title, &in->u.notification.title);
    view(&m.body, &in->u.notification.body);
    view(&m.payload, &in->u.notification.payload);
    if (!read_message(s, telehub_v1_Notification_fields, &m)) {
        return false;
    }
    in->u.notification.severity = (int)m.severity;
    in->u.notification.created_ms = m.created_ms;
    in->u.notification.expires_ms = m.expires_ms;
    in->u.notification.redelivery = m.redelivery;
    in->kind = TELEHUB_IN_NOTIFICATION;
    return true;
}

static bool read_error(pb_istream_t *s, telehub_incoming *in)
{
    telehub_v1_Error m = telehub_v1_Error_init_zero;
    memset(&in->u.error, 0, sizeof in->u.error);
    view(&m.message, &in->u.error.message);
    if (!read_message(s, telehub_v1_Error_fields, &m)) {
        return false;
    }
    in->u.error.code = (int)m.code;
    in->u.error.retry_after_ms = m.retry_after_ms;
    in->kind = TELEHUB_IN_ERROR;
    return true;
}

static bool read_confirmed(pb_istream_t *s, telehub_incoming *in, seq_visitor *v)
{
    telehub_v1_TelemetryConfirmed m = telehub_v1_TelemetryConfirmed_init_zero;
    m.rate_limited.funcs.decode = read_seq;
    m.rate_limited.arg = v;
    v->count = 0;
    if (!read_message(s, telehub_v1_TelemetryConfirmed_fields, &m)) {
        return false;
    }
    in->u.confirmed.boot_id = m.boot_id;
    in->u.confirmed.through_seq = m.through_seq;
    in->u.confirmed.retry_after_ms = m.retry_after_ms;
    in->u.confirmed.rate_limited = v->count;
    in->kind = TELEHUB_IN_CONFIRMED;
    return true;
}

bool telehub_wire_decode(const uint8_t *data, size_t len, telehub_incoming *in,
                         void (*each_rate_limited)(void *ctx, uint64_t seq), void *ctx)
{
    pb_istream_t s = pb_istream_from_buffer(data, len);
    seq_visitor v;
    v.fn = each_rate_limited;
    v.ctx = ctx;
    v.count = 0;
    in->kind = TELEHUB_IN_OTHER;
    for (;;) {
        pb_wire_type_t wire_type;
        uint32_t tag;
        bool eof = false;
        bool ok;
        if (!pb_decode_tag(&s, &wire_type, &tag, &eof)) {
            return eof;
        }
        if (wire_type != PB_WT_STRING) {
            ok = pb_skip_field(&s, wire_type);
        } else {
            switch (tag) {
            case telehub_v1_Envelope_welcome_tag:
                ok = read_welcome(&s, in);
                break;
            case telehub_v1_Envelope_notification_tag:
                ok = read_notification(&s, in);
                break;
            case telehub_v1_Envelope_error_tag:
                ok = read_error(&s, in);
                break;
            case telehub_v1_Envelope_telemetry_confirmed_tag:
                ok = read_confirmed(&s, in, &v);
                break;
            default:
                /* Dashboards' messages and anything added later. */
                ok = pb_skip_field(&s, wire_type);
                break;
            }
        }
        if (!ok) {
            return false;
        }
    }
}
