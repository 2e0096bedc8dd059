//! Tickets: short-lived, single-use stand-ins for a credential, so that a browser's WebSocket URL
//! never holds the long-lived token. Browsers cannot set headers on a WebSocket, so a token had to
//! ride in `?token=`, and Chromium logs the whole URL of a refused handshake to the page's
//! console, as proxies log query strings. A page posts its token once (`POST /v1/ticket`, in the
//! `Authorization` header) and opens the stream with `?ticket=`: what a log then shows is a string
//! that was good once, for 30 s, from that Origin, and that does not reveal the token.
//!
//! A ticket is sealed, not stored: the token, the Origin and the expiry, encrypted and
//! authenticated (AES-256-GCM, ring) under the ticket key. So any gateway with the same key
//! redeems it: behind a load balancer the ticket request and the stream it opens may land on
//! different edges (`[access] ticket_key`, shared by them). Without a configured key each gateway
//! makes its own at start, and its tickets are good on it alone. Redeeming runs the token through
//! the settings in force then (`admit.rs`), so a key revoked by a reload in between is refused,
//! and the connection counts against its token's limit like any other.
//!
//! Single use is per gateway: each remembers the tickets used on it until they expire
//! (`MAX_USED`). A ticket copied from a log could still open one stream on each other gateway
//! sharing the key within its 30 s, from a client that forges the Origin (docs/security.md).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::log_limit::LogLimiter;
use crate::sync::lock;

/// How long a ticket stays good (`expires_in` of `POST /v1/ticket`): long enough for a page to
/// open its socket over a slow link, short enough that a logged one is stale by the time anyone
/// reads the log.
pub const TICKET_TTL: Duration = Duration::from_secs(30);

/// Tickets one gateway remembers as used (until they expire). Past it, a ticket is refused
/// (503) rather than forgotten early, which would let a used one in again: it takes over 3,000
/// redemptions a second, sustained, to fill.
pub const MAX_USED: usize = 100_000;

/// Bound to every ticket: a sealed message meant for something else never opens as one.
const CONTEXT: &[u8] = b"quotegw ticket v1";

/// The bytes of a key's id at the head of a ticket (the first of its SHA-256, in the clear): a
/// gateway tells another gateway's ticket from garbage, and says what to configure. Four bytes
/// of a hash of a 256-bit key tell nothing about the key.
const KEY_ID_LEN: usize = 4;

/// What a ticket starts with (a format version): only a string that has it is taken for a ticket
/// of another key, the rest is garbage.
const MAGIC: [u8; 2] = [b'q', 1];

/// Why a ticket admitted nothing; all alike to the client (401) but `Full` (503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedeemRefusal {
    /// Not a ticket sealed with this key (garbage, or altered).
    Unknown,
    /// Sealed with another key: another gateway's, which does not share `[access] ticket_key`.
    OtherKey,
    /// Used on this gateway already.
    Used,
    /// Its 30 s have passed.
    Expired,
    /// Issued to a page of another Origin (or to none, and presented with one, or the reverse).
    OtherOrigin,
    /// `MAX_USED` tickets were used within their lifetime.
    Full,
}

/// A ticket key: 32 bytes, from `[access] ticket_key` (hashed) or made at start.
#[derive(Clone)]
pub struct TicketKey([u8; 32]);

impl TicketKey {
    fn id(&self) -> [u8; KEY_ID_LEN] {
        let digest = super::tokens::digest(&self.0);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        id
    }

    /// The key of a configured secret (at least 32 characters): its SHA-256, so any string an
    /// operator generates works.
    pub fn from_secret(secret: &str) -> TicketKey {
        TicketKey(super::tokens::digest(secret.as_bytes()))
    }

    fn random() -> TicketKey {
        let mut key = [0u8; 32];
        fill_random(&mut key);
        TicketKey(key)
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("a 32-byte AES-256 key"))
    }
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(<redacted>)")
    }
}

#[derive(Default)]
struct Used {
    /// Nonce of each used ticket → its expiry (unix ms).
    by_nonce: HashMap<[u8; NONCE_LEN], i64>,
    /// The same, in the order they were used, to sweep the expired from the front.
    order: VecDeque<(i64, [u8; NONCE_LEN])>,
}

/// Seals and opens tickets; remembers the ones used here. Shared by every worker, kept across
/// reloads (a reload may change the configured key, which `Access` holds).
pub struct Tickets {
    /// The key when `[access] ticket_key` is not set: this gateway's alone.
    local: TicketKey,
    used: Mutex<Used>,
    /// Warnings of another gateway's tickets (a load balancer in front of gateways without one
    /// `ticket_key`), limited: every client of a page would provoke one.
    other_key_log: LogLimiter,
}

impl Default for Tickets {
    fn default() -> Tickets {
        Tickets {
            local: TicketKey::random(),
            used: Mutex::default(),
            other_key_log: LogLimiter::new(1, 1),
        }
    }
}

impl Tickets {
    /// A ticket for `token` (as verified by the caller), good once on any gateway with `key`
    /// (the configured one, else this gateway's), from `origin`, until `now_ms + TICKET_TTL`.
    pub fn issue(
        &self,
        key: Option<&TicketKey>,
        token: Option<&str>,
        origin: Option<&str>,
        now_ms: i64,
    ) -> String {
        let key = key.unwrap_or(&self.local);
        let expires = now_ms + TICKET_TTL.as_millis() as i64;
        let origin = origin.unwrap_or("");
        let token = token.unwrap_or("");
        // expiry (8), whether there is an Origin and a token (1 each), the Origin's length (2),
        // the Origin, the token.
        let mut plain = Vec::with_capacity(12 + origin.len() + token.len() + 16);
        plain.extend_from_slice(&expires.to_be_bytes());
        plain.push(u8::from(!origin.is_empty()));
        plain.push(u8::from(!token.is_empty()));
        let origin_len = u16::try_from(origin.len()).unwrap_or(u16::MAX);
        plain.extend_from_slice(&origin_len.to_be_bytes());
        plain.extend_from_slice(&origin.as_bytes()[..usize::from(origin_len)]);
        plain.extend_from_slice(token.as_bytes());
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        key.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(CONTEXT),
                &mut plain,
            )
            .expect("sealing fits in memory");
        let mut sealed = MAGIC.to_vec();
        sealed.extend_from_slice(&key.id());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&plain);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed)
    }

    /// The token `ticket` stands for, if it opens under `key` (or this gateway's), has not
    /// expired, was not used here, and `origin` is the one it was issued to (`None`: a ticket
    /// for no token). A ticket that opens is used up whatever follows: one presented from the
    /// wrong Origin was seen by someone it was not meant for.
    pub fn redeem(
        &self,
        key: Option<&TicketKey>,
        ticket: &str,
        origin: Option<&str>,
        now_ms: i64,
    ) -> Result<Option<String>, RedeemRefusal> {
        let key = key.unwrap_or(&self.local);
        let mut sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(ticket)
            .map_err(|_| RedeemRefusal::Unknown)?;
        // The magic, the key's id, the nonce, then at least the tag.
        let at_id = MAGIC.len();
        let at_nonce = at_id + KEY_ID_LEN;
        let head = at_nonce + NONCE_LEN;
        if sealed.len() < head + AES_256_GCM.tag_len() || sealed[..at_id] != MAGIC {
            return Err(RedeemRefusal::Unknown);
        }
        if sealed[at_id..at_nonce] != key.id() {
            if let Some(suppressed) = self.other_key_log.admit(std::time::Instant::now()) {
                tracing::warn!(
                    suppressed,
                    "a ticket of another key was refused (another gateway's, or made to look \
                     like one): if the gateways behind one load balancer should take each \
                     other's tickets, give them the same [access] ticket_key \
                     (docs/security.md, \"Where the token goes\")"
                );
            }
            return Err(RedeemRefusal::OtherKey);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[at_nonce..head]);
        let plain = key
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(CONTEXT),
                &mut sealed[head..],
            )
            .map_err(|_| RedeemRefusal::Unknown)?;
        let (expires, has_origin, has_token, sealed_origin, token) =
            parse(plain).ok_or(RedeemRefusal::Unknown)?;
        if now_ms >= expires {
            return Err(RedeemRefusal::Expired);
        }
        self.use_once(nonce, expires, now_ms)?;
        let sealed_origin = has_origin.then_some(sealed_origin);
        if sealed_origin != origin {
            return Err(RedeemRefusal::OtherOrigin);
        }
        Ok(has_token.then(|| token.to_string()))
    }

    /// Marks the ticket of `nonce` used, unless it was.
    fn use_once(
        &self,
        nonce: [u8; NONCE_LEN],
        expires: i64,
        now_ms: i64,
    ) -> Result<(), RedeemRefusal> {
        let mut used = lock(&self.used);
        while used.order.front().is_some_and(|(e, _)| *e <= now_ms) {
            if let Some((_, n)) = used.order.pop_front() {
                used.by_nonce.remove(&n);
            }
        }
        if used.by_nonce.contains_key(&nonce) {
            return Err(RedeemRefusal::Used);
        }
        if used.by_nonce.len() >= MAX_USED {
            return Err(RedeemRefusal::Full);
        }
        used.by_nonce.insert(nonce, expires);
        // Expiries are issue time plus one lifetime; issued out of order by a little (several
        // gateways, their clocks), a late sweep only keeps an entry a little longer.
        used.order.push_back((expires, nonce));
        Ok(())
    }

    /// Tickets remembered as used here (for tests).
    pub fn used(&self) -> usize {
        lock(&self.used).by_nonce.len()
    }
}

type Opened<'a> = (i64, bool, bool, &'a str, &'a str);

fn parse(plain: &[u8]) -> Option<Opened<'_>> {
    let expires = i64::from_be_bytes(plain.get(..8)?.try_into().ok()?);
    let (has_origin, has_token) = (*plain.get(8)? == 1, *plain.get(9)? == 1);
    let origin_len = usize::from(u16::from_be_bytes(plain.get(10..12)?.try_into().ok()?));
    let origin = std::str::from_utf8(plain.get(12..12 + origin_len)?).ok()?;
    let token = std::str::from_utf8(plain.get(12 + origin_len..)?).ok()?;
    Some((expires, has_origin, has_token, origin, token))
}

/// The wall clock, in unix ms: tickets travel between gateways, which share no other clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn fill_random(out: &mut [u8]) {
    // Without the operating system's generator no ticket or key is safe; nothing can go on.
    SystemRandom::new()
        .fill(out)
        .expect("the operating system's random generator");
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: Option<&str> = Some("https://ui.example.com");

    #[test]
    fn a_ticket_is_good_once_within_its_lifetime_from_its_origin() {
        let tickets = Tickets::default();
        let t0 = 1_700_000_000_000;
        let id = tickets.issue(None, Some("key-1"), PAGE, t0);
        assert!(!id.contains("key-1"));
        assert_eq!(
            tickets.redeem(None, &id, PAGE, t0 + 29_999),
            Ok(Some("key-1".to_string()))
        );
        assert_eq!(
            tickets.redeem(None, &id, PAGE, t0),
            Err(RedeemRefusal::Used)
        );

        let late = tickets.issue(None, Some("key-1"), PAGE, t0);
        assert_eq!(
            tickets.redeem(None, &late, PAGE, t0 + 30_000),
            Err(RedeemRefusal::Expired)
        );
        for other in [Some("https://evil.example"), None] {
            let id = tickets.issue(None, Some("key-1"), PAGE, t0);
            assert_eq!(
                tickets.redeem(None, &id, other, t0),
                Err(RedeemRefusal::OtherOrigin)
            );
            assert_eq!(
                tickets.redeem(None, &id, PAGE, t0),
                Err(RedeemRefusal::Used),
                "a ticket shown from another Origin is used up"
            );
        }
        let no_origin = tickets.issue(None, Some("k"), None, t0);
        assert_eq!(
            tickets.redeem(None, &no_origin, PAGE, t0),
            Err(RedeemRefusal::OtherOrigin)
        );
        let anonymous = tickets.issue(None, None, None, t0);
        assert_eq!(tickets.redeem(None, &anonymous, None, t0), Ok(None));
        // Garbage, an altered ticket, a truncated one.
        let good = tickets.issue(None, Some("k"), None, t0);
        let mut altered = good.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        for bad in [
            "",
            "x",
            "not base64 !",
            // Decodes, long enough, but no ticket: garbage, not another key's.
            "Z2FyYmFnZS1ub3QtYS10aWNrZXQtYnV0LWxvbmctZW5vdWdoLXRvLWRlY29kZQ",
            &good[..good.len() - 4],
            std::str::from_utf8(&altered).unwrap(),
        ] {
            assert_eq!(
                tickets.redeem(None, bad, None, t0),
                Err(RedeemRefusal::Unknown),
                "{bad:?}"
            );
        }
        assert_eq!(tickets.redeem(None, &good, None, t0), Ok(Some("k".into())));
        // Expired ones are forgotten.
        assert!(tickets.used() > 0);
        let fresh = tickets.issue(None, None, None, t0 + 60_000);
        tickets.redeem(None, &fresh, None, t0 + 60_000).unwrap();
        assert_eq!(tickets.used(), 1);
    }

    /// The used set is bounded: past `MAX_USED` within one lifetime a ticket is refused (never
    /// forgotten early, which would let a used one in again), and room comes back as they expire.
    #[test]
    fn the_used_tickets_are_bounded() {
        let tickets = Tickets::default();
        let t0 = 1_700_000_000_000;
        let ids: Vec<String> = (0..=MAX_USED)
            .map(|_| tickets.issue(None, None, None, t0))
            .collect();
        for id in &ids[..MAX_USED] {
            tickets.redeem(None, id, None, t0).unwrap();
        }
        assert_eq!(
            tickets.redeem(None, &ids[MAX_USED], None, t0),
            Err(RedeemRefusal::Full)
        );
        assert_eq!(
            tickets.redeem(None, &ids[0], None, t0),
            Err(RedeemRefusal::Used)
        );
        let later = tickets.issue(None, None, None, t0 + 30_000);
        assert_eq!(tickets.redeem(None, &later, None, t0 + 30_000), Ok(None));
        assert_eq!(tickets.used(), 1);
    }

    #[test]
    fn gateways_sharing_a_key_redeem_each_others_tickets_once_each() {
        let (a, b) = (Tickets::default(), Tickets::default());
        let shared = TicketKey::from_secret("a shared secret of 32 characters or more");
        let t0 = 1_700_000_000_000;
        let id = a.issue(Some(&shared), Some("key-1"), PAGE, t0);
        assert_eq!(
            b.redeem(Some(&shared), &id, PAGE, t0),
            Ok(Some("key-1".into()))
        );
        assert_eq!(
            b.redeem(Some(&shared), &id, PAGE, t0),
            Err(RedeemRefusal::Used)
        );
        // Each gateway's own key: another's ticket does not open.
        let local = a.issue(None, Some("key-1"), PAGE, t0);
        assert_eq!(
            b.redeem(None, &local, PAGE, t0),
            Err(RedeemRefusal::OtherKey)
        );
        assert_eq!(
            a.redeem(Some(&shared), &local, PAGE, t0),
            Err(RedeemRefusal::OtherKey)
        );
        // An Origin too long for its length field is cut, and then no page matches it.
        let long = "h".repeat(70_000);
        let id = a.issue(None, Some("k"), Some(&long), t0);
        assert_eq!(
            a.redeem(None, &id, Some(&long), t0),
            Err(RedeemRefusal::OtherOrigin)
        );
    }
}
