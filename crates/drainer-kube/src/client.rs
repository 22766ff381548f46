//! The connection to the API server. kube's default client speaks HTTP/1.1 only, so every
//! concurrent request opens a TLS connection of its own: fifty pods handing off at once meant
//! fifty TLS handshakes before fifty TokenReviews, on the API server's CPU and drainer's. This
//! client offers HTTP/2 by ALPN (falling back to HTTP/1.1 where the server declines), so
//! every request and watch shares one warm connection; the rest of the stack (base URL,
//! credentials that refresh from the projected token file, extra headers) is kube's own.
//! Every request is counted by method in `drainer_kube_api_requests_total`.

use drainer_server::metrics::{ApiRequestCounts, ApiRequestLabel};
use kube::client::ConfigExt;
use kube::{Client, Config};
use std::time::Duration;

/// How long a new connection to the API server may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for the in-cluster config or `KUBECONFIG` that multiplexes its requests over
/// HTTP/2 when the API server offers it.
pub async fn connect() -> Result<Client, super::Error> {
    connect_counted(ApiRequestCounts::default()).await
}

/// [`connect`], counting every request in `counts`.
pub(crate) async fn connect_counted(counts: ApiRequestCounts) -> Result<Client, super::Error> {
    let config = Config::infer()
        .await
        .map_err(|e| super::Error::Config(e.to_string()))?;
    from_config(config, counts)
}

/// The label of a request: its method, `WATCH` for a watch (a `GET` with `watch=true`).
fn request_label<B>(request: &http::Request<B>) -> ApiRequestLabel {
    let watch = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let method = if watch {
        "WATCH".to_owned()
    } else {
        request.method().as_str().to_owned()
    };
    ApiRequestLabel { method }
}

/// The client of [`connect`] for a given configuration.
pub(crate) fn from_config(
    config: Config,
    counts: ApiRequestCounts,
) -> Result<Client, super::Error> {
    let failed =
        |what: &str, e: &dyn std::fmt::Display| super::Error::Config(format!("{what}: {e}"));
    if config.proxy_url.is_some() {
        // kube's own stack knows proxies; multiplexing through one is not worth a second path
        // (nor counting its requests).
        return Client::try_from(config).map_err(|e| failed("client", &e));
    }
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    let tls = config
        .rustls_client_config()
        .map_err(|e| failed("TLS configuration", &e))?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    let mut https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = name
            .clone()
            .try_into()
            .map_err(|e| failed("TLS server name", &e))?;
        https = https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let https = https.enable_all_versions().wrap_connector(http);
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .timer(hyper_util::rt::TokioTimer::new())
        .build(https);
    let auth = config.auth_layer().map_err(|e| failed("credentials", &e))?;
    let headers = config
        .extra_headers_layer()
        .map_err(|e| failed("headers", &e))?;
    let service = tower::ServiceBuilder::new()
        .map_request(move |request: http::Request<kube::client::Body>| {
            counts.get_or_create(&request_label(&request)).inc();
            request
        })
        .layer(config.base_uri_layer())
        .option_layer(auth)
        .layer(headers)
        .map_err(tower::BoxError::from)
        .service(hyper);
    Ok(Client::new(service, config.default_namespace))
}

#[cfg(test)]
mod tests {
    use super::request_label;

    fn label(method: &str, uri: &str) -> String {
        let request = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap();
        request_label(&request).method
    }

    #[test]
    fn requests_are_counted_by_method_and_watches_apart() {
        let claims = "/api/v1/namespaces/shop/persistentvolumeclaims";
        assert_eq!(label("GET", claims), "GET");
        assert_eq!(label("GET", &format!("{claims}?limit=500")), "GET");
        assert_eq!(
            label("GET", &format!("{claims}?resourceVersion=1&watch=true")),
            "WATCH"
        );
        assert_eq!(label("GET", &format!("{claims}?watchful=true")), "GET");
        assert_eq!(label("PATCH", &format!("{claims}/data-web-0")), "PATCH");
        assert_eq!(label("DELETE", &format!("{claims}/data-web-0")), "DELETE");
    }
}
