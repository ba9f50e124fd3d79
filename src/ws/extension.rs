//! `Sec-WebSocket-Extensions` parsing (RFC 6455 §9.1) and permessage-deflate parameter
//! negotiation (RFC 7692 §5, §7.1), for both the server's answer and the client's check
//! of that answer.
//!
//! Invariants: an offer is accepted or declined as a whole — an offer with an unknown,
//! duplicated or invalid parameter is skipped (RFC 7692 §5: the server declines it) and
//! the next offer is tried; the server answers at most one permessage-deflate offer;
//! the resulting [`DeflateParams`] always hold window bits in 8..=15.

use http::HeaderValue;

use super::message::Role;

/// The extension token (RFC 7692 §7).
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// Negotiated permessage-deflate parameters, the same on both ends of a connection.
/// "server_*" apply to frames the server sends, "client_*" to frames the client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateParams {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    pub server_max_window_bits: u8,
    pub client_max_window_bits: u8,
}

impl Default for DeflateParams {
    /// The parameters of a bare `permessage-deflate` agreement.
    fn default() -> Self {
        DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    }
}

impl DeflateParams {
    /// (window bits, context takeover) for the messages `role` sends.
    pub fn outgoing(&self, role: Role) -> (u8, bool) {
        match role {
            Role::Server => (
                self.server_max_window_bits,
                !self.server_no_context_takeover,
            ),
            Role::Client => (
                self.client_max_window_bits,
                !self.client_no_context_takeover,
            ),
        }
    }

    /// (window bits, context takeover) for the messages `role` receives.
    pub fn incoming(&self, role: Role) -> (u8, bool) {
        match role {
            Role::Server => self.outgoing(Role::Client),
            Role::Client => self.outgoing(Role::Server),
        }
    }
}

/// One element of an extension list: a name and its parameters, values unquoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtensionOffer {
    pub name: String,
    pub params: Vec<(String, Option<String>)>,
}

/// A syntactically invalid `Sec-WebSocket-Extensions` element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("RFC 6455 §9.1: malformed Sec-WebSocket-Extensions header")]
pub struct ExtensionSyntaxError;

/// Parses every `Sec-WebSocket-Extensions` header value (several headers and several
/// comma-separated elements each), in order. Each element parses on its own so that a
/// server can skip a bad one and still consider the rest.
pub fn parse<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
) -> Vec<Result<ExtensionOffer, ExtensionSyntaxError>> {
    let mut out = Vec::new();
    for value in values {
        let Ok(value) = value.to_str() else {
            out.push(Err(ExtensionSyntaxError));
            continue;
        };
        match split_unquoted(value, b',') {
            Ok(elements) => {
                for element in elements {
                    // RFC 9110 §5.6.1: empty list elements are ignored.
                    if !element.trim().is_empty() {
                        out.push(parse_element(element));
                    }
                }
            }
            Err(e) => out.push(Err(e)),
        }
    }
    out
}

fn parse_element(element: &str) -> Result<ExtensionOffer, ExtensionSyntaxError> {
    let mut parts = split_unquoted(element, b';')?.into_iter();
    let name = parts.next().map(str::trim).unwrap_or_default();
    if !is_token(name) {
        return Err(ExtensionSyntaxError);
    }
    let mut params = Vec::new();
    for part in parts {
        let part = part.trim();
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), Some(unquote(v.trim())?)),
            None => (part, None),
        };
        if !is_token(key) {
            return Err(ExtensionSyntaxError);
        }
        params.push((key.to_ascii_lowercase(), value));
    }
    Ok(ExtensionOffer {
        name: name.to_ascii_lowercase(),
        params,
    })
}

/// Splits on `sep` outside double quotes; an unterminated quote is an error.
fn split_unquoted(s: &str, sep: u8) -> Result<Vec<&str>, ExtensionSyntaxError> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err(ExtensionSyntaxError);
    }
    out.push(&s[start..]);
    Ok(out)
}

/// RFC 6455 §9.1: a quoted parameter value, once unescaped, MUST still be a token.
fn unquote(v: &str) -> Result<String, ExtensionSyntaxError> {
    let inner = match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').ok_or(ExtensionSyntaxError)?,
        None => v,
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if v.starts_with('"') => out.push(chars.next().ok_or(ExtensionSyntaxError)?),
            _ => out.push(c),
        }
    }
    if is_token(&out) {
        Ok(out)
    } else {
        Err(ExtensionSyntaxError)
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The permessage-deflate parameters of one element, checked for RFC 7692 §7.1 syntax.
#[derive(Default)]
struct PmdParams {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (allowed in offers only).
    client_max_window_bits: Option<Option<u8>>,
}

impl PmdParams {
    /// `None` if any parameter is unknown, duplicated or has an invalid value: RFC 7692
    /// §7.1 requires such an element to be declined (server) or the connection to be
    /// failed (client).
    fn parse(offer: &ExtensionOffer) -> Option<PmdParams> {
        let mut p = PmdParams::default();
        for (key, value) in &offer.params {
            let value = value.as_deref();
            match key.as_str() {
                "server_no_context_takeover"
                    if !p.server_no_context_takeover && value.is_none() =>
                {
                    p.server_no_context_takeover = true
                }
                "client_no_context_takeover"
                    if !p.client_no_context_takeover && value.is_none() =>
                {
                    p.client_no_context_takeover = true
                }
                // §7.1.2.1: the value is required.
                "server_max_window_bits" if p.server_max_window_bits.is_none() => {
                    p.server_max_window_bits = Some(window_bits(value?)?)
                }
                // §7.1.2.2: the value is optional in an offer.
                "client_max_window_bits" if p.client_max_window_bits.is_none() => {
                    p.client_max_window_bits = Some(match value {
                        Some(v) => Some(window_bits(v)?),
                        None => None,
                    })
                }
                _ => return None,
            }
        }
        Some(p)
    }
}

/// RFC 7692 §7.1.2: a decimal integer 8..=15 without leading zeros.
fn window_bits(v: &str) -> Option<u8> {
    if v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 2 {
        return None;
    }
    v.parse().ok().filter(|n| (8..=15).contains(n))
}

/// How the hub answers permessage-deflate offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerDeflatePolicy {
    pub enabled: bool,
    /// Always answer `server_no_context_takeover` (RFC 7692 §7.1.1.1 lets the server add
    /// it): every message is then compressed independently, so one compressed frame can
    /// be shared by all subscribers. Default true.
    pub server_no_context_takeover: bool,
    /// Ask clients to compress each message independently (§7.1.1.2 lets the server add
    /// it), so we keep no inflate state per connection. Default false: honour the client.
    pub client_no_context_takeover: bool,
    /// Upper bound for our compression window (answered when below 15 or asked for).
    pub server_max_window_bits: u8,
    /// Upper bound we ask of the client's window, when the client signalled support.
    pub client_max_window_bits: u8,
}

impl Default for ServerDeflatePolicy {
    fn default() -> Self {
        ServerDeflatePolicy {
            enabled: true,
            server_no_context_takeover: true,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    }
}

impl ServerDeflatePolicy {
    pub fn disabled() -> Self {
        ServerDeflatePolicy {
            enabled: false,
            ..Default::default()
        }
    }

    /// Picks the first acceptable permessage-deflate offer and returns the agreed
    /// parameters with the `Sec-WebSocket-Extensions` answer; `None` declines them all.
    pub fn negotiate(
        &self,
        offers: &[Result<ExtensionOffer, ExtensionSyntaxError>],
    ) -> Option<(DeflateParams, String)> {
        if !self.enabled {
            return None;
        }
        let server_cap = self.server_max_window_bits.clamp(8, 15);
        let client_cap = self.client_max_window_bits.clamp(8, 15);
        offers
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .filter(|o| o.name == PERMESSAGE_DEFLATE)
            .find_map(|offer| {
                let p = PmdParams::parse(offer)?;
                let params = DeflateParams {
                    server_no_context_takeover: p.server_no_context_takeover
                        || self.server_no_context_takeover,
                    client_no_context_takeover: p.client_no_context_takeover
                        || self.client_no_context_takeover,
                    // §7.1.2.1: answer with the same or a smaller value than offered. An
                    // offer of 8 is accepted; we then never compress (see `deflate`).
                    server_max_window_bits: p.server_max_window_bits.unwrap_or(15).min(server_cap),
                    // §7.1.2.2: we may only limit the client if it offered the parameter.
                    client_max_window_bits: match p.client_max_window_bits {
                        Some(v) => v.unwrap_or(15).min(client_cap),
                        None => 15,
                    },
                };
                let answer = answer_header(
                    &params,
                    p.server_max_window_bits.is_some(),
                    p.client_max_window_bits.is_some_and(|v| v.is_some()),
                );
                Some((params, answer))
            })
    }
}

/// `server_asked`: the offer carried `server_max_window_bits`, which RFC 7692 §7.1.2.1
/// says the server accepts "by including" it in the answer, even at 15 (clients such as
/// Python `websockets` and our own fail the connection otherwise).
fn answer_header(p: &DeflateParams, server_asked: bool, client_sent_value: bool) -> String {
    let mut s = String::from(PERMESSAGE_DEFLATE);
    if p.server_no_context_takeover {
        s.push_str("; server_no_context_takeover");
    }
    if p.client_no_context_takeover {
        s.push_str("; client_no_context_takeover");
    }
    if p.server_max_window_bits < 15 || server_asked {
        s.push_str(&format!(
            "; server_max_window_bits={}",
            p.server_max_window_bits
        ));
    }
    if p.client_max_window_bits < 15 || client_sent_value {
        s.push_str(&format!(
            "; client_max_window_bits={}",
            p.client_max_window_bits
        ));
    }
    s
}

/// What a client offers. The default is `permessage-deflate; client_max_window_bits`,
/// the same offer browsers send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientDeflateOffer {
    /// Promise to compress every message independently.
    pub client_no_context_takeover: bool,
    /// Ask the server to compress every message independently.
    pub server_no_context_takeover: bool,
    /// `None` sends `client_max_window_bits` without a value ("you may limit me");
    /// `Some(n)` promises a window of at most n bits (8..=15).
    pub client_max_window_bits: Option<u8>,
    /// Ask the server to use a window of at most n bits (8..=15).
    pub server_max_window_bits: Option<u8>,
}

/// The server's extension answer is not acceptable for our offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionAnswerError {
    #[error("RFC 6455 §4.1: the server accepted an extension we did not offer")]
    NotOffered,
    #[error("RFC 7692 §5: the server accepted permessage-deflate more than once")]
    Repeated,
    #[error("RFC 7692 §7.1: invalid or unexpected permessage-deflate parameter in the answer")]
    InvalidParameter,
    #[error("RFC 6455 §9.1: malformed Sec-WebSocket-Extensions answer")]
    Syntax,
}

impl ClientDeflateOffer {
    pub fn header(&self) -> String {
        let mut s = String::from(PERMESSAGE_DEFLATE);
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if let Some(n) = self.server_max_window_bits {
            s.push_str(&format!("; server_max_window_bits={}", n.clamp(8, 15)));
        }
        match self.client_max_window_bits {
            Some(n) => s.push_str(&format!("; client_max_window_bits={}", n.clamp(8, 15))),
            None => s.push_str("; client_max_window_bits"),
        }
        s
    }

    /// Validates the server's answer against this offer (`offer` `None`: we offered
    /// nothing). `Ok(None)` means the server declined compression. On any error the
    /// client MUST fail the connection (RFC 6455 §4.1, RFC 7692 §7.1).
    pub fn check_answer(
        offer: Option<&ClientDeflateOffer>,
        answer: &[Result<ExtensionOffer, ExtensionSyntaxError>],
    ) -> Result<Option<DeflateParams>, ExtensionAnswerError> {
        let mut agreed = None;
        for element in answer {
            let element = element.as_ref().map_err(|_| ExtensionAnswerError::Syntax)?;
            let Some(offer) = offer.filter(|_| element.name == PERMESSAGE_DEFLATE) else {
                return Err(ExtensionAnswerError::NotOffered);
            };
            if agreed.is_some() {
                return Err(ExtensionAnswerError::Repeated);
            }
            agreed = Some(offer.accept(element)?);
        }
        Ok(agreed)
    }

    fn accept(&self, element: &ExtensionOffer) -> Result<DeflateParams, ExtensionAnswerError> {
        let bad = ExtensionAnswerError::InvalidParameter;
        let p = PmdParams::parse(element).ok_or(bad)?;
        // §7.1.1.1: a server accepts server_no_context_takeover by including it.
        if self.server_no_context_takeover && !p.server_no_context_takeover {
            return Err(bad);
        }
        // §7.1.2.1: accepted with the same or a smaller value.
        let server_bits = match (self.server_max_window_bits, p.server_max_window_bits) {
            (Some(_), None) => return Err(bad),
            (Some(asked), Some(got)) if got > asked.clamp(8, 15) => return Err(bad),
            (_, got) => got.unwrap_or(15),
        };
        // §7.1.2.2: in an answer the value is required (our offer always carries the
        // parameter, so the server may use it).
        let client_bits = match p.client_max_window_bits {
            Some(None) => return Err(bad),
            Some(Some(n)) => n,
            None => 15,
        }
        .min(self.client_max_window_bits.unwrap_or(15).clamp(8, 15));
        Ok(DeflateParams {
            server_no_context_takeover: p.server_no_context_takeover,
            client_no_context_takeover: p.client_no_context_takeover
                || self.client_no_context_takeover,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn offers(values: &[&str]) -> Vec<Result<ExtensionOffer, ExtensionSyntaxError>> {
        let values: Vec<HeaderValue> = values.iter().map(|v| hv(v)).collect();
        parse(&values)
    }

    fn server(values: &[&str]) -> Option<(DeflateParams, String)> {
        ServerDeflatePolicy::default().negotiate(&offers(values))
    }

    #[test]
    fn parses_lists_params_and_quotes() {
        let o = offers(&[
            "permessage-deflate; client_max_window_bits, foo;a=\"1\"",
            " , x-webkit-deflate-frame ; b ; c = \"q\\w\"",
        ]);
        assert_eq!(o.len(), 3);
        assert_eq!(
            o[0],
            Ok(ExtensionOffer {
                name: "permessage-deflate".into(),
                params: vec![("client_max_window_bits".into(), None)],
            })
        );
        assert_eq!(
            o[1].as_ref().unwrap().params,
            vec![("a".into(), Some("1".into()))]
        );
        assert_eq!(
            o[2].as_ref().unwrap().params,
            vec![("b".into(), None), ("c".into(), Some("qw".into()))]
        );
    }

    #[test]
    fn syntax_errors_are_per_element() {
        let o = offers(&["a;=1, b", "c;x=\"un", "d; e=\"a b\"", "f; g=\"\""]);
        assert!(o[0].is_err());
        assert_eq!(o[1].as_ref().unwrap().name, "b");
        assert!(o[2].is_err(), "unterminated quote");
        assert!(o[3].is_err(), "quoted value must be a token");
        assert!(o[4].is_err(), "empty quoted value is not a token");
    }

    #[test]
    fn server_default_answer_adds_no_context_takeover() {
        let (p, answer) = server(&["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(answer, "permessage-deflate; server_no_context_takeover");
        assert_eq!(
            p,
            DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover: false,
                server_max_window_bits: 15,
                client_max_window_bits: 15,
            }
        );
    }

    #[test]
    fn server_matrix() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "permessage-deflate",
                Some("permessage-deflate; server_no_context_takeover"),
            ),
            (
                "permessage-deflate; client_no_context_takeover",
                Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            ),
            (
                "permessage-deflate; server_max_window_bits=10",
                Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=10"),
            ),
            (
                "permessage-deflate; server_max_window_bits=\"12\"",
                Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=12"),
            ),
            (
                "permessage-deflate; client_max_window_bits=9",
                Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=9"),
            ),
            (
                "permessage-deflate; server_max_window_bits=8",
                Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=8"),
            ),
            // Accepted at 15 too: the answer must still carry it (§7.1.2.1).
            (
                "permessage-deflate; server_max_window_bits=15",
                Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=15"),
            ),
            // Invalid: value required / out of range / leading zero / value not allowed.
            ("permessage-deflate; server_max_window_bits", None),
            ("permessage-deflate; server_max_window_bits=16", None),
            ("permessage-deflate; server_max_window_bits=7", None),
            ("permessage-deflate; client_max_window_bits=09", None),
            ("permessage-deflate; server_no_context_takeover=1", None),
            // Duplicates and unknown parameters.
            (
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                None,
            ),
            (
                "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
                None,
            ),
            ("permessage-deflate; foo", None),
            ("x-webkit-deflate-frame", None),
        ];
        for (offer, want) in cases {
            let got = server(&[offer]).map(|(_, a)| a);
            assert_eq!(got.as_deref(), *want, "offer {offer:?}");
        }
    }

    #[test]
    fn server_skips_bad_offers_and_takes_first_good_one() {
        let (p, _) = server(&[
            "permessage-deflate; bogus, permessage-deflate; server_max_window_bits=11",
            "permessage-deflate; server_max_window_bits=9",
        ])
        .unwrap();
        assert_eq!(p.server_max_window_bits, 11);
        // Across headers too, and after a syntax error.
        let (p, _) = server(&[
            "permessage-deflate; a=\"",
            "permessage-deflate; server_max_window_bits=9",
        ])
        .unwrap();
        assert_eq!(p.server_max_window_bits, 9);
    }

    #[test]
    fn server_policy_limits_and_disable() {
        let policy = ServerDeflatePolicy {
            server_max_window_bits: 10,
            client_max_window_bits: 11,
            client_no_context_takeover: true,
            ..Default::default()
        };
        let (p, a) = policy
            .negotiate(&offers(&[
                "permessage-deflate; client_max_window_bits; server_max_window_bits=12",
            ]))
            .unwrap();
        assert_eq!(
            (p.server_max_window_bits, p.client_max_window_bits),
            (10, 11)
        );
        assert!(p.client_no_context_takeover);
        assert_eq!(
            a,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=11"
        );
        // Without client_max_window_bits in the offer the server must not limit it.
        let (p, a) = policy.negotiate(&offers(&["permessage-deflate"])).unwrap();
        assert_eq!(p.client_max_window_bits, 15);
        assert!(!a.contains("client_max_window_bits"));

        assert!(ServerDeflatePolicy::disabled()
            .negotiate(&offers(&["permessage-deflate"]))
            .is_none());
    }

    fn client(
        offer: &ClientDeflateOffer,
        answer: &[&str],
    ) -> Result<Option<DeflateParams>, ExtensionAnswerError> {
        ClientDeflateOffer::check_answer(Some(offer), &offers(answer))
    }

    #[test]
    fn client_offer_header() {
        assert_eq!(
            ClientDeflateOffer::default().header(),
            "permessage-deflate; client_max_window_bits"
        );
        let o = ClientDeflateOffer {
            client_no_context_takeover: true,
            server_no_context_takeover: true,
            client_max_window_bits: Some(10),
            server_max_window_bits: Some(12),
        };
        assert_eq!(
            o.header(),
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=10"
        );
    }

    #[test]
    fn client_checks_answers() {
        let d = ClientDeflateOffer::default();
        assert_eq!(client(&d, &[]), Ok(None));
        let p = client(
            &d,
            &["permessage-deflate; server_no_context_takeover; client_max_window_bits=10"],
        )
        .unwrap()
        .unwrap();
        assert!(p.server_no_context_takeover);
        assert_eq!(p.client_max_window_bits, 10);
        // The server may limit its own window even unasked.
        assert_eq!(
            client(&d, &["permessage-deflate; server_max_window_bits=9"])
                .unwrap()
                .unwrap()
                .server_max_window_bits,
            9
        );
        assert_eq!(client(&d, &["foo"]), Err(ExtensionAnswerError::NotOffered));
        assert_eq!(
            client(&d, &["permessage-deflate, permessage-deflate"]),
            Err(ExtensionAnswerError::Repeated)
        );
        assert_eq!(
            client(&d, &["permessage-deflate; client_max_window_bits"]),
            Err(ExtensionAnswerError::InvalidParameter),
            "answers need a value"
        );
        assert_eq!(
            client(&d, &["permessage-deflate; bogus"]),
            Err(ExtensionAnswerError::InvalidParameter)
        );
        assert_eq!(
            client(&d, &["permessage-deflate; x=\""]),
            Err(ExtensionAnswerError::Syntax)
        );
        assert_eq!(
            ClientDeflateOffer::check_answer(None, &offers(&["permessage-deflate"])),
            Err(ExtensionAnswerError::NotOffered)
        );
    }

    #[test]
    fn client_requires_requested_limits() {
        let o = ClientDeflateOffer {
            server_no_context_takeover: true,
            server_max_window_bits: Some(10),
            client_max_window_bits: Some(12),
            ..Default::default()
        };
        let ok = "permessage-deflate; server_no_context_takeover; server_max_window_bits=10";
        let p = client(&o, &[ok]).unwrap().unwrap();
        assert_eq!(
            (p.server_max_window_bits, p.client_max_window_bits),
            (10, 12)
        );
        assert!(client(&o, &["permessage-deflate; server_max_window_bits=10"]).is_err());
        assert!(client(&o, &["permessage-deflate; server_no_context_takeover"]).is_err());
        assert!(client(
            &o,
            &["permessage-deflate; server_no_context_takeover; server_max_window_bits=11"]
        )
        .is_err());
    }

    #[test]
    fn directions_by_role() {
        let p = DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: false,
            server_max_window_bits: 10,
            client_max_window_bits: 12,
        };
        assert_eq!(p.outgoing(Role::Server), (10, false));
        assert_eq!(p.incoming(Role::Server), (12, true));
        assert_eq!(p.outgoing(Role::Client), (12, true));
        assert_eq!(p.incoming(Role::Client), (10, false));
    }
}
