//! In-memory I/O for the properties: [`Trickle`], a peer that hands bytes out in reads
//! of random size with `Pending`s in between, the reader driver that drops
//! `Reader::next`'s future on every `Pending`, and a client/server `Connection` pair
//! over a tiny `tokio::io::duplex`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use proptest::prelude::*;
use telehub::ws::{Config, Connection, DeflateParams, Error, Incoming, Message, Reader, Role};
use tokio::io::{AsyncRead, ReadBuf};

/// An in-memory peer: plays `data` back in reads of the sizes in `plan` (cycled), and
/// where the plan says 0 returns `Pending` once (after waking itself).
pub(crate) struct Trickle {
    data: Vec<u8>,
    pos: usize,
    plan: Vec<usize>,
    step: usize,
}

impl Trickle {
    pub(crate) fn new(data: Vec<u8>, mut plan: Vec<usize>) -> Self {
        if plan.iter().all(|&n| n == 0) {
            plan.push(1);
        }
        Trickle {
            data,
            pos: 0,
            plan,
            step: 0,
        }
    }
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let want = this.plan[this.step % this.plan.len()];
        this.step += 1;
        if want == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = want.min(buf.remaining()).min(this.data.len() - this.pos);
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Read plans: mostly small reads (down to one byte), some large, some `Pending`s.
pub(crate) fn read_plan() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![1 => Just(0usize), 6 => 1usize..16, 2 => 16usize..5000],
        1..8,
    )
}

/// `reader.next()`, polled once at a time: on `Pending` the future is dropped and a
/// new one started, which `Reader::next`'s cancel safety says loses nothing.
pub(crate) fn next_now<R: AsyncRead + Unpin>(reader: &mut Reader<R>) -> Result<Incoming, Error> {
    loop {
        if let Some(result) = reader.next().now_or_never() {
            return result;
        }
    }
}

/// Completes a future over in-memory I/O, which never waits.
pub(crate) fn ready<T>(f: impl Future<Output = T>) -> T {
    f.now_or_never().expect("in-memory I/O never waits")
}

/// A client sends `ops` then a Close; the server echoes every message (pongs are
/// automatic) and answers the Close. Returns what the server read and what the client's
/// reader saw, in order.
pub(crate) async fn echo_exchange(
    config: Config,
    deflate_on: Option<DeflateParams>,
    ops: Vec<(Option<Message>, Vec<u8>)>,
    capacity: usize,
) -> (
    Result<(), Error>,
    Result<Vec<Incoming>, Error>,
    Result<Vec<Message>, Error>,
) {
    let (client_io, server_io) = tokio::io::duplex(capacity);
    let client = Connection::new(client_io, Role::Client, config.clone(), deflate_on);
    let mut server = Connection::new(server_io, Role::Server, config, deflate_on);
    let (mut rx, mut tx) = client.split();
    let send = async move {
        for (msg, ping) in &ops {
            match msg {
                Some(m) => tx.send(m).await?,
                None => tx.ping(ping).await?,
            }
        }
        tx.close(1000, "bye").await
    };
    let receive = async move {
        let mut seen = Vec::new();
        loop {
            let incoming = rx.next().await?;
            let end = matches!(incoming, Incoming::Close(_));
            seen.push(incoming);
            if end {
                return Ok::<_, Error>(seen);
            }
        }
    };
    let serve = async move {
        let mut got = Vec::new();
        while let Some(m) = server.read().await? {
            server.send(&m).await?;
            got.push(m);
        }
        Ok::<_, Error>(got)
    };
    tokio::join!(send, receive, serve)
}
