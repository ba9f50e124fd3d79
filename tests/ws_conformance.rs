//! The Autobahn|Testsuite case families that apply to a server, written from RFC 6455
//! and RFC 7692 as raw-socket tests: exact bytes in, exact frames and close codes out.
//! Test names carry the family (`f1_` framing, `f2_` ping/pong, `f3_` reserved bits,
//! `f4_` opcodes, `f5_` fragmentation, `f6_` UTF-8, `f7_` close, `f9_` limits,
//! `f12_`/`f13_` permessage-deflate); comments name the Autobahn cases they mirror.
//!
//! The server under test is telehub's own `ws::Connection` echoing every data message
//! (what `examples/ws-echo.rs` runs for the real suite); the peer is `wire/`, which
//! frames, masks and deflates independently of telehub's code.

mod wire;

use std::collections::BTreeMap;
use std::time::Duration;

use telehub::ws::handshake::ServerDeflatePolicy;
use telehub::ws::{Config, Error, ProtocolError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use wire::*;

/// How the test writes its bytes.
#[derive(Clone, Copy)]
enum Send {
    /// One write.
    Whole,
    /// Pieces of n bytes with a pause between them (Autobahn's "chopped" variants).
    Chopped(usize),
}

/// A fresh echo server, and a connection to it that has sent `bytes`.
async fn send_to_echo(bytes: &[u8], send: Send) -> (TcpStream, JoinHandle<Result<(), Error>>) {
    let (addr, task) = echo_server(Config::default(), None).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    match send {
        Send::Whole => s.write_all(bytes).await.unwrap(),
        Send::Chopped(n) => write_chopped(&mut s, bytes, n).await,
    }
    (s, task)
}

/// Reads one frame per expected reply and compares (payloads by equality, so a
/// large mismatch does not flood the output).
async fn expect_replies(s: &mut TcpStream, replies: &[Reply]) {
    for want in replies {
        let got = read_frame(s).await;
        assert_eq!((got.0, got.1.len()), (want.0, want.1.len()), "reply header");
        assert!(got.1 == want.1, "reply payload differs");
    }
}

/// Sends `bytes` to a fresh echo server, expects exactly `replies` (first byte and
/// payload of each frame), then closes normally and expects the server to finish
/// cleanly.
async fn exchange(bytes: &[u8], send: Send, replies: &[Reply]) {
    let (mut s, task) = send_to_echo(bytes, send).await;
    expect_replies(&mut s, replies).await;
    s.write_all(&frame(CLOSE, &close_body(1000, b"")))
        .await
        .unwrap();
    expect_close(&mut s, 1000).await;
    timeout(T, task).await.unwrap().unwrap().unwrap();
}

/// Sends `bytes`, expects `replies` first, then a Close with `code` and nothing after
/// it (in particular no pong and no echo for what followed the offending frame).
async fn fails_after(bytes: &[u8], send: Send, replies: &[Reply], code: u16) -> Error {
    let (mut s, task) = send_to_echo(bytes, send).await;
    expect_replies(&mut s, replies).await;
    expect_close(&mut s, code).await;
    server_error(task).await
}

/// A server frame as the tests expect it: first byte and payload.
type Reply = (u8, Vec<u8>);

/// Extension parameters by name, values unquoted.
type ExtParams = BTreeMap<String, Option<String>>;

fn cat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

// ------------------------------------------------------------ 1.x framing

#[tokio::test]
async fn f1_text_and_binary_at_every_length_boundary() {
    // 1.1.1-1.1.7 and 1.2.1-1.2.7: payload lengths around the 7-bit, 16-bit and
    // 64-bit length encodings.
    for len in [0usize, 125, 126, 127, 128, 65535, 65536] {
        let text = vec![b'*'; len];
        exchange(&frame(TEXT, &text), Send::Whole, &[(TEXT, text.clone())]).await;
        let binary = vec![0xfe; len];
        exchange(&frame(BINARY, &binary), Send::Whole, &[(BINARY, binary)]).await;
    }
}

#[tokio::test]
async fn f1_chopped_frames_are_reassembled() {
    // 1.1.8 / 1.2.8: a 65535-byte message written in 997-byte pieces.
    let text = vec![b'*'; 65535];
    exchange(&frame(TEXT, &text), Send::Chopped(997), &[(TEXT, text)]).await;
    let binary = vec![0xfe; 65535];
    exchange(
        &frame(BINARY, &binary),
        Send::Chopped(997),
        &[(BINARY, binary)],
    )
    .await;
}

// ------------------------------------------------------------ 2.x ping/pong

#[tokio::test]
async fn f2_pings_are_answered_with_their_payload() {
    // 2.1-2.4: empty, text, binary and 125-byte payloads; 2.6: 125 bytes chopped.
    let payloads: [&[u8]; 4] = [
        b"",
        b"Hello, world!",
        &[0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff],
        &[0xfe; 125],
    ];
    for p in payloads {
        exchange(&frame(PING, p), Send::Whole, &[(PONG, p.to_vec())]).await;
    }
    exchange(
        &frame(PING, &[0xfe; 125]),
        Send::Chopped(1),
        &[(PONG, vec![0xfe; 125])],
    )
    .await;
}

#[tokio::test]
async fn f2_unsolicited_pongs_are_ignored() {
    // 2.7, 2.8: unsolicited pongs get no answer; 2.9: a pong then a ping gets one pong
    // carrying the ping's payload.
    exchange(
        &cat(&[frame(PONG, b""), frame(TEXT, b"after")]),
        Send::Whole,
        &[(TEXT, b"after".to_vec())],
    )
    .await;
    exchange(
        &cat(&[
            frame(PONG, b"unsolicited pong payload"),
            frame(PING, b"ping"),
        ]),
        Send::Whole,
        &[(PONG, b"ping".to_vec())],
    )
    .await;
}

#[tokio::test]
async fn f2_ten_pings_get_ten_pongs_in_order() {
    // 2.10, 2.11: ten pings at once, then chopped.
    let pings: Vec<Vec<u8>> = (0..10)
        .map(|i| frame(PING, format!("payload-{i}").as_bytes()))
        .collect();
    let pongs: Vec<(u8, Vec<u8>)> = (0..10)
        .map(|i| (PONG, format!("payload-{i}").into_bytes()))
        .collect();
    exchange(&cat(&pings), Send::Whole, &pongs).await;
    exchange(&cat(&pings), Send::Chopped(1), &pongs).await;
}

// ------------------------------------------------------------ 3.x reserved bits

#[tokio::test]
async fn f3_reserved_bits_fail_after_what_came_before() {
    // 3.1-3.7: a frame with RSV bits set (no extension negotiated) after a valid
    // message and before a ping: the message is echoed, the connection fails with
    // 1002, the ping is never answered.
    for bad in [
        TEXT | 0x20,          // RSV2
        TEXT | RSV1 | 0x20,   // RSV1 + RSV2
        TEXT | 0x10,          // RSV3
        BINARY | RSV1 | 0x10, // RSV1 + RSV3
        PING | 0x30,          // RSV2 + RSV3
        CLOSE | 0x70,         // all three
        TEXT | RSV1,          // RSV1 without permessage-deflate
    ] {
        for send in [Send::Whole, Send::Chopped(1)] {
            let bytes = cat(&[
                frame(TEXT, b"Hello"),
                frame(bad, b"reserved"),
                frame(PING, b"never answered"),
            ]);
            let err = fails_after(&bytes, send, &[(TEXT, b"Hello".to_vec())], 1002).await;
            assert!(
                matches!(err, Error::Protocol(ProtocolError::ReservedBits)),
                "{bad:#x}: {err}"
            );
        }
    }
}

// ------------------------------------------------------------ 4.x opcodes

#[tokio::test]
async fn f4_reserved_opcodes_fail_after_what_came_before() {
    // 4.1.1-4.1.5 (non-control 3-7) and 4.2.1-4.2.5 (control 0xb-0xf), with and
    // without payload.
    for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
        let payload: &[u8] = if op % 2 == 0 { b"" } else { b"reserved opcode" };
        let bytes = cat(&[
            frame(TEXT, b"Hello"),
            frame(0x80 | op, payload),
            frame(PING, b"never answered"),
        ]);
        let err = fails_after(&bytes, Send::Whole, &[(TEXT, b"Hello".to_vec())], 1002).await;
        assert!(
            matches!(err, Error::Protocol(ProtocolError::ReservedOpcode(o)) if o == op),
            "{op:#x}: {err}"
        );
    }
}

// ------------------------------------------------------------ 5.x fragmentation

#[tokio::test]
async fn f5_fragmented_control_frames_fail() {
    // 5.1, 5.2: a ping or pong split into two frames.
    for op in [0x09u8, 0x0a] {
        let bytes = cat(&[frame(op, b"fragment1"), frame(0x80, b"fragment2")]);
        let err = fails_after(&bytes, Send::Whole, &[], 1002).await;
        assert!(
            matches!(err, Error::Protocol(ProtocolError::FragmentedControl)),
            "{err}"
        );
    }
}

#[tokio::test]
async fn f5_fragmented_messages_are_reassembled() {
    // 5.3-5.5: two fragments, at once and chopped; 5.6-5.8: with a ping between them.
    let two = cat(&[frame(0x01, b"fragment1"), frame(0x80, b"fragment2")]);
    let want = (TEXT, b"fragment1fragment2".to_vec());
    exchange(&two, Send::Whole, std::slice::from_ref(&want)).await;
    exchange(&two, Send::Chopped(1), std::slice::from_ref(&want)).await;
    let with_ping = cat(&[
        frame(0x01, b"fragment1"),
        frame(PING, b"ping payload"),
        frame(0x80, b"fragment2"),
    ]);
    let replies = [(PONG, b"ping payload".to_vec()), want];
    exchange(&with_ping, Send::Whole, &replies).await;
    exchange(&with_ping, Send::Chopped(1), &replies).await;
    // Binary too, in many one-byte fragments.
    let mut bytes = frame(0x02, &[0]);
    for b in 1..=254u8 {
        bytes.extend(frame(0x00, &[b]));
    }
    bytes.extend(frame(0x80, &[255]));
    exchange(&bytes, Send::Whole, &[(BINARY, (0..=255u8).collect())]).await;
}

#[tokio::test]
async fn f5_fragments_and_pings_spread_over_time() {
    // 5.19, 5.20: five fragments with pings between them, written with pauses.
    let (addr, task) = echo_server(Config::default(), None).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let steps: [Vec<u8>; 7] = [
        frame(0x01, b"fragment1"),
        frame(0x00, b"fragment2"),
        frame(PING, b"pongme 1!"),
        frame(0x00, b"fragment3"),
        frame(0x00, b"fragment4"),
        frame(PING, b"pongme 2!"),
        frame(0x80, b"fragment5"),
    ];
    for step in steps {
        s.write_all(&step).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(read_frame(&mut s).await, (PONG, b"pongme 1!".to_vec()));
    assert_eq!(read_frame(&mut s).await, (PONG, b"pongme 2!".to_vec()));
    assert_eq!(
        read_frame(&mut s).await,
        (
            TEXT,
            b"fragment1fragment2fragment3fragment4fragment5".to_vec()
        )
    );
    s.write_all(&frame(CLOSE, b"")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (CLOSE, vec![]));
    timeout(T, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn f5_continuations_without_a_message_fail() {
    // 5.9-5.14: a continuation (final or not) with no message in progress, followed by
    // a valid message that must not be echoed.
    for first in [0x80u8, 0x00] {
        for send in [Send::Whole, Send::Chopped(1)] {
            let bytes = cat(&[
                frame(first, b"non-continuation payload"),
                frame(TEXT, b"Hello, world!"),
            ]);
            let err = fails_after(&bytes, send, &[], 1002).await;
            assert!(
                matches!(err, Error::Protocol(ProtocolError::UnexpectedContinuation)),
                "{err}"
            );
        }
    }
    // 5.15: a complete fragmented message, then a continuation after it.
    let bytes = cat(&[
        frame(0x01, b"fragment1"),
        frame(0x80, b"fragment2"),
        frame(0x00, b"fragment3"),
        frame(TEXT, b"fragment4"),
    ]);
    let err = fails_after(
        &bytes,
        Send::Whole,
        &[(TEXT, b"fragment1fragment2".to_vec())],
        1002,
    )
    .await;
    assert!(
        matches!(err, Error::Protocol(ProtocolError::UnexpectedContinuation)),
        "{err}"
    );
    // 5.16-5.18: a new message inside a fragmented one.
    let bytes = cat(&[frame(0x01, b"fragment1"), frame(TEXT, b"fragment2")]);
    let err = fails_after(&bytes, Send::Whole, &[], 1002).await;
    assert!(
        matches!(err, Error::Protocol(ProtocolError::ExpectedContinuation)),
        "{err}"
    );
}

// ------------------------------------------------------------ 6.x UTF-8

/// Valid UTF-8 (6.2, 6.5-6.7, 6.22-6.23): boundaries of every sequence length, the
/// surrogate gap's edges, noncharacters (valid UTF-8 even if not meant for exchange).
const VALID_UTF8: &[&[u8]] = &[
    b"",
    "Hello-\u{b5}@\u{df}\u{f6}\u{e4}\u{fc}\u{e0}\u{e1}-UTF-8!!".as_bytes(),
    "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}".as_bytes(), // κόσμε
    b"\x00",
    b"\x7f",
    b"\xc2\x80",
    b"\xdf\xbf",
    b"\xe0\xa0\x80",
    b"\xed\x9f\xbf",
    b"\xee\x80\x80",
    b"\xef\xbf\xbd",
    b"\xef\xbf\xbe",
    b"\xef\xbf\xbf",
    b"\xf0\x90\x80\x80",
    b"\xf4\x8f\xbf\xbf",
];

/// Invalid UTF-8 (6.3, 6.6, 6.8-6.21): lone and truncated sequences, impossible
/// bytes, overlong forms, surrogates, code points above U+10FFFF.
const INVALID_UTF8: &[&[u8]] = &[
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
    b"\x80",
    b"\xbf",
    b"\x80\xbf\x80",
    b"\xc0\x20",
    b"\xe0\x20",
    b"\xf0\x20",
    b"\xf8\x20",
    b"\xfc\x20",
    b"\xc2",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xfe",
    b"\xff",
    b"\xfe\xfe\xff\xff",
    b"\xc0\xaf",
    b"\xc1\xbf",
    b"\xe0\x80\xaf",
    b"\xe0\x9f\xbf",
    b"\xf0\x80\x80\xaf",
    b"\xf0\x8f\xbf\xbf",
    b"\xf8\x80\x80\x80\xaf",
    b"\xed\xa0\x80",
    b"\xed\xad\xbf",
    b"\xed\xaf\xbf",
    b"\xed\xb0\x80",
    b"\xed\xbf\xbf",
    b"\xed\xa0\x80\xed\xb0\x80",
    b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80",
    b"\xf7\xbf\xbf\xbf",
];

/// The message as one-byte fragments.
fn fragmented_per_byte(payload: &[u8]) -> Vec<u8> {
    if payload.len() < 2 {
        return cat(&[frame(0x01, payload), frame(0x80, b"")]);
    }
    let last = payload.len() - 1;
    let mut out = Vec::new();
    for (i, b) in payload.iter().enumerate() {
        let first = match i {
            0 => 0x01,
            i if i == last => 0x80,
            _ => 0x00,
        };
        out.extend(frame(first, &[*b]));
    }
    out
}

#[tokio::test]
async fn f6_valid_utf8_is_echoed_whole_and_fragmented() {
    for text in VALID_UTF8 {
        let want = [(TEXT, text.to_vec())];
        exchange(&frame(TEXT, text), Send::Whole, &want).await;
        exchange(&fragmented_per_byte(text), Send::Whole, &want).await;
    }
}

#[tokio::test]
async fn f6_invalid_utf8_is_1007_whole_and_fragmented() {
    for text in INVALID_UTF8 {
        for bytes in [frame(TEXT, text), fragmented_per_byte(text)] {
            let err = fails_after(&bytes, Send::Whole, &[], 1007).await;
            assert!(matches!(err, Error::Utf8), "{text:x?}: {err}");
        }
    }
}

#[tokio::test]
async fn f6_invalid_utf8_fails_fast_in_an_unfinished_message() {
    // 6.4.1-6.4.4: the invalid sequence arrives in a non-final fragment; the server
    // must fail there, without waiting for the rest of the message (never sent).
    for (prefix, rest) in [
        (
            &b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"[..],
            &b"\xf4\x90\x80\x80"[..],
        ),
        (b"edited", b"\xed\xa0\x80"),
        (b"\xc2\x80", b"\xc0\xaf"),
    ] {
        let bytes = cat(&[frame(0x01, prefix), frame(0x00, rest)]);
        let err = fails_after(&bytes, Send::Whole, &[], 1007).await;
        assert!(matches!(err, Error::Utf8), "{rest:x?}: {err}");
    }
}

// ------------------------------------------------------------ 7.x close

#[tokio::test]
async fn f7_nothing_after_a_close_is_acted_on() {
    let (hello, close) = (frame(TEXT, b"Hello"), frame(CLOSE, &close_body(1000, b"")));
    let cases: [(Vec<u8>, &[Reply]); 5] = [
        // 7.1.1: a message, then close.
        (
            cat(&[hello.clone(), close.clone()]),
            &[(TEXT, b"Hello".to_vec())],
        ),
        // 7.1.2: close twice: one close back.
        (cat(&[close.clone(), close.clone()]), &[]),
        // 7.1.3: a ping after close: no pong.
        (cat(&[close.clone(), frame(PING, b"after")]), &[]),
        // 7.1.4: a message after close: no echo.
        (cat(&[close.clone(), hello.clone()]), &[]),
        // 7.1.5: close in the middle of a fragmented message: the message is dropped.
        (
            cat(&[
                frame(0x01, b"fragment1"),
                close.clone(),
                frame(0x80, b"fragment2"),
            ]),
            &[],
        ),
    ];
    for (bytes, replies) in cases {
        let (addr, task) = echo_server(Config::default(), None).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        for want in replies {
            assert_eq!(&read_frame(&mut s).await, want);
        }
        expect_close(&mut s, 1000).await;
        timeout(T, task).await.unwrap().unwrap().unwrap();
    }
}

#[tokio::test]
async fn f7_close_payloads() {
    // 7.3.1: empty close, answered with an empty close.
    let (addr, task) = echo_server(Config::default(), None).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&frame(CLOSE, b"")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (CLOSE, vec![]));
    expect_eof(&mut s).await;
    timeout(T, task).await.unwrap().unwrap().unwrap();
    // 7.3.3-7.3.5: code only, code and reason, reason of 123 bytes (payload 125).
    for reason in [&b""[..], b"Hello World!", &[b'*'; 123]] {
        exchange(&frame(CLOSE, &close_body(1000, reason)), Send::Whole, &[]).await;
    }
    // 7.3.2: a one-byte body.
    let err = fails_after(&frame(CLOSE, &[0x03]), Send::Whole, &[], 1002).await;
    assert!(
        matches!(err, Error::Protocol(ProtocolError::CloseBodyTooShort)),
        "{err}"
    );
    // 7.3.6: reason of 124 bytes: a control frame over 125 bytes.
    let err = fails_after(
        &frame(CLOSE, &close_body(1000, &[b'*'; 124])),
        Send::Whole,
        &[],
        1002,
    )
    .await;
    assert!(
        matches!(err, Error::Protocol(ProtocolError::ControlTooLong)),
        "{err}"
    );
    // 7.5.1: a reason that is not UTF-8.
    let err = fails_after(
        &frame(
            CLOSE,
            &close_body(
                1000,
                b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
            ),
        ),
        Send::Whole,
        &[],
        1007,
    )
    .await;
    assert!(matches!(err, Error::Utf8), "{err}");
}

#[tokio::test]
async fn f7_close_codes() {
    // 7.7.x: codes a peer may send are echoed (1012-1014 are IANA-registered since
    // RFC 6455 and sent by real servers; see reader.rs).
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
        4000, 4999,
    ] {
        let (addr, task) = echo_server(Config::default(), None).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&frame(CLOSE, &close_body(code, "fin ✓".as_bytes())))
            .await
            .unwrap();
        expect_close(&mut s, code).await;
        timeout(T, task).await.unwrap().unwrap().unwrap();
    }
    // 7.9.x, 7.13.x: reserved, never-on-the-wire and out-of-range codes fail with 1002.
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let err = fails_after(
            &frame(CLOSE, &close_body(code, b"")),
            Send::Whole,
            &[],
            1002,
        )
        .await;
        assert!(
            matches!(err, Error::Protocol(ProtocolError::InvalidCloseCode(c)) if c == code),
            "{code}: {err}"
        );
    }
}

// ------------------------------------------------------------ 9.x limits

#[tokio::test]
async fn f9_messages_up_to_the_limits_in_any_fragment_size() {
    // 9.1/9.2: a single frame at max_frame_size; 9.3/9.4: a message of exactly
    // max_message_size in fragments of 64 B to 64 KiB.
    let config = Config::default();
    let frame_max = vec![b'x'; config.max_frame_size];
    exchange(&frame(TEXT, &frame_max), Send::Whole, &[(TEXT, frame_max)]).await;
    let message: Vec<u8> = (0..config.max_message_size)
        .map(|i| b"0123456789abcdef"[i % 16])
        .collect();
    for fragment in [64usize, 4096, 65536] {
        let chunks: Vec<&[u8]> = message.chunks(fragment).collect();
        let mut bytes = Vec::with_capacity(message.len() + chunks.len() * 14);
        for (i, chunk) in chunks.iter().enumerate() {
            let fin = if i + 1 == chunks.len() { 0x80 } else { 0 };
            let op = if i == 0 { 0x02 } else { 0x00 };
            bytes.extend(frame(fin | op, chunk));
        }
        exchange(&bytes, Send::Whole, &[(BINARY, message.clone())]).await;
    }
    // One byte more, fragmented: 1009 before the rest is buffered.
    let mut bytes = frame(0x02, &message);
    bytes.extend(frame(0x80, b"!"));
    let config = Config {
        max_frame_size: config.max_message_size + 1,
        ..Config::default()
    };
    let err = violation(config, None, &bytes, 1009).await;
    assert!(matches!(err, Error::MessageTooBig { .. }), "{err}");
}

// ------------------------------------------------------------ 12.x, 13.x permessage-deflate

/// Upgrades a raw connection with `offers` (one `Sec-WebSocket-Extensions` header
/// each) and returns the stream and the server's extension answer, if any.
async fn upgrade(offers: &[&str]) -> (TcpStream, Option<String>) {
    let (addr, _task) =
        upgrading_echo_server(ServerDeflatePolicy::default(), Config::default()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = String::from(
        "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    );
    for offer in offers {
        req.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        timeout(T, s.read_exact(&mut b)).await.unwrap().unwrap();
        head.push(b[0]);
        assert!(head.len() < 8192, "response head too long");
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // RFC 6455 §1.3: the accept key of the RFC's own example nonce.
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    let answer = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim().to_owned())
    });
    (s, answer)
}

/// An extension answer's parameters, parsed by the test itself.
fn answer_params(answer: &str) -> ExtParams {
    let mut parts = answer.split(';').map(str::trim);
    assert_eq!(parts.next(), Some("permessage-deflate"), "{answer}");
    parts
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_owned(), Some(v.trim().to_owned())),
            None => (p.to_owned(), None),
        })
        .collect()
}

fn params(list: &[(&str, Option<&str>)]) -> ExtParams {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
        .collect()
}

/// Messages of the 12.x sizes, compressible text and incompressible binary. The hub's
/// frame limit (64 KiB) applies to the compressed frame too, so incompressible
/// messages stay well below it.
fn deflate_corpus() -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut x: u32 = 0x2545_f491;
    for size in [16usize, 64, 128, 256, 1024, 4096, 16384, 65536] {
        for i in 0..6 {
            if i % 3 == 2 && size <= 16384 {
                let bytes = (0..size)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        x as u8
                    })
                    .collect();
                out.push((BINARY, bytes));
            } else {
                let line = format!(
                    "{{\"device\":\"d-{i:04}\",\"category\":\"env.temperature\",\"value\":{}.5}}",
                    20 + i
                );
                let mut text = line.repeat(size / line.len() + 1);
                text.truncate(size);
                out.push((TEXT, text.into_bytes()));
            }
        }
    }
    out
}

/// Echoes the corpus over a negotiated connection: the peer compresses with the
/// window and context mode it agreed to, and inflates each echo with a fresh inflater
/// of exactly the server's agreed window (the hub always sends without context
/// takeover). Returns how many echoes arrived compressed.
async fn deflate_echo(s: &mut TcpStream, agreed: &ExtParams) -> usize {
    let bits = |key: &str| -> u8 {
        agreed
            .get(key)
            .and_then(|v| v.as_deref())
            .map_or(15, |v| v.parse().unwrap())
    };
    let (client_bits, server_bits) = (
        bits("client_max_window_bits"),
        bits("server_max_window_bits"),
    );
    assert!(
        agreed.contains_key("server_no_context_takeover"),
        "the hub always answers server_no_context_takeover: {agreed:?}"
    );
    // zlib (hence every zlib-based client) raises an 8-bit raw deflate window to 9; the
    // server must inflate such streams, so the peer does the same here.
    let mut deflate = PeerDeflate::new(
        client_bits.max(9),
        !agreed.contains_key("client_no_context_takeover"),
    );
    // zlib inflates raw streams with 9..=15 bits only; at 8 the hub never compresses
    // (asserted by the 8-bit test), so 9 checks nothing weaker there.
    let mut inflate = PeerInflate::new(server_bits.max(9), false);
    let mut compressed_echoes = 0;
    for (op, payload) in deflate_corpus() {
        s.write_all(&frame(op | RSV1, &deflate.message(&payload)))
            .await
            .unwrap();
        let (first, body) = read_frame(s).await;
        assert_ne!(
            first,
            CLOSE,
            "closed on a {}-byte message: {body:?}",
            payload.len()
        );
        assert_eq!(first & 0x0f, op & 0x0f, "opcode");
        assert_eq!(first & 0xb0, 0x80, "FIN set, RSV2/RSV3 clear");
        let echoed = if first & RSV1 != 0 {
            compressed_echoes += 1;
            inflate.message(&body)
        } else {
            body
        };
        assert!(
            echoed == payload,
            "echo of a {}-byte message differs",
            payload.len()
        );
    }
    s.write_all(&frame(CLOSE, &close_body(1000, b"")))
        .await
        .unwrap();
    expect_close(s, 1000).await;
    compressed_echoes
}

#[tokio::test]
async fn f13_every_parameter_combination_round_trips() {
    // 13.1-13.7: offers of each parameter and their combinations; the answer always
    // adds server_no_context_takeover (the hub's fan-out policy, README "Compression").
    let snct = ("server_no_context_takeover", None);
    let cnct = ("client_no_context_takeover", None);
    let cases: Vec<(&[&str], ExtParams)> = vec![
        (&["permessage-deflate"], params(&[snct])),
        (
            &["permessage-deflate; client_max_window_bits"],
            params(&[snct]),
        ),
        (
            &["permessage-deflate; client_no_context_takeover"],
            params(&[snct, cnct]),
        ),
        (
            &["permessage-deflate; server_no_context_takeover"],
            params(&[snct]),
        ),
        (
            &["permessage-deflate; client_max_window_bits=8"],
            params(&[snct, ("client_max_window_bits", Some("8"))]),
        ),
        (
            &["permessage-deflate; client_max_window_bits=15"],
            params(&[snct, ("client_max_window_bits", Some("15"))]),
        ),
        (
            &["permessage-deflate; client_max_window_bits=12; client_no_context_takeover"],
            params(&[snct, cnct, ("client_max_window_bits", Some("12"))]),
        ),
        (
            &["permessage-deflate; server_max_window_bits=9"],
            params(&[snct, ("server_max_window_bits", Some("9"))]),
        ),
        (
            &["permessage-deflate; server_max_window_bits=15"],
            params(&[snct, ("server_max_window_bits", Some("15"))]),
        ),
        (
            &["permessage-deflate; server_max_window_bits=\"10\"; client_max_window_bits"],
            params(&[snct, ("server_max_window_bits", Some("10"))]),
        ),
        (
            &[
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
               server_max_window_bits=12; client_max_window_bits=11",
            ],
            params(&[
                snct,
                cnct,
                ("server_max_window_bits", Some("12")),
                ("client_max_window_bits", Some("11")),
            ]),
        ),
        // 13.7-style: several offers, the first acceptable one wins; an offer with an
        // invalid parameter is declined and the next considered (RFC 7692 §5).
        (
            &["permessage-deflate; server_max_window_bits=7, \
               permessage-deflate; client_max_window_bits=10, permessage-deflate"],
            params(&[snct, ("client_max_window_bits", Some("10"))]),
        ),
        (
            &[
                "x-webkit-deflate-frame",
                "permessage-deflate; client_no_context_takeover",
            ],
            params(&[snct, cnct]),
        ),
    ];
    for (offers, want) in cases {
        let (mut s, answer) = upgrade(offers).await;
        let answer = answer.unwrap_or_else(|| panic!("{offers:?} declined"));
        let agreed = answer_params(&answer);
        assert_eq!(agreed, want, "answer to {offers:?}: {answer}");
        let compressed = deflate_echo(&mut s, &agreed).await;
        assert!(
            compressed >= 20,
            "{offers:?}: only {compressed} compressed echoes"
        );
    }
}

#[tokio::test]
async fn f13_an_eight_bit_server_window_is_honoured_by_not_compressing() {
    // zlib cannot produce a raw deflate stream limited to 256 bytes of window, so the
    // hub agrees to server_max_window_bits=8 and sends every message uncompressed
    // (RSV1 is per message, so that is always allowed).
    let (mut s, answer) = upgrade(&["permessage-deflate; server_max_window_bits=8"]).await;
    let agreed = answer_params(&answer.expect("accepted"));
    assert_eq!(
        agreed.get("server_max_window_bits"),
        Some(&Some("8".into()))
    );
    assert_eq!(deflate_echo(&mut s, &agreed).await, 0);
}

#[tokio::test]
async fn f13_invalid_offers_are_declined_and_rsv1_then_fails() {
    // RFC 7692 §7.1: unknown, duplicated, valueless-where-required and out-of-range
    // parameters make the server decline the offer; the upgrade still succeeds.
    for offer in [
        "permessage-deflate; unknown_parameter",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_max_window_bits=9; client_max_window_bits=10",
    ] {
        let (mut s, answer) = upgrade(&[offer]).await;
        assert_eq!(answer, None, "{offer} must be declined");
        // Without the extension, RSV1 is a reserved bit.
        s.write_all(&frame(TEXT | RSV1, &deflate_raw(b"compressed anyway")))
            .await
            .unwrap();
        expect_close(&mut s, 1002).await;
    }
}
