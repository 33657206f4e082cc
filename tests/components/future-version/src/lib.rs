//! A notifier built against `chengis:plugin@9.0.0`, a version this host does not know, for the
//! runtime's tests: it must be refused with a message naming both versions.

#![allow(missing_docs, reason = "generated bindings")]

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        inline: "
            package chengis:plugin@9.0.0;
            interface log {
                log: func(message: string);
            }
            world notifier {
                import log;
                export manifest: func() -> string;
                export notify: func(event: string);
            }
        ",
    });

    struct Future;

    impl Guest for Future {
        fn manifest() -> String {
            "future".into()
        }

        fn notify(event: String) {
            chengis::plugin::log::log(&event);
        }
    }

    export!(Future);
}
