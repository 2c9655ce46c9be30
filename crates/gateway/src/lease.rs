//! A lease: the node and the stack units a request holds while the node serves it.
//!
//! Owns: how a dispatch ends. A lease ends exactly once, in one of three ways:
//! - [`Lease::billed`]: its units went into a bill (which settles what was used and returns the
//!   rest in the same transaction), and the router hears the node's outcome;
//! - [`Lease::release`]: nothing is billed; its units go back and the router hears the outcome;
//! - dropped without either (the client left while a whole answer was read, the drain limit at
//!   shutdown, a bill the store could not take): its units go back and the router hears that
//!   the request was cancelled, on a task of its own.
//!
//! Does not own: the bill itself (`settle`), choosing the node (`router`), holding the stack
//! (`proxy::hold_stack`).

use std::sync::Arc;
use std::time::Instant;

use sortition_types::StackId;

use crate::router::{NodeView, Outcome};
use crate::state::GatewayState;

/// What a request holds while a node serves it: the node, the stack and the units reserved on
/// it, and when it was sent.
pub struct Lease {
    pub node: NodeView,
    pub stack: StackId,
    pub reserved: u64,
    pub started: Instant,
    /// `Some` until the lease ends.
    open: Option<Arc<GatewayState>>,
}

impl Lease {
    /// A lease on `reserved` units of `stack`, reserved already, for a request sent to `node`
    /// (counted as dispatched by the router) at `started`.
    pub(crate) fn new(
        g: &Arc<GatewayState>,
        node: NodeView,
        stack: StackId,
        reserved: u64,
        started: Instant,
    ) -> Lease {
        Lease {
            node,
            stack,
            reserved,
            started,
            open: Some(g.clone()),
        }
    }

    /// Ends the lease unbilled: the units go back and the router hears `outcome`.
    pub async fn release(mut self, outcome: Outcome) {
        if let Some(g) = self.open.take() {
            give_back(&g, self.stack, self.reserved).await;
            g.finish(self.node.id, outcome).await;
        }
    }

    /// Ends the lease whose units are in a bill now (recorded, or handed to the background
    /// settler): the router hears `outcome`; the bill settles the units.
    pub async fn billed(mut self, outcome: Outcome) {
        if let Some(g) = self.open.take() {
            g.finish(self.node.id, outcome).await;
        }
    }

    /// Ends the lease for another try on the same node (its stack turned out to be spent): the
    /// units go back; the router hears nothing, since the request is still on this node.
    pub async fn retry(mut self) {
        if let Some(g) = self.open.take() {
            give_back(&g, self.stack, self.reserved).await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(g) = self.open.take() else {
            return;
        };
        let (stack, units, node) = (self.stack, self.reserved, self.node.id);
        g.metrics.inc("leases_dropped_total", "", 1);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    give_back(&g, stack, units).await;
                    g.finish(node, Outcome::Cancelled).await;
                });
            }
            // No runtime to run the release on (the process is ending): the units stay
            // reserved in the store until the stack expires; the node only claims what its
            // receipts cover.
            Err(_) => {
                tracing::warn!(%stack, units, "a lease was dropped outside the runtime; its units stay reserved until the stack expires");
            }
        }
    }
}

/// Returns `units` reserved on `stack`; a store that cannot take it now is logged (the units
/// stay reserved until the stack expires or the node refuses it as spent).
async fn give_back(g: &GatewayState, stack: StackId, units: u64) {
    if let Err(e) = g.store.release(stack, units).await {
        tracing::error!(%stack, error = %e, "could not release stack units");
    }
}
