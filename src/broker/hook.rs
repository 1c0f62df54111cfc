//! The broker's view of the cluster: the one trait through which the cluster routes
//! messages, moves sessions and keeps their copies, set once at start.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::handover::{Claim, ClaimOrder, Released};
use super::{CopiesWait, Forwarded, Message, RouteGate, replica};

/// The broker's view of the cluster, set once at start: it is told of every publish that
/// entered at this node and of every route change, and forwards to the nodes that want them.
pub trait ClusterHook: Send + Sync {
    /// Sends `message` to the remote nodes whose routes match it (every node, for a retained
    /// message). `local_groups` are the matching shared groups with members here; the cluster
    /// gives each group one node and says which groups this node should deliver to.
    /// Each local group comes with whether a member of it is connected here.
    fn forward(&self, message: &Arc<Message>, local_groups: Vec<(Arc<str>, bool)>) -> Forwarded;
    /// A filter (or `$share/{group}/{filter}` key) gained its first subscriber here, or lost
    /// its last; the cluster reads the router's current state (`Router::has_route`).
    fn route_changed(&self, key: &str);
    /// Whether shared group `key` has a member connected here may have changed; the cluster
    /// reads the router's current state (`Router::group_connected`) and advertises it.
    fn group_presence_changed(&self, key: &str);
    /// Sends `message` to one node where a member of shared group `key` is connected and
    /// whose link delivers now, for that group alone; false when there is no such node.
    fn hand_to_group(&self, message: &Arc<Message>, key: &str) -> bool;
    /// What a SUBACK for subscriptions to `keys` (just made) waits for: every live peer's
    /// acknowledgement of the route pushes queued up to now. None: nothing to wait for, or
    /// `cluster.subscribe_ack = "local"`.
    fn route_gate(&self, keys: &[&str]) -> Option<RouteGate>;
    /// As `route_gate` whatever `cluster.subscribe_ack` says: what a session moving here
    /// waits for before its old node lets go of it.
    fn handover_gate(&self, keys: &[&str]) -> Option<RouteGate>;
    /// A connection for `client_id` (of verified `identity`, None when anonymous) is
    /// attaching here: every live node closes its connection for that id and says what
    /// session it holds (see `handover`), unless the session belongs to another identity.
    fn claim<'a>(
        &'a self,
        client_id: &'a Arc<str>,
        clean_start: bool,
        identity: Option<&'a str>,
    ) -> BoxFuture<'a, Claim>;
    /// Asks `node` for the session it holds for `client_id`, for the claim `order`.
    fn release<'a>(
        &'a self,
        node: &'a Arc<str>,
        client_id: &'a str,
        order: &'a ClaimOrder,
    ) -> BoxFuture<'a, Released>;
    /// Resolves once this node has processed what every live peer sent it before now.
    fn drain<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, ()>;
    /// The claim's connection is attached: false if a newer claim came meanwhile.
    fn settle_claim(&self, client_id: &str, order: &ClaimOrder, identity: Option<&str>) -> bool;
    /// Whether a connection may attach now (`cluster.allow_connect_during_partition`).
    fn admits_connect(&self) -> bool;
    /// `cluster.session_replicas`.
    fn replica_count(&self) -> usize;
    /// The nodes a session of `client_id` held here is replicated to now (with their runs).
    fn replica_nodes(&self, client_id: &str) -> Vec<replica::ReplicaNode>;
    /// The live members, with their runs: replicas are placed again when it changes.
    fn live_runs(&self) -> Vec<replica::ReplicaNode>;
    /// Sends a change of the session of `client_id` to its replicas on `nodes`: false if
    /// it could not be queued for one of them.
    fn replicate(
        &self,
        nodes: &[replica::ReplicaNode],
        client_id: &str,
        op: replica::ReplicaOp,
    ) -> bool;
    /// A replica missed a change: the next reconciliation sends whole sessions again.
    fn note_stale_replica(&self);
    /// Whether a replica missed a change since the last call.
    fn take_stale_replicas(&self) -> bool;
    /// What an acknowledgement of a change made now to sessions here waits for: the
    /// confirmation of the nodes that keep their copies (None: no copies anywhere).
    fn copies_wait(&self) -> Option<CopiesWait>;
}

/// A future the cluster hands the broker.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
