//! Fetching one metrics page: a per-scrape timeout and a size cap, through the endpoint's own
//! plain-HTTP connection ([`super::http1`]) or the shared keep-alive client (HTTPS, redirects).

use std::time::Duration;

use super::http1::{Conn, Got};
use crate::metrics::{EngineMapping, Normalized, normalize};
pub use crate::protocol::ScrapeError;
use futures::StreamExt;

#[derive(Debug, Clone)]
pub struct FetchSettings {
    pub timeout: Duration,
    pub max_page_bytes: usize,
    /// Accept any certificate from an HTTPS model server (`metrics-data-source`'s
    /// `insecureSkipVerify`, upstream's default: model servers usually serve self-signed ones).
    pub insecure_skip_verify: bool,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings { timeout: Duration::from_secs(1), max_page_bytes: 4 * 1024 * 1024, insecure_skip_verify: false }
    }
}

/// The `User-Agent` of every scrape.
pub const USER_AGENT: &str = concat!("switchyard/", env!("CARGO_PKG_VERSION"));

/// Shared by every scraper actor of a process: one connection pool.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    settings: FetchSettings,
}

impl Fetcher {
    pub fn new(settings: FetchSettings) -> Result<Self, reqwest::Error> {
        crate::ensure_crypto_provider();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(2)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .connect_timeout(settings.timeout)
            .user_agent(USER_AGENT)
            .danger_accept_invalid_certs(settings.insecure_skip_verify)
            .build()?;
        Ok(Fetcher { client, settings })
    }

    pub fn settings(&self) -> &FetchSettings {
        &self.settings
    }

    /// GETs the page, reading at most `max_page_bytes`. The bytes are kept as received (a 47 KB
    /// page is not copied into a `String`); [`Fetcher::scrape`] checks they are UTF-8.
    pub async fn fetch(&self, url: &reqwest::Url) -> Result<bytes::Bytes, ScrapeError> {
        self.timed(self.fetch_inner(url)).await
    }

    /// `work` within the per-scrape timeout.
    async fn timed<T>(&self, work: impl Future<Output = Result<T, ScrapeError>>) -> Result<T, ScrapeError> {
        let timeout = self.settings.timeout;
        tokio::time::timeout(timeout, work).await.unwrap_or(Err(ScrapeError::Timeout(timeout)))
    }

    async fn fetch_inner(&self, url: &reqwest::Url) -> Result<bytes::Bytes, ScrapeError> {
        let resp = self.client.get(url.clone()).send().await.map_err(request_error)?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(ScrapeError::Status(resp.status().as_u16()));
        }
        let max = self.settings.max_page_bytes;
        if resp.content_length().is_some_and(|n| n as usize > max) {
            return Err(ScrapeError::TooLarge(max));
        }
        if resp.content_length().is_some() {
            // Size known and within the cap: let hyper collect it in one buffer.
            return resp.bytes().await.map_err(request_error);
        }
        let mut body = Vec::with_capacity(64 * 1024);
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(request_error)?;
            if body.len() + chunk.len() > max {
                return Err(ScrapeError::TooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.into())
    }

    /// Fetches and normalizes through the shared client; a page from which nothing mapped can be
    /// read is an error.
    pub async fn scrape(&self, url: &reqwest::Url, mapping: &EngineMapping) -> Result<Normalized, ScrapeError> {
        let page = self.fetch(url).await?;
        read_page(&page, mapping)
    }

    /// [`Fetcher::scrape`] through the endpoint's own connection when it has one (plain HTTP),
    /// under the same timeout and size cap. An endpoint that redirects is scraped through the
    /// shared client, which follows redirects, from then on.
    pub async fn scrape_on(
        &self,
        conn: Option<&mut Conn>,
        url: &reqwest::Url,
        mapping: &EngineMapping,
    ) -> Result<Normalized, ScrapeError> {
        let Some(conn) = conn.filter(|c| !c.redirected) else { return self.scrape(url, mapping).await };
        match self.timed(conn.get(self.settings.max_page_bytes)).await? {
            Got::Page(page) => read_page(page.bytes(), mapping),
            Got::Redirect => {
                tracing::debug!(%url, "metrics endpoint redirects: scraped through the shared client from now on");
                conn.redirected = true;
                self.scrape(url, mapping).await
            }
        }
    }
}

/// Checks the page is UTF-8 and normalizes it.
fn read_page(page: &[u8], mapping: &EngineMapping) -> Result<Normalized, ScrapeError> {
    // The caller's `scrape` span, when there is one.
    tracing::Span::current().record("bytes", page.len());
    let page = simdutf8::basic::from_utf8(page).map_err(|_| ScrapeError::NotUtf8)?;
    let normalized = normalize(page, mapping);
    if !normalized.any() && !mapping.names().is_empty() {
        return Err(ScrapeError::NothingMapped(normalized.errors.join("; ")));
    }
    Ok(normalized)
}

fn request_error(e: reqwest::Error) -> ScrapeError {
    if e.is_connect() {
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::ConnectionRefused
            {
                return ScrapeError::Refused;
            }
            source = s.source();
        }
    }
    ScrapeError::Request(error_chain(&e))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
