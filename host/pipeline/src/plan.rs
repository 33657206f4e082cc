//! The plan: a linted pipeline turned into the jobs that will run, in dependency order, with
//! matrices expanded, parameters resolved, durations parsed and `${VAR}` substituted.
//!
//! `${{ }}` expressions are kept as pieces of [`Text`] and evaluated at run time, when `needs`
//! outputs and job statuses are known. Substitution happens only in literal pieces, so a value
//! brought in by `${VAR}` can never smuggle in an expression.

use crate::container::{self, ContainerOptions, NetworkMode, PullPolicy};
use crate::decode::{Decoded, child, index};
use crate::diag::{Diagnostic, Diagnostics};
use crate::duration::parse_duration;
use crate::expr::{self, TemplatePart};
use crate::matrix::{self, Combination};
use crate::model::{self, Pipeline};
use crate::subst;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A piece of a [`Text`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Piece {
    /// Literal text, substitutions already done.
    Lit(String),
    /// The source of a `${{ }}` expression, evaluated at run time.
    Expr(String),
}

/// A string of the plan: literal pieces and expressions still to evaluate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Text(pub Vec<Piece>);

impl Text {
    /// A text with no expressions.
    pub fn literal(s: impl Into<String>) -> Text {
        Text(vec![Piece::Lit(s.into())])
    }

    /// The text when it holds no expression.
    pub fn as_literal(&self) -> Option<String> {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Lit(s) => Some(s.as_str()),
                Piece::Expr(_) => None,
            })
            .collect()
    }
}

/// What a run will execute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Display name of the pipeline.
    pub name: String,
    /// Parameters with their resolved values.
    pub params: IndexMap<String, String>,
    /// The parameters as the pipeline declares them (the dashboard's trigger form).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub declared_params: IndexMap<String, model::Param>,
    /// Pipeline-level environment.
    pub env: IndexMap<String, Text>,
    /// Jobs, every job after the jobs it needs.
    pub jobs: Vec<PlannedJob>,
    /// Steps run after all jobs whatever the result.
    pub post_always: Vec<PlannedStep>,
    /// Steps run after all jobs when the pipeline succeeded.
    pub post_on_success: Vec<PlannedStep>,
    /// Steps run after all jobs when the pipeline failed.
    pub post_on_failure: Vec<PlannedStep>,
    /// Notifications sent by the server when the build finishes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<model::Notify>,
    /// The `on:` block: which pushes, tags and pull requests run the pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<model::Triggers>,
    /// The `concurrency:` block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<model::Concurrency>,
}

/// One job of the plan (one combination of a matrix job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedJob {
    /// Unique id: the job id, plus the combination for matrix jobs (`test (os=linux)`).
    pub id: String,
    /// The job id in the file.
    pub key: String,
    /// Display name.
    pub name: String,
    /// The matrix combination (empty for a plain job).
    pub matrix: Combination,
    /// Planned ids this job waits for.
    pub needs: Vec<String>,
    /// Job ids (as in the file) this job needs, for the `needs` context.
    pub needs_keys: Vec<String>,
    /// The `if:` expression source.
    pub condition: Option<String>,
    /// Container image.
    pub image: Option<Text>,
    /// Agent labels.
    pub runs_on: Vec<String>,
    /// Service containers.
    pub services: IndexMap<String, model::Service>,
    /// Container settings (used when the job has an image).
    pub container: ContainerOptions,
    /// Job environment (pipeline env is merged in by the engine).
    pub env: IndexMap<String, Text>,
    /// Steps in order.
    pub steps: Vec<PlannedStep>,
    /// Limit for the whole job.
    pub timeout: Option<Duration>,
    /// Caches.
    pub cache: Vec<model::Cache>,
    /// Artifacts.
    pub artifacts: Vec<model::Artifact>,
    /// Artifacts of needed jobs to download first (names, or `all`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub download: Vec<String>,
    /// Reuse an earlier successful result with the same fingerprint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_result: bool,
    /// Approval gate.
    pub approval: Option<model::Approval>,
    /// For matrix jobs: a failed combination cancels its siblings (default true).
    pub fail_fast: bool,
    /// For matrix jobs: most combinations running at once.
    pub max_parallel: Option<u32>,
}

/// One step of a planned job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStep {
    /// 0-based position in its job.
    pub index: usize,
    /// Id for `steps.ID.outputs`.
    pub id: Option<String>,
    /// Display name: `name`, else the first line of `run`, else `uses`.
    pub name: String,
    /// Shell script.
    pub run: Option<Text>,
    /// Image of this step only (runs in its own container on the same workspace).
    pub image: Option<Text>,
    /// Plugin reference.
    pub uses: Option<String>,
    /// Plugin inputs.
    pub with: IndexMap<String, Text>,
    /// The `if:` expression source.
    pub condition: Option<String>,
    /// Step environment.
    pub env: IndexMap<String, Text>,
    /// A failure does not fail the job.
    pub continue_on_error: bool,
    /// Limit of the step.
    pub timeout: Option<Duration>,
    /// Shell override.
    pub shell: Option<String>,
    /// Directory relative to the workspace.
    pub working_directory: Option<Text>,
}

/// What the planner needs from the trigger.
pub struct PlanInputs<'a> {
    /// Parameters set by the trigger.
    pub params: &'a IndexMap<String, String>,
    /// Variables for `${VAR}` (the planning process's environment for local runs).
    pub vars: &'a dyn Fn(&str) -> Option<String>,
    /// Most matrix combinations per job.
    pub max_matrix: usize,
}

struct Planner<'a> {
    decoded: &'a Decoded,
    src: &'a str,
    diags: Diagnostics,
    inputs: &'a PlanInputs<'a>,
}

/// Builds the plan of a linted pipeline (`order` from the linter); on failure returns the
/// diagnostics (unset `${VAR:?}`, bad parameters), each with its position.
pub fn plan(
    decoded: &Decoded,
    src: &str,
    file: &str,
    order: &[String],
    inputs: &PlanInputs<'_>,
) -> Result<Plan, Vec<Diagnostic>> {
    let mut p = Planner { decoded, src, diags: Diagnostics::new(file), inputs };
    let pipeline: &Pipeline = &decoded.pipeline;
    let params = p.params(pipeline);
    let no_matrix = Combination::new();
    let env = p.map(&pipeline.env, "env", &params, &no_matrix);
    let mut expanded: IndexMap<&str, Vec<Combination>> = IndexMap::new();
    for key in order {
        let Some(job) = pipeline.jobs.get(key) else { continue };
        let combos = match &job.strategy {
            Some(s) => matrix::expand(&s.matrix, inputs.max_matrix).map(|e| e.combinations).unwrap_or_default(),
            None => Vec::new(),
        };
        expanded.insert(key.as_str(), combos);
    }
    let mut jobs = Vec::new();
    for key in order {
        let Some(job) = pipeline.jobs.get(key) else { continue };
        let combos = expanded.get(key.as_str()).cloned().unwrap_or_default();
        let needs: Vec<String> = job
            .needs
            .iter()
            .flat_map(|n| match expanded.get(n.as_str()) {
                Some(c) if !c.is_empty() => c.iter().map(|c| expanded_id(n, c)).collect(),
                _ => vec![n.clone()],
            })
            .collect();
        let variants = if combos.is_empty() { vec![Combination::new()] } else { combos };
        for combo in variants {
            jobs.push(p.job(key, job, combo, &needs, &params));
        }
    }
    let post = pipeline.post.clone().unwrap_or_default();
    let post_always = p.steps(&post.always, "post.always", &params, &no_matrix);
    let post_on_success = p.steps(&post.on_success, "post.on-success", &params, &no_matrix);
    let post_on_failure = p.steps(&post.on_failure, "post.on-failure", &params, &no_matrix);
    if p.diags.has_errors() {
        return Err(p.diags.into_sorted());
    }
    Ok(Plan {
        name: pipeline.name.clone().unwrap_or_else(|| file.to_string()),
        params,
        declared_params: pipeline.params.clone(),
        env,
        jobs,
        post_always,
        post_on_success,
        post_on_failure,
        notify: pipeline.notify.clone(),
        on: pipeline.on.clone(),
        concurrency: pipeline.concurrency.clone(),
    })
}

/// The planned id of one combination of a matrix job.
pub fn expanded_id(key: &str, combo: &Combination) -> String {
    if combo.is_empty() { key.to_string() } else { format!("{key} ({})", matrix::label(combo)) }
}

impl Planner<'_> {
    fn params(&mut self, pipeline: &Pipeline) -> IndexMap<String, String> {
        let mut out = IndexMap::new();
        for (name, given) in self.inputs.params {
            if !pipeline.params.contains_key(name) {
                let declared: Vec<&str> = pipeline.params.keys().map(String::as_str).collect();
                let d = self.diags.error(
                    "unknown-param",
                    self.decoded.spans.pos("params"),
                    "params",
                    format!("parameter `{name}` is not declared by this pipeline"),
                );
                match crate::diag::did_you_mean(name, declared.iter().copied()) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None if declared.is_empty() => d.help("declare it under the top-level `params:`"),
                    None => d.help(format!("declared parameters: {}", declared.join(", "))),
                };
                continue;
            }
            out.insert(name.clone(), given.clone());
        }
        for (name, decl) in &pipeline.params {
            let path = child("params", name);
            let value = match (out.get(name), &decl.default) {
                (Some(v), _) => v.clone(),
                (None, Some(d)) => d.clone(),
                (None, None) if decl.required => {
                    let pos = self.decoded.spans.pos(&path);
                    self.diags
                        .error("missing-param", pos, &path, format!("parameter `{name}` is required"))
                        .help(format!("pass it with `--param {name}=VALUE`"));
                    continue;
                }
                (None, None) if decl.kind == model::ParamType::Boolean => "false".to_string(),
                (None, None) => String::new(),
            };
            if decl.kind == model::ParamType::Boolean && value != "true" && value != "false" {
                let pos = self.decoded.spans.pos(&path);
                self.diags.error(
                    "invalid-param",
                    pos,
                    &path,
                    format!("parameter `{name}` is a boolean: `true` or `false`, not `{value}`"),
                );
            }
            if !decl.choices.is_empty() && !decl.choices.contains(&value) {
                let pos = self.decoded.spans.pos(&path);
                self.diags.error(
                    "invalid-param",
                    pos,
                    &path,
                    format!("parameter `{name}` is `{value}`, not one of: {}", decl.choices.join(", ")),
                );
            }
            out.insert(name.clone(), value);
        }
        out.sort_by_cached_key(|k, _| pipeline.params.get_index_of(k));
        out
    }

    /// Turns a non-shell value into a [`Text`], substituting `${VAR}` in literal pieces.
    fn text(&mut self, value: &str, path: &str, params: &IndexMap<String, String>, combo: &Combination) -> Text {
        let template = match expr::parse_template(value) {
            Ok(t) => t,
            Err(_) => return Text::literal(value),
        };
        let mut pieces = Vec::new();
        let mut consumed = 0usize;
        for part in template.parts {
            match part {
                TemplatePart::Literal(lit) => {
                    let lookup = |name: &str| -> Option<String> {
                        if let Some(axis) = name.strip_prefix("MATRIX_")
                            && let Some((_, v)) = combo.iter().find(|(k, _)| k.eq_ignore_ascii_case(axis))
                        {
                            return Some(v.clone());
                        }
                        params.get(name).cloned().or_else(|| (self.inputs.vars)(name))
                    };
                    match subst::substitute(&lit, &lookup) {
                        Ok(s) => pieces.push(Piece::Lit(s)),
                        Err(e) => {
                            let off = value[consumed..].find(lit.as_str()).map_or(0, |i| consumed + i) + e.offset();
                            let pos = match self.decoded.spans.node(path) {
                                Some(n) => crate::decode::pos_in(self.src, n, value, off),
                                None => self.decoded.spans.pos(path),
                            };
                            self.diags.error("substitution", pos, path, e.to_string());
                        }
                    }
                    consumed += lit.len();
                }
                TemplatePart::Expr { source, .. } => {
                    consumed += source.len();
                    pieces.push(Piece::Expr(source));
                }
            }
        }
        Text(pieces)
    }

    fn map(
        &mut self,
        m: &IndexMap<String, String>,
        path: &str,
        params: &IndexMap<String, String>,
        combo: &Combination,
    ) -> IndexMap<String, Text> {
        m.iter().map(|(k, v)| (k.clone(), self.text(v, &child(path, k), params, combo))).collect()
    }

    fn job(
        &mut self,
        key: &str,
        job: &model::Job,
        combo: Combination,
        needs: &[String],
        params: &IndexMap<String, String>,
    ) -> PlannedJob {
        let path = child("jobs", key);
        let id = expanded_id(key, &combo);
        let base_name = job.name.clone().unwrap_or_else(|| key.to_string());
        let name = if combo.is_empty() { base_name } else { format!("{base_name} ({})", matrix::label(&combo)) };
        let mut env = self.map(&job.env, &child(&path, "env"), params, &combo);
        for (k, v) in matrix::env_vars(&combo) {
            env.entry(k).or_insert_with(|| Text::literal(v));
        }
        PlannedJob {
            image: match (&job.image, &self.decoded.pipeline.image) {
                (Some(i), _) => Some(self.text(i, &child(&path, "image"), params, &combo)),
                (None, Some(i)) => Some(self.text(i, "image", params, &combo)),
                (None, None) => None,
            },
            container: container_options(job),
            steps: self.steps(&job.steps, &child(&path, "steps"), params, &combo),
            timeout: job.timeout.as_deref().and_then(|t| parse_duration(t).ok()),
            id,
            key: key.to_string(),
            name,
            needs: needs.to_vec(),
            needs_keys: job.needs.clone(),
            condition: job.condition.clone(),
            runs_on: job.runs_on.clone(),
            services: job.services.clone(),
            env,
            cache: job.cache.clone(),
            artifacts: job.artifacts.clone(),
            download: job.download.clone(),
            cache_result: job.cache_result,
            approval: job.approval.clone(),
            fail_fast: job.strategy.as_ref().and_then(|s| s.fail_fast).unwrap_or(true),
            max_parallel: job.strategy.as_ref().and_then(|s| s.max_parallel),
            matrix: combo,
        }
    }

    fn steps(
        &mut self,
        steps: &[model::Step],
        path: &str,
        params: &IndexMap<String, String>,
        combo: &Combination,
    ) -> Vec<PlannedStep> {
        steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let sp = index(path, i);
                let name = s
                    .name
                    .clone()
                    .or_else(|| {
                        s.run
                            .as_ref()
                            .map(|r| r.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string())
                    })
                    .or_else(|| s.uses.clone())
                    .unwrap_or_else(|| format!("step {}", i + 1));
                PlannedStep {
                    index: i,
                    id: s.id.clone(),
                    name,
                    run: s.run.as_ref().map(|r| run_text(r)),
                    image: s.image.as_ref().map(|i| self.text(i, &child(&sp, "image"), params, combo)),
                    uses: s.uses.clone(),
                    with: self.map(&s.with, &child(&sp, "with"), params, combo),
                    condition: s.condition.clone(),
                    env: self.map(&s.env, &child(&sp, "env"), params, combo),
                    continue_on_error: s.continue_on_error,
                    timeout: s.timeout.as_deref().and_then(|t| parse_duration(t).ok()),
                    shell: s.shell.clone(),
                    working_directory: s
                        .working_directory
                        .as_ref()
                        .map(|w| self.text(w, &child(&sp, "working-directory"), params, combo)),
                }
            })
            .collect()
    }
}

/// The container settings of a job (values were checked by the decoder).
fn container_options(job: &model::Job) -> ContainerOptions {
    let resources = job.resources.clone().unwrap_or_default();
    ContainerOptions {
        pull: job.pull.as_deref().and_then(PullPolicy::parse).unwrap_or_default(),
        memory: resources.memory.as_deref().and_then(|m| container::parse_memory(m).ok()),
        nano_cpus: resources.cpus.as_deref().and_then(|c| container::parse_cpus(c).ok()),
        pids: resources.pids,
        user: job.user.clone(),
        read_only: job.read_only,
        privileged: job.privileged,
        docker_socket: job.docker_socket,
        network: job.network.as_deref().and_then(NetworkMode::parse).unwrap_or_default(),
        cache_volumes: job.cache_volumes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// A `run:` script: no substitution (the shell does that); expressions kept as pieces so the
/// engine can pass their values as environment variables instead of splicing them in.
fn run_text(run: &str) -> Text {
    match expr::parse_template(run) {
        Ok(t) => Text(
            t.parts
                .into_iter()
                .map(|p| match p {
                    TemplatePart::Literal(s) => Piece::Lit(s),
                    TemplatePart::Expr { source, .. } => Piece::Expr(source),
                })
                .collect(),
        ),
        Err(_) => Text::literal(run),
    }
}
