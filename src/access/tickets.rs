//! Tickets: short-lived, single-use stand-ins for a credential, so that a browser's WebSocket URL
//! never holds the long-lived token. Browsers cannot set headers on a WebSocket, so a token had to
//! ride in `?token=`, and Chromium logs the whole URL of a refused handshake to the page's
//! console, as proxies log query strings. A page posts its token once (`POST /v1/ticket`, in the
//! `Authorization` header) and opens the stream with `?ticket=`: what a log then shows is a string
//! that was good once, for 30 s, from that Origin.
//!
//! A ticket keeps the token it stands for, not a verdict: redeeming it runs the token through the
//! settings in force then (`admit.rs`), so a key revoked by a reload in between is refused, and the
//! connection counts against its token's limit like any other. The store is bounded (`MAX_TICKETS`,
//! and `MAX_PER_CREDENTIAL` unused per credential), so minting cannot grow memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// How long a ticket stays good (`expires_in` of `POST /v1/ticket`): long enough for a page to
/// open its socket over a slow link, short enough that a logged one is stale by the time anyone
/// reads the log.
pub const TICKET_TTL: Duration = Duration::from_secs(30);

/// Unused tickets the gateway holds at once. A ticket is at most a JWT's size (an HTTP header,
/// bounded by the server's header limit); typical ones are under 1 KiB: ~10 MiB when full.
pub const MAX_TICKETS: usize = 10_000;

/// Unused tickets one credential may hold: a page needs one per socket it is opening, so this is
/// far above any honest use, and one key's holder cannot fill the store for everyone.
pub const MAX_PER_CREDENTIAL: usize = 16;

/// Random bytes in a ticket: a guess is as hopeless as guessing a 256-bit key.
const TICKET_BYTES: usize = 32;

/// Why a ticket was not issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueRefusal {
    /// This credential holds `MAX_PER_CREDENTIAL` unused tickets.
    PerCredential,
    /// The store holds `MAX_TICKETS`.
    Full,
}

/// Why a ticket admitted nothing; all alike to the client (401), apart in the code's tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedeemRefusal {
    /// Never issued, already used, or expired and swept.
    Unknown,
    /// Issued, but its 30 s have passed.
    Expired,
    /// Issued to a page of another Origin (or to none, and presented with one, or the reverse).
    OtherOrigin,
}

struct Ticket {
    token: Option<String>,
    origin: Option<String>,
    credential: u64,
    expires: Instant,
}

#[derive(Default)]
struct Store {
    by_id: HashMap<String, Ticket>,
    /// Every ticket in `by_id` (and some already used), oldest first: with one lifetime for all,
    /// also soonest to expire first, so expired ones are swept from the front.
    order: VecDeque<(Instant, String)>,
    /// Unused tickets per credential fingerprint.
    per_credential: HashMap<u64, usize>,
}

/// The tickets issued and not yet used or expired; shared by every worker, kept across reloads.
#[derive(Default)]
pub struct Tickets {
    store: Mutex<Store>,
}

impl Tickets {
    /// A new ticket for `token` (as verified by the caller), good once from `origin` until
    /// `now + TICKET_TTL`. `credential` is the token's fingerprint (`Access::fingerprint`): what
    /// `MAX_PER_CREDENTIAL` counts.
    pub fn issue(
        &self,
        token: Option<&str>,
        origin: Option<&str>,
        credential: u64,
        now: Instant,
    ) -> Result<String, IssueRefusal> {
        let mut store = lock(&self.store);
        store.sweep(now);
        if store.per_credential.get(&credential).copied().unwrap_or(0) >= MAX_PER_CREDENTIAL {
            return Err(IssueRefusal::PerCredential);
        }
        if store.by_id.len() >= MAX_TICKETS {
            return Err(IssueRefusal::Full);
        }
        let id = random_id();
        let expires = now + TICKET_TTL;
        store.by_id.insert(
            id.clone(),
            Ticket {
                token: token.map(Into::into),
                origin: origin.map(Into::into),
                credential,
                expires,
            },
        );
        store.order.push_back((expires, id.clone()));
        *store.per_credential.entry(credential).or_default() += 1;
        Ok(id)
    }

    /// The token `ticket` stands for, if it is still good and `origin` is the one it was issued
    /// to. The ticket is used up either way: a ticket presented from the wrong Origin was seen by
    /// someone it was not meant for.
    pub fn redeem(
        &self,
        ticket: &str,
        origin: Option<&str>,
        now: Instant,
    ) -> Result<Option<String>, RedeemRefusal> {
        let mut store = lock(&self.store);
        let t = store.take(ticket).ok_or(RedeemRefusal::Unknown)?;
        if now >= t.expires {
            return Err(RedeemRefusal::Expired);
        }
        if t.origin.as_deref() != origin {
            return Err(RedeemRefusal::OtherOrigin);
        }
        Ok(t.token)
    }

    /// Unused tickets held now (for tests and the store's bound).
    pub fn len(&self) -> usize {
        lock(&self.store).by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store {
    fn take(&mut self, id: &str) -> Option<Ticket> {
        let t = self.by_id.remove(id)?;
        if let Some(n) = self.per_credential.get_mut(&t.credential) {
            *n -= 1;
            if *n == 0 {
                self.per_credential.remove(&t.credential);
            }
        }
        Some(t)
    }

    /// Drops the expired tickets, and the used ones ahead of them in `order`.
    fn sweep(&mut self, now: Instant) {
        while let Some((expires, id)) = self.order.front() {
            if *expires > now && self.by_id.contains_key(id) {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.take(&id);
            }
        }
        // Used tickets behind a live one wait in `order`; tickets used as fast as they are issued
        // would grow it without bound, so it is compacted when mostly used.
        if self.order.len() > 2 * MAX_TICKETS {
            let by_id = &self.by_id;
            self.order.retain(|(_, id)| by_id.contains_key(id));
        }
    }
}

/// A ticket: `TICKET_BYTES` from the operating system's generator, as lowercase hex.
fn random_id() -> String {
    let mut bytes = [0u8; TICKET_BYTES];
    // Without the OS generator there is no safe ticket; the gateway cannot run securely anyway.
    getrandom::getrandom(&mut bytes).expect("the operating system's random generator");
    let mut id = String::with_capacity(TICKET_BYTES * 2);
    for b in bytes {
        id.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        id.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_good_once_within_its_lifetime_from_its_origin() {
        let tickets = Tickets::default();
        let t0 = Instant::now();
        let page = Some("https://ui.example.com");
        let id = tickets.issue(Some("key-1"), page, 1, t0).unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(
            tickets.redeem(&id, page, t0 + Duration::from_secs(29)),
            Ok(Some("key-1".to_string()))
        );
        assert_eq!(
            tickets.redeem(&id, page, t0),
            Err(RedeemRefusal::Unknown),
            "used"
        );

        let late = tickets.issue(Some("key-1"), page, 1, t0).unwrap();
        assert_eq!(
            tickets.redeem(&late, page, t0 + TICKET_TTL),
            Err(RedeemRefusal::Expired)
        );
        for other in [Some("https://evil.example"), None] {
            let id = tickets.issue(Some("key-1"), page, 1, t0).unwrap();
            assert_eq!(
                tickets.redeem(&id, other, t0),
                Err(RedeemRefusal::OtherOrigin)
            );
            assert_eq!(
                tickets.redeem(&id, page, t0),
                Err(RedeemRefusal::Unknown),
                "a ticket shown from another Origin is used up"
            );
        }
        let no_origin = tickets.issue(Some("k"), None, 1, t0).unwrap();
        assert_eq!(
            tickets.redeem(&no_origin, page, t0),
            Err(RedeemRefusal::OtherOrigin)
        );
        assert!(tickets.is_empty());
        assert_ne!(random_id(), random_id());
    }

    #[test]
    fn the_store_is_bounded_per_credential_and_in_all() {
        let tickets = Tickets::default();
        let t0 = Instant::now();
        let mine: Vec<String> = (0..MAX_PER_CREDENTIAL)
            .map(|_| tickets.issue(Some("a"), None, 7, t0).unwrap())
            .collect();
        assert_eq!(
            tickets.issue(Some("a"), None, 7, t0),
            Err(IssueRefusal::PerCredential)
        );
        assert!(
            tickets.issue(Some("b"), None, 8, t0).is_ok(),
            "others are not held up"
        );
        // Using one makes room; so does time.
        tickets.redeem(&mine[3], None, t0).unwrap();
        assert!(tickets.issue(Some("a"), None, 7, t0).is_ok());
        assert!(tickets.issue(Some("a"), None, 7, t0).is_err());
        assert!(tickets.issue(Some("a"), None, 7, t0 + TICKET_TTL).is_ok());
        assert_eq!(tickets.len(), 1, "the expired ones were swept");

        for credential in 0..MAX_TICKETS as u64 {
            if tickets.issue(None, None, 1000 + credential, t0).is_err() {
                break;
            }
        }
        assert_eq!(tickets.len(), MAX_TICKETS);
        assert_eq!(tickets.issue(None, None, 1, t0), Err(IssueRefusal::Full));
        assert!(tickets.issue(None, None, 1, t0 + TICKET_TTL * 2).is_ok());
        assert_eq!(tickets.len(), 1);
    }
}
