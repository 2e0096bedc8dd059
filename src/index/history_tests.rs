use super::*;

/// The delayed tier's memory, as docs/protocol.md states it: one entry per symbol per
/// granularity bucket in which it changed, kept for the delay.
#[test]
fn history_keeps_the_latest_state_per_bucket_for_the_delay() {
    assert_eq!(
        std::mem::size_of::<HistoryEntry>(),
        152,
        "docs/protocol.md quotes this"
    );
    let history = HistoryConfig {
        keep_ms: 1000,
        granularity_ms: 100,
    };
    let mut st = SymbolState::default();
    for ms in (0..3000).step_by(10) {
        st.seq += 1;
        st.remember(history, 1_000_000 + ms);
    }
    // 3 s of ticks every 10 ms: one entry per 100 ms bucket, for the last second and a bucket.
    assert!(st.history.len() <= 13, "{}", st.history.len());
    assert_eq!(st.history.back().unwrap().seq, 300);
    let w: Vec<i64> = st.history.iter().map(|e| e.bucket_ms).collect();
    assert!(w.windows(2).all(|p| p[1] - p[0] == 100), "{w:?}");
}
