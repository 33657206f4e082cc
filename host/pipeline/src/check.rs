//! Semantic checks over the decoded model: filters, cron, expressions, substitutions, the job
//! graph, matrices and references between jobs and steps. Every problem becomes a diagnostic.

use crate::dag::{self, DagError};
use crate::decode::{Decoded, child, index};
use crate::diag::{Diagnostics, did_you_mean};
use crate::matrix::{self, MatrixError};
use crate::model::{Filters, Job, Pipeline, Step};
use crate::{expr, subst};
use indexmap::IndexMap;

/// Options of the linter.
#[derive(Debug, Clone)]
pub struct LintOptions {
    /// Most combinations a matrix may expand to.
    pub max_matrix: usize,
    /// Largest pipeline file accepted, in bytes.
    pub max_bytes: usize,
    /// Most jobs a pipeline may plan, matrix combinations counted one by one.
    pub max_jobs: usize,
}

impl Default for LintOptions {
    fn default() -> Self {
        LintOptions {
            max_matrix: matrix::DEFAULT_MAX_COMBINATIONS,
            max_bytes: crate::DEFAULT_MAX_BYTES,
            max_jobs: DEFAULT_MAX_JOBS,
        }
    }
}

/// The built-in cap on the jobs of one pipeline (after matrix expansion): a pipeline of
/// thousands of jobs holds an agent for minutes and floods the queue.
pub const DEFAULT_MAX_JOBS: usize = 256;

struct Checker<'a> {
    decoded: &'a Decoded,
    src: &'a str,
    diags: &'a mut Diagnostics,
    max_matrix: usize,
    /// The jobs the pipeline plans so far (a matrix job counts its combinations).
    planned_jobs: usize,
}

/// Runs every semantic check; returns the job ids in dependency order when the graph is sound.
pub fn check(decoded: &Decoded, src: &str, opts: &LintOptions, diags: &mut Diagnostics) -> Vec<String> {
    let mut c = Checker { decoded, src, diags, max_matrix: opts.max_matrix, planned_jobs: 0 };
    let p: &Pipeline = &decoded.pipeline;
    if let Some(on) = &p.on {
        for (name, f) in [("push", &on.push), ("pull_request", &on.pull_request), ("tag", &on.tag)] {
            if let Some(f) = f {
                c.filters(f, &child("on", name));
            }
        }
        for (i, s) in on.schedule.iter().enumerate() {
            c.cron(&s.cron, &child(&index("on.schedule", i), "cron"));
        }
    }
    for (k, v) in &p.env {
        c.value(v, &child("env", k), &[]);
    }
    let params: Vec<String> = p.params.keys().cloned().collect();
    if let Some(cc) = &p.concurrency {
        c.concurrency_group(&cc.group, &params);
    }
    for (id, job) in &p.jobs {
        c.job(id, job, &params);
    }
    c.job_count(opts.max_jobs);
    if let Some(post) = &p.post {
        for (name, steps) in
            [("always", &post.always), ("on-success", &post.on_success), ("on-failure", &post.on_failure)]
        {
            c.steps(steps, &child("post", name), &[], &[], &params);
        }
    }
    for (i, n) in p.notify.iter().enumerate() {
        for (k, v) in &n.with {
            c.value(v, &child(&child(&index("notify", i), "with"), k), &[]);
        }
    }
    let needs: IndexMap<String, Vec<String>> = p.jobs.iter().map(|(k, j)| (k.clone(), j.needs.clone())).collect();
    let (order, errors) = dag::order(&needs);
    for e in &errors {
        match e {
            DagError::UnknownNeed { job, index: i, need, suggestion } => {
                let path = index(&child(&child("jobs", job), "needs"), *i);
                let path =
                    if c.decoded.spans.node(&path).is_some() { path } else { child(&child("jobs", job), "needs") };
                let pos = c.decoded.spans.pos(&path);
                let d = c.diags.error(
                    "unknown-need",
                    pos,
                    &path,
                    format!("job `{job}` needs `{need}`, which is not a job of this pipeline"),
                );
                match suggestion {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => d.help(format!("jobs: {}", p.jobs.keys().cloned().collect::<Vec<_>>().join(", "))),
                };
            }
            DagError::Cycle(cycle) => {
                let first = cycle.first().cloned().unwrap_or_default();
                let path = child(&child("jobs", &first), "needs");
                let pos = c.decoded.spans.pos(&path);
                c.diags
                    .error(
                        "needs-cycle",
                        pos,
                        &path,
                        format!("the jobs depend on each other in a cycle: {}", cycle.join(" -> ")),
                    )
                    .help("remove one of these `needs` so that the jobs can run in some order");
            }
        }
    }
    if errors.is_empty() { order } else { Vec::new() }
}

/// The contexts `concurrency.group` may read (those known when a build is planned).
pub const CONCURRENCY_CONTEXTS: &[&str] = &["params", "git"];

impl Checker<'_> {
    fn pos(&self, path: &str, offset: Option<(&str, usize)>) -> crate::diag::Pos {
        match (self.decoded.spans.node(path), offset) {
            (Some(node), Some((value, off))) => crate::decode::pos_in(self.src, node, value, off),
            _ => self.decoded.spans.pos(path),
        }
    }

    fn filters(&mut self, f: &Filters, path: &str) {
        for (key, list) in [
            ("branches", &f.branches),
            ("branches-ignore", &f.branches_ignore),
            ("tags", &f.tags),
            ("tags-ignore", &f.tags_ignore),
            ("paths", &f.paths),
            ("paths-ignore", &f.paths_ignore),
        ] {
            for (i, pattern) in list.iter().enumerate() {
                // `!pattern` deselects; the pattern after it is checked like any other.
                let pattern = pattern.strip_prefix('!').unwrap_or(pattern);
                let p = index(&child(path, key), i);
                let p = if self.decoded.spans.node(&p).is_some() { p } else { child(path, key) };
                if let Some(re) = pattern.strip_prefix("re:") {
                    if let Err(e) = regex::Regex::new(re) {
                        let pos = self.pos(&p, None);
                        self.diags
                            .error(
                                "invalid-regex",
                                pos,
                                &p,
                                format!("invalid regular expression `{re}`: {}", first_line(&e.to_string())),
                            )
                            .help("patterns starting with `re:` are regular expressions; without it they are globs");
                    }
                } else if let Err(e) = globset::GlobBuilder::new(pattern).literal_separator(true).build() {
                    let pos = self.pos(&p, None);
                    self.diags.error("invalid-glob", pos, &p, format!("invalid glob `{pattern}`: {}", e.kind())).help(
                        "globs use `*`, `**`, `?`, `[abc]` and `{a,b}`; start with `re:` for a regular expression",
                    );
                }
            }
        }
    }

    fn cron(&mut self, cron: &str, path: &str) {
        let fields: Vec<&str> = cron.split_whitespace().collect();
        let ranges =
            [(0, 59, "minute"), (0, 23, "hour"), (1, 31, "day of month"), (1, 12, "month"), (0, 7, "day of week")];
        let problem = if fields.len() != 5 {
            Some(format!(
                "a cron expression has 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            ))
        } else {
            fields
                .iter()
                .zip(ranges)
                .find_map(|(f, (lo, hi, name))| cron_field(f, lo, hi).err().map(|e| format!("{name} field `{f}`: {e}")))
        };
        if let Some(msg) = problem {
            let pos = self.pos(path, None);
            self.diags
                .error("invalid-cron", pos, path, format!("invalid cron `{cron}`: {msg}"))
                .help("example: `30 3 * * 1-5` runs at 03:30 UTC on weekdays");
        }
    }

    /// Checks a non-shell value: `${{ }}` expressions and `${VAR}` substitutions.
    fn value(&mut self, v: &str, path: &str, scope: &[Scope<'_>]) {
        match expr::parse_template(v) {
            Ok(t) => {
                for e in t.check() {
                    self.expr_error(path, v, e.offset, &e.message, e.help.as_deref());
                }
                for part in &t.parts {
                    if let expr::TemplatePart::Expr { expr, offset, .. } = part {
                        self.references(expr, path, v, *offset, scope);
                    }
                }
            }
            Err(e) => self.expr_error(path, v, e.offset, &e.message, e.help.as_deref()),
        }
        for e in subst::check_syntax(v) {
            let pos = self.pos(path, Some((v, e.offset())));
            self.diags.error("substitution-syntax", pos, path, e.to_string());
        }
    }

    /// Checks `concurrency.group`: decided when the build is planned, so its expressions may
    /// read `params` and `git` only.
    fn concurrency_group(&mut self, group: &str, params: &[String]) {
        self.value(group, "concurrency.group", &[Scope::Params(params), Scope::Planning]);
    }

    /// Checks an `if:`; the whole text is an expression, `${{ }}` around it is optional.
    fn condition(&mut self, cond: &str, path: &str, scope: &[Scope<'_>]) {
        let trimmed = cond.trim();
        if trimmed.starts_with("${{") && trimmed.ends_with("}}") && trimmed.matches("${{").count() == 1 {
            return self.value(cond, path, scope);
        }
        let lead = cond.len() - cond.trim_start().len();
        match expr::parse(cond) {
            Ok(e) => {
                for err in e.check() {
                    self.expr_error(path, cond, err.offset, &err.message, err.help.as_deref());
                }
                self.references(&e, path, cond, 0, scope);
            }
            Err(err) => self.expr_error(path, cond, err.offset.max(lead), &err.message, err.help.as_deref()),
        }
    }

    fn expr_error(&mut self, path: &str, value: &str, offset: usize, message: &str, help: Option<&str>) {
        let pos = self.pos(path, Some((value, offset)));
        let code = if message.contains("unknown context") {
            "unknown-context"
        } else if message.contains("unknown function") {
            "unknown-function"
        } else {
            "expression"
        };
        let d = self.diags.error(code, pos, path, message.to_string());
        if let Some(h) = help {
            d.help(h);
        }
    }

    /// Checks that `needs.X`, `matrix.X`, `steps.X` and `params.X` name something that exists.
    fn references(&mut self, e: &expr::Expr, path: &str, value: &str, offset: usize, scope: &[Scope<'_>]) {
        for (ctx, segs) in e.contexts() {
            if scope.iter().any(|s| matches!(s, Scope::Planning)) && !CONCURRENCY_CONTEXTS.contains(&ctx.as_str()) {
                let at = value[offset..].find(ctx.as_str()).map_or(offset, |i| offset + i);
                let pos = self.pos(path, Some((value, at)));
                self.diags
                    .error(
                        "concurrency-context",
                        pos,
                        path,
                        format!("`{ctx}` is not known when the build is planned, so `{path}` cannot use it"),
                    )
                    .help("use `params` and `git` (for example `${{ git.branch }}`)");
                continue;
            }
            let Some(first) = segs.first() else { continue };
            for s in scope {
                let (name, known, what) = match s {
                    Scope::Needs(n) => ("needs", *n, "job listed in `needs`"),
                    Scope::Matrix(m) => ("matrix", *m, "matrix key of this job"),
                    Scope::Steps(st) => ("steps", *st, "step id before this step"),
                    Scope::Params(p) => ("params", *p, "declared parameter"),
                    Scope::Planning => continue,
                };
                if ctx != name || known.iter().any(|k| k == first) {
                    continue;
                }
                let at = value[offset..].find(first.as_str()).map_or(offset, |i| offset + i);
                let pos = self.pos(path, Some((value, at)));
                let d =
                    self.diags.error("unknown-reference", pos, path, format!("`{ctx}.{first}` does not name a {what}"));
                match did_you_mean(first, known.iter().map(String::as_str)) {
                    Some(sug) => d.help(format!("did you mean `{ctx}.{sug}`?")),
                    None if known.is_empty() => d.help(format!("there is no {what}")),
                    None => d.help(format!("valid: {}", known.join(", "))),
                };
            }
        }
    }

    /// Reports a pipeline that plans more than `max` jobs, at its `jobs:` key.
    fn job_count(&mut self, max: usize) {
        let count = self.planned_jobs;
        if count <= max {
            return;
        }
        // The `jobs:` key itself, not the first job under it.
        let key = self.decoded.spans.node("").and_then(|root| match &root.kind {
            crate::yaml::NodeKind::Map(entries) => {
                entries.iter().find(|(k, _)| k.as_scalar() == Some("jobs")).map(|(k, _)| k.pos)
            }
            _ => None,
        });
        let pos = key.unwrap_or_else(|| self.decoded.spans.pos("jobs"));
        self.diags
            .error(
                "too-many-jobs",
                pos,
                "jobs",
                format!("the pipeline plans {count} jobs (matrix combinations counted), more than the limit of {max}"),
            )
            .help(
                "merge jobs, shrink matrices, or split the pipeline; the server's limit is `chengis serve --max-jobs`",
            );
    }

    fn job(&mut self, id: &str, job: &Job, params: &[String]) {
        let path = child("jobs", id);
        let mut matrix_keys: Vec<String> = Vec::new();
        // A job plans once, or once per matrix combination (at least once, as the planner does).
        let mut planned = 1usize;
        if let Some(strategy) = &job.strategy {
            let mpath = child(&child(&path, "strategy"), "matrix");
            for combo in strategy.matrix.include.iter() {
                matrix_keys.extend(combo.keys().cloned());
            }
            matrix_keys.extend(strategy.matrix.axes.keys().cloned());
            match matrix::expand(&strategy.matrix, self.max_matrix) {
                Ok(exp) => {
                    planned = exp.combinations.len().max(1);
                    for i in exp.unused_excludes {
                        let ep = index(&child(&mpath, "exclude"), i);
                        let pos = self.pos(&ep, None);
                        self.diags.warning(
                            "unused-exclude",
                            pos,
                            &ep,
                            "this `exclude` entry matches no combination of the matrix",
                        );
                    }
                }
                Err(MatrixError::TooMany { count, max }) => {
                    planned = count.max(1);
                    let pos = self.pos(&mpath, None);
                    self.diags
                        .error(
                            "matrix-too-large",
                            pos,
                            &mpath,
                            format!("the matrix expands to {count} combinations, more than the limit of {max}"),
                        )
                        .help("remove values or add `exclude` entries, or raise the limit with `--max-matrix`");
                }
            }
        }
        self.planned_jobs = self.planned_jobs.saturating_add(planned);
        let scope = [Scope::Needs(&job.needs), Scope::Matrix(&matrix_keys), Scope::Params(params)];
        if let Some(cond) = &job.condition {
            self.condition(cond, &child(&path, "if"), &scope);
        }
        for (k, v) in &job.env {
            self.value(v, &child(&child(&path, "env"), k), &scope);
        }
        if let Some(image) = &job.image {
            self.value(image, &child(&path, "image"), &scope);
        }
        if job.network.as_deref() == Some("none") && !job.services.is_empty() {
            let np = child(&path, "network");
            let pos = self.pos(&np, None);
            self.diags
                .error("network-none-services", pos, &np, "a job with `network: none` cannot reach its `services`")
                .help("remove `network: none` or the services");
        }
        for (name, svc) in &job.services {
            let sp = child(&child(&path, "services"), name);
            self.value(&svc.image, &child(&sp, "image"), &scope);
            for (k, v) in &svc.env {
                self.value(v, &child(&child(&sp, "env"), k), &scope);
            }
        }
        for (i, c) in job.cache.iter().enumerate() {
            let cp = index(&child(&path, "cache"), i);
            self.value(&c.key, &child(&cp, "key"), &scope);
            for (j, r) in c.restore_keys.iter().enumerate() {
                self.value(r, &index(&child(&cp, "restore-keys"), j), &scope);
            }
            for (j, r) in c.paths.iter().enumerate() {
                let pp = index(&child(&cp, "paths"), j);
                self.value(r, &pp, &scope);
                self.workspace_path(r, &pp, "cache");
            }
        }
        for (i, a) in job.artifacts.iter().enumerate() {
            let ap = index(&child(&path, "artifacts"), i);
            for (j, r) in a.paths.iter().enumerate() {
                let pp = index(&child(&ap, "paths"), j);
                self.value(r, &pp, &scope);
                self.workspace_path(r, &pp, "artifact");
            }
            let name = a.name.as_deref().unwrap_or(id);
            if job.artifacts[..i].iter().any(|b| b.name.as_deref().unwrap_or(id) == name) {
                let np = if a.name.is_some() { child(&ap, "name") } else { ap.clone() };
                let pos = self.pos(&np, None);
                self.diags
                    .error("duplicate-artifact", pos, &np, format!("the job has two artifacts named `{name}`"))
                    .help("give each artifact its own `name`");
            }
        }
        self.downloads(id, job);
        for (i, n) in job.needs.iter().enumerate() {
            if job.needs[..i].contains(n) {
                let np = index(&child(&path, "needs"), i);
                let pos = self.pos(&np, None);
                self.diags.warning("duplicate-need", pos, &np, format!("`{n}` is listed twice in `needs`"));
            }
        }
        self.steps(&job.steps, &child(&path, "steps"), &job.needs, &matrix_keys, params);
    }

    /// A cache or artifact path pattern: relative to the workspace and staying inside it.
    fn workspace_path(&mut self, pattern: &str, path: &str, what: &str) {
        let p = pattern.strip_prefix('!').unwrap_or(pattern);
        let problem = if p.trim().is_empty() {
            Some("an empty path selects nothing".to_string())
        } else if p.starts_with('/') || p.starts_with('~') {
            Some(format!("`{pattern}` is absolute: {what} paths are relative to the workspace"))
        } else if p.split(['/', '\\']).any(|c| c == "..") {
            Some(format!("`{pattern}` uses `..`: {what} paths may not leave the workspace"))
        } else {
            None
        };
        if let Some(message) = problem {
            let pos = self.pos(path, None);
            self.diags
                .error("workspace-path", pos, path, message)
                .help("write a path below the workspace, such as `target/release/app` or `dist/**`");
        }
    }

    /// `download:` names artifacts of the jobs in `needs`.
    fn downloads(&mut self, id: &str, job: &Job) {
        if job.download.is_empty() {
            return;
        }
        let path = child(&child("jobs", id), "download");
        if job.needs.is_empty() {
            let pos = self.pos(&path, None);
            self.diags
                .error(
                    "download-without-needs",
                    pos,
                    &path,
                    "`download` takes artifacts of needed jobs, and this job needs none",
                )
                .help("add the jobs that produce the artifacts to `needs`");
            return;
        }
        let pipeline = &self.decoded.pipeline;
        let known: Vec<String> = job
            .needs
            .iter()
            .filter_map(|n| pipeline.jobs.get(n).map(|j| (n, j)))
            .flat_map(|(n, j)| j.artifacts.iter().map(move |a| a.name.clone().unwrap_or_else(|| n.clone())))
            .collect();
        for (i, name) in job.download.iter().enumerate() {
            if name == "all" || known.contains(name) {
                continue;
            }
            let np = index(&path, i);
            let np = if self.decoded.spans.node(&np).is_some() { np } else { path.clone() };
            let pos = self.pos(&np, None);
            let d = self.diags.error(
                "unknown-artifact",
                pos,
                &np,
                format!("no job in `needs` produces an artifact named `{name}`"),
            );
            match did_you_mean(name, known.iter().map(String::as_str)) {
                Some(sug) => d.help(format!("did you mean `{sug}`?")),
                None if known.is_empty() => d.help("the needed jobs declare no `artifacts`"),
                None => d.help(format!("valid: {}, or `all`", known.join(", "))),
            };
        }
    }

    fn steps(&mut self, steps: &[Step], path: &str, needs: &[String], matrix_keys: &[String], params: &[String]) {
        let mut ids: Vec<String> = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let sp = index(path, i);
            let scope = [Scope::Needs(needs), Scope::Matrix(matrix_keys), Scope::Steps(&ids), Scope::Params(params)];
            if let Some(cond) = &step.condition {
                self.condition(cond, &child(&sp, "if"), &scope);
            }
            if let Some(image) = &step.image {
                self.value(image, &child(&sp, "image"), &scope);
            }
            if let Some(run) = &step.run {
                let rp = child(&sp, "run");
                match expr::parse_template(run) {
                    Ok(t) => {
                        for e in t.check() {
                            self.expr_error(&rp, run, e.offset, &e.message, e.help.as_deref());
                        }
                        for part in &t.parts {
                            if let expr::TemplatePart::Expr { expr, offset, .. } = part {
                                self.references(expr, &rp, run, *offset, &scope);
                            }
                        }
                    }
                    Err(e) => self.expr_error(&rp, run, e.offset, &e.message, e.help.as_deref()),
                }
            }
            for (k, v) in &step.env {
                self.value(v, &child(&child(&sp, "env"), k), &scope);
            }
            for (k, v) in &step.with {
                self.value(v, &child(&child(&sp, "with"), k), &scope);
            }
            if let Some(dir) = &step.working_directory {
                self.value(dir, &child(&sp, "working-directory"), &scope);
            }
            if let Some(id) = &step.id {
                if ids.contains(id) {
                    let ip = child(&sp, "id");
                    let pos = self.pos(&ip, None);
                    self.diags.error(
                        "duplicate-step-id",
                        pos,
                        &ip,
                        format!("step id `{id}` is used twice in this job"),
                    );
                }
                ids.push(id.clone());
            }
        }
    }
}

/// Names a context may be followed by, in some part of the file.
enum Scope<'a> {
    Needs(&'a [String]),
    Matrix(&'a [String]),
    Steps(&'a [String]),
    Params(&'a [String]),
    /// A value decided when the build is planned: only [`CONCURRENCY_CONTEXTS`] exist.
    Planning,
}

fn first_line(s: &str) -> &str {
    s.lines().last().unwrap_or(s).trim()
}

fn cron_field(f: &str, lo: u32, hi: u32) -> Result<(), String> {
    for part in f.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        if let Some(s) = step {
            match s.parse::<u32>() {
                Ok(n) if n > 0 => {}
                _ => return Err(format!("bad step `{s}`")),
            }
        }
        if range == "*" {
            continue;
        }
        let bounds: Vec<&str> = range.splitn(2, '-').collect();
        for b in &bounds {
            match b.parse::<u32>() {
                Ok(n) if (lo..=hi).contains(&n) => {}
                Ok(n) => return Err(format!("{n} is outside {lo}-{hi}")),
                Err(_) => return Err(format!("`{b}` is not a number")),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod job_limit_tests {
    use super::LintOptions;
    use crate::lint::lint;

    /// A pipeline of `plain` jobs and `matrices` jobs of 5 x 5 combinations.
    fn pipeline(plain: usize, matrices: usize) -> String {
        let mut src = String::from("name: big\njobs:\n");
        for i in 0..plain {
            src.push_str(&format!("  j{i}:\n    steps:\n      - run: 'true'\n"));
        }
        for i in 0..matrices {
            src.push_str(&format!(
                "  m{i}:\n    strategy:\n      matrix:\n        a: [1, 2, 3, 4, 5]\n        b: [1, 2, 3, 4, 5]\n    steps:\n      - run: 'true'\n"
            ));
        }
        src
    }

    fn too_many(src: &str, opts: &LintOptions) -> Vec<crate::Diagnostic> {
        lint(src, "big.yml", opts).diagnostics.into_iter().filter(|d| d.code == "too-many-jobs").collect()
    }

    #[test]
    fn a_pipeline_over_the_job_limit_is_an_error_at_its_jobs_key() {
        let opts = LintOptions { max_jobs: 256, ..LintOptions::default() };
        assert!(too_many(&pipeline(256, 0), &opts).is_empty(), "256 jobs are within the limit");
        let found = too_many(&pipeline(257, 0), &opts);
        assert_eq!(found.len(), 1, "{found:?}");
        let d = &found[0];
        assert_eq!(d.severity, crate::Severity::Error);
        assert_eq!((d.file.as_str(), d.line, d.column), ("big.yml", 2, 1), "at `jobs:`");
        assert!(d.message.contains("257 jobs") && d.message.contains("limit of 256"), "{}", d.message);
        assert!(d.to_string().starts_with("big.yml:2:1"), "{d}");
    }

    #[test]
    fn matrix_combinations_count_as_jobs() {
        // 10 matrix jobs of 25 combinations and 7 plain jobs: 257 planned jobs from 17 keys.
        let src = pipeline(7, 10);
        let opts = LintOptions { max_jobs: 256, ..LintOptions::default() };
        let found = too_many(&src, &opts);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.contains("257 jobs"), "{}", found[0].message);
        let opts = LintOptions { max_jobs: 257, ..LintOptions::default() };
        assert!(too_many(&src, &opts).is_empty());
        assert!(!lint(&src, "big.yml", &opts).has_errors());
    }

    #[test]
    fn the_default_limit_is_256() {
        assert_eq!(super::DEFAULT_MAX_JOBS, 256);
        assert!(LintOptions::default().max_jobs >= 1);
    }
}
