//! Recorded-feed lines (`recording::parse_line`): any line of a replayed file. Never panics, and
//! a line that parses round-trips: written back and parsed again, it is the same tick (prices
//! included, digit for digit).
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use quotegw::feed::recording::{parse_line, write_line};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let mut symbols = HashMap::new();
    if let Ok(tick) = parse_line(line, &mut symbols) {
        let mut out = String::new();
        write_line(&mut out, &tick);
        let again = parse_line(out.trim_end(), &mut symbols).expect("a written line parses");
        assert_eq!(tick, again, "round trip of {line:?} via {out:?}");
        for (a, b) in [(tick.bid, again.bid), (tick.ask, again.ask), (tick.last, again.last)] {
            assert_eq!(a.map(|d| d.to_string()), b.map(|d| d.to_string()));
        }
    }
});
