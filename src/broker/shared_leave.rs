//! A shared-subscription member leaving: the deliveries it did not receive (queued, and QoS 1
//! ones in flight) go to another connected member of their group, one on this node if there
//! is one, else one at another node through the cluster; what no connected member can take
//! stays with the leaving session.

use std::sync::Arc;

use super::{Broker, Delivery, Metrics, Session};

impl Broker {
    /// Hands shared-subscription deliveries `session` did not receive to other members of
    /// their groups, here or at another node; gives back those no connected member could take.
    pub(super) fn reassign_shared(
        &self,
        session: &Session,
        deliveries: Vec<Delivery>,
    ) -> Vec<Delivery> {
        let mut kept = Vec::new();
        let mut handed = Vec::new();
        for d in deliveries {
            // Only a stored delivery needs its record removed once handed on.
            let stored = (d.store_seq != 0).then(|| d.clone());
            match self
                .router
                .reassign_shared(&session.client_id, d, &self.metrics)
            {
                Some(back) if !self.hand_to_other_node(&back) => kept.push(back),
                _ => handed.extend(stored),
            }
        }
        if !handed.is_empty() {
            let st = session.state.lock();
            for d in &handed {
                st.finished(d);
            }
        }
        kept
    }

    /// Sends a shared delivery no member here could take to a connected member at another
    /// node (see `ClusterHook::hand_to_group`), counted; false when none can take it now.
    fn hand_to_other_node(&self, delivery: &Delivery) -> bool {
        let (Some(cluster), Some(key)) = (self.cluster.get(), &delivery.shared_group) else {
            return false;
        };
        // A delivery, not a retained write: the other node must not store it again.
        let mut message = delivery.message.clone();
        if message.retain {
            Arc::make_mut(&mut message).retain = false;
        }
        let handed = cluster.hand_to_group(&message, key);
        if handed {
            Metrics::add(&self.metrics.shared_handed_to_node, 1);
        }
        handed
    }
}
