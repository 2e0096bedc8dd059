//! Session, inbound: client frames → ops, with the op rate limit, the abuse limit, the symbol limit,
//! and the close codes for frames the protocol refuses.

use std::sync::Arc;
use std::time::Instant;

use actix_http::ws::{Frame, Item};
use bytes::BytesMut;

use super::Fragments;
use super::{Connection, End, Session};
use crate::index::SymbolEntry;
use crate::protocol::{
    close, encode_ack, encode_error, encode_pong, encode_symbols, parse_request, ErrorCode, Op,
    SymbolList,
};
use crate::view::{Pacing, SlotView, Wants};

/// At most this many already-received client frames are handled before the replies are flushed,
/// so that a client pipelining frames still gets answers (and news) at a steady pace.
const FRAMES_PER_FLUSH: usize = 64;

impl Connection {
    /// Handles `first` and the frames already received after it, up to `FRAMES_PER_FLUSH`, before
    /// anything is written: pipelined ops are answered in one frame, a burst of pings with one
    /// pong. `Some` ends the connection (after a flush of what the ops wrote).
    ///
    /// Not async, and not part of the serving loop: the frames it holds would otherwise keep their
    /// space in every connection's task.
    pub(super) fn on_messages(&mut self, first: Frame) -> Option<End> {
        self.last_heard = tokio::time::Instant::now();
        let mut next = Some(first);
        let mut budget = FRAMES_PER_FLUSH;
        while let Some(msg) = next.take() {
            if let Some(end) = self.on_message(msg) {
                return Some(end);
            }
            budget -= 1;
            if budget > 0 {
                match self.socket.recv_buffered() {
                    Ok(frame) => next = frame,
                    Err(e) => return Some(End::from_protocol_error(&e)),
                }
            }
        }
        None
    }

    /// Handles one client frame; `Some` ends the connection.
    pub(super) fn on_message(&mut self, frame: Frame) -> Option<End> {
        match frame {
            Frame::Text(bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => self.session.on_text(text, Instant::now()),
                Err(_) => Some(End::Close(
                    close::INVALID_PAYLOAD,
                    "text frame is not valid UTF-8",
                )),
            },
            Frame::Binary(_) => Some(End::Close(
                close::UNSUPPORTED_DATA,
                "binary frames are not accepted; send JSON text",
            )),
            Frame::Ping(payload) => match self.session.control_frame(Instant::now()) {
                // Pings already received are answered by one pong (the latest payload, as RFC
                // 6455 §5.5.3 allows): a ping flood costs one write per flush, not one per ping.
                Ok(true) => {
                    self.pong_owed = Some(Box::new(payload));
                    None
                }
                Ok(false) => None,
                Err(end) => Some(end),
            },
            Frame::Pong(_) => self.session.control_frame(Instant::now()).err(),
            Frame::Close(reason) => Some(End::ClientClosed(reason)),
            Frame::Continuation(item) => match self.session.control_frame(Instant::now()) {
                // A fragment is reassembled either way (dropping one would corrupt the message);
                // only its cost is counted.
                Ok(_) => self.on_fragment(item),
                Err(end) => Some(end),
            },
        }
    }

    /// Reassembles a fragmented message, bounded by `max_frame_bytes` in total.
    fn on_fragment(&mut self, item: Item) -> Option<End> {
        let max = self.session.shared.limits.max_frame_bytes;
        let (first, text, bytes, last) = match item {
            Item::FirstText(b) => (true, true, b, false),
            Item::FirstBinary(b) => (true, false, b, false),
            Item::Continue(b) => (false, false, b, false),
            Item::Last(b) => (false, false, b, true),
        };
        if first {
            self.fragments = Some(Box::new(Fragments {
                text,
                buf: BytesMut::new(),
            }));
        }
        let Some(f) = self.fragments.as_mut() else {
            return Some(End::Close(
                close::PROTOCOL_ERROR,
                "continuation frame without a first fragment",
            ));
        };
        if f.buf.len() + bytes.len() > max {
            return Some(End::Close(close::TOO_BIG, "message over max_frame_bytes"));
        }
        f.buf.extend_from_slice(&bytes);
        if !last {
            return None;
        }
        let f = self.fragments.take()?;
        if !f.text {
            return Some(End::Close(
                close::UNSUPPORTED_DATA,
                "binary frames are not accepted; send JSON text",
            ));
        }
        match std::str::from_utf8(&f.buf) {
            Ok(text) => self.session.on_text(text, Instant::now()),
            Err(_) => Some(End::Close(
                close::INVALID_PAYLOAD,
                "text frame is not valid UTF-8",
            )),
        }
    }
}

impl Session {
    /// Every frame a client sends costs a token of the op bucket, pings, pongs and fragments
    /// included, so a flood of them is throttled like a flood of ops. A frame that finds the bucket
    /// empty takes an abuse token instead and is not answered (`Ok(false)`); the connection closes
    /// with 1008 when those run out, as it does for ops.
    pub fn control_frame(&mut self, now: Instant) -> Result<bool, End> {
        if self.ops.take(now) {
            Ok(true)
        } else if self.errors.take(now) {
            Ok(false)
        } else {
            Err(End::Close(
                close::POLICY,
                "too many frames; slow down before reconnecting",
            ))
        }
    }

    /// Handles one client op (a text message); its reply goes into the frame being built. `Some`
    /// ends the connection (repeated abuse).
    pub fn on_text(&mut self, text: &str, now: Instant) -> Option<End> {
        // Parsed before the rate check, so that `rate_limited` echoes the op's `id` (a client
        // matches the error to its op and retries it). Parsing costs less than the reply, and a
        // flood of refused ops still ends on the abuse bucket.
        let request = parse_request(text);
        if !self.ops.take(now) {
            let message = format!(
                "more than {} ops per second (burst {}); this op was not applied",
                self.shared.limits.ops_per_second, self.shared.limits.ops_burst
            );
            let id = match &request {
                Ok(r) => r.id.as_deref(),
                Err(e) => e.id.as_deref(),
            };
            return self.client_error(id, ErrorCode::RateLimited, &message, now);
        }
        let request = match request {
            Ok(r) => r,
            Err(e) => return self.client_error(e.id.as_deref(), e.code, &e.message, now),
        };
        let id = request.id.as_deref();
        match request.op {
            Op::Subscribe {
                symbols,
                max_hz,
                on_lag,
                trades,
                bars,
            } => {
                let pacing = self.pacing(max_hz, on_lag);
                match self.wants(trades, bars.as_deref()) {
                    Ok(wants) => self.subscribe(id, symbols, pacing, wants, now),
                    Err((code, message)) => self.client_error(id, code, &message, now),
                }
            }
            Op::Unsubscribe { symbols } => {
                self.unsubscribe(id, symbols);
                None
            }
            Op::Symbols => {
                // What this connection may subscribe to: the token's grant filters the list.
                let all = self.shared.index.symbols_sorted();
                let scope = &self.scope;
                self.frame.push(|s| {
                    encode_symbols(s, id, all.iter().map(|s| &**s).filter(|s| scope.allows(s)))
                });
                None
            }
            Op::Ping => {
                self.frame.push(|s| encode_pong(s, id));
                None
            }
        }
    }

    /// Replies with an error; too many errors in a burst end the connection with 1008.
    fn client_error(
        &mut self,
        id: Option<&str>,
        code: ErrorCode,
        message: &str,
        now: Instant,
    ) -> Option<End> {
        self.shared
            .metrics
            .client_errors
            .with_label_values(&[code.as_str()])
            .inc();
        self.frame.push(|s| encode_error(s, id, code, message));
        if self.errors.take(now) {
            None
        } else {
            Some(End::Close(
                close::POLICY,
                "repeated bad requests; fix the client before reconnecting",
            ))
        }
    }

    /// Subscribes to `symbols` (replying with the ack); `None` unless the op ends the connection.
    pub fn subscribe(
        &mut self,
        id: Option<&str>,
        symbols: SymbolList,
        pacing: Pacing,
        wants: Wants,
        now: Instant,
    ) -> Option<End> {
        let max = self.shared.limits.max_symbols_per_connection;
        let symbols = symbols.deduped();
        // Every string counts, symbol or not: it bounds the ack's `rejected` too.
        if symbols.len() > max {
            let message = format!(
                "a subscribe may name at most {max} symbols; it named {}",
                symbols.len()
            );
            return self.client_error(id, ErrorCode::TooManySymbols, &message, now);
        }
        // Resolve everything first: too_many_symbols must leave the subscription untouched.
        let mut accepted = Vec::with_capacity(symbols.valid.len());
        let mut rejected: Vec<(&str, ErrorCode)> = symbols.rejections().collect();
        let mut added = 0;
        for name in &symbols.valid {
            if !self.scope.allows(name) {
                rejected.push((name.as_str(), ErrorCode::Unauthorized));
            } else if let Ok(i) = self.find_symbol(name) {
                accepted.push((name.as_str(), Target::Existing(self.by_symbol[i])));
            } else if let Some(entry) = self.shared.index.lookup(name) {
                accepted.push((name.as_str(), Target::New(entry)));
                added += 1;
            } else {
                rejected.push((name.as_str(), ErrorCode::UnknownSymbol));
            }
        }
        let held = self.by_symbol.len();
        if held + added > max {
            let message = format!(
                "a connection may hold at most {max} symbols; it holds {held} and this op adds {added}; nothing was applied"
            );
            return self.client_error(id, ErrorCode::TooManySymbols, &message, now);
        }
        let names: Vec<&str> = accepted.iter().map(|(n, _)| *n).collect();
        // The ack goes into the frame before any snapshot: those are written when the slots drain.
        self.frame
            .push(|s| encode_ack(s, id, "subscribe", &names, &rejected));
        for (_, target) in accepted {
            match target {
                Target::Existing(slot) => {
                    if let Some(view) = self.slots[slot as usize].as_mut() {
                        view.resubscribe(pacing, wants);
                    }
                    self.pending.mark(slot);
                }
                Target::New(entry) => {
                    let slot = self.free_slots.pop().unwrap_or_else(|| {
                        // Doubling from one, not from Vec's four: a view is over a hundred bytes, and most
                        // connections hold a symbol or a few.
                        if self.slots.len() == self.slots.capacity() {
                            self.slots.reserve_exact(self.slots.len().max(1));
                        }
                        self.slots.push(None);
                        (self.slots.len() - 1) as u32
                    });
                    // Not held: the entry was found by this exact name, which was not in
                    // `by_symbol` above (and `deduped` left it once in this op).
                    let at = self.find_symbol(&entry.symbol).unwrap_err();
                    let subscription = entry.subscribe(&self.pending, slot, pacing.delay.is_none());
                    self.slots[slot as usize] = Some(SlotView::new(subscription, pacing, wants));
                    self.by_symbol.insert(at, slot);
                }
            }
        }
        None
    }

    fn unsubscribe(&mut self, id: Option<&str>, symbols: SymbolList) {
        let symbols = symbols.deduped();
        for name in &symbols.valid {
            if let Ok(i) = self.find_symbol(name) {
                let slot = self.by_symbol.remove(i);
                // Dropping the view ends its subscription.
                self.slots[slot as usize] = None;
                if let Some(d) = &mut self.deferred {
                    d.slots.retain(|&s| s != slot);
                }
                self.free_slots.push(slot);
            }
        }
        let names: Vec<&str> = symbols.valid.iter().map(String::as_str).collect();
        let rejected: Vec<(&str, ErrorCode)> = symbols.rejections().collect();
        self.frame
            .push(|s| encode_ack(s, id, "unsubscribe", &names, &rejected));
    }
}

impl Session {
    /// Where `name` is in `by_symbol` (`Err`: where it would go).
    fn find_symbol(&self, name: &str) -> Result<usize, usize> {
        self.by_symbol.binary_search_by(|&slot| {
            let view = self.slots[slot as usize].as_ref();
            view.map_or("", |v| &v.entry().symbol).cmp(name)
        })
    }
}

enum Target {
    Existing(u32),
    New(Arc<SymbolEntry>),
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::access::Grant;
    use crate::frame::Framing;
    use crate::index::Index;
    use crate::metrics::Metrics;
    use crate::session::SessionShared;

    /// A connection finds its symbols by binary search over its slots (`by_symbol`): subscribes and
    /// unsubscribes in any order, with slots reused, keep it in order and in step with the
    /// symbols' subscriber lists.
    #[test]
    fn subscribes_and_unsubscribes_in_any_order_keep_every_symbol_found() {
        let names: Vec<String> = (0..40).map(|i| format!("S{:02}", (i * 17) % 40)).collect();
        let metrics = Arc::new(Metrics::new());
        let index = Arc::new(Index::new(&["f".into()], metrics.clone()));
        for name in &names {
            index.register(name.as_str().into());
        }
        let shared = SessionShared::with_defaults(index.clone(), metrics);
        let now = Instant::now();
        let mut session = Session::new(shared, Grant::default(), Framing::JsonArray, now);
        let mut model = BTreeSet::new();
        let op = |session: &mut Session, op: &str, symbols: &[&String]| {
            let text = serde_json::json!({"op": op, "symbols": symbols}).to_string();
            assert!(session.on_text(&text, now).is_none(), "{text}");
            session.take_frame();
        };
        // Out of order, a few at a time, with leaves in between so that slots are reused.
        for round in 0..4 {
            let batch: Vec<&String> = names.iter().skip(round).step_by(3).collect();
            op(&mut session, "subscribe", &batch);
            model.extend(batch.iter().map(|s| s.to_string()));
            let leave: Vec<&String> = names.iter().skip(round * 2).step_by(5).collect();
            op(&mut session, "unsubscribe", &leave);
            for s in &leave {
                model.remove(*s);
            }
            // Subscribing again to a held symbol finds its slot: nothing is added twice.
            let again: Vec<&String> = names.iter().skip(round).step_by(7).collect();
            op(&mut session, "subscribe", &again);
            model.extend(again.iter().map(|s| s.to_string()));
            let held: Vec<String> = session.subscribed().map(|s| s.to_string()).collect();
            assert_eq!(
                held,
                model.iter().cloned().collect::<Vec<_>>(),
                "round {round}"
            );
            for name in &names {
                let subscribers = index.lookup(name).unwrap().subscriber_count();
                assert_eq!(subscribers, usize::from(model.contains(name)), "{name}");
            }
        }
    }
}
