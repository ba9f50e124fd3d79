-- telehub's tables on PostgreSQL: the embedded store's schema (sqlite/schema.rs)
-- in PostgreSQL's types, plus the indexes a store shared by several nodes needs.

CREATE TABLE devices (
    id            TEXT PRIMARY KEY,
    -- Tag name to value; `@>` finds the devices a tag selector matches.
    tags          JSONB NOT NULL DEFAULT '{}',
    registered_ms BIGINT NOT NULL,
    -- NULL until the device first connects.
    last_seen_ms  BIGINT
);
CREATE INDEX devices_tags ON devices USING gin (tags jsonb_path_ops);

CREATE TABLE notifications (
    -- Creation order across every node: devices receive their notifications in
    -- this order.
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    severity     INTEGER NOT NULL,
    title        TEXT NOT NULL,
    body         TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    -- JSON of the request's targets, as the operator gave them.
    targets      TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    expires_ms   BIGINT NOT NULL,
    -- Set once no delivery can change any more (all acknowledged or expired).
    completed_ms BIGINT
);
CREATE INDEX notifications_open ON notifications (seq) WHERE completed_ms IS NULL;

CREATE TABLE deliveries (
    notification BIGINT NOT NULL REFERENCES notifications (seq) ON DELETE CASCADE,
    device_id    TEXT NOT NULL,
    -- 0 pending, 1 delivered, 2 acknowledged, 3 expired.
    state        INTEGER NOT NULL DEFAULT 0,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_sent_ms BIGINT,
    acked_ms     BIGINT,
    PRIMARY KEY (notification, device_id)
-- Room in each page, so that a delivery's updates (a write, an ack) can stay in
-- its page without touching the indexes (heap-only tuples).
) WITH (fillfactor = 70);
-- A device's open deliveries, when it connects to a node.
CREATE INDEX deliveries_device ON deliveries (device_id, notification);
