//! A registration service in miniature: `POST /signup` takes a sign-up, provisions the tenant
//! through [`fleet_client::FleetClient`] (upstream's `IProvisioningService`) and answers when
//! the tenant is active — or with why not. The shape a real registration service copies:
//!
//! | outcome | status | body |
//! |---|---|---|
//! | active | 201 | the `TenantProvisioningResult` (connection URL, steps; never a token) |
//! | invalid sign-up | 422 | `{"error", "issues": ["path: message (code)", …]}` |
//! | the id is taken by another sign-up | 409 | `{"error"}` |
//! | provisioning failed | 502 | `{"error"}` (the failed step and its error) |
//! | no answer in time | 504 | `{"error"}` — the tenant may still become active |
//! | the fleet is unreachable | 503 | `{"error"}` |
//!
//! `GET /tenants/{id}` answers the tenant's status (`{"tenantId", "status"}`, 404 when unknown).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use fleet_client::{ClientError, FleetClient};
use fleet_protocol::{TenantId, TenantProvisioningRequest};
use serde::Deserialize;
use serde_json::json;

/// A sign-up: the tenant id the platform chose, and the provisioning request's fields
/// (upstream `TenantProvisioningRequest`, camelCase).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignUp {
    /// The new tenant's id.
    pub tenant_id: String,
    /// The request.
    #[serde(flatten)]
    pub request: TenantProvisioningRequest,
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

fn failure(error: ClientError) -> Response {
    let status = match &error {
        ClientError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        ClientError::Conflict { .. } => StatusCode::CONFLICT,
        ClientError::NotFound { .. } => StatusCode::NOT_FOUND,
        ClientError::Refused { .. } => StatusCode::CONFLICT,
        ClientError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ClientError::Failed { .. } => StatusCode::BAD_GATEWAY,
        ClientError::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
        ClientError::Unreachable(_) | ClientError::Messaging(_) => StatusCode::SERVICE_UNAVAILABLE,
        ClientError::Catalog(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let issues: Vec<String> = match &error {
        ClientError::Invalid { rejected, .. } => {
            rejected.errors().map(ToString::to_string).collect()
        }
        _ => Vec::new(),
    };
    answer(
        status,
        json!({"error": error.to_string(), "issues": issues}),
    )
}

async fn signup(State(client): State<Arc<FleetClient>>, Json(signup): Json<SignUp>) -> Response {
    let tenant = match TenantId::parse(signup.tenant_id) {
        Ok(tenant) => tenant,
        Err(e) => {
            return answer(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "invalid tenantId", "issues": [format!("tenantId: {e}")]}),
            );
        }
    };
    match client.provision(&tenant, signup.request).await {
        Ok(result) => answer(StatusCode::CREATED, json!(result)),
        Err(error) => failure(error),
    }
}

async fn status(State(client): State<Arc<FleetClient>>, Path(id): Path<String>) -> Response {
    let Ok(tenant) = TenantId::parse(id) else {
        return answer(StatusCode::NOT_FOUND, json!({"error": "no such tenant"}));
    };
    match client.status(&tenant).await {
        Ok(status) => answer(
            StatusCode::OK,
            json!({"tenantId": tenant, "status": status}),
        ),
        Err(error) => failure(error),
    }
}

/// The service's routes over `client`.
pub fn app(client: FleetClient) -> Router {
    Router::new()
        .route("/signup", axum::routing::post(signup))
        .route("/tenants/{id}", axum::routing::get(status))
        .with_state(Arc::new(client))
}
