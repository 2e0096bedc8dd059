use super::*;

#[test]
fn the_embedded_default_is_valid_and_matches_the_issue() {
    let c = Config::parse(DEFAULT_CONFIG, "default").unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080");
    assert_eq!(c.limits.max_symbols_per_connection, 1000);
    assert_eq!(c.limits.max_frame_bytes, 65_536);
    assert_eq!((c.limits.ops_per_second, c.limits.ops_burst), (50, 100));
    assert_eq!(c.limits.slow_consumer_timeout_ms, 10_000);
    assert_eq!(c.limits.idle_timeout_ms, 45_000);
    assert_eq!(c.limits.min_frame_interval_ms, 0);
    assert_eq!(
        c.limits.min_frame_interval_ms,
        LimitsConfig::default().min_frame_interval_ms,
        "a config without [limits] gets the same batching window as the documented default"
    );
    assert_eq!(
        c.limits.fanout_busy_percent,
        LimitsConfig::default().fanout_busy_percent,
    );
    assert_eq!(c.feeds.len(), 1);
}

fn err(text: &str) -> String {
    Config::parse(text, "my.toml").unwrap_err().to_string()
}

#[test]
fn errors_name_file_key_and_reason() {
    let e = err("[limits]\nmax_frame_bytes = \"big\"\n");
    assert!(
        e.starts_with("my.toml: line 2: key 'limits.max_frame_bytes':"),
        "{e}"
    );
    let e = err("lisen = \"x\"\n");
    assert!(e.contains("unknown field") && e.contains("lisen"), "{e}");
    let e = err("[limits]\nops_per_second = 0\n");
    assert_eq!(
        e,
        "my.toml: key 'limits.ops_per_second': must be greater than 0"
    );
    let e = err("[limits]\nmin_frame_interval_ms = 5000\n");
    assert_eq!(
        e,
        "my.toml: key 'limits.min_frame_interval_ms': must be between 0 (no batching window) and 1000"
    );
    assert!(Config::parse("[limits]\nmin_frame_interval_ms = 0\n", "my.toml").is_ok());
    for busy in [0, 9, 101] {
        let e = err(&format!("[limits]\nfanout_busy_percent = {busy}\n"));
        assert_eq!(
            e,
            "my.toml: key 'limits.fanout_busy_percent': must be between 10 and 100 (100: batches grow only when the worker is saturated)"
        );
    }
    assert!(Config::parse("[limits]\nfanout_busy_percent = 100\n", "my.toml").is_ok());
    let e = err("[[feeds]]\nkind = \"simulated\"\nname = \"a\"\nticks_per_second = 0\n");
    assert!(e.contains("key 'feeds[0].ticks_per_second'"), "{e}");
    let e = err("[[feeds]]\nkind = \"carrier-pigeon\"\nname = \"a\"\n");
    assert!(
        e.contains("feeds[0]") && e.contains("carrier-pigeon"),
        "{e}"
    );
    let e = err("listen = \"nonsense\"\n");
    assert!(e.contains("key 'listen'"), "{e}");
    let e = err("x = [\n");
    assert!(e.starts_with("my.toml: "), "{e}");
    let e = err("[limits]\nipv6_prefix_len = 0\n");
    assert!(e.contains("key 'limits.ipv6_prefix_len'"), "{e}");
    let e = err("[limits]\nsend_buffer_bytes = 100\n");
    assert!(e.contains("key 'limits.send_buffer_bytes'"), "{e}");
}

/// Regression (issue 25): `ping_interval_ms` and `idle_timeout_ms` had no upper bound, and an
/// absurd value overflowed `Instant + Duration` in every connection. Every duration in the
/// config has a stated range, refused at start.
#[test]
fn every_duration_has_a_stated_range() {
    let huge = u64::MAX;
    for key in [
        "limits.ping_interval_ms",
        "limits.idle_timeout_ms",
        "limits.slow_consumer_timeout_ms",
        "limits.handshake_timeout_ms",
        "limits.auth_failure_window_ms",
    ] {
        let (table, name) = key.split_once('.').unwrap();
        let e = err(&format!("[{table}]\n{name} = {huge}\n"));
        assert_eq!(
            e,
            format!("my.toml: key '{key}': must be between 1 and 86400000 (milliseconds)")
        );
        assert!(Config::parse(&format!("[{table}]\n{name} = 86400000\n"), "ok").is_ok());
    }
    let poll = "url = \"http://h/q?s={symbols}\"\nsymbols = [\"A\"]\n[feeds.response]\nshape = \"array\"\nfields = { bid = \"b\" }\n";
    let feeds = [
        ("http_poll", "interval_ms", poll),
        ("http_poll", "timeout_ms", poll),
        ("http_poll", "stale_after_ms", poll),
        ("http_poll", "backoff_max_ms", poll),
        ("replay", "start_delay_ms", "path = \"x.ndjson\"\n"),
        (
            "nats",
            "stale_after_ms",
            "nats_url = \"nats://127.0.0.1:4222\"\n",
        ),
    ];
    for (kind, key, rest) in feeds {
        let text = format!("[[feeds]]\nkind = \"{kind}\"\nname = \"f\"\n{key} = {huge}\n{rest}");
        let e = err(&text);
        assert!(
            e.starts_with(&format!("my.toml: key 'feeds[0].{key}': must be between")),
            "{kind}: {e}"
        );
    }
    let e = err("[publish]\nnats_url = \"nats://127.0.0.1:4222\"\ncache_wait_ms = 99999999999\n");
    assert!(
        e.contains("key 'publish.cache_wait_ms': must be between"),
        "{e}"
    );
    // An unknown key at the start of its line is reported on that line (found from outside: the
    // line before was named).
    let e = err("# a comment\n[publish]\nnats_url = \"nats://127.0.0.1:4222\"\nlease_mss = 1\n");
    assert!(e.contains("line 4:") && e.contains("lease_mss"), "{e}");
    let e = err("[limits]\n\nbogus = 1\n");
    assert!(e.contains("line 3:") && e.contains("bogus"), "{e}");
    // A leader that heartbeats less often than it renews its lease (found from outside).
    let e = err("[publish]\nnats_url = \"nats://127.0.0.1:4222\"\nheartbeat_ms = 60000\n");
    assert!(
        e.contains("key 'publish.heartbeat_ms': must be below lease_ms (3000)"),
        "{e}"
    );
    let e = err("[access]\njwt_leeway_secs = 99999999999\n");
    assert!(e.contains("key 'access.jwt_leeway_secs'"), "{e}");
}

/// Regression (issue 25): a NATS server list that the client cannot parse was a feed failing
/// after start (logged once) with an empty gateway left up; it is a start-up error naming the
/// file and key. A well-formed list, spaces and all, is fine.
#[test]
fn a_nats_server_list_is_checked_at_start() {
    let edge =
        |url: &str| format!("[[feeds]]\nkind = \"nats\"\nname = \"bus\"\nnats_url = \"{url}\"\n");
    let ingest = |url: &str| format!("[publish]\nnats_url = \"{url}\"\n");
    let ok = "nats://127.0.0.1:4222, nats://user:pw@10.0.0.6:4222,10.0.0.7";
    assert!(Config::parse(&edge(ok), "e.toml").is_ok());
    assert!(Config::parse(&ingest(ok), "i.toml").is_ok());
    let e = err(&edge("nats://127.0.0.1:4222,nats://u:secret@h:port"));
    assert!(
        e.starts_with(
            "my.toml: key 'feeds[0].nats_url': 'nats://…@h:port': NATS server URL is invalid"
        ),
        "{e}"
    );
    assert!(!e.contains("secret"), "{e}");
    let e = err(&ingest("nats://127.0.0.1:4222,"));
    assert!(
        e.starts_with("my.toml: key 'publish.nats_url': an empty server"),
        "{e}"
    );
    let e = err(&edge("http://127.0.0.1:4222"));
    assert!(e.contains("key 'feeds[0].nats_url'"), "{e}");
    // Credentials without a scheme are never echoed either, and what the client would take
    // but never reach is refused (found from outside: a host called "nats", port 0).
    let e = err(&ingest("nats://127.0.0.1:4222,u:s3cretPW@127.0.0.1:99999"));
    assert!(
        e.contains("'…@127.0.0.1:99999'") && !e.contains("s3cret"),
        "{e}"
    );
    for bad in [
        "nats:/u:s3cretPW@127.0.0.1:4222",
        "nats//u:s3cretPW@127.0.0.1:4222",
        "nats://127.0.0.1:0",
        "nats://127.0.0.1:4222/x",
        "nats://127.0.0.1:4222?x=1",
    ] {
        let e = err(&edge(bad));
        assert!(
            e.starts_with("my.toml: key 'feeds[0].nats_url':") && !e.contains("s3cret"),
            "{bad}: {e}"
        );
    }
}

/// Found from outside: every mistake inside a `[[feeds]]` table was reported at `line 1: key
/// 'feeds[0]'` (or another feed's first line); it names the key and its line.
#[test]
fn a_mistake_inside_a_feed_names_its_key_and_line() {
    let text = "listen = \"127.0.0.1:0\"\n\
                [[feeds]]\nkind = \"simulated\"\nname = \"a\"\n\
                [[feeds]]\nkind = \"replay\"\nname = \"b\"\npath = \"x.ndjson\"\n\
                start_delay_ms = \"x\"\n";
    assert_eq!(
        Config::parse(text, "my.toml").unwrap_err().to_string(),
        "my.toml: line 9: key 'feeds[1].start_delay_ms': invalid type: a string, expected u64"
    );
    let e = err("[[feeds]]\nkind = \"simulated\"\nname = \"a\"\nticks_per_secnd = 5\n");
    assert!(
        e.starts_with(
            "my.toml: line 4: key 'feeds[0].ticks_per_secnd': unknown field `ticks_per_secnd`"
        ),
        "{e}"
    );
    let e = err("[[feeds]]\nkind = \"simulated\"\nname = \"a\"\nticks_per_second = -1\n");
    assert!(
        e.starts_with("my.toml: line 4: key 'feeds[0].ticks_per_second': "),
        "{e}"
    );
}

#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = Config::load(&path) {
                panic!("{}: {e}", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "{checked}");
}

#[test]
fn protected_mode_refuses_anonymous_access_off_loopback() {
    let e = err("listen = \"0.0.0.0:8080\"\n");
    assert!(
        e.starts_with("my.toml: key 'access.auth': is \"off\" while listen = 0.0.0.0:8080"),
        "{e}"
    );
    assert!(e.contains("allow_anonymous = true"), "{e}");
    for ok in [
        "listen = \"0.0.0.0:8080\"\n[access]\nallow_anonymous = true\n",
        "listen = \"0.0.0.0:8080\"\n[access]\nauth = \"api_key\"\napi_keys = [\"0123456789abcdef\"]\n",
        "listen = \"127.0.0.1:8080\"\n",
        "listen = \"[::1]:8080\"\n",
        "listen = \"localhost:8080\"\n",
    ] {
        assert!(Config::parse(ok, "ok.toml").is_ok(), "{ok}");
    }
}

/// An allowed Origin that no browser would ever send is a config error, not a silent lockout.
#[test]
fn allowed_origins_must_be_origins_as_browsers_send_them() {
    let with = |o: &str| format!("[access]\nallowed_origins = [\"https://ok.example\", {o:?}]\n");
    for good in [
        "https://trade.example.com",
        "http://localhost:3000",
        "https://[::1]:8443",
    ] {
        assert!(Config::parse(&with(good), "my.toml").is_ok(), "{good}");
    }
    for (bad, why) in [
        ("https://trade.example.com/", "trailing slash"),
        ("https://trade.example.com/app", "path"),
        ("trade.example.com", "no scheme"),
        ("https://*.example.com", "wildcard"),
        ("https://Trade.example.com", "capitals"),
        ("HTTPS://trade.example.com", "scheme"),
        ("https://trade.example.com:443", "default port"),
        ("null", "sandboxed"),
        ("https://", "no host"),
    ] {
        let e = err(&with(bad));
        assert!(
            e.starts_with("my.toml: key 'access.allowed_origins': ") && e.contains(why),
            "{bad}: {e}"
        );
    }
}

/// A value given in the wrong shape is never printed: it may be a secret.
#[test]
fn a_mistyped_secret_is_not_printed_in_the_error() {
    let e = err("[access]\nauth = \"api_key\"\napi_keys = \"sk-live-0123456789abcdef\"\n");
    assert_eq!(
        e,
        "my.toml: line 3: key 'access.api_keys': invalid type: a string, expected a sequence"
    );
    let e =
        err("[access]\napi_keys = [{ key = \"sk-live-0123456789abcdef\", tier = \"delyed\" }]\n");
    assert!(
        !e.contains("sk-live") && e.contains("tier = \"realtime\""),
        "{e}"
    );
    let e = err("[access]\nallowed_origins = \"a \\\"quoted\\\" sk-live\"\n");
    assert!(!e.contains("sk-live") && e.contains("a string"), "{e}");
}

/// Credentials the auth mode would ignore are an error, not a gateway that quietly serves anyone.
#[test]
fn credentials_the_auth_mode_ignores_are_refused() {
    for (text, says) in [
        ("[access]\napi_keys = [\"0123456789abcdef\"]\n", "is \"off\", but api_keys are set"),
        (
            "[access]\nauth = \"api_key\"\napi_keys = [\"0123456789abcdef\"]\njwt_hs256_secret = \"s\"\n",
            "is \"api_key\", but a JWT key is set",
        ),
        (
            "[access]\nauth = \"jwt\"\njwt_hs256_secret = \"s\"\napi_keys = [\"0123456789abcdef\"]\n",
            "is \"jwt\", but api_keys are set",
        ),
    ] {
        let e = err(text);
        assert!(e.starts_with("my.toml: key 'access.auth': ") && e.contains(says), "{e}");
    }
}

/// Found from outside: more values that never reach the log, and more Origins and keys that could
/// never match.
#[test]
fn more_shapes_that_leak_or_never_match_are_refused() {
    let e = err(
        "[[feeds]]\nkind = \"http_poll\"\nname = \"p\"\nbase = \"http://127.0.0.1:1\"\n\
                 url = \"/q\"\nheaders = \"X-Api-Key: SUPERSECRETVALUE\"\n",
    );
    assert!(!e.contains("SUPERSECRET") && e.contains("a string"), "{e}");
    let e = err("[access]\nallowed_origins = [\"https://user:SECRET@a.example.com\"]\n");
    assert!(!e.contains("SECRET") && e.contains("entry 1"), "{e}");
    let e = err("[access]\nallowed_origins = [\"https://bücher.example\"]\n");
    assert!(e.contains("punycode"), "{e}");
    let e = err("[access]\nauth = \"api_key\"\napi_keys = [\"0123456789abcdef \"]\n");
    assert!(e.contains("entry 1 begins or ends with whitespace"), "{e}");
    for (metrics, listen) in [
        ("0.0.0.0:37199", "127.0.0.1:37199"),
        ("127.0.0.1:37199", "0.0.0.0:37199"),
        ("[::ffff:127.0.0.1]:37199", "127.0.0.1:37199"),
    ] {
        let e = err(&format!(
            "listen = \"{listen}\"\nmetrics_listen = \"{metrics}\"\n"
        ));
        assert!(e.contains("is listen's address"), "{metrics} {listen}: {e}");
    }
    assert!(Config::parse(
        "listen = \"127.0.0.1:37199\"\nmetrics_listen = \"127.0.0.2:37199\"\n",
        "my.toml"
    )
    .is_ok());
}
