//! CORS for the `/api/` routes, as chat21-http-server's `cors()` answers browsers: a preflight
//! `OPTIONS` gets 204 before any route or token check, allowing every origin, chat21's methods
//! and the headers the browser asked for; every other `/api/` answer (refusals, timeouts and
//! unknown routes included) carries `Access-Control-Allow-Origin: *`. Tokens travel in a header
//! or the query, never in cookies, so allowing every origin exposes nothing a page could not
//! read with the token anyway. The operator endpoints (`/metrics`, health) get no CORS.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

/// The path prefix CORS applies to.
const API_PREFIX: &str = "/api/";
/// The methods a preflight allows (the `cors` package's default, which chat21 uses).
const ALLOWED_METHODS: &str = "GET,HEAD,PUT,PATCH,POST,DELETE";

/// Middleware (`axum::middleware::from_fn`) adding CORS to `/api/` requests.
pub async fn api_cors(request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with(API_PREFIX) {
        return next.run(request).await;
    }
    if request.method() == Method::OPTIONS {
        return preflight(&request);
    }
    let mut response = next.run(request).await;
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// The 204 answer to a preflight: the requested headers reflected (a header value already, and
/// bounded by the listener's header limits).
fn preflight(request: &Request) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOWED_METHODS));
    if let Some(asked) = request.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    headers.insert(header::VARY, HeaderValue::from_static("Access-Control-Request-Headers"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        Router::new()
            .route("/api/x", get(|| async { "x" }))
            .route("/metrics", get(|| async { "m" }))
            .layer(axum::middleware::from_fn(api_cors))
    }

    async fn call(request: Request) -> Response {
        app().oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn preflights_are_answered_before_routing_and_reflect_the_asked_headers() {
        for path in ["/api/x", "/api/no/such/route"] {
            let request = Request::options(path)
                .header(header::ORIGIN, "https://widget.example")
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
                .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization,content-type")
                .body(Body::empty())
                .unwrap();
            let response = call(request).await;
            assert_eq!(response.status(), StatusCode::NO_CONTENT, "{path}");
            let headers = response.headers();
            assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
            assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_METHODS], ALLOWED_METHODS);
            assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_HEADERS], "authorization,content-type");
        }
    }

    #[tokio::test]
    async fn api_answers_allow_any_origin_and_operator_endpoints_get_no_cors() {
        for (path, status) in [("/api/x", StatusCode::OK), ("/api/nothing", StatusCode::NOT_FOUND)] {
            let response = call(Request::get(path).body(Body::empty()).unwrap()).await;
            assert_eq!(response.status(), status, "{path}");
            assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*", "{path}");
        }
        let response = call(Request::get("/metrics").body(Body::empty()).unwrap()).await;
        assert!(response.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        let response = call(Request::options("/metrics").body(Body::empty()).unwrap()).await;
        assert_ne!(response.status(), StatusCode::NO_CONTENT);
    }
}
