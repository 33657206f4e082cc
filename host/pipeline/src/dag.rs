//! The job graph: `needs` edges, ordered with Kahn's algorithm, cycles named in order.

use indexmap::IndexMap;

/// A problem with the job graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DagError {
    /// A job needs a job that does not exist.
    UnknownNeed {
        /// The job with the bad `needs`.
        job: String,
        /// Index of the entry in its `needs`.
        index: usize,
        /// The unknown name.
        need: String,
        /// A close existing job id.
        suggestion: Option<String>,
    },
    /// The jobs form a cycle, listed in dependency order, the first repeated at the end.
    Cycle(Vec<String>),
}

/// Orders jobs so that every job comes after the jobs it needs (ties keep file order).
/// Unknown needs are reported and ignored for ordering; a cycle stops the ordering.
pub fn order(needs: &IndexMap<String, Vec<String>>) -> (Vec<String>, Vec<DagError>) {
    let mut errors = Vec::new();
    let mut indegree: IndexMap<&str, usize> = needs.keys().map(|k| (k.as_str(), 0)).collect();
    let mut dependents: IndexMap<&str, Vec<&str>> = IndexMap::new();
    for (job, list) in needs {
        for (i, need) in list.iter().enumerate() {
            if !needs.contains_key(need) {
                errors.push(DagError::UnknownNeed {
                    job: job.clone(),
                    index: i,
                    need: need.clone(),
                    suggestion: crate::diag::did_you_mean(need, needs.keys().map(String::as_str)).map(str::to_string),
                });
                continue;
            }
            if list[..i].contains(need) {
                continue;
            }
            *indegree.entry(job.as_str()).or_default() += 1;
            dependents.entry(need.as_str()).or_default().push(job.as_str());
        }
    }
    let mut ready: std::collections::VecDeque<&str> =
        indegree.iter().filter(|(_, d)| **d == 0).map(|(k, _)| *k).collect();
    let mut out = Vec::with_capacity(needs.len());
    while let Some(job) = ready.pop_front() {
        out.push(job.to_string());
        for dep in dependents.get(job).map(Vec::as_slice).unwrap_or_default() {
            if let Some(d) = indegree.get_mut(dep) {
                *d -= 1;
                if *d == 0 {
                    ready.push_back(dep);
                }
            }
        }
    }
    if out.len() < needs.len() {
        let remaining: Vec<&str> = indegree.iter().filter(|(_, d)| **d > 0).map(|(k, _)| *k).collect();
        errors.push(DagError::Cycle(find_cycle(needs, &remaining)));
    }
    (out, errors)
}

/// Walks `needs` backwards from the first remaining job until a job repeats; returns the
/// cycle in dependency order (`build -> test -> deploy -> build`).
fn find_cycle(needs: &IndexMap<String, Vec<String>>, remaining: &[&str]) -> Vec<String> {
    let Some(start) = remaining.first() else {
        return Vec::new();
    };
    let mut path: Vec<&str> = vec![start];
    let mut current = *start;
    loop {
        let next = needs.get(current).and_then(|list| list.iter().find(|n| remaining.contains(&n.as_str())));
        let Some(next) = next else { return Vec::new() };
        if let Some(at) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<String> = path[at..].iter().rev().map(|s| s.to_string()).collect();
            // Rotate so the cycle starts at the job declared first.
            let first = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, j)| needs.get_index_of(j.as_str()).unwrap_or(usize::MAX))
                .map_or(0, |(i, _)| i);
            cycle.rotate_left(first);
            let head = cycle[0].clone();
            cycle.push(head);
            return cycle;
        }
        path.push(next);
        current = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> IndexMap<String, Vec<String>> {
        edges.iter().map(|(j, n)| (j.to_string(), n.iter().map(|s| s.to_string()).collect())).collect()
    }

    #[test]
    fn orders_dependencies_first() {
        let g = graph(&[("deploy", &["test", "build"]), ("test", &["build"]), ("build", &[]), ("lint", &[])]);
        let (order, errors) = order(&g);
        assert!(errors.is_empty());
        assert_eq!(order, ["build", "lint", "test", "deploy"]);
    }

    #[test]
    fn names_the_cycle_in_order() {
        let g = graph(&[("build", &["deploy"]), ("test", &["build"]), ("deploy", &["test"]), ("other", &[])]);
        let (order, errors) = order(&g);
        assert_eq!(order, ["other"]);
        assert_eq!(errors, [DagError::Cycle(vec!["build".into(), "test".into(), "deploy".into(), "build".into()])]);
    }

    #[test]
    fn self_cycle() {
        let (_, errors) = order(&graph(&[("a", &["a"])]));
        assert_eq!(errors, [DagError::Cycle(vec!["a".into(), "a".into()])]);
    }

    #[test]
    fn unknown_need_has_suggestion() {
        let (_, errors) = order(&graph(&[("build", &[]), ("test", &["biuld"])]));
        assert_eq!(
            errors,
            [DagError::UnknownNeed {
                job: "test".into(),
                index: 0,
                need: "biuld".into(),
                suggestion: Some("build".into())
            }]
        );
    }
}
