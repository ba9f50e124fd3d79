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

-- Deliveries by state per notification, kept by the triggers below in the
-- transactions that change deliveries: every node reads progress every
-- `notify.progress_interval`, and counting 100,000 deliveries each time would
-- cost PostgreSQL ~30 ms per node per read. Each connection adds to rows of its
-- own `shard` (its backend's pid modulo 16), so that the writers of several
-- nodes do not queue on the same rows; readers add the shards up. Rows go with
-- their notification.
CREATE TABLE delivery_counts (
    notification BIGINT NOT NULL REFERENCES notifications (seq) ON DELETE CASCADE,
    state        INTEGER NOT NULL,
    shard        INTEGER NOT NULL,
    n            BIGINT NOT NULL,
    PRIMARY KEY (notification, state, shard)
);

-- Adds each statement's net change by (notification, state), in key order, so
-- that two transactions on one shard take the rows' locks in the same order.
CREATE FUNCTION delivery_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO delivery_counts (notification, state, shard, n)
    SELECT notification, state, pg_backend_pid() % 16, count(*) FROM new_rows
    GROUP BY notification, state ORDER BY notification, state
    ON CONFLICT (notification, state, shard) DO UPDATE SET n = delivery_counts.n + excluded.n;
    RETURN NULL;
END $$;

CREATE FUNCTION delivery_counts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO delivery_counts (notification, state, shard, n)
    SELECT notification, state, pg_backend_pid() % 16, sum(d) FROM (
        SELECT notification, state, 1 AS d FROM new_rows
        UNION ALL
        SELECT notification, state, -1 AS d FROM old_rows
    ) changes
    GROUP BY notification, state HAVING sum(d) <> 0 ORDER BY notification, state
    ON CONFLICT (notification, state, shard) DO UPDATE SET n = delivery_counts.n + excluded.n;
    RETURN NULL;
END $$;

CREATE TRIGGER deliveries_counted_on_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_inserted();
CREATE TRIGGER deliveries_counted_on_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_updated();
