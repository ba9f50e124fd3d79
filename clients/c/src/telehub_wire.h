/*
 * telehub.v1.Envelope to and from bytes, with nanopb (part of the core).
 *
 * A device writes three kinds of envelope (Telemetry, Ack, ConfirmTelemetry) and
 * reads four (Welcome, Notification, Error, TelemetryConfirmed); whatever else
 * arrives is skipped, so later additions to the proto do not break old devices.
 * The envelope's oneof is walked by hand (tag, then the one submessage), so no
 * Envelope struct is ever held; strings and bytes are read in place from the
 * received message (telehub_str views) and repeated fields are visited one
 * element at a time.
 */
#ifndef TELEHUB_WIRE_H
#define TELEHUB_WIRE_H

#include "telehub_client.h"

/* Encodes Envelope{telemetry}; 0 with *err set when it does not fit or a value
 * is out of bounds. */
size_t telehub_wire_telemetry(uint8_t *buf, size_t cap, const char *category, uint64_t seq,
                              uint64_t timestamp_ms, const telehub_reading *readings,
                              size_t count, telehub_result *err);
/* Encodes Envelope{ack{notification_id}}; 0 if it does not fit. */
size_t telehub_wire_ack(uint8_t *buf, size_t cap, const char *id);
/* Encodes Envelope{confirm_telemetry{boot_id}}; 0 if it does not fit. */
size_t telehub_wire_confirm(uint8_t *buf, size_t cap, uint64_t boot_id);

typedef enum {
    TELEHUB_IN_OTHER = 0,
    TELEHUB_IN_WELCOME,
    TELEHUB_IN_NOTIFICATION,
    TELEHUB_IN_ERROR,
    TELEHUB_IN_CONFIRMED
} telehub_in_kind;

/* One decoded envelope from the hub; the views point into the decoded bytes. */
typedef struct {
    telehub_in_kind kind;
    union {
        telehub_welcome welcome;
        struct {
            telehub_str id;
            int severity;
            telehub_str title;
            telehub_str body;
            telehub_str payload;
            uint64_t created_ms;
            uint64_t expires_ms;
            bool redelivery;
        } notification;
        struct {
            int code;
            telehub_str message;
            uint32_t retry_after_ms;
        } error;
        struct {
            uint64_t boot_id;
            uint64_t through_seq;
            uint32_t retry_after_ms;
            size_t rate_limited;
        } confirmed;
    } u;
} telehub_incoming;

/* Decodes one envelope. `each_rate_limited` (may be NULL) is called for every
 * seq of a TelemetryConfirmed's `rate_limited`, during the decode. Returns false
 * when the bytes are not an Envelope. */
bool telehub_wire_decode(const uint8_t *data, size_t len, telehub_incoming *in,
                         void (*each_rate_limited)(void *ctx, uint64_t seq), void *ctx);

#endif
