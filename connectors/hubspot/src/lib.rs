//! The HubSpot target (being written).
use leadsync_core::{BuildContext, BuildError, Connector};
use std::sync::Arc;

pub fn build(_ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>, BuildError> {
    Err(BuildError::new("kind", "the hubspot connector is not built yet"))
}
