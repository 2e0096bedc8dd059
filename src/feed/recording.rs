//! Stage 1, feeds: the recorded-feed file format (PROTOCOL.md, "Recorded feed files"), read by the
//! replay adapter and written by `quotegw record`: one tick per line, NDJSON, optionally gzip.
//!
//! Reading is line by line and never fails a whole file for one bad line: `parse_line` returns what is
//! wrong so that the caller can log `file:line` and count it. Fields the format does not know are
//! ignored (a newer writer may add some); `null` means "not given", like an absent field.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use serde_json::value::RawValue;

use crate::fields;
use crate::model::{Symbol, Tick, Trade};
use crate::protocol::push_json_str;

/// Longest line accepted; a longer one is a bad line (a corrupt file, not a tick).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Parses one line (without its newline) into a tick. `symbols` interns symbol names so that every
/// tick of a symbol shares one allocation.
pub fn parse_line(line: &str, symbols: &mut HashMap<String, Symbol>) -> Result<Tick, String> {
    if line.len() > MAX_LINE_BYTES {
        return Err(format!("line longer than {MAX_LINE_BYTES} bytes"));
    }
    let fields: HashMap<&str, &RawValue> =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let get = |k: &str| fields.get(k).copied();
    let ts = fields::timestamp(get("ts").ok_or("missing 'ts'")?)?;
    let symbol_raw = get("symbol").ok_or("missing 'symbol'")?;
    let name: String = serde_json::from_str(symbol_raw.get())
        .map_err(|_| format!("symbol {} is not a string", symbol_raw.get()))?;
    let symbol = match symbols.get(&name) {
        Some(s) => s.clone(),
        None => {
            let s = Symbol::from(name.as_str());
            symbols.insert(name, s.clone());
            s
        }
    };
    let price = |k: &str| {
        get(k)
            .map(fields::price)
            .transpose()
            .map(Option::flatten)
            .map_err(|e| format!("'{k}': {e}"))
    };
    let size = |k: &str| {
        get(k)
            .map(fields::size)
            .transpose()
            .map(Option::flatten)
            .map_err(|e| format!("'{k}': {e}"))
    };
    let last = price("last")?;
    let last_size = size("last_size")?;
    Ok(Tick {
        feed: 0,
        symbol,
        ts,
        bid: price("bid")?,
        ask: price("ask")?,
        last,
        bid_size: size("bid_size")?,
        ask_size: size("ask_size")?,
        last_size,
        volume: size("volume")?,
        // A line that sets `last` and a positive `last_size` is a trade (PROTOCOL.md).
        trade: Trade::of_fields(last, last_size),
        status: get("status")
            .map(fields::status)
            .transpose()
            .map(Option::flatten)
            .map_err(|e| format!("'status': {e}"))?,
    })
}

/// Appends `tick` as one line (with its newline). Prices are written as the decimal strings they are.
///
/// Trades are kept exactly: a line that sets `last` and a positive `last_size` is a trade when read
/// back (`parse_line`), so a tick's trade is written as those two fields, and a tick that is not a
/// trade never writes a positive `last_size` beside `last` (the last trade's size is unchanged by
/// it). A recorded session replayed then prints the same trades and builds the same bars.
pub fn write_line(out: &mut String, tick: &Tick) {
    let (last, last_size) = match tick.trade {
        Some(t) => (Some(t.price), Some(t.size)),
        None if tick.last.is_some() => (tick.last, tick.last_size.filter(|&n| n == 0)),
        None => (None, tick.last_size),
    };
    out.push_str("{\"ts\":");
    out.push_str(itoa::Buffer::new().format(tick.ts));
    out.push_str(",\"symbol\":");
    push_json_str(out, &tick.symbol);
    for (key, price) in [("bid", tick.bid), ("ask", tick.ask), ("last", last)] {
        if let Some(p) = price {
            out.push_str(",\"");
            out.push_str(key);
            out.push_str("\":\"");
            out.push_str(&p.to_string());
            out.push('"');
        }
    }
    for (key, n) in [
        ("bid_size", tick.bid_size),
        ("ask_size", tick.ask_size),
        ("last_size", last_size),
        ("volume", tick.volume),
    ] {
        if let Some(n) = n {
            out.push_str(",\"");
            out.push_str(key);
            out.push_str("\":");
            out.push_str(itoa::Buffer::new().format(n));
        }
    }
    if let Some(status) = tick.status {
        out.push_str(",\"status\":\"");
        out.push_str(status.as_str());
        out.push('"');
    }
    out.push_str("}\n");
}

fn is_gzip(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

/// Opens a recorded feed for reading, decompressing `.gz`.
pub fn open(path: &Path) -> io::Result<Box<dyn BufRead + Send>> {
    let file = File::open(path)?;
    Ok(if is_gzip(path) {
        Box::new(BufReader::with_capacity(
            64 * 1024,
            MultiGzDecoder::new(BufReader::new(file)),
        ))
    } else {
        Box::new(BufReader::with_capacity(64 * 1024, file))
    })
}

/// A recorded feed being written; `finish` flushes it (and writes the gzip trailer).
pub enum RecordWriter {
    Plain(BufWriter<File>),
    Gzip(GzEncoder<BufWriter<File>>),
}

impl RecordWriter {
    /// Creates the file, compressing when the name ends in `.gz`.
    pub fn create(path: &Path) -> io::Result<RecordWriter> {
        let file = BufWriter::with_capacity(64 * 1024, File::create(path)?);
        Ok(if is_gzip(path) {
            RecordWriter::Gzip(GzEncoder::new(file, flate2::Compression::default()))
        } else {
            RecordWriter::Plain(file)
        })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            RecordWriter::Plain(w) => w.write_all(bytes),
            RecordWriter::Gzip(w) => w.write_all(bytes),
        }
    }

    /// Completes the file; a file not finished this way may lack its gzip trailer.
    pub fn finish(self) -> io::Result<()> {
        match self {
            RecordWriter::Plain(mut w) => w.flush(),
            RecordWriter::Gzip(w) => w.finish()?.flush(),
        }
    }
}

/// One item of a recorded file, in order.
pub enum Line {
    Tick(Tick),
    /// A line that is not a valid tick: its 1-based number and why.
    Bad {
        line: u64,
        reason: String,
    },
    /// The file ends here because it cannot be read further (a truncated `.gz`, an I/O error).
    Broken {
        line: u64,
        reason: String,
    },
}

/// Reads a recorded file line by line. Bad lines and a broken tail are items, not errors, so that
/// the caller decides (skip and count, or fail at start).
pub struct Reader {
    input: Box<dyn BufRead + Send>,
    line_no: u64,
    buf: Vec<u8>,
    symbols: HashMap<String, Symbol>,
    done: bool,
}

impl Reader {
    pub fn open(path: &Path) -> io::Result<Reader> {
        Ok(Reader {
            input: open(path)?,
            line_no: 0,
            buf: Vec::with_capacity(256),
            symbols: HashMap::new(),
            done: false,
        })
    }
}

impl Reader {
    /// The 1-based number of the line the last item came from.
    pub fn line(&self) -> u64 {
        self.line_no
    }
}

impl Iterator for Reader {
    type Item = Line;

    fn next(&mut self) -> Option<Line> {
        loop {
            if self.done {
                return None;
            }
            self.buf.clear();
            // Read at most one byte past the limit, so a corrupt file without newlines stays bounded.
            let read = Read::take(&mut self.input, MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut self.buf);
            self.line_no += 1;
            let line = self.line_no;
            match read {
                Ok(0) => {
                    self.done = true;
                    return None;
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Line::Broken {
                        line,
                        reason: format!("the file cannot be read past here: {e}"),
                    });
                }
            }
            if self.buf.len() > MAX_LINE_BYTES && self.buf.last() != Some(&b'\n') {
                // Skip the rest of the over-long line.
                let mut rest = Vec::new();
                while Read::take(&mut self.input, MAX_LINE_BYTES as u64)
                    .read_until(b'\n', &mut rest)
                    .is_ok_and(|n| n > 0 && rest.last() != Some(&b'\n'))
                {
                    rest.clear();
                }
                return Some(Line::Bad {
                    line,
                    reason: format!("line longer than {MAX_LINE_BYTES} bytes"),
                });
            }
            let text = match std::str::from_utf8(&self.buf) {
                Ok(t) => t.trim_end_matches(['\n', '\r']),
                Err(_) => {
                    return Some(Line::Bad {
                        line,
                        reason: "not valid UTF-8".into(),
                    })
                }
            };
            if text.trim().is_empty() {
                continue; // blank lines are allowed (a trailing newline, hand-edited fixtures)
            }
            return Some(match parse_line(text, &mut self.symbols) {
                Ok(tick) => Line::Tick(tick),
                Err(reason) => Line::Bad { line, reason },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;
    use rust_decimal::Decimal;

    #[test]
    fn a_line_round_trips_byte_for_byte() {
        let line = r#"{"ts":1732200000123,"symbol":"AAPL","bid":"189.10","ask":"0.0001","last":"123456.789","bid_size":300,"ask_size":500,"last_size":100,"volume":1234567,"status":"halted"}"#;
        let tick = parse_line(line, &mut HashMap::new()).unwrap();
        assert_eq!(tick.bid, Some(Decimal::new(18910, 2)));
        assert_eq!(tick.status, Some(Status::Halted));
        let mut out = String::new();
        write_line(&mut out, &tick);
        assert_eq!(out, format!("{line}\n"));
    }

    #[test]
    fn trades_are_written_so_that_they_are_read_back_the_same() {
        let p = |s: &str| Some(Decimal::from_str_exact(s).unwrap());
        let base = Tick {
            symbol: "AAPL".into(),
            ts: 5,
            ..Tick::default()
        };
        let round_trip = |t: &Tick| {
            let mut out = String::new();
            write_line(&mut out, t);
            parse_line(out.trim_end(), &mut HashMap::new()).unwrap()
        };
        // A print: its price and size are the line's last and last_size.
        let print = Tick {
            last: p("10.10"),
            last_size: Some(100),
            trade: Some(Trade {
                price: p("10.10").unwrap(),
                size: 100,
            }),
            ..base.clone()
        };
        assert_eq!(round_trip(&print).trade, print.trade);
        // A poller's inferred print (size from volume) is written as what printed.
        let inferred = Tick {
            last: p("10.20"),
            last_size: Some(100),
            volume: Some(900),
            trade: Some(Trade {
                price: p("10.20").unwrap(),
                size: 250,
            }),
            ..base.clone()
        };
        assert_eq!(round_trip(&inferred).trade, inferred.trade);
        // A quote carrying last and last_size that is not a print (a poller's recovery answer)
        // is not read back as one; an opening quote's last_size 0 stays.
        let quote = Tick {
            bid: p("10.00"),
            last: p("10.10"),
            last_size: Some(100),
            ..base.clone()
        };
        let back = round_trip(&quote);
        assert_eq!(
            (back.trade, back.last, back.last_size),
            (None, p("10.10"), None)
        );
        let opening = Tick {
            last: p("10.10"),
            last_size: Some(0),
            ..base
        };
        let back = round_trip(&opening);
        assert_eq!((back.trade, back.last_size), (None, Some(0)));
    }

    #[test]
    fn bad_lines_say_why() {
        let mut s = HashMap::new();
        for (line, why) in [
            ("garbage", "not a JSON object"),
            (r#"{"symbol":"A"}"#, "missing 'ts'"),
            (r#"{"ts":1}"#, "missing 'symbol'"),
            (r#"{"ts":1,"symbol":"A","bid":"1.2.3"}"#, "'bid'"),
            (r#"{"ts":"x","symbol":"A"}"#, "ts"),
            (r#"{"ts":1,"symbol":"A","volume":1.5}"#, "'volume'"),
        ] {
            let e = parse_line(line, &mut s).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
        // Unknown fields are ignored; null is "not given".
        let t = parse_line(r#"{"ts":1,"symbol":"A","bid":null,"venue":"X"}"#, &mut s).unwrap();
        assert_eq!(t.bid, None);
    }
}
