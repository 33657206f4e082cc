//! Matrix expansion: the cartesian product of the axes, minus `exclude`, plus `include`, capped.

use crate::model::Matrix;
use indexmap::IndexMap;

/// The default cap on combinations of one job.
pub const DEFAULT_MAX_COMBINATIONS: usize = 25;

/// One combination of matrix values, in axis order.
pub type Combination = IndexMap<String, String>;

/// Why a matrix cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatrixError {
    /// More combinations than the cap.
    TooMany {
        /// How many combinations the matrix has.
        count: usize,
        /// The cap.
        max: usize,
    },
}

/// The result of expanding a matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expansion {
    /// The combinations, in order.
    pub combinations: Vec<Combination>,
    /// Indexes of `exclude` entries that matched no combination.
    pub unused_excludes: Vec<usize>,
}

fn matches(combo: &Combination, entry: &IndexMap<String, String>) -> bool {
    entry.iter().all(|(k, v)| combo.get(k) == Some(v))
}

/// Expands `m`. Each `include` entry that agrees with a combination on every original axis it
/// names extends that combination with its other keys; an entry that extends none is added as
/// a combination of its own. The count is checked before anything large is built.
pub fn expand(m: &Matrix, max: usize) -> Result<Expansion, MatrixError> {
    let product = m.axes.values().try_fold(1usize, |acc, v| acc.checked_mul(v.len())).unwrap_or(usize::MAX);
    if product > max.saturating_mul(4).max(max + m.exclude.len() * 64) {
        return Err(MatrixError::TooMany { count: product.saturating_add(m.include.len()), max });
    }
    let mut combos: Vec<Combination> = if m.axes.is_empty() { Vec::new() } else { vec![Combination::new()] };
    for (axis, values) in &m.axes {
        let mut next = Vec::with_capacity(combos.len() * values.len());
        for c in &combos {
            for v in values {
                let mut c = c.clone();
                c.insert(axis.clone(), v.clone());
                next.push(c);
            }
        }
        combos = next;
    }
    let mut unused_excludes = Vec::new();
    for (i, ex) in m.exclude.iter().enumerate() {
        let before = combos.len();
        combos.retain(|c| !matches(c, ex));
        if combos.len() == before {
            unused_excludes.push(i);
        }
    }
    let originals = combos.len();
    for inc in &m.include {
        let on_axes: IndexMap<String, String> =
            inc.iter().filter(|(k, _)| m.axes.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut extended = false;
        for c in combos.iter_mut().take(originals) {
            if matches(c, &on_axes)
                && inc.iter().all(|(k, v)| m.axes.contains_key(k) || c.get(k).is_none_or(|x| x == v))
            {
                for (k, v) in inc {
                    c.insert(k.clone(), v.clone());
                }
                extended = true;
            }
        }
        if !extended {
            combos.push(inc.clone());
        }
    }
    if combos.len() > max {
        return Err(MatrixError::TooMany { count: combos.len(), max });
    }
    Ok(Expansion { combinations: combos, unused_excludes })
}

/// The display suffix of a combination: `os=linux, rust=1.80`.
pub fn label(c: &Combination) -> String {
    c.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

/// The environment variables of a combination: `MATRIX_OS=linux`.
pub fn env_vars(c: &Combination) -> impl Iterator<Item = (String, String)> + '_ {
    c.iter().map(|(k, v)| (format!("MATRIX_{}", k.to_ascii_uppercase()), v.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(axes: &[(&str, &[&str])], exclude: &[&[(&str, &str)]], include: &[&[(&str, &str)]]) -> Matrix {
        let map = |e: &&[(&str, &str)]| e.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Matrix {
            axes: axes.iter().map(|(a, v)| (a.to_string(), v.iter().map(|s| s.to_string()).collect())).collect(),
            exclude: exclude.iter().map(map).collect(),
            include: include.iter().map(map).collect(),
        }
    }

    #[test]
    fn product_exclude_include() {
        let m = matrix(
            &[("os", &["linux", "mac"]), ("rust", &["1.80", "1.95"])],
            &[&[("os", "mac"), ("rust", "1.80")]],
            &[&[("os", "linux"), ("rust", "1.95"), ("extra", "yes")], &[("os", "windows"), ("rust", "1.95")]],
        );
        let e = expand(&m, 25).unwrap();
        let labels: Vec<String> = e.combinations.iter().map(label).collect();
        assert_eq!(
            labels,
            ["os=linux, rust=1.80", "os=linux, rust=1.95, extra=yes", "os=mac, rust=1.95", "os=windows, rust=1.95"]
        );
        assert!(e.unused_excludes.is_empty());
    }

    #[test]
    fn unused_exclude_reported() {
        let m = matrix(&[("os", &["linux"])], &[&[("os", "bsd")]], &[]);
        assert_eq!(expand(&m, 25).unwrap().unused_excludes, [0]);
    }

    #[test]
    fn cap_reports_count() {
        let m = matrix(&[("a", &["1", "2", "3", "4", "5", "6"]), ("b", &["1", "2", "3", "4", "5"])], &[], &[]);
        assert_eq!(expand(&m, 25), Err(MatrixError::TooMany { count: 30, max: 25 }));
        assert_eq!(expand(&m, 30).unwrap().combinations.len(), 30);
    }

    #[test]
    fn huge_matrix_refused_without_building() {
        let values: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        let mut m = Matrix::default();
        for axis in ["a", "b", "c", "d", "e", "f"] {
            m.axes.insert(axis.into(), values.clone());
        }
        assert!(matches!(expand(&m, 25), Err(MatrixError::TooMany { count, .. }) if count == 1_000_000_000_000));
    }

    #[test]
    fn env_var_names() {
        let c: Combination = [("os".to_string(), "linux".to_string())].into_iter().collect();
        assert_eq!(env_vars(&c).collect::<Vec<_>>(), [("MATRIX_OS".to_string(), "linux".to_string())]);
    }
}
