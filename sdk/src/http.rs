//! A small blocking HTTP client over `wasi:http/outgoing-handler`: [`HttpRequest`] in,
//! [`HttpResponse`] out. The host allows a request only to destinations the plugin requested
//! (`outbound-http`) and the operator granted; otherwise it fails with [`HttpError`] saying
//! the request was denied (the host logs which grant would allow it).

use std::fmt;

/// An HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The absolute URL, `http://` or `https://`.
    pub url: String,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// The body (empty for none).
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// A `GET` of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        HttpRequest { method: "GET".into(), url: url.into(), headers: Vec::new(), body: Vec::new() }
    }

    /// A `POST` of `body` to `url`.
    pub fn post(url: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        HttpRequest { method: "POST".into(), url: url.into(), headers: Vec::new(), body: body.into() }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Splits the URL into scheme, authority (`host[:port]`) and path with query.
    pub fn parts(&self) -> Result<(&str, &str, &str), HttpError> {
        let (scheme, rest) =
            self.url.split_once("://").ok_or_else(|| HttpError(format!("{:?} is not an absolute URL", self.url)))?;
        if scheme != "http" && scheme != "https" {
            return Err(HttpError(format!("{:?}: only http and https are supported", self.url)));
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(HttpError(format!("{:?} has no host", self.url)));
        }
        Ok((scheme, authority, path))
    }
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with this status and body and no headers (for tests).
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        HttpResponse { status, headers: Vec::new(), body: body.into() }
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// An HTTP request that failed before a response arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError(pub String);

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HttpError {}

/// Sends a request through `wasi:http` and reads the whole response.
#[cfg(target_arch = "wasm32")]
pub(crate) fn send(request: &HttpRequest) -> Result<HttpResponse, HttpError> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    use wasip2::io::streams::StreamError;

    let (scheme, authority, path) = request.parts()?;
    let fail = |what: &str| HttpError(format!("{} {}: {what}", request.method, request.url));
    let mut entries: Vec<(String, Vec<u8>)> =
        request.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())).collect();
    // A known length rather than chunked encoding: every server understands it.
    if !request.body.is_empty() && !entries.iter().any(|(k, _)| k == "content-length") {
        entries.push(("content-length".into(), request.body.len().to_string().into_bytes()));
    }
    let headers = Fields::from_list(&entries).map_err(|e| fail(&format!("invalid header: {e:?}")))?;
    let outgoing = OutgoingRequest::new(headers);
    let method = match request.method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "HEAD" => Method::Head,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_string()),
    };
    let scheme = if scheme == "http" { Scheme::Http } else { Scheme::Https };
    outgoing.set_method(&method).map_err(|()| fail("invalid method"))?;
    outgoing.set_scheme(Some(&scheme)).map_err(|()| fail("invalid scheme"))?;
    outgoing.set_authority(Some(authority)).map_err(|()| fail("invalid host"))?;
    outgoing.set_path_with_query(Some(path)).map_err(|()| fail("invalid path"))?;
    let body = outgoing.body().map_err(|()| fail("no request body"))?;
    let future = outgoing_handler::handle(outgoing, None).map_err(|e| error_code(&fail, e))?;
    let wait = || loop {
        if let Some(result) = future.get() {
            break result
                .map_err(|()| fail("the response was already taken"))?
                .map_err(|e: ErrorCode| error_code(&fail, e));
        }
        future.subscribe().block();
    };
    let written = (|| {
        let stream = body.write().map_err(|()| fail("cannot write the request body"))?;
        for chunk in request.body.chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| fail(&format!("writing the body: {e:?}")))?;
        }
        Ok::<(), HttpError>(())
    })();
    if let Err(write_error) = written {
        // The host may have refused the request (denied, unreachable): its reason is in the
        // response, and says more than the closed body stream.
        return Err(wait().err().unwrap_or(write_error));
    }
    if let Err(e) = OutgoingBody::finish(body, None) {
        return Err(wait().err().unwrap_or_else(|| error_code(&fail, e)));
    }
    let response = wait()?;
    let headers =
        response.headers().entries().into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned())).collect();
    let status = response.status();
    let incoming = response.consume().map_err(|()| fail("no response body"))?;
    let mut body = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| fail("no response body stream"))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => return Err(fail(&format!("reading the body: {e:?}"))),
            }
        }
    }
    Ok(HttpResponse { status, headers, body })
}

#[cfg(target_arch = "wasm32")]
fn error_code(fail: &dyn Fn(&str) -> HttpError, code: wasip2::http::types::ErrorCode) -> HttpError {
    use wasip2::http::types::ErrorCode;
    match code {
        ErrorCode::HttpRequestDenied => {
            fail("denied by the host: this destination is not granted to the plugin (see the build log)")
        }
        other => fail(&format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts() {
        let request = HttpRequest::get("https://hooks.example.com:8443/a/b?c=d");
        assert_eq!(request.parts().unwrap(), ("https", "hooks.example.com:8443", "/a/b?c=d"));
        assert_eq!(HttpRequest::get("http://x").parts().unwrap(), ("http", "x", "/"));
        assert!(HttpRequest::get("ftp://x/").parts().unwrap_err().0.contains("only http and https"));
        assert!(HttpRequest::get("x/y").parts().is_err());
    }
}
