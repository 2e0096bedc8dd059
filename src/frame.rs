//! Stage 6, frames: the messages one connection is owed, laid out for its transport. A WebSocket
//! frame is a JSON array of messages (PROTOCOL.md); a Server-Sent Events stream writes each message
//! as an event (`event:` its type, `id:` `SYMBOL:seq`, `data:` the same JSON object).
//!
//! Serialize once, send many: a change the index encoded once for every subscriber goes into a
//! WebSocket frame by reference when it is the frame's only content (no copy), and as text after
//! other messages; an SSE stream takes the same bytes apart into its events.

use bytestring::ByteString;

/// How a connection's messages are framed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// WebSocket text frames, each a JSON array of messages.
    #[default]
    JsonArray,
    /// Server-Sent Events, one event per message.
    Sse,
}

/// Builds what a connection sends next.
#[derive(Default)]
pub struct FrameBuilder {
    framing: Framing,
    buf: String,
    // u32s, beside `framing`: every connection holds a builder.
    count: u32,
    /// (JSON arrays) a lone shared message (already `[...]`), kept by reference until a second
    /// message arrives.
    single_shared: Option<ByteString>,
    /// The last frame's length: the next frame's buffer is allocated at that size when it starts,
    /// so an idle connection holds no buffer between frames.
    capacity_hint: u32,
}

impl FrameBuilder {
    pub fn new(framing: Framing) -> FrameBuilder {
        FrameBuilder {
            framing,
            ..FrameBuilder::default()
        }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Appends a reply to a client op (`ack`, `error`, `pong`, `symbols`): WebSocket only, since an
    /// SSE stream takes no ops.
    pub fn push(&mut self, encode: impl FnOnce(&mut String)) {
        if self.framing == Framing::JsonArray {
            self.separator();
            encode(&mut self.buf);
            self.count += 1;
        }
    }

    /// Appends a quote message (`snapshot`, `update`, `status`) of `symbol` at `seq`.
    pub fn push_quote(
        &mut self,
        kind: &str,
        symbol: &str,
        seq: u64,
        encode: impl FnOnce(&mut String),
    ) {
        match self.framing {
            Framing::JsonArray => {
                self.separator();
                encode(&mut self.buf);
            }
            Framing::Sse => {
                self.event_head(kind, symbol, seq);
                encode(&mut self.buf);
                self.buf.push_str("\n\n");
            }
        }
        self.count += 1;
    }

    /// Appends a change the index encoded once: `frame` is `[{update}]`, `[{update},{status}]` or
    /// `[{status}]`, the update object `update_len` bytes long (0: none).
    pub fn push_shared(&mut self, frame: &ByteString, update_len: usize, symbol: &str, seq: u64) {
        match self.framing {
            Framing::JsonArray => {
                if self.count == 0 {
                    self.single_shared = Some(frame.clone());
                } else {
                    self.separator();
                    self.buf.push_str(inner(frame));
                }
                self.count += 1;
            }
            Framing::Sse => {
                let messages = inner(frame);
                let (update, status) = match update_len {
                    0 => ("", messages),
                    n => (&messages[..n], messages.get(n + 1..).unwrap_or("")),
                };
                for (kind, message) in [("update", update), ("status", status)] {
                    if !message.is_empty() {
                        self.push_quote(kind, symbol, seq, |s| s.push_str(message));
                    }
                }
            }
        }
    }

    /// (SSE) a comment line, which clients ignore: keeps proxies from closing an idle stream.
    pub fn push_comment(&mut self, text: &str) {
        if self.framing == Framing::Sse {
            self.reserve();
            self.buf.push_str(": ");
            self.buf.push_str(text);
            self.buf.push_str("\n\n");
            self.count += 1;
        }
    }

    fn event_head(&mut self, kind: &str, symbol: &str, seq: u64) {
        self.reserve();
        self.buf.push_str("event: ");
        self.buf.push_str(kind);
        // Symbols are printable ASCII without spaces (PROTOCOL.md), so they cannot break the line.
        self.buf.push_str("\nid: ");
        self.buf.push_str(symbol);
        self.buf.push(':');
        self.buf.push_str(itoa::Buffer::new().format(seq));
        self.buf.push_str("\ndata: ");
    }

    fn reserve(&mut self) {
        if self.buf.is_empty() {
            self.buf.reserve(self.capacity_hint as usize);
        }
    }

    fn separator(&mut self) {
        if self.count == 0 || self.single_shared.is_some() {
            self.buf.reserve(self.capacity_hint as usize);
        }
        if let Some(single) = self.single_shared.take() {
            self.buf.push('[');
            self.buf.push_str(inner(&single));
            self.buf.push(',');
        } else if self.count == 0 {
            self.buf.push('[');
        } else {
            self.buf.push(',');
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes so far (the shared case counts its own length).
    pub fn len_bytes(&self) -> usize {
        self.single_shared
            .as_ref()
            .map_or(self.buf.len(), |s| s.len())
    }

    /// The finished frame (or events), or `None` when nothing was pushed; the builder is empty
    /// again after.
    pub fn take(&mut self) -> Option<ByteString> {
        if self.count == 0 {
            return None;
        }
        self.count = 0;
        if let Some(single) = self.single_shared.take() {
            return Some(single);
        }
        if self.framing == Framing::JsonArray {
            self.buf.push(']');
        }
        self.capacity_hint = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        Some(ByteString::from(std::mem::take(&mut self.buf)))
    }
}

/// `{...}` of a `[{...}]` frame.
fn inner(frame: &str) -> &str {
    &frame[1..frame.len() - 1]
}

/// Wraps one encoded message (or two, comma-separated) as a frame, the form in which the index
/// shares each change.
pub fn one_message_frame(encode: impl FnOnce(&mut String)) -> ByteString {
    let mut s = String::with_capacity(192);
    s.push('[');
    encode(&mut s);
    s.push(']');
    ByteString::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_arrays_and_share_a_lone_update() {
        let shared = one_message_frame(|s| s.push_str(r#"{"u":1}"#));
        let mut f = FrameBuilder::default();
        assert!(f.take().is_none());
        f.push_shared(&shared, 7, "X", 1);
        let one = f.take().unwrap();
        assert_eq!(&*one, r#"[{"u":1}]"#);
        assert_eq!(
            one.as_bytes().as_ptr(),
            shared.as_bytes().as_ptr(),
            "no copy"
        );
        f.push_shared(&shared, 7, "X", 1);
        f.push(|s| s.push_str(r#"{"a":2}"#));
        f.push_shared(&shared, 7, "X", 1);
        assert_eq!(&*f.take().unwrap(), r#"[{"u":1},{"a":2},{"u":1}]"#);
        f.push(|s| s.push_str("{}"));
        assert_eq!(&*f.take().unwrap(), "[{}]");
    }

    #[test]
    fn sse_writes_one_event_per_message_from_the_same_bytes() {
        let both =
            one_message_frame(|s| s.push_str(r#"{"type":"update","seq":5},{"type":"status"}"#));
        let status = one_message_frame(|s| s.push_str(r#"{"type":"status"}"#));
        let mut f = FrameBuilder::new(Framing::Sse);
        f.push(|s| s.push_str("{\"type\":\"pong\"}"));
        assert!(f.take().is_none(), "no op replies on an SSE stream");
        f.push_quote("snapshot", "AAPL", 4, |s| {
            s.push_str(r#"{"type":"snapshot"}"#)
        });
        f.push_shared(&both, r#"{"type":"update","seq":5}"#.len(), "AAPL", 5);
        f.push_shared(&status, 0, "AAPL", 5);
        f.push_comment("ping");
        assert_eq!(
            &*f.take().unwrap(),
            "event: snapshot\nid: AAPL:4\ndata: {\"type\":\"snapshot\"}\n\n\
             event: update\nid: AAPL:5\ndata: {\"type\":\"update\",\"seq\":5}\n\n\
             event: status\nid: AAPL:5\ndata: {\"type\":\"status\"}\n\n\
             event: status\nid: AAPL:5\ndata: {\"type\":\"status\"}\n\n\
             : ping\n\n"
        );
    }
}
