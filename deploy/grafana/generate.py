"""Generates deploy/grafana/telehub.json: `python3 deploy/grafana/generate.py > deploy/grafana/telehub.json`.

Edit panels here, not in the JSON; tests/grafana_prometheus.rs checks that this script
reproduces the committed JSON and evaluates every query through Prometheus.
"""
import json, sys

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
RI = "$__rate_interval"

def sel(extra=""):
    return "{" + (extra + ", " if extra else "") + SEL + "}"

def rate(metric, extra=""):
    return f"rate({metric}{sel(extra)}[{RI}])"

panels = []
next_id = [1]
y = [0]

def pid():
    i = next_id[0]; next_id[0] += 1; return i

def target(expr, legend, ref, instant=False):
    t = {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend,
         "range": not instant, "instant": instant, "refId": ref}
    return t

def targets(specs, instant=False):
    return [target(e, l, chr(ord("A") + i), instant) for i, (e, l) in enumerate(specs)]

def timeseries(title, desc, specs, unit, w, h=8, stack=False, minv=0, overrides=None):
    p = {
        "datasource": DS, "description": desc,
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "palette-classic"},
                "custom": {
                    "axisBorderShow": False, "axisCenteredZero": False, "axisColorMode": "text",
                    "axisLabel": "", "axisPlacement": "auto", "barAlignment": 0,
                    "drawStyle": "line", "fillOpacity": 10, "gradientMode": "none",
                    "hideFrom": {"legend": False, "tooltip": False, "viz": False},
                    "insertNulls": False, "lineInterpolation": "linear", "lineWidth": 1,
                    "pointSize": 5, "scaleDistribution": {"type": "linear"},
                    "showPoints": "never", "spanNulls": False,
                    "stacking": {"group": "A", "mode": "normal" if stack else "none"},
                    "thresholdsStyle": {"mode": "off"},
                },
                "mappings": [],
                "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
                "unit": unit,
            },
            "overrides": overrides or [],
        },
        "id": None,
        "options": {
            "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets(specs),
        "title": title, "type": "timeseries",
        "_w": w, "_h": h,
    }
    if minv is not None:
        p["fieldConfig"]["defaults"]["min"] = minv
    return p

def stat(title, desc, specs, unit, w, h=4, text_mode="auto", graph="area", mappings=None, thresholds=None, decimals=None):
    p = {
        "datasource": DS, "description": desc,
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "thresholds"},
                "mappings": mappings or [],
                "thresholds": thresholds or {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
                "unit": unit,
            },
            "overrides": [],
        },
        "id": None,
        "options": {
            "colorMode": "value", "graphMode": graph, "justifyMode": "auto", "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showPercentChange": False, "textMode": text_mode, "wideLayout": True,
        },
        "targets": targets(specs),
        "title": title, "type": "stat",
        "_w": w, "_h": h,
    }
    if decimals is not None:
        p["fieldConfig"]["defaults"]["decimals"] = decimals
    return p

rows = []  # (title, collapsed, [panels])

# ---------------------------------------------------------------- Overview
rows.append(("Overview", False, [
    stat("Build", "The running build (telehub_build_info): version, architecture and OS; one entry per distinct build among the selected instances.",
         [(f"count by (version, arch, os) (telehub_build_info{sel()})", "{{version}} {{arch}}/{{os}}")],
         "none", 4, text_mode="name", graph="none"),
    stat("Nodes up", "Selected hub instances Prometheus scrapes successfully (up).",
         [(f"sum(up{sel()})", "up")], "none", 3, graph="none",
         thresholds={"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]}),
    stat("Uptime", "Time since each hub process started (process_start_time_seconds).",
         [(f"time() - process_start_time_seconds{sel()}", "{{instance}}")], "s", 4, graph="none"),
    stat("Devices online", "Open device connections (telehub_connections{role=\"device\"}), all selected instances.",
         [(f'sum(telehub_connections{sel(chr(114)+"ole=" + chr(34) + "device" + chr(34))})', "devices")], "short", 3),
    stat("Dashboards online", "Open dashboard connections (viewer and operator roles).",
         [(f'sum(telehub_connections{sel("role=~" + chr(34) + "viewer|operator" + chr(34))})', "dashboards")], "short", 3),
    stat("Telemetry accepted", "Telemetry messages accepted for fan-out per second.",
         [(f"sum({rate('telehub_telemetry_accepted_total')})", "accepted")], "ops", 4),
    stat("Deliveries", "Telemetry messages queued to dashboards per second (live or inside batches).",
         [(f"sum({rate('telehub_telemetry_delivered_total')})", "delivered")], "ops", 3),
]))

# ---------------------------------------------------------------- Connections
Q = chr(34)
rows.append(("Connections", False, [
    timeseries("Connections by role", "Open WebSocket connections (telehub_connections) by role.",
               [(f"sum by (role) (telehub_connections{sel()})", "{{role}}")], "short", 8, stack=True),
    timeseries("Upgrades accepted by role", "WebSocket upgrades accepted per second, by role.",
               [(f"sum by (role) ({rate('telehub_connections_accepted_total')})", "{{role}}")], "ops", 8),
    timeseries("Connections refused by reason", "Connections or upgrades refused per second before a session started (bad_handshake, conflict, handshake_timeout, origin, tls_handshake).",
               [(f"sum by (reason) ({rate('telehub_connections_refused_total')})", "{{reason}}")], "ops", 8),
    timeseries("Tokens refused by reason", "Tokens refused per second, by reason (expired, signature, revoked, ...).",
               [(f"sum by (reason) ({rate('telehub_tokens_refused_total')})", "{{reason}}")], "ops", 8),
    timeseries("WebSocket messages by role", "WebSocket data messages received and sent per second, by role.",
               [(f"sum by (role) ({rate('telehub_frames_received_total')})", "{{role}} received"),
                (f"sum by (role) ({rate('telehub_frames_sent_total')})", "{{role}} sent")], "ops", 8),
    timeseries("Protocol errors and slow dashboards", "Messages that were not a valid Envelope for their endpoint, and dashboards closed because their control queue overflowed, per second.",
               [(f"sum({rate('telehub_decode_errors_total')})", "decode errors"),
                (f"sum({rate('telehub_closed_slow_consumers_total')})", "slow dashboards closed")], "ops", 8),
]))

# ---------------------------------------------------------------- Telemetry
rows.append(("Telemetry", False, [
    timeseries("Telemetry from devices", "Telemetry messages per second: accepted for fan-out, refused by a device's rate limit, resends already accepted (dropped), and TelemetryConfirmed messages sent back.",
               [(f"sum({rate('telehub_telemetry_accepted_total')})", "accepted"),
                (f"sum({rate('telehub_telemetry_rate_limited_total')})", "rate limited"),
                (f"sum({rate('telehub_telemetry_duplicates_total')})", "duplicates"),
                (f"sum({rate('telehub_telemetry_confirmations_total')})", "confirmations sent")], "ops", 8),
    timeseries("Telemetry to dashboards", "Telemetry messages queued to dashboards per second (live or inside batches), and dropped from full dashboard queues.",
               [(f"sum({rate('telehub_telemetry_delivered_total')})", "delivered"),
                (f"sum({rate('telehub_telemetry_dropped_total')})", "dropped")], "ops", 8,
               overrides=[{"matcher": {"id": "byName", "options": "dropped"},
                           "properties": [{"id": "color", "value": {"fixedColor": "red", "mode": "fixed"}}]}]),
    timeseries("Batches and conflation", "Batch messages built (each encoded once) and queued to dashboards per second, by kind; and telemetry messages conflation did not send (superseded or unchanged).",
               [(f"sum by (kind) ({rate('telehub_batches_built_total')})", "built {{kind}}"),
                (f"sum by (kind) ({rate('telehub_batches_queued_total')})", "queued {{kind}}"),
                (f"sum({rate('telehub_conflated_away_total')})", "conflated away")], "ops", 8),
    timeseries("Bytes received", "Bytes per second received from clients: on the wire (WebSocket frames, compressed, after TLS) and as payload (after inflation), by role.",
               [(f"sum by (role) ({rate('telehub_wire_received_bytes_total')})", "wire {{role}}"),
                (f"sum by (role) ({rate('telehub_payload_received_bytes_total')})", "payload {{role}}")], "binBps", 8),
    timeseries("Bytes sent", "Bytes per second sent to clients: on the wire (WebSocket frames, compressed, before TLS) and as payload (before compression), by role.",
               [(f"sum by (role) ({rate('telehub_wire_sent_bytes_total')})", "wire {{role}}"),
                (f"sum by (role) ({rate('telehub_payload_sent_bytes_total')})", "payload {{role}}")], "binBps", 8),
    timeseries("Wire bytes per payload byte", "Wire bytes as a share of payload bytes (below 100 %: what permessage-deflate saves, net of framing).",
               [(f"sum({rate('telehub_wire_received_bytes_total')}) / sum({rate('telehub_payload_received_bytes_total')})", "received"),
                (f"sum({rate('telehub_wire_sent_bytes_total')}) / sum({rate('telehub_payload_sent_bytes_total')})", "sent")], "percentunit", 8),
]))

# ---------------------------------------------------------------- Latency
def quantiles(metric, qs):
    return [(f"histogram_quantile({q}, sum by (le) ({rate(metric)}))", f"p{int(q*100)}") for q in qs]

ack = "telehub_notification_ack_seconds"
rows.append(("Latency", False, [
    timeseries("Notification ack latency", "Time from a notification's first delivery to a device until its ack (telehub_notification_ack_seconds): quantiles and mean over the rate interval. Empty while no ack arrives.",
               quantiles(ack + "_bucket", [0.5, 0.9, 0.99]) +
               [(f"sum({rate(ack + '_sum')}) / sum({rate(ack + '_count')})", "mean")], "s", 8),
    timeseries("Delivery delay to dashboards", "For each write to a dashboard, the age of its oldest message: from when the hub accepted the telemetry (or built a notice) to the end of the write (telehub_delivery_delay_seconds). Includes a batched or conflated subscription's chosen delay; telemetry from another node counts from its arrival through Redis. Grows when dashboards or their networks are slow.",
               quantiles("telehub_delivery_delay_seconds_bucket", [0.5, 0.9, 0.99]), "s", 8),
    timeseries("Cluster: Redis round trip", "Round trip of each node's heartbeat to Redis (telehub_cluster_redis_rtt_seconds), by quantile. Empty on a node alone (no heartbeats).",
               quantiles("telehub_cluster_redis_rtt_seconds_bucket", [0.5, 0.99]), "s", 8),
]))

# ---------------------------------------------------------------- Notifications
rows.append(("Notifications", False, [
    timeseries("Notifications accepted by severity", "Notifications accepted (durably stored) per second, by severity.",
               [(f"sum by (severity) ({rate('telehub_notifications_accepted_total')})", "{{severity}}")], "ops", 12),
    timeseries("Per-device deliveries", "Per-device notification deliveries per second: written for the first time, written again (no ack in time, or after a reconnect), acknowledged, and expired unacknowledged or undelivered.",
               [(f"sum({rate('telehub_notifications_delivered_total')})", "delivered"),
                (f"sum({rate('telehub_notifications_redelivered_total')})", "redelivered"),
                (f"sum({rate('telehub_notifications_acked_total')})", "acknowledged"),
                (f"sum({rate('telehub_notifications_expired_total')})", "expired")], "ops", 12,
               overrides=[{"matcher": {"id": "byName", "options": "expired"},
                           "properties": [{"id": "color", "value": {"fixedColor": "red", "mode": "fixed"}}]}]),
]))

# ---------------------------------------------------------------- Store and cluster
updown = [{"options": {"0": {"color": "red", "index": 0, "text": "down / alone"},
                       "1": {"color": "green", "index": 1, "text": "up"}}, "type": "value"}]
rows.append(("Store and cluster", False, [
    timeseries("Store writes", "Changes applied by the store's writer and transactions committed per second (each commit a group of ops), and commits that failed (their changes kept and retried; new notifications refused with 503 meanwhile).",
               [(f"sum({rate('telehub_store_ops_total')})", "ops"),
                (f"sum({rate('telehub_store_commits_total')})", "commits"),
                (f"sum({rate('telehub_store_commit_failures_total')})", "failed commits")], "ops", 8,
               overrides=[{"matcher": {"id": "byName", "options": "failed commits"},
                           "properties": [{"id": "color", "value": {"fixedColor": "red", "mode": "fixed"}}]}]),
    stat("Store writable", "1 while the node's store accepts writes; 0 on a full disk or while the database cannot be reached (then /readyz answers 503 and new notifications get 503).",
         [(f"telehub_store_writable{sel()}", "{{instance}}")], "none", 4, h=8, graph="none", mappings=updown,
         thresholds={"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]}),
    stat("Ready", "1 while the node's /readyz answers 200: not draining, store writable, and (in a cluster) linked to Redis. A load balancer sends new connections only to ready nodes.",
         [(f"telehub_ready{sel()}", "{{instance}}")], "none", 4, h=8, graph="none", mappings=updown,
         thresholds={"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]}),
    stat("Notification sweeper", "1 on the node running expiry, completion and pruning: always on a node alone, the lease holder in a cluster. Exactly one node of a cluster should show 1.",
         [(f"telehub_notify_sweeper{sel()}", "{{instance}}")], "none", 4, h=8, graph="none"),
    stat("Cluster link", "1 while a node is joined to the others through Redis; 0 on a node alone or while its link is down.",
         [(f"telehub_cluster_link_up{sel()}", "{{instance}}")], "none", 4, h=8, graph="none", mappings=updown,
         thresholds={"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]}),
    timeseries("Store changes kept for retry", "Changes already applied in memory that each node's store writer keeps for another commit attempt while it cannot write (0 while all is well).",
               [(f"telehub_store_kept_ops{sel()}", "{{instance}}")], "short", 8),
    timeseries("Cluster nodes and subscriptions", "Nodes alive in the cluster as each node sees them (0 alone or while its link is down), and the Redis channels and patterns each node subscribes to.",
               [(f"telehub_cluster_nodes{sel()}", "nodes seen by {{instance}}"),
                (f"telehub_cluster_subscriptions{sel()}", "subscriptions of {{instance}}")], "short", 8),
    timeseries("Cluster publications", "Publications sent to and received from the other nodes per second.",
               [(f"sum by (instance) ({rate('telehub_cluster_sent_total')})", "sent {{instance}}"),
                (f"sum by (instance) ({rate('telehub_cluster_received_total')})", "received {{instance}}")], "ops", 8),
    timeseries("Cluster losses by reason", "What did not cross the cluster per second: publications (queue_full, redis_error) or whole frames (inbound_full, bad_frame).",
               [(f"sum by (reason) ({rate('telehub_cluster_lost_total')})", "{{reason}}")], "ops", 8),
]))

# ---------------------------------------------------------------- Process
rows.append(("Process", False, [
    timeseries("CPU", "CPU time used per second by each hub process (100 % = one core).",
               [(rate("process_cpu_seconds_total"), "{{instance}}")], "percentunit", 8),
    timeseries("Resident memory", "Resident memory of each hub process.",
               [(f"process_resident_memory_bytes{sel()}", "{{instance}}")], "bytes", 8),
    timeseries("File descriptors", "Open file descriptors against the process's soft limit.",
               [(f"process_open_fds{sel()}", "open {{instance}}"),
                (f"process_max_fds{sel()}", "max {{instance}}")], "short", 8),
    timeseries("Hub memory by purpose", "Bytes of telemetry queued for dashboards (bound: dashboard.queued_bytes_max), kept for History replays (budget: dashboard.history_max_bytes), and held for clients compressing with context takeover.",
               [(f"sum({'telehub_queued_bytes' + sel()})", "queued for dashboards"),
                (f"sum({'telehub_history_bytes' + sel()})", "history"),
                (f"sum({'telehub_inflate_context_bytes' + sel()})", "inflate contexts")], "bytes", 12),
    timeseries("Devices remembered", "Devices the fleet view and history remember (online, or offline within dashboard.forget_after), against devices online.",
               [(f"sum(telehub_fleet_devices{sel()})", "remembered"),
                (f"sum(telehub_connections{sel('role=' + Q + 'device' + Q)})", "online")], "short", 12),
]))

# Collapse the cluster row? Keep "Store and cluster" collapsed: on a node alone its
# cluster half is all zeros.
COLLAPSED = {"Store and cluster"}

out = []
for title, _, ps in rows:
    collapsed = title in COLLAPSED
    row = {"collapsed": collapsed, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y[0]},
           "id": pid(), "panels": [], "title": title, "type": "row"}
    y[0] += 1
    x = 0; rowh = 0; placed = []
    base_y = y[0]
    for p in ps:
        w, h = p.pop("_w"), p.pop("_h")
        if x + w > 24:
            y[0] += rowh; x = 0; rowh = 0
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y[0]}
        p["id"] = pid()
        x += w; rowh = max(rowh, h)
        placed.append(p)
    y[0] += rowh
    if collapsed:
        row["panels"] = placed
        out.append(row)
        y[0] = base_y  # a collapsed row takes one line
    else:
        out.append(row)
        out.extend(placed)

# Keys in a stable order.
def order(p):
    return p

dash = {
    "__requires": [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
        {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
    ],
    "annotations": {"list": [{
        "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
        "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
    "description": "telehub IoT telemetry hub: connections, telemetry, deliveries, notifications and acks, store, cluster and process, from the hub's GET /metrics. See README, Prometheus and Grafana.",
    "editable": True,
    "fiscalYearStartMonth": 0,
    "graphTooltip": 1,
    "id": None,
    "links": [],
    "liveNow": False,
    "panels": out,
    "refresh": "30s",
    "schemaVersion": 39,
    "tags": ["telehub", "iot", "prometheus"],
    "templating": {"list": [
        {"current": {}, "hide": 0, "includeAll": False, "label": "Data source", "multi": False,
         "name": "datasource", "options": [], "query": "prometheus", "refresh": 1, "regex": "",
         "skipUrlSync": False, "type": "datasource"},
        {"current": {}, "datasource": DS, "definition": "label_values(telehub_build_info, job)",
         "hide": 0, "includeAll": False, "label": "Job", "multi": False, "name": "job", "options": [],
         "query": {"qryType": 1, "query": "label_values(telehub_build_info, job)", "refId": "PrometheusVariableQueryEditor-VariableQuery"},
         "refresh": 2, "regex": "", "skipUrlSync": False, "sort": 1, "type": "query"},
        {"allValue": ".+", "current": {}, "datasource": DS,
         "definition": 'label_values(telehub_build_info{job=~"$job"}, instance)',
         "hide": 0, "includeAll": True, "label": "Instance", "multi": True, "name": "instance", "options": [],
         "query": {"qryType": 1, "query": 'label_values(telehub_build_info{job=~"$job"}, instance)', "refId": "PrometheusVariableQueryEditor-VariableQuery"},
         "refresh": 2, "regex": "", "skipUrlSync": False, "sort": 1, "type": "query"},
    ]},
    "time": {"from": "now-1h", "to": "now"},
    "timepicker": {},
    "timezone": "",
    "title": "telehub",
    "uid": "telehub-overview",
    "version": 1,
    "weekStart": "",
}
json.dump(dash, sys.stdout, indent=2)
sys.stdout.write("\n")
