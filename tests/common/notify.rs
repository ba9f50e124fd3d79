//! Helpers for the notification REST API: request bodies and targets, refused
//! calls' statuses, and bounded polls of a notification's status and of device
//! registration.

use std::{collections::BTreeMap, time::Duration};

use telehub::{
    client::{Api, ApiError},
    http::api::{CreateBody, DeliveryBody, DeviceOut, StatusBody, TargetsBody},
};

use super::T;

/// A `POST /v1/notifications` body: `severity` ("info", "warning", "critical") to
/// `targets`, titled `title`, with the default ttl and no body or payload.
pub fn notification(severity: &str, targets: TargetsBody, title: &str) -> CreateBody {
    CreateBody {
        targets,
        severity: severity.to_string(),
        title: title.to_string(),
        body: String::new(),
        payload: None,
        ttl: None,
    }
}

/// A tag map, as the API and tokens carry them.
pub fn tag_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Targets: these device ids.
pub fn to_devices(ids: &[&str]) -> TargetsBody {
    TargetsBody {
        device_ids: ids.iter().map(|d| d.to_string()).collect(),
        ..Default::default()
    }
}

/// Targets: registered devices carrying all of these tags.
pub fn to_tags(tags: &[(&str, &str)]) -> TargetsBody {
    TargetsBody {
        tags: tag_map(tags),
        ..Default::default()
    }
}

/// The HTTP status of a refused API call (fails the test if the call succeeded).
pub fn status_of<T: std::fmt::Debug>(r: Result<T, ApiError>) -> u16 {
    match r {
        Err(ApiError::Status { status, .. }) => status.as_u16(),
        other => panic!("expected an HTTP error status, got {other:?}"),
    }
}

/// Polls `GET /v1/notifications/{id}` (all devices on one page) until `cond` holds,
/// bounded by [`T`]; the status reads after a store barrier, so each poll sees
/// everything the hub did before it.
pub async fn wait_status(
    api: &Api,
    id: &str,
    what: &str,
    cond: impl Fn(&StatusBody) -> bool,
) -> StatusBody {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let s = api.status(id, None, None, 1000).await.expect("GET status");
        if cond(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {id}: {what}; last status: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET /v1/devices` until `id` is registered and has connected (bounded by
/// [`T`]): a device session registers with the notifier just after its Welcome.
pub async fn wait_registered(api: &Api, id: &str) -> DeviceOut {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let page = api.devices(None, 1000).await.expect("GET devices");
        if let Some(d) = page
            .devices
            .into_iter()
            .find(|d| d.id == id && d.last_seen_ms.is_some())
        {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for device {id} to register"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The state of `device` in a status answer (fails the test if it is not listed).
pub fn row<'a>(s: &'a StatusBody, device: &str) -> &'a DeliveryBody {
    s.devices
        .iter()
        .find(|d| d.device_id == device)
        .unwrap_or_else(|| panic!("{device} is not in the status: {s:#?}"))
}
