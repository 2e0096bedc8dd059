use super::*;

fn limits() -> ClientLimits {
    ClientLimits {
        max_per_ip: 2,
        max_per_token: 2,
        ipv6_prefix_len: 64,
        auth_failures: 3,
        auth_failure_window: Duration::from_secs(60),
        max_pending_per_ip: 2,
    }
}

fn access(config: AccessConfig) -> Arc<Access> {
    Arc::new(Access::new(&config, limits(), &TiersConfig::default()).unwrap())
}

#[test]
fn api_keys_match_exactly() {
    let a = access(AccessConfig {
        auth: AuthMode::ApiKey,
        api_keys: vec![
            Secret::new("0123456789abcdef").into(),
            Secret::new("fedcba9876543210").into(),
        ],
        ..AccessConfig::default()
    });
    assert!(a.authorize(Some("fedcba9876543210")).is_ok());
    assert_eq!(
        a.authorize(Some("fedcba987654321")).unwrap_err(),
        Refusal::Unauthorized
    );
    assert_eq!(a.authorize(None).unwrap_err(), Refusal::Unauthorized);
    assert!(Access::new(
        &AccessConfig {
            auth: AuthMode::ApiKey,
            api_keys: vec![Secret::new("short").into()],
            ..AccessConfig::default()
        },
        limits(),
        &TiersConfig::default()
    )
    .is_err());
    // The same key twice (say, once with a tier and once without) is refused, naming the entries.
    let twice = Access::new(
        &AccessConfig {
            auth: AuthMode::ApiKey,
            api_keys: vec![
                Secret::new("0123456789abcdef").into(),
                Secret::new("fedcba9876543210").into(),
                Secret::new("0123456789abcdef").into(),
            ],
            ..AccessConfig::default()
        },
        limits(),
        &TiersConfig::default(),
    );
    let e = twice.err().expect("refused").to_string();
    assert_eq!(
        e,
        "access.api_keys: entries 1 and 3 are the same key: list each key once"
    );
}

#[test]
fn origins_and_per_ip_limits() {
    let a = access(AccessConfig {
        allowed_origins: vec!["https://trade.example.com".into()],
        ..AccessConfig::default()
    });
    assert!(a.check_origin(Some("https://trade.example.com")).is_ok());
    assert!(a.check_origin(None).is_ok());
    assert_eq!(
        a.check_origin(Some("https://evil.example")),
        Err(Refusal::Origin)
    );
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let g1 = a.admit_ip(ip).unwrap();
    let _g2 = a.admit_ip(ip).unwrap();
    assert_eq!(a.admit_ip(ip).err(), Some(Refusal::PerIpLimit));
    drop(g1);
    assert!(a.admit_ip(ip).is_ok());
}

#[test]
fn grants_match_symbols_and_patterns() {
    let g = Grant {
        expires_at: None,
        symbols: Some(vec!["AAPL".into(), "NV*".into()]),
        credential: None,
        tier: Tier::Realtime,
    };
    assert!(g.allows("AAPL") && g.allows("NVDA") && !g.allows("MSFT") && !g.allows("AAP"));
    assert!(Grant::default().allows("ANY"));
}

#[test]
fn tokens_come_from_the_query_or_a_bearer_header() {
    assert_eq!(
        token_of("a=1&token=abc%2Bd", None).as_deref(),
        Some("abc+d")
    );
    assert_eq!(token_of("", Some("Bearer xyz")).as_deref(), Some("xyz"));
    assert_eq!(token_of("foo=bar", None), None);
}

#[test]
fn ipv6_clients_count_per_prefix_and_credentials_per_key() {
    let a = access(AccessConfig {
        auth: AuthMode::ApiKey,
        api_keys: vec![
            Secret::new("0123456789abcdef").into(),
            Secret::new("fedcba9876543210").into(),
        ],
        ..AccessConfig::default()
    });
    let key = |s: &str| a.client_key(s.parse().unwrap());
    assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
    assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
    let _g1 = a.admit_ip(key("2001:db8::1")).unwrap();
    let _g2 = a.admit_ip(key("2001:db8::2")).unwrap();
    assert_eq!(
        a.admit_ip(key("2001:db8::3")).err(),
        Some(Refusal::PerIpLimit)
    );
    assert!(a.admit_ip(key("2001:db8:0:1::3")).is_ok(), "another /64");

    let grant = a.authorize(Some("fedcba9876543210")).unwrap();
    let key1 = Credential::ApiKey(super::digest(b"fedcba9876543210"));
    assert_eq!(grant.credential, Some(key1.clone()));
    let t1 = a.admit_token(key1.clone()).unwrap();
    let _t2 = a.admit_token(key1.clone()).unwrap();
    assert_eq!(
        a.admit_token(key1.clone()).err(),
        Some(Refusal::PerTokenLimit)
    );
    let key0 = a
        .authorize(Some("0123456789abcdef"))
        .unwrap()
        .credential
        .unwrap();
    assert!(a.admit_token(key0).is_ok(), "another key");
    drop(t1);
    assert!(a.admit_token(key1).is_ok());
}

/// Failures are counted per address and credential: a credential that failed too often
/// from an address is refused unverified for the window, while another credential from the
/// same address (a good token behind the same proxy) and the same one from elsewhere are not.
#[test]
fn failed_authentications_throttle_that_credential_from_that_address_for_the_window() {
    let a = access(AccessConfig::default());
    let ip: IpAddr = "10.0.0.9".parse().unwrap();
    let (bad, good) = (
        a.fingerprint(Some("bad-token")),
        a.fingerprint(Some("good")),
    );
    assert_ne!(bad, good);
    assert_ne!(
        a.fingerprint(None),
        a.fingerprint(Some("")),
        "none is not empty"
    );
    let t0 = Instant::now();
    for _ in 0..3 {
        assert!(a.check_auth_throttle(ip, bad, t0).is_ok());
        a.auth_failed(ip, bad, t0);
    }
    assert_eq!(
        a.check_auth_throttle(ip, bad, t0),
        Err(Refusal::AuthThrottled)
    );
    assert!(
        a.check_auth_throttle(ip, good, t0).is_ok(),
        "another credential"
    );
    assert!(a
        .check_auth_throttle("10.0.0.10".parse().unwrap(), bad, t0)
        .is_ok());
    let later = t0 + Duration::from_secs(61);
    assert!(
        a.check_auth_throttle(ip, bad, later).is_ok(),
        "the window passed"
    );
    a.auth_failed(ip, bad, later);
    assert!(
        a.check_auth_throttle(ip, bad, later).is_ok(),
        "counting starts again"
    );
}

/// Only a trusted proxy's `X-Forwarded-For` is read, and only its right-most hops: what a
/// client writes into the header itself never becomes its address.
#[test]
fn the_client_address_comes_from_a_trusted_proxy_only() {
    let a = access(AccessConfig {
        trusted_proxies: vec!["127.0.0.1".into(), "10.0.0.0/8".into()],
        ..AccessConfig::default()
    });
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let client = |peer: &str, xff: &[&str]| a.client_ip(Some(ip(peer)), xff.iter().copied());
    assert_eq!(
        client("127.0.0.1", &["203.0.113.7"]),
        Some(ip("203.0.113.7"))
    );
    // A forged hop left of the one the proxy appended is never reached.
    assert_eq!(
        client("127.0.0.1", &["6.6.6.6, 203.0.113.7"]),
        Some(ip("203.0.113.7"))
    );
    // Through two trusted proxies, over two headers, with ports.
    assert_eq!(
        client("10.1.2.3", &["198.51.100.2:5555", "10.9.9.9"]),
        Some(ip("198.51.100.2"))
    );
    assert_eq!(
        client("::ffff:127.0.0.1", &["[2001:db8::1]:443"]),
        Some(ip("2001:db8::1"))
    );
    // From an untrusted peer the header changes nothing.
    assert_eq!(client("192.0.2.1", &["203.0.113.7"]), Some(ip("192.0.2.1")));
    // No header, garbage on the right, or only proxies: the nearest address known.
    assert_eq!(client("127.0.0.1", &[]), Some(ip("127.0.0.1")));
    assert_eq!(
        client("127.0.0.1", &["203.0.113.7, bogus"]),
        Some(ip("127.0.0.1"))
    );
    assert_eq!(
        client("127.0.0.1", &["10.0.0.1, 10.0.0.2"]),
        Some(ip("10.0.0.1"))
    );
    let e = Access::new(
        &AccessConfig {
            trusted_proxies: vec!["10.0.0.0/33".into()],
            ..AccessConfig::default()
        },
        limits(),
        &TiersConfig::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("trusted_proxies"), "{e}");
}

/// The bearer scheme is case-insensitive (RFC 7235), followed by spaces or tabs.
#[test]
fn a_bearer_token_is_read_whatever_the_scheme_case() {
    for header in ["Bearer abc", "bearer abc", "BEARER  abc", "Bearer\tabc"] {
        assert_eq!(
            token_of("", Some(header)).as_deref(),
            Some("abc"),
            "{header}"
        );
    }
    assert_eq!(token_of("token=q", Some("Basic abc")).as_deref(), Some("q"));
    assert_eq!(token_of("", Some("Bearerabc")), None);
}

#[test]
fn secrets_are_redacted() {
    assert!(!format!("{:?}", Secret::new("sk-live-1")).contains("sk-live"));
}

#[test]
fn a_token_is_taken_from_the_query_once_decoded_and_never_when_given_twice() {
    assert_eq!(token_of("token=a%2Bb", None).as_deref(), Some("a+b"));
    assert_eq!(token_of("x=1&token=k", None).as_deref(), Some("k"));
    assert_eq!(token_of("token=good&token=bad", None), None);
    assert_eq!(token_of("token=good&token=", None), None);
    // The header wins, whatever the query holds.
    assert_eq!(
        token_of("token=a&token=b", Some("Bearer h")).as_deref(),
        Some("h")
    );
}

/// Where a credential is looked for: the header, a `quotegw.bearer.` WebSocket protocol, a ticket
/// (streams only), then `?token=`; one given twice is none.
#[test]
fn a_credential_is_found_header_first_then_protocol_ticket_and_query() {
    use super::{offers_ws_protocol, presented, Presented};
    let token = |t: &str| Presented::Token(t.to_string());
    let both = ["quotegw.v1, quotegw.bearer.k-1"];
    assert_eq!(
        presented("token=q", Some("Bearer h"), &both, true),
        token("h")
    );
    assert_eq!(
        presented("token=q&ticket=t", None, &both, true),
        token("k-1")
    );
    assert_eq!(
        presented("token=q", None, &["quotegw.v1", "quotegw.bearer.k-2"], true),
        token("k-2"),
        "the protocol as separate header lines"
    );
    assert_eq!(
        presented("token=q&ticket=t", None, &[], true),
        Presented::Ticket("t".into())
    );
    assert_eq!(
        presented("token=q&ticket=t", None, &[], false),
        token("q"),
        "no tickets off streams"
    );
    assert_eq!(
        presented("ticket=a&ticket=b", None, &[], true),
        Presented::Nothing
    );
    assert_eq!(
        presented(
            "token=q",
            None,
            &["quotegw.bearer.a, quotegw.bearer.b"],
            true
        ),
        token("q"),
        "two bearer protocols are none"
    );
    assert_eq!(
        presented("", None, &["quotegw.bearer."], true),
        Presented::Nothing
    );
    assert!(offers_ws_protocol(&both));
    assert!(!offers_ws_protocol(&[
        "quotegw.v2, quotegw.bearer.quotegw.v1"
    ]));
}
