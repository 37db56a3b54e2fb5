//! Connecting to the server: the CLI's side of the API.

use std::path::PathBuf;
use std::time::Duration;

use stagetime_core::{Error, FieldErrors};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::{legacy, v1};

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `http://host:port` (plaintext) or `https://host:port` (TLS).
    pub server: String,
    /// Bearer token sent with every call.
    pub token: Option<String>,
    /// Extra CA certificate (PEM) to trust for `https://`, besides the
    /// system's roots.
    pub ca_cert: Option<PathBuf>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Largest message accepted or sent.
    pub max_message_bytes: usize,
}

impl ClientConfig {
    /// Defaults for `server`: no token, 5 s connect timeout, 4 MiB messages.
    pub fn new(server: impl Into<String>) -> Self {
        ClientConfig {
            server: server.into(),
            token: None,
            ca_cert: None,
            connect_timeout: Duration::from_secs(5),
            max_message_bytes: 4 << 20,
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A channel with the token attached.
pub type AuthChannel = InterceptedService<Channel, Bearer>;

/// Clients of every API service over one connection.
#[derive(Debug, Clone)]
pub struct Client {
    /// `stagetime.v1.Runs`.
    pub runs: v1::runs_client::RunsClient<AuthChannel>,
    /// The legacy `StageTimeApplicationService`.
    pub create: legacy::stage_time_application_service_client::StageTimeApplicationServiceClient<
        AuthChannel,
    >,
    /// The legacy `Statuses`.
    pub statuses: legacy::statuses_client::StatusesClient<AuthChannel>,
}

fn invalid(field: &str, message: impl std::fmt::Display) -> Error {
    let mut e = FieldErrors::default();
    e.push(field, message.to_string());
    Error::Invalid(e)
}

/// Connects (eagerly, so an unreachable server is reported here).
///
/// # Errors
/// [`Error::Invalid`] naming `server`, `token` or `ca_cert` for bad
/// settings; [`Error::Unavailable`] when the server cannot be reached.
pub async fn connect(config: &ClientConfig) -> Result<Client, Error> {
    let url = config.server.trim();
    let tls = if url.starts_with("https://") {
        true
    } else if url.starts_with("http://") {
        false
    } else {
        return Err(invalid(
            "server",
            format!("{url:?} must start with http:// (plaintext) or https:// (TLS)"),
        ));
    };
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| invalid("server", format!("{url:?}: {e}")))?
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(30));
    if tls {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &config.ca_cert {
            let pem = std::fs::read(ca)
                .map_err(|e| invalid("ca_cert", format!("cannot read {}: {e}", ca.display())))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| invalid("server", format!("TLS setup: {e}")))?;
    }
    let token = match &config.token {
        Some(t) if !t.trim().is_empty() => Some(
            format!("Bearer {}", t.trim())
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| invalid("token", "must be printable ASCII"))?,
        ),
        _ => None,
    };
    let channel = endpoint.connect().await.map_err(|e| {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        Error::unavailable(format!("server {url}"), message)
    })?;
    let max = config.max_message_bytes;
    let ch = InterceptedService::new(channel, Bearer(token));
    Ok(Client {
        runs: v1::runs_client::RunsClient::new(ch.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        create:
            legacy::stage_time_application_service_client::StageTimeApplicationServiceClient::new(
                ch.clone(),
            )
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        statuses: legacy::statuses_client::StatusesClient::new(ch)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    })
}
