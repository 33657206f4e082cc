//! Fills each model type from its mapping, using the `Decoder` primitives.

use super::{Decoder, child, index};
use crate::model::*;
use crate::yaml::{Node, NodeKind};
use indexmap::IndexMap;
use std::rc::Rc;

const PIPELINE_KEYS: &[&str] = &["name", "on", "params", "env", "image", "jobs", "post", "concurrency", "notify"];
const EVENTS: &[&str] = &["push", "pull_request", "tag", "schedule", "manual"];
const FILTER_KEYS: &[&str] = &["branches", "branches-ignore", "tags", "tags-ignore", "paths", "paths-ignore", "types"];
const JOB_KEYS: &[&str] = &[
    "name",
    "image",
    "runs-on",
    "services",
    "pull",
    "resources",
    "user",
    "read-only",
    "privileged",
    "docker-socket",
    "network",
    "cache-volumes",
    "needs",
    "if",
    "strategy",
    "timeout",
    "env",
    "steps",
    "cache",
    "artifacts",
    "download",
    "cache-result",
    "approval",
];
const STEP_KEYS: &[&str] = &[
    "id",
    "name",
    "run",
    "image",
    "uses",
    "with",
    "if",
    "env",
    "continue-on-error",
    "timeout",
    "shell",
    "working-directory",
];

impl Decoder<'_> {
    pub(super) fn pipeline(&mut self, root: &Rc<Node>) -> Pipeline {
        let mut p = Pipeline::default();
        let Some(entries) = self.map(root, "", PIPELINE_KEYS) else {
            return p;
        };
        self.require(root, "", &entries, &["jobs"]);
        for e in entries {
            let v = &e.value;
            match e.key.as_str() {
                "name" => p.name = self.string(v, "name"),
                "on" => p.on = self.triggers(v),
                "params" => p.params = self.params(v),
                "env" => p.env = self.scalar_map(v, "env", true),
                "image" => p.image = self.string(v, "image"),
                "jobs" => p.jobs = self.jobs(v),
                "post" => p.post = self.post(v),
                "notify" => p.notify = self.list(v, "notify", |d, n, path| d.notify(n, path)),
                "concurrency" => p.concurrency = self.concurrency(v, "concurrency"),
                _ => {}
            }
        }
        p
    }

    fn concurrency(&mut self, node: &Rc<Node>, path: &str) -> Option<Concurrency> {
        let entries = self.map(node, path, &["group", "cancel-in-progress"])?;
        self.require(node, path, &entries, &["group"]);
        let mut c = Concurrency::default();
        for e in entries {
            let p = child(path, &e.key);
            match e.key.as_str() {
                "group" => c.group = self.string(&e.value, &p).unwrap_or_default(),
                "cancel-in-progress" => c.cancel_in_progress = self.boolean(&e.value, &p).unwrap_or(false),
                _ => {}
            }
        }
        Some(c)
    }

    fn triggers(&mut self, node: &Rc<Node>) -> Option<Triggers> {
        let mut t = Triggers::default();
        let names: Vec<(String, Rc<Node>)> = match &node.kind {
            NodeKind::Scalar { .. } => {
                self.record("on", node);
                vec![(node.as_scalar().unwrap_or_default().to_string(), node.clone())]
            }
            NodeKind::Seq(items) => {
                self.record("on", node);
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| self.string(n, &index("on", i)).map(|s| (s, n.clone())))
                    .collect()
            }
            NodeKind::Map(_) => {
                let entries = self.map(node, "on", EVENTS)?;
                for e in entries {
                    let path = child("on", &e.key);
                    let v = &e.value;
                    match e.key.as_str() {
                        "push" => t.push = Some(self.filters(v, &path)),
                        "pull_request" => t.pull_request = Some(self.filters(v, &path)),
                        "tag" => t.tag = Some(self.filters(v, &path)),
                        "manual" => {
                            if !v.is_null() {
                                for extra in self.map(v, &path, &[]).unwrap_or_default() {
                                    self.diags
                                        .error(
                                            "unknown-key",
                                            extra.key_node.pos,
                                            &child(&path, &extra.key),
                                            "`manual` takes no settings",
                                        )
                                        .help("parameters are declared under the top-level `params`");
                                }
                            }
                            t.manual = Some(Manual {});
                        }
                        "schedule" => t.schedule = self.list(v, &path, |d, n, p| d.schedule(n, p)),
                        _ => {}
                    }
                }
                return Some(t);
            }
        };
        for (name, n) in names {
            match name.as_str() {
                "push" => t.push = Some(Filters::default()),
                "pull_request" => t.pull_request = Some(Filters::default()),
                "tag" => t.tag = Some(Filters::default()),
                "manual" => t.manual = Some(Manual {}),
                "schedule" => {
                    self.diags
                        .error("missing-key", n.pos, "on.schedule", "`schedule` needs at least one `cron` entry")
                        .help("write `on: {schedule: [{cron: \"0 3 * * *\"}]}`");
                }
                other => {
                    let d = self.diags.error("unknown-key", n.pos, "on", format!("unknown event `{other}`"));
                    match crate::diag::did_you_mean(other, EVENTS.iter().copied()) {
                        Some(s) => d.help(format!("did you mean `{s}`?")),
                        None => d.help(format!("events: {}", EVENTS.join(", "))),
                    };
                }
            }
        }
        Some(t)
    }

    fn filters(&mut self, node: &Rc<Node>, path: &str) -> Filters {
        let mut f = Filters::default();
        if node.is_null() {
            self.record(path, node);
            return f;
        }
        let Some(entries) = self.map(node, path, FILTER_KEYS) else {
            return f;
        };
        for e in entries {
            let p = child(path, &e.key);
            let list = self.strings(&e.value, &p, true);
            match e.key.as_str() {
                "branches" => f.branches = list,
                "branches-ignore" => f.branches_ignore = list,
                "tags" => f.tags = list,
                "tags-ignore" => f.tags_ignore = list,
                "paths" => f.paths = list,
                "paths-ignore" => f.paths_ignore = list,
                "types" => f.types = list,
                _ => {}
            }
        }
        f
    }

    fn schedule(&mut self, node: &Rc<Node>, path: &str) -> Option<Schedule> {
        let entries = self.map(node, path, &["cron"])?;
        self.require(node, path, &entries, &["cron"]);
        let e = entries.into_iter().next()?;
        Some(Schedule { cron: self.string(&e.value, &child(path, "cron"))? })
    }

    fn params(&mut self, node: &Rc<Node>) -> IndexMap<String, Param> {
        let mut out = IndexMap::new();
        let Some(entries) = self.map(node, "params", &[]) else {
            return out;
        };
        for e in entries {
            let path = child("params", &e.key);
            if !super::is_env_name(&e.key) {
                self.diags
                    .error("invalid-name", e.key_node.pos, &path, format!("`{}` is not a valid parameter name", e.key))
                    .help("use letters, digits and `_`, not starting with a digit");
                continue;
            }
            let mut param = Param::default();
            if !e.value.is_null()
                && let Some(fields) =
                    self.map(&e.value, &path, &["description", "default", "required", "choices", "type"])
            {
                for f in fields {
                    let p = child(&path, &f.key);
                    match f.key.as_str() {
                        "description" => param.description = self.string(&f.value, &p),
                        "default" => param.default = self.string(&f.value, &p),
                        "required" => param.required = self.boolean(&f.value, &p).unwrap_or(false),
                        "choices" => param.choices = self.strings(&f.value, &p, false),
                        "type" => {
                            param.kind = match self.choice(&f.value, &p, &["string", "boolean"]).as_deref() {
                                Some("boolean") => ParamType::Boolean,
                                _ => ParamType::String,
                            }
                        }
                        _ => {}
                    }
                }
            }
            if let Some(default) = &param.default
                && param.kind == ParamType::Boolean
                && default != "true"
                && default != "false"
            {
                let pos = self.spans.pos(&child(&path, "default"));
                self.diags.error(
                    "invalid-value",
                    pos,
                    &child(&path, "default"),
                    format!("default `{default}` of a boolean parameter must be `true` or `false`"),
                );
            }
            if let Some(default) = &param.default
                && !param.choices.is_empty()
                && !param.choices.contains(default)
            {
                let pos = self.spans.pos(&child(&path, "default"));
                self.diags.error(
                    "invalid-value",
                    pos,
                    &child(&path, "default"),
                    format!("default `{default}` is not one of the choices: {}", param.choices.join(", ")),
                );
            }
            out.insert(e.key, param);
        }
        out
    }

    fn jobs(&mut self, node: &Rc<Node>) -> IndexMap<String, Job> {
        let mut out = IndexMap::new();
        let Some(entries) = self.map(node, "jobs", &[]) else {
            return out;
        };
        if entries.is_empty() {
            self.diags
                .error("no-jobs", node.pos, "jobs", "the pipeline has no jobs")
                .help("add at least one job with `steps`");
        }
        for e in entries {
            let path = child("jobs", &e.key);
            if !is_job_id(&e.key) {
                self.diags
                    .error("invalid-id", e.key_node.pos, &path, format!("`{}` is not a valid job id", e.key))
                    .help("a job id starts with a letter or `_` and holds letters, digits, `_` and `-`");
            } else if e.key == "post" {
                self.diags
                    .error(
                        "reserved-job-id",
                        e.key_node.pos,
                        &path,
                        "`post` is the job that runs the pipeline's `post:` steps",
                    )
                    .help("name this job otherwise, `post-deploy` say");
            }
            if let Some(job) = self.job(&e.value, &path) {
                out.insert(e.key, job);
            }
        }
        out
    }

    fn job(&mut self, node: &Rc<Node>, path: &str) -> Option<Job> {
        let entries = self.map(node, path, JOB_KEYS)?;
        self.require(node, path, &entries, &["steps"]);
        let mut job = Job::default();
        for e in entries {
            let p = child(path, &e.key);
            let v = &e.value;
            match e.key.as_str() {
                "name" => job.name = self.string(v, &p),
                "image" => job.image = self.string(v, &p),
                "runs-on" => job.runs_on = self.strings(v, &p, true),
                "services" => job.services = self.services(v, &p),
                "pull" => job.pull = self.choice(v, &p, &["if-not-present", "always", "never"]),
                "resources" => job.resources = self.resources(v, &p),
                "user" => job.user = self.string(v, &p),
                "read-only" => job.read_only = self.boolean(v, &p).unwrap_or(false),
                "privileged" => job.privileged = self.boolean(v, &p).unwrap_or(false),
                "docker-socket" => job.docker_socket = self.boolean(v, &p).unwrap_or(false),
                "network" => job.network = self.choice(v, &p, &["bridge", "none"]),
                "cache-volumes" => job.cache_volumes = self.cache_volumes(v, &p),
                "needs" => job.needs = self.strings(v, &p, true),
                "if" => job.condition = self.condition(v, &p),
                "strategy" => job.strategy = self.strategy(v, &p),
                "timeout" => job.timeout = self.duration(v, &p),
                "env" => job.env = self.scalar_map(v, &p, true),
                "steps" => {
                    job.steps = self.list(v, &p, |d, n, sp| d.step(n, sp));
                    if matches!(&v.kind, NodeKind::Seq(items) if items.is_empty()) {
                        self.diags
                            .error("empty-steps", v.pos, &p, "the job has no steps")
                            .help("add at least one step with `run` or `uses`");
                    }
                }
                "cache" => job.cache = self.list(v, &p, |d, n, cp| d.cache(n, cp)),
                "artifacts" => job.artifacts = self.list(v, &p, |d, n, ap| d.artifact(n, ap)),
                "download" => job.download = self.strings(v, &p, true),
                "cache-result" => job.cache_result = self.boolean(v, &p).unwrap_or(false),
                "approval" => job.approval = self.approval(v, &p),
                _ => {}
            }
        }
        Some(job)
    }

    /// An `if:` condition: a string, or a plain boolean written as such.
    fn condition(&mut self, node: &Rc<Node>, path: &str) -> Option<String> {
        self.string(node, path)
    }

    fn strategy(&mut self, node: &Rc<Node>, path: &str) -> Option<Strategy> {
        let entries = self.map(node, path, &["matrix", "fail-fast", "max-parallel"])?;
        self.require(node, path, &entries, &["matrix"]);
        let mut s = Strategy::default();
        for e in entries {
            let p = child(path, &e.key);
            match e.key.as_str() {
                "matrix" => s.matrix = self.matrix(&e.value, &p),
                "fail-fast" => s.fail_fast = self.boolean(&e.value, &p),
                "max-parallel" => s.max_parallel = self.number(&e.value, &p, "a positive whole number"),
                _ => {}
            }
        }
        Some(s)
    }

    fn matrix(&mut self, node: &Rc<Node>, path: &str) -> Matrix {
        let mut m = Matrix::default();
        let Some(entries) = self.map(node, path, &[]) else {
            return m;
        };
        for e in entries {
            let p = child(path, &e.key);
            match e.key.as_str() {
                "exclude" | "include" => {
                    let combos = self.list(&e.value, &p, |d, n, cp| Some(d.scalar_map(n, cp, false)));
                    if e.key == "exclude" {
                        m.exclude = combos;
                    } else {
                        m.include = combos;
                    }
                }
                axis => {
                    if !super::is_env_name(axis) {
                        self.diags
                            .error(
                                "invalid-name",
                                e.key_node.pos,
                                &p,
                                format!("`{axis}` is not a valid matrix axis name"),
                            )
                            .help("use letters, digits and `_`, not starting with a digit");
                        continue;
                    }
                    let values = self.strings(&e.value, &p, false);
                    if values.is_empty() && matches!(&e.value.kind, NodeKind::Seq(_)) {
                        self.diags.error(
                            "empty-matrix-axis",
                            e.value.pos,
                            &p,
                            format!("matrix axis `{axis}` has no values"),
                        );
                    }
                    m.axes.insert(axis.to_string(), values);
                }
            }
        }
        m
    }

    fn step(&mut self, node: &Rc<Node>, path: &str) -> Option<Step> {
        let entries = self.map(node, path, STEP_KEYS)?;
        let mut s = Step::default();
        for e in &entries {
            let p = child(path, &e.key);
            let v = &e.value;
            match e.key.as_str() {
                "id" => s.id = self.string(v, &p),
                "name" => s.name = self.string(v, &p),
                "run" => s.run = self.string(v, &p),
                "image" => s.image = self.string(v, &p),
                "uses" => s.uses = self.string(v, &p),
                "with" => s.with = self.scalar_map(v, &p, false),
                "if" => s.condition = self.condition(v, &p),
                "env" => s.env = self.scalar_map(v, &p, true),
                "continue-on-error" => s.continue_on_error = self.boolean(v, &p).unwrap_or(false),
                "timeout" => s.timeout = self.duration(v, &p),
                "shell" => s.shell = self.string(v, &p),
                "working-directory" => s.working_directory = self.string(v, &p),
                _ => {}
            }
        }
        let has = |k: &str| entries.iter().any(|e| e.key == k);
        if has("run") && has("uses") {
            self.diags
                .error("run-and-uses", node.pos, path, "a step has either `run` or `uses`, not both")
                .help("split it into two steps");
        } else if !has("run") && !has("uses") {
            self.diags.error("missing-key", node.pos, path, "a step needs `run` (a command) or `uses` (a plugin)");
        }
        if has("image") && has("uses") {
            self.diags.warning("unused-key", node.pos, &child(path, "image"), "`image` only applies to `run` steps");
        }
        if has("shell") && has("uses") {
            self.diags.warning("unused-key", node.pos, &child(path, "shell"), "`shell` only applies to `run` steps");
        }
        if let Some(id) = &s.id
            && !is_job_id(id)
        {
            let pos = self.spans.pos(&child(path, "id"));
            self.diags
                .error("invalid-id", pos, &child(path, "id"), format!("`{id}` is not a valid step id"))
                .help("a step id starts with a letter or `_` and holds letters, digits, `_` and `-`");
        }
        Some(s)
    }

    /// A string that must be one of `choices`.
    fn choice(&mut self, node: &Rc<Node>, path: &str, choices: &[&str]) -> Option<String> {
        let s = self.string(node, path)?;
        if choices.contains(&s.as_str()) {
            return Some(s);
        }
        let list = choices.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
        self.diags
            .error("invalid-value", node.pos, path, format!("`{s}` is not one of {list}"))
            .help(format!("write one of {list}"));
        None
    }

    fn resources(&mut self, node: &Rc<Node>, path: &str) -> Option<Resources> {
        let entries = self.map(node, path, &["memory", "cpus", "pids"])?;
        let mut r = Resources::default();
        for e in entries {
            let p = child(path, &e.key);
            let checked = |d: &mut Self, parse: fn(&str) -> Result<u64, String>| {
                let s = d.string(&e.value, &p)?;
                match parse(&s) {
                    Ok(_) => Some(s),
                    Err(msg) => {
                        d.diags.error("invalid-value", e.value.pos, &p, msg);
                        None
                    }
                }
            };
            match e.key.as_str() {
                "memory" => r.memory = checked(self, crate::container::parse_memory),
                "cpus" => r.cpus = checked(self, crate::container::parse_cpus),
                "pids" => r.pids = self.number(&e.value, &p, "a number of processes"),
                _ => {}
            }
        }
        Some(r)
    }

    fn cache_volumes(&mut self, node: &Rc<Node>, path: &str) -> IndexMap<String, String> {
        let mut out = IndexMap::new();
        let Some(entries) = self.map(node, path, &[]) else {
            return out;
        };
        for e in entries {
            let p = child(path, &e.key);
            if let Err(msg) = crate::container::check_volume_name(&e.key) {
                self.diags.error("invalid-volume", e.key_node.pos, &p, msg);
                continue;
            }
            let Some(mount) = self.string(&e.value, &p) else { continue };
            if let Err(msg) = crate::container::check_mount_path(&mount) {
                self.diags
                    .error("invalid-volume", e.value.pos, &p, msg)
                    .help("mount a cache volume on an absolute path such as `/root/.cargo/registry`");
                continue;
            }
            if let Some((other, _)) = out.iter().find(|(_, m)| **m == mount) {
                self.diags.error(
                    "invalid-volume",
                    e.value.pos,
                    &p,
                    format!("`{mount}` is already the mount of `{other}`"),
                );
                continue;
            }
            out.insert(e.key, mount);
        }
        out
    }

    fn services(&mut self, node: &Rc<Node>, path: &str) -> IndexMap<String, Service> {
        let mut out = IndexMap::new();
        let Some(entries) = self.map(node, path, &[]) else {
            return out;
        };
        for e in entries {
            let p = child(path, &e.key);
            let Some(fields) =
                self.map(&e.value, &p, &["image", "env", "command", "ports", "health-cmd", "wait-timeout"])
            else {
                continue;
            };
            self.require(&e.value, &p, &fields, &["image"]);
            let mut s = Service::default();
            for f in fields {
                let fp = child(&p, &f.key);
                match f.key.as_str() {
                    "image" => s.image = self.string(&f.value, &fp).unwrap_or_default(),
                    "env" => s.env = self.scalar_map(&f.value, &fp, true),
                    "command" => s.command = self.strings(&f.value, &fp, true),
                    "ports" => {
                        s.ports = self.list(&f.value, &fp, |d, n, pp| d.number(n, pp, "a port number (1-65535)"))
                    }
                    "health-cmd" => s.health_cmd = self.string(&f.value, &fp),
                    "wait-timeout" => s.wait_timeout = self.duration(&f.value, &fp),
                    _ => {}
                }
            }
            out.insert(e.key, s);
        }
        out
    }

    fn cache(&mut self, node: &Rc<Node>, path: &str) -> Option<Cache> {
        let entries = self.map(node, path, &["key", "restore-keys", "paths"])?;
        self.require(node, path, &entries, &["key", "paths"]);
        let mut c = Cache::default();
        for e in entries {
            let p = child(path, &e.key);
            match e.key.as_str() {
                "key" => c.key = self.string(&e.value, &p).unwrap_or_default(),
                "restore-keys" => c.restore_keys = self.strings(&e.value, &p, true),
                "paths" => c.paths = self.strings(&e.value, &p, true),
                _ => {}
            }
        }
        Some(c)
    }

    fn artifact(&mut self, node: &Rc<Node>, path: &str) -> Option<Artifact> {
        let entries = self.map(node, path, &["name", "paths", "expire-in", "if", "when"])?;
        self.require(node, path, &entries, &["paths"]);
        let mut a = Artifact::default();
        for e in entries {
            let p = child(path, &e.key);
            match e.key.as_str() {
                "name" => a.name = self.string(&e.value, &p),
                "paths" => a.paths = self.strings(&e.value, &p, true),
                "expire-in" => a.expire_in = self.duration(&e.value, &p),
                "if" => a.when = self.when(&e.value, &p),
                "when" => {
                    self.diags
                        .warning("deprecated-key", e.value.pos, &p, "`when` is the old spelling of an artifact's `if`")
                        .help("write `if: on-success`, `if: on-failure` or `if: always`");
                    a.when = self.when(&e.value, &p);
                }
                _ => {}
            }
        }
        Some(a)
    }

    fn when(&mut self, node: &Rc<Node>, path: &str) -> Option<When> {
        let s = self.string(node, path)?;
        match s.as_str() {
            "always" => Some(When::Always),
            "on-success" => Some(When::OnSuccess),
            "on-failure" => Some(When::OnFailure),
            other => {
                self.diags
                    .error("invalid-value", node.pos, path, format!("unknown value `{other}`"))
                    .help("use `always`, `on-success` or `on-failure`");
                None
            }
        }
    }

    fn approval(&mut self, node: &Rc<Node>, path: &str) -> Option<Approval> {
        let mut a = Approval::default();
        if node.is_null() {
            self.record(path, node);
            return Some(a);
        }
        let entries = self.map(node, path, &["approvers", "timeout"])?;
        for e in entries {
            let p = child(path, &e.key);
            match e.key.as_str() {
                "approvers" => a.approvers = self.strings(&e.value, &p, true),
                "timeout" => a.timeout = self.duration(&e.value, &p),
                _ => {}
            }
        }
        Some(a)
    }

    fn post(&mut self, node: &Rc<Node>) -> Option<Post> {
        let entries = self.map(node, "post", &["always", "on-success", "on-failure"])?;
        let mut post = Post::default();
        for e in entries {
            let p = child("post", &e.key);
            let steps = self.list(&e.value, &p, |d, n, sp| d.step(n, sp));
            match e.key.as_str() {
                "always" => post.always = steps,
                "on-success" => post.on_success = steps,
                "on-failure" => post.on_failure = steps,
                _ => {}
            }
        }
        Some(post)
    }

    fn notify(&mut self, node: &Rc<Node>, path: &str) -> Option<Notify> {
        let entries = self.map(node, path, &["uses", "with", "on"])?;
        self.require(node, path, &entries, &["uses"]);
        let mut n = Notify::default();
        for e in entries {
            let p = child(path, &e.key);
            match e.key.as_str() {
                "uses" => n.uses = self.string(&e.value, &p).unwrap_or_default(),
                "with" => n.with = self.scalar_map(&e.value, &p, false),
                "on" => n.on = self.when(&e.value, &p),
                _ => {}
            }
        }
        Some(n)
    }
}

/// True for a valid job or step id.
pub fn is_job_id(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
