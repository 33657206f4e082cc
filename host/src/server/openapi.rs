//! The OpenAPI description of the API, generated from the handlers' annotations and the
//! request/response types by utoipa, served at `/api/v1/openapi.json`.

use super::webhooks::route as hooks;
use super::{agent_api, api, auth, error, schedules, storage, stream};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Chengis API", description = "Jobs, builds, logs and secrets of a Chengis server."),
    paths(
        api::create_job,
        api::list_jobs,
        api::get_job,
        api::update_job,
        api::delete_job,
        api::trigger,
        api::list_builds,
        api::get_build,
        api::get_build_by_number,
        api::build_tests,
        api::cancel,
        api::retry,
        api::list_secrets,
        api::set_secret,
        api::delete_secret,
        stream::logs,
        stream::log_stream,
        stream::build_events,
        hooks::list,
        schedules::list,
        schedules::create,
        schedules::delete,
        hooks::replay,
        storage::list_artifacts,
        storage::delete_artifact,
        storage::download,
        storage::list_caches,
        storage::delete_cache,
        storage::report,
        storage::prune,
        agent_api::list,
        agent_api::create_token,
        agent_api::list_tokens,
        agent_api::revoke_token,
        agent_api::register,
        agent_api::lease,
        agent_api::lease_action,
        agent_api::state,
        agent_api::put_blob,
        agent_api::get_blob,
        agent_api::put_cache,
        agent_api::get_cache,
        agent_api::get_plugin,
        auth::routes::api_login,
        auth::routes::whoami,
        auth::routes::change_password,
        auth::routes::revoke_own_token,
        auth::routes::create_token,
        auth::routes::list_tokens,
        auth::routes::revoke_token,
        auth::routes::list_users,
        auth::routes::create_user,
        auth::routes::change_user,
        auth::routes::audit,
        auth::routes::audit_verify,
    ),
    components(schemas(
        error::ErrorBody,
        crate::status::Status,
        crate::store::queue::Priority,
        crate::store::users::Role
    ))
)]
struct ApiDoc;

/// The OpenAPI document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
