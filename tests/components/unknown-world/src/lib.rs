//! A component of a world that is not a Chengis plugin world, for the runtime's tests.

#![allow(missing_docs, reason = "generated bindings")]

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        inline: "
            package test:other;
            world other {
                export hello: func() -> string;
            }
        ",
    });

    struct Other;

    impl Guest for Other {
        fn hello() -> String {
            "hello".into()
        }
    }

    export!(Other);
}
