use super::*;

fn response(shape: Shape, root: &str) -> ResponseConfig {
    ResponseConfig {
        shape,
        root: root.into(),
        symbol: "sym".into(),
        fields: [("bid", "b"), ("ask", "quote.a"), ("volume", "v")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn maps_arrays_and_objects_with_exact_prices() {
    let body = br#"{"data":[{"sym":"aapl","b":189.1234567890123456789012345,"quote":{"a":"189.20"},"v":100},
                           {"sym":"MSFT","b":"bad"}]}"#;
    let (quotes, bad) = map_response(body, &response(Shape::Array, "data")).unwrap();
    assert_eq!(quotes.len(), 1);
    assert_eq!(quotes[0].0, "AAPL");
    assert_eq!(
        quotes[0].1.bid.unwrap().to_string(),
        "189.1234567890123456789012345"
    );
    assert_eq!(quotes[0].1.ask.unwrap().to_string(), "189.20");
    assert_eq!(quotes[0].1.volume, Some(100));
    assert_eq!(bad.len(), 1);
    assert!(bad[0].starts_with("MSFT: bid"), "{bad:?}");

    let body = br#"{"AAPL":{"b":"1.5"}}"#;
    let (quotes, _) = map_response(body, &response(Shape::BySymbol, "")).unwrap();
    assert_eq!(quotes[0].1.bid.unwrap().to_string(), "1.5");
    assert!(map_response(b"<html>", &response(Shape::Array, "")).is_err());
    assert!(map_response(br#"{"AAPL":1}"#, &response(Shape::Array, "")).is_err());
}

#[test]
fn only_changed_fields_become_a_tick() {
    let mut sent = Tick::default();
    let t = Tick {
        bid: Some("1.10".parse().unwrap()),
        volume: Some(5),
        ts: 1,
        ..Tick::default()
    };
    let c = changes(&sent, &t).unwrap();
    remember(&mut sent, &c);
    let same_but_later = Tick { ts: 2, ..t.clone() };
    assert!(changes(&sent, &same_but_later).is_none());
    let rescaled = Tick {
        bid: Some("1.1".parse().unwrap()),
        ..t
    };
    assert_eq!(
        changes(&sent, &rescaled).unwrap().bid.unwrap().to_string(),
        "1.1"
    );
}

#[test]
fn redirects_stay_on_the_upstreams_host_and_never_leave_https() {
    let url = |s: &str| reqwest::Url::parse(s).unwrap();
    let ok = |a, b| redirect_allowed(&url(a), &url(b)).is_ok();
    assert!(ok("http://q.example/v1?s=A", "http://q.example/v2?s=A"));
    assert!(ok("https://q.example/v1", "https://q.example:443/v2"));
    assert!(
        ok("http://q.example/v1", "https://q.example/v1"),
        "the usual upgrade"
    );
    assert!(!ok("http://q.example:8080/v1", "https://q.example:8443/v1"));
    assert!(!ok("https://q.example/v1", "http://q.example/v1"));
    assert!(!ok("http://q.example/v1", "http://evil.example/v1"));
    assert!(!ok("http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"));
}

#[test]
fn backoff_grows_is_capped_and_jittered() {
    let feed = HttpPollFeed::new(HttpPollConfig {
        name: "t".into(),
        base: String::new(),
        url: "http://127.0.0.1:1/?s={symbols}".into(),
        symbols: vec!["A".into()],
        batch_size: 1,
        interval_ms: 100,
        timeout_ms: 100,
        stale_after_ms: 1000,
        backoff_max_ms: 5000,
        headers: HashMap::new(),
        response: response(Shape::Array, ""),
    })
    .unwrap();
    let mut rng = Pcg32::seed_from_u64(1);
    for failures in 1..30 {
        let d = feed.backoff(failures, &mut rng).as_millis() as u64;
        let cap = (100u64 << failures.min(20)).min(5000);
        assert!(d >= cap / 2 && d <= cap, "{failures}: {d}");
    }
}
