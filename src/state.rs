//! What every route and session entry point shares: built once by `app`, handed to each worker.

use std::sync::Arc;

use crate::access::LiveAccess;
use crate::feed::FeedHealth;
use crate::session::SessionShared;

/// What the routes need, shared by every worker.
pub struct AppState {
    pub sessions: Arc<SessionShared>,
    /// The access checks in force (replaced by a reload).
    pub access: Arc<LiveAccess>,
    /// Tickets issued by `POST /v1/ticket` and not yet used (kept across reloads: a ticket is
    /// checked against the settings in force when it is used).
    pub tickets: Arc<crate::access::Tickets>,
    /// (feed name, health) in `FeedId` order.
    pub feeds: Vec<(String, Arc<FeedHealth>)>,
    /// The feeds that learn their symbols as they run (a scale-out edge's, from its cache): until
    /// each has delivered, the gateway does not know what it serves, and refuses clients (503)
    /// rather than tell them a symbol it is about to load is unknown.
    pub learning: Vec<Arc<FeedHealth>>,
}
