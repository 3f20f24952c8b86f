//! The etcd client side shared by every role: connection settings (endpoints, auth, TLS), and
//! reading who leads an election. Aggregators campaign (`aggregator::election`); pickers and
//! scrapers only read the leader's value here, so they depend on nothing of the aggregator.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub election: String,
    /// This replica's identity, stored as the leader value (its control-plane address).
    pub value: String,
    pub ttl: Duration,
    pub user: Option<(String, String)>,
    /// TLS towards etcd; endpoints without a scheme then get `https://`.
    pub tls: Option<EtcdTls>,
}

impl EtcdSettings {
    /// Plaintext, no auth; set `user` / `tls` on the result as needed.
    pub fn new(endpoints: Vec<String>, election: impl Into<String>, value: impl Into<String>, ttl: Duration) -> Self {
        EtcdSettings { endpoints, election: election.into(), value: value.into(), ttl, user: None, tls: None }
    }
}

/// PEM material for TLS to etcd, read once at startup so a bad path fails the process early.
#[derive(Clone, Default)]
pub struct EtcdTls {
    /// CA bundle that signed etcd's server certificate (default: the system's trust roots).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key, for etcd's `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.identity.is_some())
            .finish()
    }
}

impl EtcdTls {
    /// Reads the files; `cert` and `key` come together or not at all. Errors name the flag.
    pub fn from_files(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<EtcdTls, crate::config::ConfigError> {
        use crate::config::ConfigError;
        let read = |p: &std::path::Path, flag: &str| {
            std::fs::read(p).map_err(|e| ConfigError::invalid(flag, format!("cannot read {}: {e}", p.display())))
        };
        let ca_pem = ca.map(|p| read(p, "--etcd-ca-file")).transpose()?;
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read(c, "--etcd-cert-file")?, read(k, "--etcd-key-file")?)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::invalid(
                    "--etcd-cert-file",
                    "--etcd-cert-file and --etcd-key-file go together",
                ));
            }
        };
        Ok(EtcdTls { ca_pem, identity })
    }

    fn options(&self) -> etcd_client::TlsOptions {
        let mut tls = etcd_client::TlsOptions::new();
        match &self.ca_pem {
            Some(ca) => tls = tls.ca_certificate(etcd_client::Certificate::from_pem(ca)),
            None => tls = tls.with_native_roots(),
        }
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        tls
    }
}

/// A client for `s` (lazy: errors surface at the first RPC) whose requests time out after TTL/2.
pub async fn connect(s: &EtcdSettings) -> Result<Client, etcd_client::Error> {
    connect_with(s, Some(s.ttl / 2)).await
}

/// A client without a request timeout, for calls that block by design: a campaign waits for as
/// long as another replica leads (a timeout would drop the standby out of the queue and re-create
/// its key every time).
pub async fn connect_blocking(s: &EtcdSettings) -> Result<Client, etcd_client::Error> {
    connect_with(s, None).await
}

async fn connect_with(s: &EtcdSettings, timeout: Option<Duration>) -> Result<Client, etcd_client::Error> {
    let mut opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
    if let Some(t) = timeout {
        opts = opts.with_timeout(t);
    }
    if let Some((u, p)) = &s.user {
        opts = opts.with_user(u.clone(), p.clone());
    }
    let mut endpoints = s.endpoints.clone();
    if let Some(tls) = &s.tls {
        opts = opts.with_tls(tls.options());
        // etcd-client refuses TLS options on `http://` URLs; a bare `host:port` becomes https.
        for e in &mut endpoints {
            if !e.contains("://") {
                *e = format!("https://{e}");
            }
        }
    }
    Client::connect(endpoints, Some(opts)).await
}

/// The current leader's value (address), if any, with a fresh client.
pub async fn current_leader(s: &EtcdSettings) -> Result<Option<String>, etcd_client::Error> {
    let mut client = connect(s).await?;
    leader_value(&mut client, &s.election).await
}

/// The value (address) of `election`'s leader, if any.
pub async fn leader_value(client: &mut Client, election: &str) -> Result<Option<String>, etcd_client::Error> {
    match client.leader(election).await {
        Ok(resp) => Ok(resp.kv().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())),
        Err(etcd_client::Error::GRpcStatus(st)) if st.message().contains("no leader") => Ok(None),
        Err(e) => Err(e),
    }
}
