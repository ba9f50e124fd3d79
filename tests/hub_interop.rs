//! Interoperability: an independent WebSocket implementation (tokio-tungstenite, no
//! compression) as a device and as a dashboard, and a dashboard speaking the proto3
//! JSON mapping (`telehub.v1.json`) as browsers do.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use telehub::{
    auth::Role,
    proto::{envelope::Body, Envelope, Subscribe},
};
use tokio::time::timeout;
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, Message as TMessage},
    WebSocketStream,
};

type Tung = WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn tungstenite(hub: &Hub, path: &str, token: &str) -> Tung {
    let mut req = format!("ws://{}{path}", hub.host())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req.headers_mut()
        .insert("sec-websocket-protocol", PROTOCOL.parse().unwrap());
    let tls = hub.tls().await;
    let (ws, resp) = timeout(T, tokio_tungstenite::client_async(req, tls))
        .await
        .expect("handshake timed out")
        .expect("tungstenite handshake");
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        PROTOCOL
    );
    assert!(resp.headers().get("sec-websocket-extensions").is_none());
    ws
}

/// The next binary envelope (pings are answered by tungstenite itself).
async fn next(ws: &mut Tung) -> Envelope {
    loop {
        match timeout(T, ws.next()).await.expect("timed out") {
            Some(Ok(TMessage::Binary(b))) => return Envelope::decode(b).expect("an Envelope"),
            Some(Ok(TMessage::Ping(_) | TMessage::Pong(_))) => continue,
            other => panic!("expected a binary envelope, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn tungstenite_device_and_dashboard() {
    let hub = Hub::start().await;
    let mut dash = tungstenite(&hub, "/v1/dashboard", &hub.token("t", Role::Viewer, &[])).await;
    assert!(matches!(next(&mut dash).await.body, Some(Body::Welcome(_))));
    let sub = Envelope {
        body: Some(Body::Subscribe(Subscribe {
            categories: vec!["env.*".into()],
            ..Default::default()
        })),
    };
    dash.send(TMessage::binary(sub.encode_to_vec()))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut dash).await.body,
        Some(Body::Subscribed(_))
    ));

    let mut dev = tungstenite(&hub, "/v1/device", &hub.token("tung-1", Role::Device, &[])).await;
    assert!(matches!(next(&mut dev).await.body, Some(Body::Welcome(_))));
    // A reading large enough that the hub would compress it if it could.
    let big = "x".repeat(2000);
    let env = telemetry(
        "env.t",
        1,
        vec![
            number("t", 3.5, "Cel"),
            raw("blob", big.clone().into_bytes()),
        ],
    );
    dev.send(TMessage::binary(env.encode_to_vec()))
        .await
        .unwrap();

    let t = loop {
        match next(&mut dash).await.body {
            Some(Body::Telemetry(t)) => break t,
            Some(Body::Presence(_)) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        (t.device_id.as_str(), t.category.as_str(), t.seq),
        ("tung-1", "env.t", 1)
    );
    assert_eq!(t.readings[1], raw("blob", big.into_bytes()));

    // Our own dashboard (with deflate) gets the same message from the tungstenite device.
    let mut ours = hub.dashboard().await;
    ours.subscribe(&["env.*"]).await;
    dev.send(TMessage::binary(
        telemetry("env.t", 2, vec![]).encode_to_vec(),
    ))
    .await
    .unwrap();
    assert_eq!(ours.expect_telemetry().await.seq, 2);

    // A clean close handshake.
    dev.close(None).await.unwrap();
    loop {
        match timeout(T, dev.next()).await.expect("close timed out") {
            Some(Ok(TMessage::Close(_))) | None => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("close failed: {e}"),
        }
    }
}

#[tokio::test]
async fn json_dashboard_receives_telemetry_as_proto3_json() {
    let hub = Hub::start().await;
    let token = hub.token("browser", Role::Viewer, &[]);
    let mut d = hub
        .connect(
            "/v1/dashboard",
            &client_config(Some(&token), &[PROTOCOL_JSON]),
        )
        .await
        .expect("JSON dashboard");
    assert_eq!(d.handshake.protocol.as_deref(), Some(PROTOCOL_JSON));

    // Everything arrives as text frames in the proto3 JSON mapping.
    let text = |e: Event| match e {
        Event::Text(s) => serde_json::from_str::<serde_json::Value>(&s).expect("JSON"),
        other => panic!("expected a text frame, got {other:?}"),
    };
    let welcome = text(d.next_event().await);
    assert_eq!(welcome["welcome"]["subject"], "browser");

    d.send_raw(telehub::ws::Message::Text(
        r#"{"subscribe":{"categories":["*"]}}"#.into(),
    ))
    .await;
    let subscribed = text(d.next_event().await);
    assert_eq!(subscribed["subscribed"]["categories"][0], "*");

    let mut dev = hub.device("dev-json").await;
    let v = text(d.next_event().await);
    assert_eq!(v["presence"]["deviceId"], "dev-json");
    dev.send_telemetry("env.t", vec![number("t", 21.5, "Cel")])
        .await;
    let v = text(d.next_event().await);
    let t = &v["telemetry"];
    assert_eq!(t["deviceId"], "dev-json", "{v}");
    assert_eq!(t["category"], "env.t");
    // proto3 JSON: 64-bit integers are strings.
    assert_eq!(t["seq"], "1");
    assert_eq!(t["readings"][0]["name"], "t");
    assert_eq!(t["readings"][0]["number"], 21.5);
    assert_eq!(t["readings"][0]["unit"], "Cel");

    // Errors come back as JSON too.
    d.send_raw(telehub::ws::Message::Text("{not json".into()))
        .await;
    let v = text(d.next_event().await);
    assert_eq!(v["error"]["code"], "MALFORMED", "{v}");
}
