//! The typed pipeline model: what a pipeline file says, as serde types.
//!
//! These are the types the JSON Schema is generated from and that are stored and sent as data.
//! They are filled from YAML by [`crate::decode`], which reports every problem with its position;
//! short forms (`needs: build`, `on: push`) are normalised there, and the schema accepts them too.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A whole pipeline file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[schemars(title = "Chengis pipeline")]
pub struct Pipeline {
    /// Display name of the pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Events that start the pipeline: `push`, `pull_request`, `tag`, `schedule`, `manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::triggers")]
    pub on: Option<Triggers>,
    /// Parameters a manual or API trigger can set; read as `${{ params.NAME }}`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub params: IndexMap<String, Param>,
    /// Environment variables for every job and step.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    #[schemars(schema_with = "crate::schema::env_map")]
    pub env: IndexMap<String, String>,
    /// Default container image of jobs that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The jobs, by id.
    #[schemars(schema_with = "crate::schema::jobs")]
    pub jobs: IndexMap<String, Job>,
    /// Steps that run after all jobs: `always`, `on-success`, `on-failure`. They never change the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<Post>,
    /// Which builds of the job supersede each other. Without it, a new push (through a webhook)
    /// cancels the job's unfinished webhook builds of the same branch at older commits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// Notifications sent by the server when the build finishes (run by notifier plugins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<Notify>,
}

/// `concurrency:`: builds of the same group, and whether a new one cancels those in progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Concurrency {
    /// The group's name (text; builds of the same job with the same group belong together).
    pub group: String,
    /// Whether a new build cancels the group's unfinished builds (default false: they run).
    #[serde(default)]
    pub cancel_in_progress: bool,
}

/// The trigger configuration (`on:`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Triggers {
    /// Pushes to branches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<Filters>,
    /// Pull requests targeting branches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<Filters>,
    /// Pushed tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<Filters>,
    /// Cron schedules (5 fields, UTC).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<Schedule>,
    /// Manual runs from the dashboard, API or CLI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<Manual>,
}

/// Branch, tag and path filters of a trigger. A pattern is a glob (`release/*`, `**`),
/// or a regular expression when it starts with `re:` (`re:^v\d+$`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Filters {
    /// Branches that trigger.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::string_or_list")]
    pub branches: Vec<String>,
    /// Branches that never trigger.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::string_or_list")]
    pub branches_ignore: Vec<String>,
    /// Tags that trigger.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::string_or_list")]
    pub tags: Vec<String>,
    /// Tags that never trigger.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::string_or_list")]
    pub tags_ignore: Vec<String>,
    /// Only when a changed file matches one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::string_or_list")]
    pub paths: Vec<String>,
    /// Not when every changed file matches one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::string_or_list")]
    pub paths_ignore: Vec<String>,
    /// Pull requests only: the actions that trigger (`opened`, `synchronize`, `reopened`;
    /// default all three).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::string_or_list")]
    pub types: Vec<String>,
}

/// One cron schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Five cron fields: minute hour day-of-month month day-of-week.
    pub cron: String,
}

/// Manual trigger settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Manual {}

/// A parameter of the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Param {
    /// What the parameter is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Value used when the trigger sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// When true, a trigger must set it (unless there is a default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// When set, the value must be one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// `string` (the default) or `boolean` (the value is `true` or `false`; unset means `false`).
    #[serde(default, rename = "type", skip_serializing_if = "ParamType::is_string")]
    pub kind: ParamType,
}

/// The type of a parameter's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Any text.
    #[default]
    String,
    /// `true` or `false`.
    Boolean,
}

impl ParamType {
    /// Whether this is the default type (`string`).
    pub fn is_string(&self) -> bool {
        *self == ParamType::String
    }
}

/// One job: steps that run in order in one sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Job {
    /// Display name; defaults to the job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Container image to run the steps in; without it steps run as local processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Agent labels this job needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::string_or_list")]
    pub runs_on: Vec<String>,
    /// Service containers started next to the job, by name.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub services: IndexMap<String, Service>,
    /// When to pull the image: `if-not-present` (default), `always`, `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::pull_policy")]
    pub pull: Option<String>,
    /// Limits of the job's container (server defaults apply when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// User the steps run as in the container, such as `1000` or `1000:1000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Read-only root filesystem, with a writable tmpfs at `/tmp`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// Privileged container; refused unless the operator allows it for this job.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Mount the Docker socket; refused unless the operator allows it for this job.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub docker_socket: bool,
    /// `bridge` (a private network per job, the default) or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::network")]
    pub network: Option<String>,
    /// Named volumes that persist across builds on the same agent: name to absolute path.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub cache_volumes: IndexMap<String, String>,
    /// Jobs that must succeed first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::string_or_list")]
    pub needs: Vec<String>,
    /// Condition; the job is skipped when it is false.
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::condition")]
    pub condition: Option<String>,
    /// Matrix strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Time limit of the whole job, such as `30m` or `1h30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::duration")]
    pub timeout: Option<String>,
    /// Environment variables of the job's steps.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    #[schemars(schema_with = "crate::schema::env_map")]
    pub env: IndexMap<String, String>,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Caches restored before the first step and saved after success.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<Cache>,
    /// Files kept after the job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    /// Artifacts of the jobs in `needs` placed in the workspace before the first step: their
    /// names, or `all`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::string_or_list")]
    pub download: Vec<String>,
    /// Reuse the result of an earlier successful run of this job when the commit tree, the
    /// job's definition and its stable inputs are the same (the steps are skipped).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_result: bool,
    /// A person must approve before the job runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

/// A matrix strategy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Strategy {
    /// The matrix.
    #[schemars(schema_with = "crate::schema::matrix")]
    pub matrix: Matrix,
    /// Cancel the other combinations when one fails (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_fast: Option<bool>,
    /// Most combinations running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
}

/// Matrix axes plus `exclude` and `include` entries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    /// Each axis with its values, in file order.
    #[serde(flatten)]
    pub axes: IndexMap<String, Vec<String>>,
    /// Combinations removed: an entry removes every combination that matches all its keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<IndexMap<String, String>>,
    /// Combinations added, or extra keys added to the combinations they match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<IndexMap<String, String>>,
}

/// One step: a shell command (`run`) or a plugin (`uses`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Step {
    /// Id used to read its outputs: `${{ steps.ID.outputs.NAME }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Shell commands; `${{ }}` values reach them as environment variables, never spliced in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Container image for this step only (same workspace), instead of the job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A step-executor plugin, such as `junit` or `script@1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<String>,
    /// Inputs of the plugin.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    #[schemars(schema_with = "crate::schema::env_map")]
    pub with: IndexMap<String, String>,
    /// Condition; the step is skipped when it is false.
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::condition")]
    pub condition: Option<String>,
    /// Environment variables of this step.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    #[schemars(schema_with = "crate::schema::env_map")]
    pub env: IndexMap<String, String>,
    /// A failure of this step does not fail the job.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_error: bool,
    /// Time limit of the step, such as `90s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::duration")]
    pub timeout: Option<String>,
    /// Shell for `run`: `sh` (default, `sh -e -c`), `bash`, `python`, `node`, or a command
    /// with `{0}` standing for the script file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Directory to run in, relative to the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
}

/// Limits of a job's container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Resources {
    /// Memory limit such as `512m` or `2g`; a step that goes over it is killed (`oom`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// CPU limit such as `1.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    /// Most processes in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

/// A service container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Service {
    /// Image of the service.
    pub image: String,
    /// Its environment.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    #[schemars(schema_with = "crate::schema::env_map")]
    pub env: IndexMap<String, String>,
    /// Command overriding the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::string_or_list")]
    pub command: Vec<String>,
    /// Ports to wait for (TCP), such as `5432`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Health command run inside the service until it succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_cmd: Option<String>,
    /// How long to wait for the service to be ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::duration")]
    pub wait_timeout: Option<String>,
}

/// A cache entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Cache {
    /// Exact key, usually with `hashFiles(...)`.
    pub key: String,
    /// Key prefixes tried in order when the key misses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::string_or_list")]
    pub restore_keys: Vec<String>,
    /// Files and directories (globs allowed) to cache.
    #[schemars(schema_with = "crate::schema::string_or_list")]
    pub paths: Vec<String>,
}

/// Files kept after a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Artifact {
    /// Name of the artifact; defaults to the job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Files and directories (globs allowed).
    #[schemars(schema_with = "crate::schema::string_or_list")]
    pub paths: Vec<String>,
    /// How long to keep it, such as `30d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::duration")]
    pub expire_in: Option<String>,
    /// When to upload: `on-success` (default), `on-failure` or `always` (`when:` is accepted
    /// as another spelling).
    #[serde(default, rename = "if", alias = "when", skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
}

/// When something happens, relative to the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum When {
    /// Always.
    Always,
    /// Only after success.
    OnSuccess,
    /// Only after failure.
    OnFailure,
}

/// Manual approval before a job runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Approval {
    /// Users or groups allowed to approve; empty means any developer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::string_or_list")]
    pub approvers: Vec<String>,
    /// How long the job waits for approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::duration")]
    pub timeout: Option<String>,
}

/// Steps that run after all jobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Post {
    /// Always run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub always: Vec<Step>,
    /// Run when the pipeline succeeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_success: Vec<Step>,
    /// Run when the pipeline failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_failure: Vec<Step>,
}

/// One notification.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Notify {
    /// The notifier plugin, such as `slack`.
    pub uses: String,
    /// Its configuration.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    #[schemars(schema_with = "crate::schema::env_map")]
    pub with: IndexMap<String, String>,
    /// When to notify: `always` (default), `on-success` or `on-failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<When>,
}
