//! HTTP-poll response mapping (`http_poll::map_response`): any body an upstream returns, under both
//! shapes. Never panics; every mapped symbol is upper-case.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quotegw::feed::http_poll::{map_response, ResponseConfig, Shape};

fn config(shape: Shape) -> ResponseConfig {
    ResponseConfig {
        shape,
        root: "data".into(),
        symbol: "s".into(),
        fields: [("bid", "b"), ("ask", "q.a"), ("volume", "v"), ("ts", "t"), ("status", "st")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    for shape in [Shape::Array, Shape::BySymbol] {
        if let Ok((quotes, _bad)) = map_response(data, &config(shape)) {
            for (symbol, _) in quotes {
                assert_eq!(symbol, symbol.to_uppercase());
            }
        }
    }
});
