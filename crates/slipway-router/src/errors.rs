//! Heroku's router error codes, and the page and log text for each.

use http::StatusCode;

/// The headers of every error page the router answers with, besides its `X-Request-Id`.
pub(crate) const PAGE_HEADERS: [(&str, &str); 2] = [
    ("content-type", "text/html; charset=utf-8"),
    ("cache-control", "no-cache, no-store"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterError {
    /// H10: no web dyno is up.
    AppCrashed,
    /// H12: no response within the request timeout.
    RequestTimeout,
    /// H13: the dyno closed the connection without a response.
    ConnectionClosed,
    /// H15: the dyno sent nothing for the idle window after its first byte.
    IdleConnection,
    /// H18: the dyno closed the connection in the middle of its response.
    ServerInterrupted,
    /// H27: the client went away before the response was complete (status 499).
    ClientInterrupted,
    /// H14: the formation has no web dynos.
    NoWebDynos,
    /// H20: no web dyno came up while the request waited.
    BootTimeout,
    /// H80: maintenance mode.
    Maintenance,
    /// H25: the request has more than one `Host`, or a `Host` that disagrees with its
    /// absolute URI, so which app it is for is ambiguous (400).
    ConflictingHost,
    /// H25: the request's headers are over the router's limit (431).
    HeadersTooLarge,
    /// No app by that name (not a Heroku H code: Heroku answers 404 "no such app").
    NoSuchApp,
}

impl RouterError {
    pub fn code(self) -> Option<&'static str> {
        match self {
            RouterError::AppCrashed => Some("H10"),
            RouterError::RequestTimeout => Some("H12"),
            RouterError::ConnectionClosed => Some("H13"),
            RouterError::NoWebDynos => Some("H14"),
            RouterError::IdleConnection => Some("H15"),
            RouterError::ServerInterrupted => Some("H18"),
            RouterError::ClientInterrupted => Some("H27"),
            RouterError::BootTimeout => Some("H20"),
            RouterError::Maintenance => Some("H80"),
            RouterError::ConflictingHost | RouterError::HeadersTooLarge => Some("H25"),
            RouterError::NoSuchApp => None,
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            RouterError::AppCrashed => "App crashed",
            RouterError::RequestTimeout => "Request timeout",
            RouterError::ConnectionClosed => "Connection closed without response",
            RouterError::NoWebDynos => "No web processes running",
            RouterError::IdleConnection => "Idle connection",
            RouterError::ServerInterrupted => "Server Request Interrupted",
            RouterError::ClientInterrupted => "Client Request Interrupted",
            RouterError::BootTimeout => "App boot timeout",
            RouterError::Maintenance => "Maintenance mode",
            RouterError::ConflictingHost => "HTTP restriction: conflicting Host headers",
            RouterError::HeadersTooLarge => "HTTP restriction: request headers too large",
            RouterError::NoSuchApp => "No such app",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            RouterError::NoSuchApp => StatusCode::NOT_FOUND,
            RouterError::ConflictingHost => StatusCode::BAD_REQUEST,
            RouterError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            // nginx's "client closed request"; Heroku logs H27 with it.
            RouterError::ClientInterrupted => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn page(self) -> String {
        let (title, text) = match self {
            RouterError::NoSuchApp => (
                "No such app",
                "There is no app configured at that hostname. Check the address, or create the app with `slipway apps:create`.",
            ),
            RouterError::ConflictingHost => (
                "Bad request",
                "The request names more than one host (several Host headers, or a Host that differs from the address in the request line).",
            ),
            RouterError::HeadersTooLarge => (
                "Request headers too large",
                "The request's headers are larger than this server accepts.",
            ),
            RouterError::Maintenance => (
                "Offline for Maintenance",
                "This app is undergoing maintenance right now. Please check back later.",
            ),
            _ => (
                "Application error",
                "An error occurred in the application and your page could not be served. If you are the application owner, check your logs for details: `slipway logs --tail`.",
            ),
        };
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n<body><h1>{title}</h1>\n<p>{text}</p>\n</body></html>\n"
        )
    }
}
