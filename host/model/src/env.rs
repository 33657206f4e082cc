//! Environments as ordered lists of variables: set one (replacing an earlier value), merge
//! another list in (later values win).

/// Sets `key` in an ordered environment, replacing an earlier value.
pub fn set_var(env: &mut Vec<(String, String)>, key: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key.to_string(), value)),
    }
}

/// Sets every variable of `extra` in `env` (later values win).
pub fn merge_vars(env: &mut Vec<(String, String)>, extra: &[(String, String)]) {
    for (k, v) in extra {
        set_var(env, k, v.clone());
    }
}
