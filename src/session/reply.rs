//! What a session's handler answers, and the one strike counter that turns
//! repeated invalid requests into a close.
//!
//! Every envelope a peer sends is parsed into a typed command, then applied by its
//! handler, which returns a [`Reply`]. The session sends what the reply carries;
//! [`Strikes`] decides whether a refusal is answered with an `Error` envelope or,
//! once `limits.max_malformed` arrive in a row, with a close. Valid requests clear
//! the count; requests held back by a rate limit neither count nor clear it.

use tokio::io::AsyncWrite;

use super::{error_for, send, Close};
use crate::{
    metrics::RoleMeters,
    proto::{error::Code, Envelope},
    ws,
};

/// A handler's answer.
pub enum Reply {
    /// A valid request was applied: clears the strike count; the envelope, if
    /// any, is sent.
    Done(Option<Envelope>),
    /// Not applied and not held against the peer (a rate limit): the envelope,
    /// if any, is sent.
    Held(Option<Envelope>),
    /// An invalid request: a strike.
    Refused(Refusal),
    /// The session ends.
    Close(Close),
}

impl Reply {
    pub fn none() -> Self {
        Reply::Done(None)
    }

    pub fn send(envelope: Envelope) -> Self {
        Reply::Done(Some(envelope))
    }
}

/// Why a request was refused.
pub struct Refusal {
    /// The `Error` code the peer gets.
    pub code: Code,
    pub message: String,
    /// The close code if this refusal is the last strike.
    pub close_code: u16,
    /// Echoed in the `Error`, so the peer knows which request failed.
    pub request_id: String,
}

impl Refusal {
    pub fn new(close_code: u16, code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            close_code,
            request_id: String::new(),
        }
    }

    pub fn for_request(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = request_id.into();
        self
    }
}

impl From<Refusal> for Reply {
    fn from(r: Refusal) -> Self {
        Reply::Refused(r)
    }
}

/// Invalid requests in a row.
pub struct Strikes {
    count: u32,
    max: u32,
}

impl Strikes {
    pub fn new(max: u32) -> Self {
        Self { count: 0, max }
    }

    /// Judges a handler's reply and sends what it carries, encoded by `encode`.
    /// `Err` ends the session with that close (`None`: the socket is gone).
    pub async fn answer<W: AsyncWrite + Unpin>(
        &mut self,
        reply: Reply,
        writer: &mut ws::Writer<W>,
        encode: impl FnOnce(&Envelope) -> ws::Message,
        meters: &RoleMeters,
    ) -> Result<(), Option<Close>> {
        match self.judge(reply) {
            // Boxed: a reply is rare next to the messages that need none, and an
            // inline write would grow every session's future (see `session::device::run`).
            Ok(Some(env)) => Box::pin(send(writer, &encode(&env), meters))
                .await
                .map_err(|_| None),
            Ok(None) => Ok(()),
            Err(c) => Err(Some(c)),
        }
    }

    /// What to do with a handler's reply: `Ok` with the envelope to send (if
    /// any), or `Err` with the close that ends the session.
    pub fn judge(&mut self, reply: Reply) -> Result<Option<Envelope>, Close> {
        match reply {
            Reply::Done(env) => {
                self.count = 0;
                Ok(env)
            }
            Reply::Held(env) => Ok(env),
            Reply::Close(c) => Err(c),
            Reply::Refused(r) => {
                self.count += 1;
                if self.count >= self.max {
                    return Err(Close::new(
                        r.close_code,
                        format!(
                            "{} invalid messages in a row; last: {}",
                            self.count, r.message
                        ),
                    ));
                }
                Ok(Some(error_for(r.code, r.message, r.request_id)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{proto::envelope::Body, session::close};

    fn refused() -> Reply {
        Refusal::new(close::POLICY_VIOLATION, Code::Malformed, "bad")
            .for_request("r1")
            .into()
    }

    #[test]
    fn strikes_in_a_row_close_and_valid_requests_clear_them() {
        let mut s = Strikes::new(3);
        let Ok(Some(Envelope {
            body: Some(Body::Error(e)),
        })) = s.judge(refused())
        else {
            panic!("an Error first")
        };
        assert_eq!(
            (e.code, e.request_id.as_str()),
            (Code::Malformed as i32, "r1")
        );
        assert!(s.judge(Reply::none()).is_ok());
        assert!(s.judge(refused()).is_ok());
        assert!(
            s.judge(Reply::Held(None)).is_ok(),
            "held: neither counts nor clears"
        );
        assert!(s.judge(refused()).is_ok());
        let Err(c) = s.judge(refused()) else {
            panic!("the third strike in a row closes")
        };
        assert_eq!(c.code, close::POLICY_VIOLATION);
        assert!(c
            .reason
            .starts_with("3 invalid messages in a row; last: bad"));
    }
}
