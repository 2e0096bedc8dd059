//! What every route and session entry point shares: built once by `app`, handed to each worker.

use std::sync::Arc;

use crate::access::Access;
use crate::feed::FeedHealth;
use crate::session::SessionShared;

/// What the routes need, shared by every worker.
pub struct AppState {
    pub sessions: Arc<SessionShared>,
    pub access: Arc<Access>,
    /// (feed name, health) in `FeedId` order.
    pub feeds: Vec<(String, Arc<FeedHealth>)>,
}
