//! Conformance of telehub's WebSocket transport (`telehub::ws`), driven the way a peer
//! would: a server `Connection` on a loopback port, a raw TCP client writing exact
//! frame bytes and asserting the exact frames and close codes that come back. Then
//! round trips through our own client and interop with tokio-tungstenite.
//!
//! Every read is under a timeout so a bug fails the test instead of hanging it. The
//! Autobahn|Testsuite case families are covered case by case in `ws_conformance.rs`;
//! the raw peer both use lives in `wire/`.

mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use telehub::ws::client::{self, ClientConfig, ClientDeflateOffer};
use telehub::ws::handshake::ServerDeflatePolicy;
use telehub::ws::{
    server, Config, Connection, DeflateParams, Error, Message, ProtocolError, Role, SharedMessage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use wire::*;

// ---------------------------------------------------------------- framing

#[tokio::test]
async fn masked_text_and_binary_are_echoed_unmasked() {
    let (addr, task) = echo_server(Config::default(), None).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&frame(0x81, b"Hello")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (0x81, b"Hello".to_vec()));
    let big = vec![0xabu8; 70_000];
    let cfg_big = frame(0x82, &big[..60_000]);
    s.write_all(&cfg_big).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (0x82, big[..60_000].to_vec()));
    // Empty messages are messages too.
    s.write_all(&frame(0x82, b"")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (0x82, vec![]));
    s.write_all(&frame(0x88, &close_body(1000, b"bye")))
        .await
        .unwrap();
    expect_close(&mut s, 1000).await;
    timeout(T, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn byte_by_byte_delivery_is_reassembled() {
    let (addr, task) = echo_server(Config::default(), None).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for b in frame(0x81, "héllo wörld".as_bytes()) {
        s.write_all(&[b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        read_frame(&mut s).await,
        (0x81, "héllo wörld".as_bytes().to_vec())
    );
    s.write_all(&frame(0x88, b"")).await.unwrap();
    let (first, p) = read_frame(&mut s).await;
    assert_eq!(
        (first, p.len()),
        (0x88, 0),
        "empty close is answered with an empty close"
    );
    timeout(T, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn unmasked_client_frame_is_1002() {
    let err = violation(Config::default(), None, &unmasked(0x81, b"hi"), 1002).await;
    assert!(
        matches!(err, Error::Protocol(ProtocolError::UnmaskedFrame)),
        "{err}"
    );
}

#[tokio::test]
async fn fragments_with_interleaved_ping() {
    let (addr, task) = echo_server(Config::default(), None).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut bytes = frame(0x01, b"Hel");
    bytes.extend(frame(0x89, b"ping!"));
    bytes.extend(frame(0x00, b"lo, "));
    bytes.extend(frame(0x8a, b"unsolicited pong"));
    bytes.extend(frame(0x80, "wörld".as_bytes()));
    s.write_all(&bytes).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (0x8a, b"ping!".to_vec()));
    assert_eq!(
        read_frame(&mut s).await,
        (0x81, "Hello, wörld".as_bytes().to_vec())
    );
    s.write_all(&frame(0x88, &close_body(1001, b"")))
        .await
        .unwrap();
    expect_close(&mut s, 1001).await;
    timeout(T, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn continuation_without_start_is_1002() {
    let err = violation(Config::default(), None, &frame(0x80, b"x"), 1002).await;
    assert!(
        matches!(err, Error::Protocol(ProtocolError::UnexpectedContinuation)),
        "{err}"
    );
}

#[tokio::test]
async fn new_message_inside_fragmented_one_is_1002() {
    let mut bytes = frame(0x01, b"a");
    bytes.extend(frame(0x81, b"b"));
    let err = violation(Config::default(), None, &bytes, 1002).await;
    assert!(
        matches!(err, Error::Protocol(ProtocolError::ExpectedContinuation)),
        "{err}"
    );
}

#[tokio::test]
async fn reserved_bits_are_1002() {
    for first in [0xc1u8, 0xa1, 0x91] {
        // RSV1 without negotiated deflate, RSV2, RSV3.
        let err = violation(Config::default(), None, &frame(first, b"x"), 1002).await;
        assert!(
            matches!(err, Error::Protocol(ProtocolError::ReservedBits)),
            "{first:#x}: {err}"
        );
    }
    // RSV2 stays reserved even with deflate.
    let err = violation(Config::default(), Some(pmd()), &frame(0xa1, b"x"), 1002).await;
    assert!(
        matches!(err, Error::Protocol(ProtocolError::ReservedBits)),
        "{err}"
    );
}

#[tokio::test]
async fn reserved_opcodes_are_1002() {
    for op in [3u8, 7, 0xb, 0xf] {
        let err = violation(Config::default(), None, &frame(0x80 | op, b""), 1002).await;
        assert!(
            matches!(err, Error::Protocol(ProtocolError::ReservedOpcode(o)) if o == op),
            "{err}"
        );
    }
}

#[tokio::test]
async fn bad_control_frames_are_1002() {
    let err = violation(Config::default(), None, &frame(0x09, b"x"), 1002).await;
    assert!(
        matches!(err, Error::Protocol(ProtocolError::FragmentedControl)),
        "{err}"
    );
    let err = violation(Config::default(), None, &frame(0x89, &[0u8; 126]), 1002).await;
    assert!(
        matches!(err, Error::Protocol(ProtocolError::ControlTooLong)),
        "{err}"
    );
}

#[tokio::test]
async fn length_with_msb_set_is_1002() {
    let mut bytes = vec![0x82, 0x80 | 127];
    bytes.extend_from_slice(&(1u64 << 63).to_be_bytes());
    bytes.extend_from_slice(&[1, 2, 3, 4]);
    let err = violation(Config::default(), None, &bytes, 1002).await;
    assert!(
        matches!(err, Error::Protocol(ProtocolError::LengthMsb)),
        "{err}"
    );
}

// ---------------------------------------------------------------- UTF-8

#[tokio::test]
async fn invalid_utf8_text_is_1007() {
    let err = violation(Config::default(), None, &frame(0x81, b"ok \xff"), 1007).await;
    assert!(matches!(err, Error::Utf8), "{err}");
    // A truncated code point at the end of a complete message.
    let err = violation(Config::default(), None, &frame(0x81, b"\xe2\x82"), 1007).await;
    assert!(matches!(err, Error::Utf8), "{err}");
}

#[tokio::test]
async fn invalid_utf8_fails_fast_in_fragmented_text() {
    // Only the first fragment is ever sent: the error must not wait for the end.
    let err = violation(Config::default(), None, &frame(0x01, b"abc\xc0\xaf"), 1007).await;
    assert!(matches!(err, Error::Utf8), "{err}");
}

#[tokio::test]
async fn code_point_split_across_fragments_is_fine() {
    let (addr, task) = echo_server(Config::default(), None).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let euro = "€".as_bytes();
    let mut bytes = frame(0x01, &euro[..1]);
    bytes.extend(frame(0x00, &euro[1..2]));
    bytes.extend(frame(0x80, &euro[2..]));
    s.write_all(&bytes).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (0x81, euro.to_vec()));
    drop(s);
    let err = server_error(task).await;
    assert!(matches!(err, Error::Eof | Error::Io(_)), "{err}");
}

// ---------------------------------------------------------------- close

#[tokio::test]
async fn server_initiated_close_handshake() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = Connection::new(stream, Role::Server, Config::default(), None);
        conn.close(4000, "maintenance").await.unwrap();
        conn.close(4001, "again").await.unwrap(); // idempotent: nothing sent
        assert!(matches!(
            conn.send(&Message::Text("late".into())).await,
            Err(Error::Closed)
        ));
        // Data the peer sent before seeing our close is still delivered.
        let m = timeout(T, conn.read()).await.unwrap().unwrap();
        assert_eq!(m, Some(Message::Text("in flight".into())));
        timeout(T, conn.read()).await.unwrap().unwrap()
    });
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (first, p) = read_frame(&mut s).await;
    assert_eq!(first, 0x88);
    assert_eq!(p, close_body(4000, b"maintenance"));
    s.write_all(&frame(0x81, b"in flight")).await.unwrap();
    s.write_all(&frame(0x88, &close_body(4000, b"")))
        .await
        .unwrap();
    let mut rest = Vec::new();
    timeout(T, s.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(rest.is_empty(), "no second close frame: {rest:?}");
    assert_eq!(timeout(T, task).await.unwrap().unwrap(), None);
}

// ---------------------------------------------------------------- limits

#[tokio::test]
async fn too_big_frame_is_1009_before_the_payload_arrives() {
    let (addr, task) = echo_server(Config::default(), None).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // Header announcing 100 000 bytes (> 64 KiB), and no payload at all.
    let mut bytes = vec![0x82, 0x80 | 127];
    bytes.extend_from_slice(&100_000u64.to_be_bytes());
    bytes.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&bytes).await.unwrap();
    expect_close(&mut s, 1009).await;
    let err = server_error(task).await;
    assert!(
        matches!(
            err,
            Error::FrameTooBig {
                len: 100_000,
                max: 65536
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn too_big_fragmented_message_is_1009() {
    let config = Config {
        max_message_size: 100_000,
        ..Config::default()
    };
    let mut bytes = frame(0x02, &[1u8; 60_000]);
    bytes.extend(frame(0x80, &[2u8; 60_000]));
    let err = violation(config, None, &bytes, 1009).await;
    assert!(
        matches!(err, Error::MessageTooBig { max: 100_000 }),
        "{err}"
    );
}

#[tokio::test]
async fn decompression_bomb_is_1009_quickly() {
    let bomb = deflate_raw(&vec![0u8; 10 << 20]);
    assert!(bomb.len() < 20_000, "bomb is {} bytes", bomb.len());
    let started = std::time::Instant::now();
    // Single frame: bounded by min(max_frame_size, max_message_size).
    let err = violation(Config::default(), Some(pmd()), &frame(0xc2, &bomb), 1009).await;
    assert!(matches!(err, Error::MessageTooBig { .. }), "{err}");
    // Fragmented: bounded by max_message_size (1 MiB).
    let half = bomb.len() / 2;
    let mut bytes = frame(0x42, &bomb[..half]);
    bytes.extend(frame(0x80, &bomb[half..]));
    let err = violation(Config::default(), Some(pmd()), &bytes, 1009).await;
    assert!(
        matches!(err, Error::MessageTooBig { max } if max == 1 << 20),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------- permessage-deflate

#[tokio::test]
async fn rsv1_on_control_frame_is_1002() {
    let err = violation(Config::default(), Some(pmd()), &frame(0xc9, b"x"), 1002).await;
    assert!(
        matches!(err, Error::Protocol(ProtocolError::CompressedControl)),
        "{err}"
    );
}

#[tokio::test]
async fn rsv1_on_continuation_is_1002() {
    let z = deflate_raw(b"hello hello hello");
    let mut bytes = frame(0x42, &z[..3]);
    bytes.extend(frame(0xc0, &z[3..]));
    let err = violation(Config::default(), Some(pmd()), &bytes, 1002).await;
    assert!(
        matches!(err, Error::Protocol(ProtocolError::CompressedContinuation)),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_deflate_data_is_1007() {
    let err = violation(
        Config::default(),
        Some(pmd()),
        &frame(0xc2, &[0xff; 32]),
        1007,
    )
    .await;
    assert!(matches!(err, Error::InvalidDeflate), "{err}");
}

#[tokio::test]
async fn compressed_fragmented_message_round_trips() {
    let (addr, task) = echo_server(Config::default(), Some(pmd())).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let text = "temperature=21.5 humidity=40 ".repeat(50);
    let z = deflate_raw(text.as_bytes());
    let (a, b) = (z.len() / 3, 2 * z.len() / 3);
    let mut bytes = frame(0x41, &z[..a]); // RSV1 + text, not final
    bytes.extend(frame(0x89, b"mid")); // a ping between fragments
    bytes.extend(frame(0x00, &z[a..b]));
    bytes.extend(frame(0x80, &z[b..]));
    // And an uncompressed message on the same connection.
    bytes.extend(frame(0x82, b"plain"));
    s.write_all(&bytes).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (0x8a, b"mid".to_vec()));
    let (first, p) = read_frame(&mut s).await;
    assert_eq!(first, 0xc1, "echo is compressed (RSV1), text, final");
    assert!(p.len() < text.len());
    assert_eq!(inflate_raw(&p), text.as_bytes());
    // Below the compression threshold: sent plain.
    assert_eq!(read_frame(&mut s).await, (0x82, b"plain".to_vec()));
    s.write_all(&frame(0x88, &close_body(1000, b"")))
        .await
        .unwrap();
    expect_close(&mut s, 1000).await;
    timeout(T, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn client_context_takeover_is_honoured() {
    // The client's second message refers back into its first one.
    let (addr, task) = echo_server(Config::default(), Some(pmd())).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let msg = "device d-0001 category=temperature value=21.5".repeat(3);
    let mut peer = PeerDeflate::new(15, true);
    let mut sent = Vec::new();
    for _ in 0..2 {
        let z = peer.message(msg.as_bytes());
        sent.push(z.len());
        s.write_all(&frame(0xc1, &z)).await.unwrap();
        let (_, p) = read_frame(&mut s).await;
        assert_eq!(inflate_raw(&p), msg.as_bytes());
    }
    assert!(sent[1] < sent[0] / 2, "{sent:?}");
    drop(s);
    let _ = timeout(T, task).await.unwrap();
}

// ---------------------------------------------------------------- our client

async fn handshake_echo_server(
    policy: ServerDeflatePolicy,
) -> (SocketAddr, JoinHandle<Option<DeflateParams>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (conn, accept) =
            server::accept_stream(stream, &["telehub.v1"], &policy, Config::default())
                .await
                .unwrap();
        assert_eq!(accept.protocol.as_deref(), Some("telehub.v1"));
        let deflate = conn.deflate();
        let (mut rx, mut tx) = conn.split();
        for _ in 0..10_000 {
            match timeout(T, rx.next()).await.unwrap().unwrap() {
                telehub::ws::Incoming::Message(Message::Binary(b)) if &b[..] == b"shared" => {
                    let msgs: Vec<SharedMessage> = (0..100)
                        .map(|i| SharedMessage::text(format!("fan-out #{i} ").repeat(10)))
                        .collect();
                    tx.send_shared(&msgs).await.unwrap();
                }
                telehub::ws::Incoming::Message(m) => tx.send(&m).await.unwrap(),
                telehub::ws::Incoming::Ping(p) => tx.pong(&p).await.unwrap(),
                telehub::ws::Incoming::Pong(_) => {}
                telehub::ws::Incoming::Close(f) => {
                    let code = f.map(|f| f.code).unwrap_or(1000);
                    tx.close(code, "").await.unwrap();
                    tx.shutdown().await.unwrap();
                    break;
                }
            }
        }
        deflate
    });
    (addr, task)
}

async fn round_trip(
    offer: Option<ClientDeflateOffer>,
    policy: ServerDeflatePolicy,
) -> Option<DeflateParams> {
    let (addr, server) = handshake_echo_server(policy).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let cfg = ClientConfig {
        offer_deflate: offer,
        protocols: vec!["other".into(), "telehub.v1".into()],
        headers: vec![("Authorization".into(), "Bearer t".into())],
        ..ClientConfig::default()
    };
    let (mut conn, hs) = timeout(T, client::connect(stream, "localhost", "/v1/device", &cfg))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hs.protocol.as_deref(), Some("telehub.v1"));
    assert_eq!(conn.protocol(), Some("telehub.v1"));
    let mut messages = vec![
        Message::Text(String::new()),
        Message::Text("short".into()),
        Message::Binary(Bytes::from_static(b"\x00\x01\x02")),
    ];
    for i in 0..20 {
        messages.push(Message::Text(
            format!("{{\"category\":\"temp\",\"seq\":{i},\"v\":21.5}}").repeat(i + 1),
        ));
        messages.push(Message::Binary(Bytes::from(vec![i as u8; 1000 * i + 1])));
    }
    for m in &messages {
        conn.send(m).await.unwrap();
        assert_eq!(
            timeout(T, conn.read()).await.unwrap().unwrap().as_ref(),
            Some(m)
        );
    }
    conn.send(&Message::Binary(Bytes::from_static(b"shared")))
        .await
        .unwrap();
    for i in 0..100 {
        let want = Message::Text(format!("fan-out #{i} ").repeat(10));
        assert_eq!(timeout(T, conn.read()).await.unwrap().unwrap(), Some(want));
    }
    conn.ping(b"are you there").await.unwrap();
    conn.close(1000, "done").await.unwrap();
    assert_eq!(timeout(T, conn.read()).await.unwrap().unwrap(), None);
    let server_deflate = timeout(T, server).await.unwrap().unwrap();
    assert_eq!(server_deflate, hs.deflate, "both ends agree");
    hs.deflate
}

#[tokio::test]
async fn own_client_round_trip_with_default_deflate() {
    let d = round_trip(
        Some(ClientDeflateOffer::default()),
        ServerDeflatePolicy::default(),
    )
    .await
    .expect("deflate negotiated");
    assert!(d.server_no_context_takeover && !d.client_no_context_takeover);
}

#[tokio::test]
async fn own_client_round_trip_without_deflate() {
    assert_eq!(round_trip(None, ServerDeflatePolicy::default()).await, None);
    assert_eq!(
        round_trip(
            Some(ClientDeflateOffer::default()),
            ServerDeflatePolicy::disabled()
        )
        .await,
        None
    );
}

#[tokio::test]
async fn own_client_round_trip_no_context_takeover_and_windows() {
    let offer = ClientDeflateOffer {
        client_no_context_takeover: true,
        server_no_context_takeover: true,
        client_max_window_bits: Some(10),
        server_max_window_bits: Some(9),
    };
    let d = round_trip(Some(offer), ServerDeflatePolicy::default())
        .await
        .unwrap();
    assert_eq!(d.server_max_window_bits, 9);
    assert_eq!(d.client_max_window_bits, 10);
    assert!(d.client_no_context_takeover);

    // Server asks the client for a small window; an 8-bit server window means the
    // server sends uncompressed (zlib cannot do 8) — still a valid round trip.
    let policy = ServerDeflatePolicy {
        client_max_window_bits: 9,
        server_max_window_bits: 8,
        ..ServerDeflatePolicy::default()
    };
    let d = round_trip(Some(ClientDeflateOffer::default()), policy)
        .await
        .unwrap();
    assert_eq!((d.server_max_window_bits, d.client_max_window_bits), (8, 9));
}

#[tokio::test]
async fn client_reports_http_status() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        // A request without a key: the server refuses with 400 before upgrading.
        let _ = server::accept_stream(
            stream,
            &[],
            &ServerDeflatePolicy::default(),
            Config::default(),
        )
        .await;
    });
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    timeout(T, s.read_to_string(&mut resp))
        .await
        .unwrap()
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");

    // A plain HTTP server answering 401 to our client.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let _ = stream
            .write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
            .await;
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    let err = timeout(
        T,
        client::connect(stream, "x", "/", &ClientConfig::default()),
    )
    .await
    .unwrap()
    .err()
    .unwrap();
    assert!(matches!(err, Error::HttpStatus(401)), "{err}");
}

#[tokio::test]
async fn client_rejects_bad_accept_and_unoffered_extension() {
    for extra in [
        "Sec-WebSocket-Accept: bm9wZQ==\r\n",
        "Sec-WebSocket-Extensions: x-unknown\r\n",
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let extra = extra.to_owned();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let key = req
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .trim()
                .to_owned();
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let accept_line = if extra.starts_with("Sec-WebSocket-Accept") {
                extra.clone()
            } else {
                format!("Sec-WebSocket-Accept: {accept}\r\n{extra}")
            };
            let resp = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{accept_line}\r\n");
            let _ = stream.write_all(resp.as_bytes()).await;
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let err = timeout(
            T,
            client::connect(stream, "x", "/", &ClientConfig::default()),
        )
        .await
        .unwrap()
        .err()
        .unwrap();
        assert!(matches!(err, Error::Handshake(_)), "{err}");
    }
}

// ---------------------------------------------------------------- tokio-tungstenite

#[tokio::test]
async fn tungstenite_client_against_our_server() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message as TMessage};

    let (addr, server) = handshake_echo_server(ServerDeflatePolicy::default()).await;
    let mut req = format!("ws://{addr}/v1/device")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "telehub.v1".parse().unwrap());
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = timeout(T, tokio_tungstenite::client_async(req, stream))
        .await
        .unwrap()
        .unwrap();
    let long = "x".repeat(100_000 / 2);
    for m in [
        TMessage::text("hello"),
        TMessage::binary(vec![1u8, 2, 3]),
        TMessage::text(long),
    ] {
        ws.send(m.clone()).await.unwrap();
        let got = timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(got, m);
    }
    ws.close(None).await.unwrap();
    // Drain until the close handshake completes.
    for _ in 0..10 {
        match timeout(T, ws.next()).await.unwrap() {
            Some(Ok(TMessage::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    assert_eq!(
        timeout(T, server).await.unwrap().unwrap(),
        None,
        "no deflate offered"
    );
}

#[tokio::test]
async fn our_client_against_tungstenite_server() {
    use futures_util::{SinkExt, StreamExt};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        let mut n = 0;
        while let Some(Ok(m)) = ws.next().await {
            if m.is_text() || m.is_binary() {
                n += 1;
                ws.send(m).await.unwrap();
            }
        }
        n
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    // We offer deflate; tungstenite declines by not answering it.
    let (mut conn, hs) = timeout(
        T,
        client::connect(stream, "localhost", "/", &ClientConfig::default()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(hs.deflate, None);
    for m in [
        Message::Text("hi ✓".into()),
        Message::Binary(Bytes::from(vec![9u8; 60_000])),
    ] {
        conn.send(&m).await.unwrap();
        assert_eq!(timeout(T, conn.read()).await.unwrap().unwrap(), Some(m));
    }
    conn.close(1000, "").await.unwrap();
    assert_eq!(timeout(T, conn.read()).await.unwrap().unwrap(), None);
    assert_eq!(timeout(T, server).await.unwrap().unwrap(), 2);
}

// ---------------------------------------------------------------- cancel safety

#[tokio::test]
async fn reader_next_is_cancel_safe_in_select() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sender = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut bytes = frame(0x01, b"frag");
        bytes.extend(frame(0x80, b"mented"));
        bytes.extend(frame(0x82, &[7u8; 300]));
        bytes.extend(frame(0x81, "naïve".as_bytes()));
        for chunk in bytes.chunks(3) {
            s.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        s
    });
    let (stream, _) = listener.accept().await.unwrap();
    let (mut rx, _tx) = Connection::new(stream, Role::Server, Config::default(), None).split();
    let (mut got, mut cancelled) = (Vec::new(), 0);
    let deadline = tokio::time::Instant::now() + T;
    while got.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {got:?}");
        tokio::select! {
            r = rx.next() => got.push(r.unwrap()),
            _ = tokio::time::sleep(Duration::from_micros(300)) => cancelled += 1,
        }
    }
    use telehub::ws::Incoming::Message as M;
    assert_eq!(
        got,
        vec![
            M(Message::Text("fragmented".into())),
            M(Message::Binary(Bytes::from(vec![7u8; 300]))),
            M(Message::Text("naïve".into())),
        ]
    );
    assert!(cancelled > 0, "the test must actually cancel reads");
    drop(sender.await.unwrap());
}
