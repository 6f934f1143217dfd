//! Upstream's data API (`@objectstack/spec` 4.0.1, `api`): `/api/v1/data/:object` and
//! `/api/v1/data/:object/:id`, served from the resolved tenant's own database.
//!
//! | request | answer (upstream schema) |
//! |---|---|
//! | `POST /api/v1/data/:object` with `{"data": {…}}` (`CreateDataRequest`; `object` optional) | 201 `CreateDataResponse` |
//! | `GET /api/v1/data/:object/:id` | 200 `GetDataResponse` |
//! | `PATCH` (or `PUT`) `/api/v1/data/:object/:id` with `{"data": {…}}` (`UpdateDataRequest`) | 200 `UpdateDataResponse` |
//! | `DELETE /api/v1/data/:object/:id` | 200 `DeleteDataResponse` |
//! | `GET /api/v1/data/:object?filter=…&sort=…&select=…&top=…&skip=…` ([`crate::query`]) | 200 `FindDataResponse` |
//!
//! Failures are `BaseResponse` with `success: false` and an `ApiError` (`code`, `message`,
//! `category`, `details`, `requestId`): `400 validation_failed` (details: every issue with its
//! path), `404 tenant_not_found | object_not_found | record_not_found`, `403 tenant_suspended |
//! tenant_not_active`, `429 rate_limited | quota_exceeded` (details: upstream's
//! `QuotaEnforcementResult`), `503 unavailable`.
//!
//! Every request runs with its tenant's runtime context (upstream `TenantRuntimeContext`: tenant,
//! plan, region, database URL), resolved by the router's configured strategy; a suspended tenant
//! may read when its lifecycle says read-only (`provisioner.lifecycle.onTenantSuspend.readOnly`).

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use fleet_protocol::contracts::RequestParts;
use fleet_protocol::{QuotaEnforcementResult, TenantId, TenantProvisioningStatus};
use fleet_tenants::machine::TenantRecord;
use libsql::Value as Sql;
use serde_json::{Map, Value, json};
use tracing::Instrument;

use crate::Gateway;
use crate::query::FindParams;
use crate::records::{Issue, Object, check};

/// A failed request: its status and upstream `ApiError` (boxed: results stay small).
#[derive(Debug)]
pub struct ApiError(Box<Failure>);

#[derive(Debug)]
struct Failure {
    status: StatusCode,
    code: &'static str,
    category: &'static str,
    message: String,
    details: Option<Value>,
    /// Seconds until a retry may succeed (`Retry-After`).
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: &'static str,
        category: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self(Box::new(Failure {
            status,
            code,
            category,
            message: message.into(),
            details: None,
            retry_after: None,
        }))
    }

    fn with(mut self, details: Value) -> Self {
        self.0.details = Some(details);
        self
    }

    /// The same error, telling the caller when to retry (`Retry-After`, seconds).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.0.retry_after = Some(seconds);
        self
    }

    fn invalid(issues: Vec<Issue>) -> Self {
        let count = issues.len();
        Self::new(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            "validation",
            format!("{count} problem(s) with the request"),
        )
        .with(json!({ "issues": issues }))
    }

    /// A dependency failed (the tenant's database, the tenants bucket): 503.
    pub fn unavailable_from(what: &dyn std::fmt::Display) -> Self {
        Self::unavailable(what)
    }

    fn unavailable(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "server",
            what.to_string(),
        )
    }

    fn database(e: libsql::Error) -> Self {
        Self::unavailable(format!("the tenant's database: {e}"))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let failure = *self.0;
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut error = json!({
            "code": failure.code,
            "message": failure.message,
            "category": failure.category,
            "requestId": request_id,
        });
        if let Some(details) = failure.details {
            error["details"] = details;
        }
        let body = json!({
            "success": false,
            "error": error,
            "meta": {"timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "requestId": request_id},
        });
        let mut response = (failure.status, Json(body)).into_response();
        if let Some(seconds) = failure.retry_after
            && let Ok(value) = axum::http::HeaderValue::from_str(&seconds.to_string())
        {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, value);
        }
        response
    }
}

/// Why a tenant's database could not be opened.
enum Refused {
    /// The token the record held was refused, or the record's state changed under it: read the
    /// record again.
    Token,
    /// Anything else, answered as is.
    Other(ApiError),
}

/// What every handler needs: the tenant, its record and a connection to its database (the
/// request's tenant context is [`Context::resolved`]).
struct Context {
    tenant: TenantId,
    record: TenantRecord,
    conn: crate::pool::Pooled,
}

impl Gateway {
    /// The parts of a request the router resolves a tenant from; under the `token` strategy
    /// with the claims of its bearer token, verified (HS256, `router.token_secret`; `exp` and
    /// `nbf` checked when present) — a token that does not verify is 401.
    fn parts(&self, headers: &HeaderMap, path: &str) -> Result<RequestParts, ApiError> {
        let mut claims = Map::new();
        if let Some(key) = &self.token_key {
            let bearer = headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let unauthorized = |why: String| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "authentication",
                    why,
                )
            };
            let Some(token) = bearer else {
                return Err(unauthorized(
                    "a bearer token (Authorization: Bearer …) names the tenant".into(),
                ));
            };
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            validation.required_spec_claims.clear();
            validation.validate_nbf = true;
            claims = jsonwebtoken::decode::<Map<String, Value>>(token.trim(), key, &validation)
                .map_err(|e| unauthorized(format!("the bearer token does not verify: {e}")))?
                .claims;
        }
        Ok(RequestParts {
            headers: headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_owned()))
                })
                .collect(),
            host: headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.to_ascii_lowercase()),
            path: path.to_owned(),
            claims,
        })
    }
}

impl Gateway {
    /// [`Self::resolve`], recorded in the request's span (tenant, plan, region, database URL)
    /// and so in its logs and trace.
    async fn context(
        &self,
        headers: &HeaderMap,
        path: &str,
        write: bool,
    ) -> Result<Context, ApiError> {
        let context = self.resolve(headers, path, write).await?;
        record_span(&context);
        Ok(context)
    }

    /// Resolves the request's tenant, checks its state and its rate limit, and connects.
    async fn resolve(
        &self,
        headers: &HeaderMap,
        path: &str,
        write: bool,
    ) -> Result<Context, ApiError> {
        use fleet_tenantdb::RouterError as R;
        let tenant = self
            .router
            .tenant_of(&self.parts(headers, path)?)
            .await
            .map_err(|e| match e {
                R::NoTenant(why) => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "tenant_required",
                    "validation",
                    format!("the request names no tenant: {why}"),
                ),
                R::InvalidTenantId(e) => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_tenant",
                    "validation",
                    e.to_string(),
                ),
                other => ApiError::unavailable(other),
            })?;
        let record = self
            .tenants
            .get(&tenant)
            .await
            .map_err(ApiError::unavailable)?;
        if let Some(record) = &record {
            note_plan(record);
        }
        let record = self.usable(&tenant, record, write)?;
        self.limits.admit(&tenant, &record)?;
        self.usage.count(&tenant);
        match self.open(&tenant, &record).await {
            Ok(conn) => {
                return Ok(Context {
                    tenant,
                    record,
                    conn,
                });
            }
            Err(Refused::Other(e)) => return Err(e),
            Err(Refused::Token) => {}
        }
        // The database refused the record's token: the tenant was suspended, resumed or its
        // token rotated a moment ago and the watch has not said so yet — or the change is still
        // under way (tokens revoked before the record says so). Read the record again and
        // answer by it, a few times over a fraction of a second; then 503, to be retried.
        for pause in [0, 25, 50, 100, 200] {
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            self.forget(&tenant).await;
            let record = self
                .tenants
                .refresh(&tenant)
                .await
                .map_err(ApiError::unavailable)?;
            let record = self.usable(&tenant, record, write)?;
            match self.open(&tenant, &record).await {
                Ok(conn) => {
                    return Ok(Context {
                        tenant,
                        record,
                        conn,
                    });
                }
                Err(Refused::Other(e)) => return Err(e),
                Err(Refused::Token) => {}
            }
        }
        Err(ApiError::unavailable(format!(
            "the database of tenant {tenant} refused its current token (its state is changing: retry)"
        )))
    }

    /// The tenant's record when its state allows the request.
    fn usable(
        &self,
        tenant: &TenantId,
        record: Option<TenantRecord>,
        write: bool,
    ) -> Result<TenantRecord, ApiError> {
        let record = record.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "tenant_not_found",
                "not_found",
                format!("no tenant {tenant}"),
            )
        })?;
        let status = record.status();
        let readable_suspended =
            status == TenantProvisioningStatus::Suspended && !write && self.suspended_read_only;
        if status == TenantProvisioningStatus::Active || readable_suspended {
            return Ok(record);
        }
        Err(match status {
            TenantProvisioningStatus::Suspended => ApiError::new(
                StatusCode::FORBIDDEN,
                "tenant_suspended",
                "permission",
                format!(
                    "tenant {tenant} is suspended{}{}",
                    record
                        .suspension_reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default(),
                    if self.suspended_read_only {
                        ": reads only"
                    } else {
                        ""
                    }
                ),
            ),
            other => ApiError::new(
                StatusCode::FORBIDDEN,
                "tenant_not_active",
                "permission",
                format!(
                    "tenant {tenant} is {}",
                    serde_json::to_value(other)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ),
            ),
        })
    }

    /// A connection to the tenant's database: through the router's cache when it is active,
    /// with its read-only token, for this request alone, when it is suspended.
    async fn open(
        &self,
        tenant: &TenantId,
        record: &TenantRecord,
    ) -> Result<crate::pool::Pooled, Refused> {
        use fleet_tenantdb::RouterError as R;
        if record.status() != TenantProvisioningStatus::Active {
            return match self.connector.connect_readable(tenant).await {
                Ok((_, conn)) => Ok(crate::pool::Pooled::detached(conn)),
                Err(fleet_control::ConnectError::NotActive(_)) => Err(Refused::Token),
                Err(e) if e.is_transient() => Err(Refused::Token),
                Err(e) => Err(Refused::Other(ApiError::unavailable(e))),
            };
        }
        if let Some(conn) = self.pool.take(tenant) {
            return Ok(conn);
        }
        match self.router.connect(tenant).await {
            Ok(connection) if &connection.tenant == tenant => {
                Ok(self.pool.adopt(tenant, connection.conn))
            }
            Ok(_) => Err(Refused::Other(ApiError::unavailable(
                "isolation check failed",
            ))),
            Err(
                R::Suspended(_)
                | R::NotActive { .. }
                | R::Backend(fleet_tenantdb::TenantDbError::Unauthorized(_))
                | R::Secret { .. },
            ) => Err(Refused::Token),
            Err(R::UnknownTenant(_)) => Err(Refused::Other(ApiError::new(
                StatusCode::NOT_FOUND,
                "tenant_not_found",
                "not_found",
                format!("no tenant {tenant}"),
            ))),
            Err(other) => Err(Refused::Other(ApiError::unavailable(other))),
        }
    }

    async fn object(&self, context: &Context, name: &str) -> Result<Object, ApiError> {
        Object::load(&context.conn, name)
            .await
            .map_err(ApiError::unavailable)?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "object_not_found",
                    "not_found",
                    format!("tenant {} has no object {name:?}", context.tenant),
                )
            })
    }

    async fn read(
        &self,
        conn: &libsql::Connection,
        object: &Object,
        id: &str,
    ) -> Result<Option<Map<String, Value>>, ApiError> {
        let (list, refs) = object.select_list(None);
        let sql = format!(
            "SELECT {list} FROM {} WHERE \"id\" = ?1",
            fleet_schema::sql::quote(&object.table)
        );
        let mut rows = conn
            .query(&sql, [Sql::Text(id.to_owned())])
            .await
            .map_err(ApiError::database)?;
        Ok(rows
            .next()
            .await
            .map_err(ApiError::database)?
            .map(|row| object.record(&row, &refs)))
    }
}

/// A failed write: a constraint the values broke (a unique index, a reference) as a
/// validation issue at the fields' paths; anything else 503.
fn constraint(object: &Object, e: libsql::Error) -> ApiError {
    let message = e.to_string();
    if let Some(rest) = message.split("UNIQUE constraint failed: ").nth(1) {
        let issues: Vec<Issue> = rest
            .split(',')
            .filter_map(|c| c.trim().split('.').nth(1))
            .map(|column| {
                let column =
                    column.trim_end_matches(|ch: char| !(ch.is_alphanumeric() || ch == '_'));
                let key = object
                    .columns
                    .iter()
                    .find(|c| c.column == column)
                    .map_or(column, |c| c.key.as_str());
                Issue::new(
                    format!("data.{key}"),
                    "unique",
                    "another record has this value",
                )
            })
            .collect();
        if !issues.is_empty() {
            return ApiError::invalid(issues);
        }
    }
    if message.contains("FOREIGN KEY constraint failed") {
        return ApiError::invalid(vec![Issue::new(
            "data",
            "not_found",
            "a lookup names a record that does not exist",
        )]);
    }
    tracing::warn!(object = %object.name, error = %message, "a write failed");
    ApiError::unavailable("the tenant's database refused the write")
}

fn not_found(object: &str, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "record_not_found",
        "not_found",
        format!("no {object} record {id:?}"),
    )
}

/// The `data` of a create or update body; its `object` and `id`, when given, must match the path.
fn data_of(body: &Value, object: &str, id: Option<&str>) -> Result<Map<String, Value>, ApiError> {
    let mut issues = Vec::new();
    let Some(map) = body.as_object() else {
        return Err(ApiError::invalid(vec![Issue::new(
            "",
            "invalid_type",
            "expected an object",
        )]));
    };
    for key in map.keys() {
        if !matches!(key.as_str(), "object" | "data" | "id") {
            issues.push(Issue::new(
                key.clone(),
                "unrecognized_key",
                "not part of the request",
            ));
        }
    }
    if let Some(given) = map.get("object")
        && given.as_str() != Some(object)
    {
        issues.push(Issue::new(
            "object",
            "mismatch",
            format!("the path names {object:?}"),
        ));
    }
    if let (Some(given), Some(id)) = (map.get("id"), id)
        && given.as_str() != Some(id)
    {
        issues.push(Issue::new(
            "id",
            "mismatch",
            format!("the path names {id:?}"),
        ));
    }
    let data = match map.get("data") {
        Some(Value::Object(data)) => data.clone(),
        Some(_) => {
            issues.push(Issue::new("data", "invalid_type", "expected an object"));
            Map::new()
        }
        None => {
            issues.push(Issue::new("data", "required", "required"));
            Map::new()
        }
    };
    if issues.is_empty() {
        Ok(data)
    } else {
        Err(ApiError::invalid(issues))
    }
}

/// Runs `work` for a request: its span (W3C trace context from the request's headers), its
/// metrics by plan, object and operation, and the answer.
async fn serve<F>(
    gateway: &Gateway,
    headers: &HeaderMap,
    object: &str,
    operation: &'static str,
    work: F,
) -> Response
where
    F: Future<Output = Result<(StatusCode, Value, String), ApiError>>,
{
    let started = Instant::now();
    let span = tracing::info_span!(
        "data_api",
        operation,
        object,
        tenant = tracing::field::Empty,
        plan = tracing::field::Empty,
        region = tracing::field::Empty,
        db_url = tracing::field::Empty
    );
    crate::telemetry::set_parent(&span, headers);
    // The tenant's plan, once resolved, labels the request's metrics — failures included.
    let (outcome, resolved_plan) = PLAN
        .scope(std::cell::RefCell::new(None), async move {
            let outcome = work.instrument(span).await;
            (outcome, PLAN.with(|p| p.borrow().clone()))
        })
        .await;
    let (status, plan, response) = match outcome {
        Ok((status, body, plan)) => (status, plan, (status, Json(body)).into_response()),
        Err(e) => (
            e.status(),
            resolved_plan.unwrap_or_else(|| "-".to_owned()),
            e.into_response(),
        ),
    };
    gateway
        .metrics
        .observe(&plan, object, operation, status.as_u16(), started.elapsed());
    response
}

/// `POST /api/v1/data/:object`.
pub async fn create(
    State(gateway): State<Arc<Gateway>>,
    Path(object): Path<String>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    let path = request.uri().path().to_owned();
    let limit = gateway.max_body_bytes;
    serve(
        &gateway.clone(),
        &headers.clone(),
        &object.clone(),
        "create",
        async move {
            let body = body_json(request, limit).await?;
            let data = data_of(&body, &object, None)?;
            let context = gateway.context(&headers, &path, true).await?;
            let target = gateway.object(&context, &object).await?;
            let checked = check(&context.conn, &target, &data, None)
                .await
                .map_err(ApiError::database)?
                .map_err(ApiError::invalid)?;
            let id = checked
                .values
                .iter()
                .find_map(|(c, v)| {
                    (c == "id").then(|| match v {
                        Sql::Text(t) => t.clone(),
                        _ => String::new(),
                    })
                })
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let mut columns = vec!["\"id\"".to_owned()];
            let mut params = vec![Sql::Text(id.clone())];
            for (column, value) in checked.values.into_iter().filter(|(c, _)| c != "id") {
                columns.push(fleet_schema::sql::quote(&column));
                params.push(value);
            }
            let placeholders: Vec<String> = (1..=params.len()).map(|i| format!("?{i}")).collect();
            let table = fleet_schema::sql::quote(&target.table);
            // `maxRecordsPerObject` is checked by the insert itself: one statement, so creates
            // racing each other cannot pass the limit together.
            let limit = context.record.quotas.max_records_per_object;
            let sql = match limit {
                Some(max) => {
                    params.push(Sql::Integer(i64::try_from(max.get()).unwrap_or(i64::MAX)));
                    format!(
                        "INSERT INTO {table} ({}) SELECT {} WHERE (SELECT count(*) FROM {table}) < ?{}",
                        columns.join(", "),
                        placeholders.join(", "),
                        params.len()
                    )
                }
                None => format!(
                    "INSERT INTO {table} ({}) VALUES ({})",
                    columns.join(", "),
                    placeholders.join(", ")
                ),
            };
            let inserted = context
                .conn
                .execute(&sql, params)
                .await
                .map_err(|e| constraint(&target, e))?;
            if inserted == 0 {
                return Err(gateway
                    .limits
                    .refused_records(&context.conn, &context.record, &target)
                    .await);
            }
            let record = gateway
                .read(&context.conn, &target, &id)
                .await?
                .ok_or_else(|| not_found(&object, &id))?;
            Ok((
                StatusCode::CREATED,
                json!({"object": object, "id": id, "record": record}),
                plan_of(&context),
            ))
        },
    )
    .await
}

/// `GET /api/v1/data/:object/:id`.
pub async fn get(
    State(gateway): State<Arc<Gateway>>,
    Path((object, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    serve(
        &gateway.clone(),
        &headers.clone(),
        &object.clone(),
        "get",
        async move {
            let context = gateway.context(&headers, uri.path(), false).await?;
            let target = gateway.object(&context, &object).await?;
            let record = gateway
                .read(&context.conn, &target, &id)
                .await?
                .ok_or_else(|| not_found(&object, &id))?;
            Ok((
                StatusCode::OK,
                json!({"object": object, "id": id, "record": record}),
                plan_of(&context),
            ))
        },
    )
    .await
}

/// `PATCH` / `PUT /api/v1/data/:object/:id`.
pub async fn update(
    State(gateway): State<Arc<Gateway>>,
    Path((object, id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    let path = request.uri().path().to_owned();
    let limit = gateway.max_body_bytes;
    serve(
        &gateway.clone(),
        &headers.clone(),
        &object.clone(),
        "update",
        async move {
            let body = body_json(request, limit).await?;
            let data = data_of(&body, &object, Some(&id))?;
            let context = gateway.context(&headers, &path, true).await?;
            let target = gateway.object(&context, &object).await?;
            if gateway.read(&context.conn, &target, &id).await?.is_none() {
                return Err(not_found(&object, &id));
            }
            let checked = check(&context.conn, &target, &data, Some(&id))
                .await
                .map_err(ApiError::database)?
                .map_err(ApiError::invalid)?;
            let mut sets = Vec::new();
            let mut params = Vec::new();
            for (column, value) in checked.values {
                params.push(value);
                sets.push(format!(
                    "{} = ?{}",
                    fleet_schema::sql::quote(&column),
                    params.len()
                ));
            }
            params.push(Sql::Text(
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ));
            sets.push(format!("\"updated_at\" = ?{}", params.len()));
            params.push(Sql::Text(id.clone()));
            let sql = format!(
                "UPDATE {} SET {} WHERE \"id\" = ?{}",
                fleet_schema::sql::quote(&target.table),
                sets.join(", "),
                params.len()
            );
            context
                .conn
                .execute(&sql, params)
                .await
                .map_err(|e| constraint(&target, e))?;
            let record = gateway
                .read(&context.conn, &target, &id)
                .await?
                .ok_or_else(|| not_found(&object, &id))?;
            Ok((
                StatusCode::OK,
                json!({"object": object, "id": id, "record": record}),
                plan_of(&context),
            ))
        },
    )
    .await
}

/// `DELETE /api/v1/data/:object/:id`.
pub async fn delete(
    State(gateway): State<Arc<Gateway>>,
    Path((object, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    serve(
        &gateway.clone(),
        &headers.clone(),
        &object.clone(),
        "delete",
        async move {
            let context = gateway.context(&headers, uri.path(), true).await?;
            let target = gateway.object(&context, &object).await?;
            let sql = format!(
                "DELETE FROM {} WHERE \"id\" = ?1",
                fleet_schema::sql::quote(&target.table)
            );
            let deleted = match context.conn.execute(&sql, [Sql::Text(id.clone())]).await {
                Ok(n) => n,
                Err(e) if e.to_string().contains("FOREIGN KEY constraint failed") => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "referenced",
                        "conflict",
                        format!("other records refer to {object} {id:?} (restrict)"),
                    ));
                }
                Err(e) => return Err(ApiError::database(e)),
            };
            if deleted == 0 {
                return Err(not_found(&object, &id));
            }
            Ok((
                StatusCode::OK,
                json!({"object": object, "id": id, "success": true}),
                plan_of(&context),
            ))
        },
    )
    .await
}

/// `GET /api/v1/data/:object` (a find).
pub async fn find(
    State(gateway): State<Arc<Gateway>>,
    Path(object): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    params: Result<Query<FindParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    serve(
        &gateway.clone(),
        &headers.clone(),
        &object.clone(),
        "find",
        async move {
            let Query(params) = params.map_err(|e| {
                ApiError::invalid(vec![Issue::new("query", "invalid_query", e.body_text())])
            })?;
            let context = gateway.context(&headers, uri.path(), false).await?;
            let target = gateway.object(&context, &object).await?;
            let find = crate::query::find(&target, &params, gateway.max_page_size)
                .map_err(ApiError::invalid)?;
            let (list, refs) = target.select_list(find.select.as_deref());
            let table = fleet_schema::sql::quote(&target.table);
            let mut page_params = find.params.clone();
            page_params.push(Sql::Integer(find.limit as i64 + 1));
            page_params.push(Sql::Integer(find.offset as i64));
            let sql = format!(
                "SELECT {list} FROM {table}{}{} LIMIT ?{} OFFSET ?{}",
                find.where_sql,
                find.order_sql,
                page_params.len() - 1,
                page_params.len()
            );
            let mut rows = context
                .conn
                .query(&sql, page_params)
                .await
                .map_err(ApiError::database)?;
            let mut records = Vec::new();
            while let Some(row) = rows.next().await.map_err(ApiError::database)? {
                records.push(Value::Object(target.record(&row, &refs)));
            }
            let has_more = records.len() as u64 > find.limit;
            records.truncate(find.limit as usize);
            let count_sql = format!("SELECT count(*) FROM {table}{}", find.where_sql);
            let mut rows = context
                .conn
                .query(&count_sql, find.params)
                .await
                .map_err(ApiError::database)?;
            let total = match rows.next().await.map_err(ApiError::database)? {
                Some(row) => row.get::<i64>(0).unwrap_or_default(),
                None => 0,
            };
            Ok((
                StatusCode::OK,
                json!({"object": object, "records": records, "total": total, "hasMore": has_more}),
                plan_of(&context),
            ))
        },
    )
    .await
}

async fn body_json(request: Request, limit: usize) -> Result<Value, ApiError> {
    let bytes = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "validation",
                format!("the body is larger than {limit} bytes"),
            )
        })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(vec![Issue::new("", "invalid_json", e.to_string())]))
}

fn plan_of(context: &Context) -> String {
    serde_json::to_value(context.record.plan)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl Context {
    /// The request's tenant context (upstream `ResolvedTenantContext`: tenant, plan, region,
    /// database URL, status).
    fn resolved(&self) -> fleet_protocol::contracts::ResolvedTenantContext {
        fleet_protocol::contracts::ResolvedTenantContext {
            tenant_id: self.tenant.clone(),
            plan: self.record.plan,
            region: self.record.region,
            db_url: self
                .record
                .connection
                .as_ref()
                .map(|c| c.url.clone())
                .unwrap_or_default(),
            status: self.record.status(),
        }
    }
}

tokio::task_local! {
    /// The plan of the request's tenant, once its record was read.
    static PLAN: std::cell::RefCell<Option<String>>;
}

/// Notes the tenant's plan for the request's metrics.
fn note_plan(record: &TenantRecord) {
    let plan = serde_json::to_value(record.plan)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned));
    let _ = PLAN.try_with(|p| *p.borrow_mut() = plan);
}

/// Records the request's tenant context in its span (and so in its logs and trace).
fn record_span(context: &Context) {
    let resolved = context.resolved();
    let span = tracing::Span::current();
    span.record("tenant", resolved.tenant_id.as_str());
    span.record("plan", plan_of(context).as_str());
    span.record("region", tracing::field::debug(&resolved.region));
    span.record("db_url", resolved.db_url.as_str());
}

/// A refusal by a quota, with upstream's `QuotaEnforcementResult`.
pub fn quota_refusal(code: &'static str, result: &QuotaEnforcementResult) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        code,
        "rate_limit",
        result.message.clone().unwrap_or_else(|| {
            format!(
                "{} exceeded",
                result.exceeded_quota.as_deref().unwrap_or("a quota")
            )
        }),
    )
    .with(serde_json::to_value(result).unwrap_or(Value::Null))
}

/// Any other path: 404 `route_not_found`, in the API's error shape.
pub async fn no_route(uri: axum::http::Uri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        "not_found",
        format!(
            "no route {}: the data API is /api/v1/data/:object[/:id]",
            uri.path()
        ),
    )
    .into_response()
}

/// A method the path does not take: 405 `method_not_allowed`, in the API's error shape.
pub async fn no_method(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "validation",
        format!("{method} is not served on {}", uri.path()),
    )
    .into_response()
}
