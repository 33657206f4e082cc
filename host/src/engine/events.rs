//! What a run reports while it goes (the `chengis-model` crate's events, under the name the
//! engine's code uses).

pub use chengis_model::events::*;
