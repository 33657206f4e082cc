//! The `bindgen!` expansion of the four `chengis:plugin@0.1.0` worlds. The host interfaces
//! (`types`, `log`, `config`, `secrets`) are generated once, with the step-executor world, and
//! shared by the other worlds through `with:`, so that one `Host` implementation serves all.

/// Bindings of the `step-executor` world, which also own the shared interfaces.
pub mod step_executor {
    wasmtime::component::bindgen!({
        path: "../../wit/chengis-plugin@0.1.0",
        world: "step-executor",
        imports: {
            "chengis:plugin/secrets.get": trappable,
            "chengis:plugin/sandbox.exec": trappable,
            "chengis:plugin/outputs.set-output": trappable,
            "chengis:plugin/outputs.set-env": trappable,
            "chengis:plugin/outputs.report-tests": trappable,
        },
    });
}

/// Bindings of the `notifier` world.
pub mod notifier {
    wasmtime::component::bindgen!({
        path: "../../wit/chengis-plugin@0.1.0",
        world: "notifier",
        with: {
            "chengis:plugin/types": crate::bindings::step_executor::chengis::plugin::types,
            "chengis:plugin/log": crate::bindings::step_executor::chengis::plugin::log,
            "chengis:plugin/config": crate::bindings::step_executor::chengis::plugin::config,
            "chengis:plugin/secrets": crate::bindings::step_executor::chengis::plugin::secrets,
        },
    });
}

/// Bindings of the `scm-status` world.
pub mod scm_status {
    wasmtime::component::bindgen!({
        path: "../../wit/chengis-plugin@0.1.0",
        world: "scm-status",
        with: {
            "chengis:plugin/types": crate::bindings::step_executor::chengis::plugin::types,
            "chengis:plugin/log": crate::bindings::step_executor::chengis::plugin::log,
            "chengis:plugin/config": crate::bindings::step_executor::chengis::plugin::config,
            "chengis:plugin/secrets": crate::bindings::step_executor::chengis::plugin::secrets,
        },
    });
}

/// Bindings of the `policy` world.
pub mod policy {
    wasmtime::component::bindgen!({
        path: "../../wit/chengis-plugin@0.1.0",
        world: "policy",
        with: {
            "chengis:plugin/types": crate::bindings::step_executor::chengis::plugin::types,
            "chengis:plugin/log": crate::bindings::step_executor::chengis::plugin::log,
            "chengis:plugin/config": crate::bindings::step_executor::chengis::plugin::config,
        },
    });
}

pub use step_executor::chengis::plugin::{config, log, outputs, sandbox, secrets, types};
