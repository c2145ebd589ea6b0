//! The tests' blocking HTTP client: a thin layer over `ureq` with multipart forms, bearer
//! tokens and a response whose body is read once, whatever the status (4xx and 5xx are answers
//! the tests inspect, not errors).

use std::time::Duration;

pub use ureq::http::{HeaderMap, StatusCode};

pub struct Client {
    agent: ureq::Agent,
}

pub fn client() -> Client {
    let agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).timeout_global(Some(Duration::from_secs(120))).build().into();
    Client { agent }
}

impl Client {
    pub fn get(&self, url: impl Into<String>) -> RequestBuilder {
        self.request("GET", url)
    }
    pub fn post(&self, url: impl Into<String>) -> RequestBuilder {
        self.request("POST", url)
    }
    pub fn patch(&self, url: impl Into<String>) -> RequestBuilder {
        self.request("PATCH", url)
    }
    pub fn delete(&self, url: impl Into<String>) -> RequestBuilder {
        self.request("DELETE", url)
    }
    pub fn request(&self, method: &str, url: impl Into<String>) -> RequestBuilder {
        RequestBuilder { agent: self.agent.clone(), method: method.to_string(), url: url.into(), headers: Vec::new(), body: Vec::new() }
    }
}

pub struct RequestBuilder {
    agent: ureq::Agent,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RequestBuilder {
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
    pub fn bearer_auth(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header("content-type", "application/json").body(value.to_string())
    }
    pub fn multipart(self, form: Form) -> Self {
        let content_type = format!("multipart/form-data; boundary={}", form.boundary);
        self.header("content-type", content_type).body(form.into_body())
    }
    pub fn send(self) -> Result<Response, ureq::Error> {
        let mut request = ureq::http::Request::builder().method(self.method.as_str()).uri(&self.url);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request.body(self.body)?;
        let mut response = self.agent.run(request)?;
        let body = response.body_mut().with_config().limit(256 << 20).read_to_vec()?;
        Ok(Response { status: response.status(), headers: response.headers().clone(), body })
    }
}

/// A whole response.
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Response {
    pub fn status(&self) -> StatusCode {
        self.status
    }
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    /// The header's value as text, if present and printable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(self) -> std::io::Result<String> {
        Ok(String::from_utf8_lossy(&self.body).into_owned())
    }
    pub fn bytes(self) -> std::io::Result<Vec<u8>> {
        Ok(self.body)
    }
}

/// A `multipart/form-data` body.
pub struct Form {
    boundary: String,
    parts: Vec<(String, Part)>,
}

pub struct Part {
    bytes: Vec<u8>,
    file_name: Option<String>,
}

impl Part {
    pub fn bytes(bytes: Vec<u8>) -> Part {
        Part { bytes, file_name: None }
    }
    pub fn text(text: impl Into<String>) -> Part {
        Part::bytes(text.into().into_bytes())
    }
    pub fn file_name(mut self, name: impl Into<String>) -> Part {
        self.file_name = Some(name.into());
        self
    }
}

impl Default for Form {
    fn default() -> Self {
        Form::new()
    }
}

impl Form {
    pub fn new() -> Form {
        Form { boundary: "lookalike-test-boundary-5f3a9c".to_string(), parts: Vec::new() }
    }
    pub fn text(self, name: impl Into<String>, value: impl Into<String>) -> Form {
        self.part(name, Part::text(value))
    }
    pub fn part(mut self, name: impl Into<String>, part: Part) -> Form {
        self.parts.push((name.into(), part));
        self
    }
    fn into_body(self) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, part) in self.parts {
            body.extend_from_slice(format!("--{}\r\nContent-Disposition: form-data; name=\"{name}\"", self.boundary).as_bytes());
            match part.file_name {
                Some(file) => body.extend_from_slice(format!("; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes()),
                None => body.extend_from_slice(b"\r\n\r\n"),
            }
            body.extend_from_slice(&part.bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        body
    }
}
