//! The store cannot write for a while (SQLite refusing writes as a read-only
//! database, then a size bound standing for a full disk), and comes back without
//! a restart: acks the devices sent meanwhile were applied in memory and are
//! committed once it can write, new notifications get 503 meanwhile, and memory
//! and store agree afterwards.

mod common;

use std::time::Duration;

use common::*;
use telehub::{auth::Role, http::api::CountsBody};

#[tokio::test]
async fn acks_sent_while_the_store_cannot_write_are_committed_when_it_can() {
    let hub = Hub::start().await;
    let api = hub.api(Role::Operator);
    let store = hub.app().notifier.store().clone();
    let ids: Vec<String> = (0..10).map(|i| format!("dev-{i}")).collect();
    let mut devices = Vec::new();
    for id in &ids {
        devices.push(hub.device(id).await);
    }
    let targets: Vec<&str> = ids.iter().map(String::as_str).collect();
    let created = api
        .create(&notification("critical", to_devices(&targets), "Valve"))
        .await
        .expect("POST while the store writes");
    let mut received = Vec::new();
    for d in &mut devices {
        received.push(d.expect_notification().await.id);
    }
    assert!(received.iter().all(|id| *id == created.id));
    // Half of them ack while all is well.
    for d in &mut devices[..5] {
        d.ack(&created.id).await;
    }
    wait_status(&api, &created.id, "5 acknowledged", |s| {
        s.summary.counts.acknowledged == 5
    })
    .await;

    // The store refuses writes: the other half ack now.
    store.refuse_writes(true);
    for d in &mut devices[5..] {
        d.ack(&created.id).await;
    }
    let deadline = tokio::time::Instant::now() + T;
    while store.healthy() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store never failed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _, body) = hub.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store_unavailable"), "{body}");
    let m = hub.scrape().await;
    assert_eq!(m.get("telehub_store_writable"), 0.0);
    assert_eq!(m.get("telehub_ready"), 0.0);
    assert!(m.get("telehub_store_commit_failures_total") >= 1.0);
    // The five acks made while it fails are kept for another attempt.
    assert!(m.get("telehub_store_kept_ops") >= 1.0, "{}", m.text);
    // A new notification cannot be made durable: 503, and nothing of it anywhere.
    let refused = api
        .create(&notification("critical", to_devices(&["dev-0"]), "Later"))
        .await;
    assert_eq!(status_of(refused), 503);
    // Its status waits for the kept changes: 503 until they are committed.
    assert_eq!(
        status_of(api.status(&created.id, None, None, 10).await),
        503
    );
    // The store keeps failing for a while; nothing is dropped meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!store.healthy());

    // It writes again, without a restart: every ack is there.
    store.refuse_writes(false);
    let s = wait_status(&api, &created.id, "all 10 acknowledged", |s| {
        s.summary.complete
    })
    .await;
    assert_eq!(
        s.summary.counts,
        CountsBody {
            pending: 0,
            delivered: 0,
            acknowledged: 10,
            expired: 0,
            total: 10,
        }
    );
    assert!(store.healthy());
    let (status, _, _) = hub.get("/readyz").await;
    assert_eq!(status, 200);
    let m = hub.scrape().await;
    assert_eq!(m.get("telehub_store_writable"), 1.0);
    assert_eq!(m.get("telehub_ready"), 1.0);
    assert_eq!(m.get("telehub_store_kept_ops"), 0.0);
    assert_eq!(api.list(10).await.expect("list").notifications.len(), 1);

    // A full disk: the file may not grow past its size now. Notifications fit in
    // the pages it has for a while, then one needs a new page: 503.
    store.limit_size(Some(0));
    let mut made = 0;
    loop {
        match api
            .create(&notification("critical", to_devices(&targets), "Full"))
            .await
        {
            Ok(_) => made += 1,
            Err(e) => {
                assert_eq!(status_of::<()>(Err(e)), 503);
                break;
            }
        }
        assert!(made < 2000, "the bound never filled");
    }
    store.limit_size(None);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match api
            .create(&notification(
                "critical",
                to_devices(&targets),
                "Room again",
            ))
            .await
        {
            Ok(_) => break,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "no room after the bound was lifted: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        api.list(5000).await.expect("list").notifications.len(),
        made + 2,
        "every notification that got its 201 is stored, the refused one is not"
    );
}
