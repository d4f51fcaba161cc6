//! A bounded HTTP/1.1 GET for status endpoints, on hyper's client connection (already in
//! the agent through tonic), one short-lived connection per reading.
//!
//! Bounded in time (connect, headers and body together) and size (the body), and run
//! as a future on the agent's own thread: a slow server delays only its own reading.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, Uri, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting failed (the server is down).
    #[error("connect to {authority}: {source}")]
    Connect {
        /// host:port.
        authority: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The whole exchange took longer than the timeout.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Protocol(String),
    /// The server answered with a non-2xx status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The body is larger than allowed.
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
}

/// A status endpoint: `http://host[:port]/path?query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    host: String,
    port: u16,
    authority: String,
    path: String,
}

impl Endpoint {
    /// Parses an `http://` URL (HTTPS is not supported: status endpoints are local).
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "`{url}` must start with http:// (status endpoints are read over plain HTTP)"
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("`{url}` has no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let authority = uri
            .authority()
            .map_or_else(|| host.clone(), |a| a.as_str().to_owned());
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        Ok(Self {
            host,
            port,
            authority,
            path,
        })
    }

    /// GETs the endpoint and returns its body: at most `max_body` bytes, all within
    /// `timeout`.
    pub async fn get(&self, timeout: Duration, max_body: usize) -> Result<Bytes, HttpError> {
        tokio::time::timeout(timeout, self.exchange(max_body))
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }

    async fn exchange(&self, max_body: usize) -> Result<Bytes, HttpError> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| HttpError::Connect {
                authority: self.authority.clone(),
                source,
            })?;
        // Nagle would hold the request back for nothing.
        let _ = stream.set_nodelay(true);
        let protocol = |e: hyper::Error| HttpError::Protocol(e.to_string());
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(protocol)?;
        let request = Request::get(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(
                header::USER_AGENT,
                concat!("rally-agent/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| HttpError::Protocol(e.to_string()))?;
        let fetch = async move {
            let response = sender.send_request(request).await.map_err(protocol)?;
            let status = response.status();
            if !status.is_success() {
                return Err(HttpError::Status(status.as_u16()));
            }
            let body = Limited::new(response.into_body(), max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HttpError::TooLarge(max_body)
                    } else {
                        HttpError::Protocol(e.to_string())
                    }
                })?;
            // Dropping the sender lets the connection future finish.
            drop(sender);
            Ok(body.to_bytes())
        };
        // The connection future does the I/O; it ends once the response is read and
        // the sender is gone (or the server closed).
        let (body, _connection) = tokio::join!(fetch, connection);
        body
    }
}

/// A status page to read: its endpoint, and how long and how much a reading may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPage {
    endpoint: Endpoint,
    timeout: Duration,
    max_body: usize,
}

impl StatusPage {
    /// The page at `endpoint`, answered within `timeout` and at most `max_body` bytes.
    pub fn new(endpoint: Endpoint, timeout: Duration, max_body: usize) -> Self {
        Self {
            endpoint,
            timeout,
            max_body,
        }
    }

    /// One reading of the page: its body.
    pub async fn get(&self) -> Result<Bytes, HttpError> {
        self.endpoint.get(self.timeout, self.max_body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn endpoints_parse_and_https_is_refused() {
        let e = Endpoint::parse("http://127.0.0.1:8080/nginx_status").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("127.0.0.1", 8080, "/nginx_status")
        );
        let e = Endpoint::parse("http://localhost/server-status?auto").unwrap();
        assert_eq!((e.port, e.path.as_str()), (80, "/server-status?auto"));
        let e = Endpoint::parse("http://[::1]:81/status").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 81));
        assert!(Endpoint::parse("https://127.0.0.1/status").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }

    async fn serve_once(response: &'static [u8]) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket.write_all(response).await;
        });
        Endpoint::parse(&format!("http://127.0.0.1:{port}/status")).unwrap()
    }

    #[tokio::test]
    async fn reads_a_body_and_bounds_it() {
        let e = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").await;
        let body = e.get(Duration::from_secs(5), 1024).await.unwrap();
        assert_eq!(&body[..], b"hello");

        let e = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").await;
        let err = e.get(Duration::from_secs(5), 4).await.unwrap_err();
        assert!(matches!(err, HttpError::TooLarge(4)), "{err}");

        let e = serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
        let err = e.get(Duration::from_secs(5), 1024).await.unwrap_err();
        assert!(matches!(err, HttpError::Status(404)), "{err}");
    }

    #[tokio::test]
    async fn a_closed_port_or_a_silent_server_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let e = Endpoint::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let err = e.get(Duration::from_secs(5), 1024).await.unwrap_err();
        assert!(matches!(err, HttpError::Connect { .. }), "{err}");

        // Accepts (the kernel's backlog) but never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let e = Endpoint::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let err = e.get(Duration::from_millis(200), 1024).await.unwrap_err();
        assert!(matches!(err, HttpError::Timeout(_)), "{err}");
    }
}
