//! Typed access to a plugin's configuration (`with:` over the server-side config), with
//! errors that name the key, what was expected and what was found.

use std::fmt::Display;
use std::str::FromStr;

use crate::types::{Diagnostic, Failure, Severity};

/// A plugin's configuration: keys and text values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

/// A configuration value that is missing or does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config key {:?}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Self {
        Failure {
            message: format!("invalid configuration: {error}"),
            diagnostics: vec![Diagnostic {
                severity: Severity::Error,
                code: "invalid-config".into(),
                message: error.message.clone(),
                field: Some(format!("with.{}", error.key)),
                help: None,
            }],
        }
    }
}

impl Config {
    /// A configuration of these pairs.
    pub fn new(entries: impl IntoIterator<Item = (String, String)>) -> Self {
        Config { entries: entries.into_iter().collect() }
    }

    /// The raw text of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every key and value.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// The value of `key` parsed as `T`; an error when it is missing or does not parse.
    pub fn required<T: FromStr>(&self, key: &str) -> Result<T, ConfigError>
    where
        T::Err: Display,
    {
        self.optional(key)?.ok_or_else(|| ConfigError { key: key.into(), message: "is required but not set".into() })
    }

    /// The value of `key` parsed as `T`, or `None` when it is not set.
    pub fn optional<T: FromStr>(&self, key: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: Display,
    {
        let Some(text) = self.get(key) else { return Ok(None) };
        text.trim().parse().map(Some).map_err(|e: T::Err| ConfigError {
            key: key.into(),
            message: format!("expected {}, got {text:?} ({e})", type_label::<T>()),
        })
    }

    /// The value of `key` parsed as `T`, or `default` when it is not set.
    pub fn or<T: FromStr>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: Display,
    {
        Ok(self.optional(key)?.unwrap_or(default))
    }
}

/// A readable name of the expected type: `a number`, `true or false`, `text`.
fn type_label<T>() -> &'static str {
    let name = std::any::type_name::<T>();
    match name {
        "bool" => "true or false",
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number of 0 or more",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        _ => name.rsplit("::").next().unwrap_or(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new([("retries".to_string(), "three".to_string()), ("verbose".to_string(), "true".to_string())])
    }

    #[test]
    fn errors_name_key_expectation_and_value() {
        let error = config().required::<u32>("retries").unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"config key "retries": expected a whole number of 0 or more, got "three" (invalid digit found in string)"#
        );
        let error = config().required::<String>("channel").unwrap_err();
        assert_eq!(error.to_string(), r#"config key "channel": is required but not set"#);
        let failure = Failure::from(error);
        assert_eq!(failure.diagnostics[0].field.as_deref(), Some("with.channel"));
    }

    #[test]
    fn values_parse() {
        assert!(config().required::<bool>("verbose").unwrap());
        assert_eq!(config().or("timeout", 30u64).unwrap(), 30);
        assert_eq!(config().optional::<String>("missing").unwrap(), None);
    }
}
