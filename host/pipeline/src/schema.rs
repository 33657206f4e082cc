//! The JSON Schema of the pipeline format, generated from the model types.
//!
//! The derive covers the structure; the functions here describe the short forms the decoder
//! accepts (`needs: build`, `on: push`, scalars in `env`, `if: true`) so that editors agree
//! with the linter.

use crate::model::{Filters, Job, Pipeline, Schedule};
use schemars::{Schema, SchemaGenerator, json_schema};

/// The schema's `$id`.
pub const SCHEMA_ID: &str = "https://chengis.dev/schema/pipeline.schema.json";

/// The JSON Schema of a pipeline file, as pretty JSON with a trailing newline.
pub fn pipeline_schema_json() -> String {
    let mut schema = schemars::schema_for!(Pipeline);
    schema.insert("$id".into(), SCHEMA_ID.into());
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// A string, or a list of strings.
pub fn string_or_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}}
        ]
    })
}

/// A map of environment-like names to scalar values.
pub fn env_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {"type": ["string", "number", "boolean", "null"]}
    })
}

/// An `if:` condition: an expression (with or without `${{ }}`) or a boolean.
pub fn condition(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": ["string", "boolean"]})
}

/// A duration such as `90s`, `5m`, `1h30m`, or a number of seconds.
pub fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [
            {"type": "string", "pattern": "^(\\d+|(\\d+(ms|s|m|h|d))+|.*\\$\\{\\{.*\\}\\}.*)$"},
            {"type": "integer", "minimum": 1}
        ]
    })
}

/// An image pull policy.
pub fn pull_policy(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "enum": ["if-not-present", "always", "never"]})
}

/// A container network mode.
pub fn network(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "enum": ["bridge", "none"]})
}

/// The jobs map: job ids to jobs, at least one.
pub fn jobs(generator: &mut SchemaGenerator) -> Schema {
    let job = generator.subschema_for::<Job>();
    json_schema!({
        "type": "object",
        "minProperties": 1,
        "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_-]*$"},
        "additionalProperties": job
    })
}

/// `on:`: an event name, a list of them, or a map of events to their filters.
pub fn triggers(generator: &mut SchemaGenerator) -> Schema {
    let filters = generator.subschema_for::<Filters>();
    let schedule = generator.subschema_for::<Schedule>();
    let event = json_schema!({"enum": ["push", "pull_request", "tag", "manual"]});
    json_schema!({
        "anyOf": [
            event,
            {"type": "array", "items": event},
            {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "push": {"anyOf": [{"type": "null"}, filters]},
                    "pull_request": {"anyOf": [{"type": "null"}, filters]},
                    "tag": {"anyOf": [{"type": "null"}, filters]},
                    "schedule": {"type": "array", "minItems": 1, "items": schedule},
                    "manual": {"type": ["object", "null"], "additionalProperties": false}
                }
            }
        ]
    })
}

/// A matrix: axes with lists of scalar values, plus `exclude` and `include`.
pub fn matrix(_: &mut SchemaGenerator) -> Schema {
    let combo = json_schema!({
        "type": "object",
        "additionalProperties": {"type": ["string", "number", "boolean"]}
    });
    json_schema!({
        "type": "object",
        "properties": {
            "exclude": {"type": "array", "items": combo},
            "include": {"type": "array", "items": combo}
        },
        "additionalProperties": {
            "type": "array",
            "minItems": 1,
            "items": {"type": ["string", "number", "boolean"]}
        }
    })
}
