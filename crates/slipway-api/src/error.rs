//! API errors: the one place where failures become HTTP statuses and `{"id","message"}` bodies.
//!
//! Ids are the Platform API's: `bad_request` (400: the body is not JSON, a header is
//! malformed), `unauthorized` (401), `forbidden` (403), `not_found` (404),
//! `method_not_allowed` (405), `conflict` (409), `invalid_params` (422: well-formed but wrong:
//! a field of the wrong type or unknown, a value out of range), `rate_limit` (429),
//! `not_implemented` (501: a feature slipway does not have yet), `internal_server_error` (500).
//! Messages never carry config values or tokens.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use slipway_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub id: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, id: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            id,
            message: message.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_params", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            message,
        )
    }

    /// A feature slipway does not have yet: say so, never pretend it worked.
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Invalid credentials provided. Use the token in <data-dir>/admin.token (Authorization: Bearer TOKEN, or as the git password).",
        )
    }

    /// Internal failures are logged in full and reported without details, so paths, SQL and
    /// secrets never reach a client.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        let reference = uuid::Uuid::new_v4();
        tracing::error!(%reference, "{context}: {err}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            format!(
                "Internal server error while {context}; see the server log, reference {reference}."
            ),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => {
                ApiError::not_found(format!("Couldn't find that {what}."))
            }
            StoreError::Conflict(what) => {
                ApiError::invalid(format!("{what} already exists; choose another name."))
            }
            other => ApiError::internal("accessing the state database", other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "id": self.id, "message": self.message });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"slipway\""),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `Json<T>` whose rejections (bad JSON, wrong content type, too large) answer in the API's
/// `{"id","message"}` shape like every other error.
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// Bodies that are not JSON are `bad_request` (400); JSON of the wrong shape (a missing or
/// unknown field, a wrong type) is `invalid_params` (422), as the Platform API answers.
fn json_rejection(rejection: axum::extract::rejection::JsonRejection) -> ApiError {
    use axum::extract::rejection::JsonRejection as R;
    let status = rejection.status();
    match rejection {
        R::JsonDataError(e) => ApiError::invalid(format!(
            "Invalid request body: {}",
            // serde's own words, after axum's preamble ("Failed to deserialize ...: ").
            e.body_text()
                .split_once(": ")
                .map_or(e.body_text(), |(_, why)| why.to_string())
        )),
        R::JsonSyntaxError(e) => ApiError::bad_request(format!(
            "Invalid request body: not valid JSON ({})",
            e.body_text()
                .split_once(": ")
                .map_or(e.body_text(), |(_, why)| why.to_string())
        )),
        R::MissingJsonContentType(_) => ApiError::new(
            status,
            "bad_request",
            "Invalid request body: send it as JSON with Content-Type: application/json.",
        ),
        other => ApiError::new(
            status,
            "bad_request",
            format!("Invalid request body: {}", other.body_text()),
        ),
    }
}

/// `Path<T>` whose rejections answer in the API's error shape. The message never repeats the
/// path itself (a log-session URL carries its secret there).
pub struct ApiPath<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(_) => Err(ApiError::bad_request(
                "Invalid URL: a path segment is not valid UTF-8 or not what this endpoint takes.",
            )),
        }
    }
}

impl<T, S> axum::extract::OptionalFromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    /// No body at all is `None`; a body that is not valid JSON is an error.
    async fn from_request(
        req: axum::extract::Request,
        state: &S,
    ) -> Result<Option<Self>, ApiError> {
        let empty = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v == "0")
            || (!req.headers().contains_key(axum::http::header::CONTENT_TYPE)
                && !req
                    .headers()
                    .contains_key(axum::http::header::CONTENT_LENGTH)
                && !req
                    .headers()
                    .contains_key(axum::http::header::TRANSFER_ENCODING));
        if empty {
            return Ok(None);
        }
        <ApiJson<T> as axum::extract::FromRequest<S>>::from_request(req, state)
            .await
            .map(Some)
    }
}
