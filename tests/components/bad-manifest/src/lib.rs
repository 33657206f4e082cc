//! A notifier whose `manifest` traps, for the runtime's containment tests.

use chengis_plugin_sdk::notifier::Event;
use chengis_plugin_sdk::{Failure, Host, Manifest, Notifier, export};

/// The notifier with the broken manifest.
pub struct BadManifest;

impl Notifier for BadManifest {
    fn manifest() -> Manifest {
        panic!("no manifest for you")
    }

    fn notify(_host: &dyn Host, _event: Event) -> Result<(), Failure> {
        Ok(())
    }
}

export!(BadManifest as notifier);
