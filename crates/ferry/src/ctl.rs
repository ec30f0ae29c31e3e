//! `ferry ctl`: the admin API's command-line client. Prints the API's JSON.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use http::Method;
use serde_json::{json, Value};

use crate::http_client::HttpClient;
use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Admin API address of the router.
    #[arg(long, env = "FERRY_ADMIN", default_value = "http://127.0.0.1:9090")]
    admin: String,
    /// Bearer token of the admin API (a value on the command line is seen
    /// by every user in `ps`: prefer --token-file or the environment).
    #[arg(long, env = "FERRY_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the bearer token (readable by its owner only, as the
    /// router's `token_file`; trimmed). Wins over --token and the environment.
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Router name, site count, held and in-flight requests.
    Status,
    /// Sites: list, get, set, apply a batch, remove.
    #[command(subcommand)]
    Sites(SitesCmd),
    /// Pools, their servers, health and serving tier.
    Pools,
    /// Set a server's state: ready, drain (finish in-flight, take no new) or maint.
    Server {
        pool: String,
        server: String,
        #[arg(value_parser = ["ready", "drain", "maint"])]
        state: String,
    },
    /// Re-read the router's config file (same as SIGHUP).
    Reload,
}

#[derive(clap::Subcommand)]
enum SitesCmd {
    /// List sites in host order.
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// One site: placement, state, epoch, held and in-flight requests.
    Get { host: String },
    /// Change a site. Without --epoch, uses the current epoch + 1.
    Set {
        host: String,
        /// pool:NAME or remote:NAME
        #[arg(long)]
        placement: Option<String>,
        /// active, maintenance or frozen
        #[arg(long, value_parser = ["active", "maintenance", "frozen"])]
        state: Option<String>,
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Apply a JSON file {"sites": [{host, placement, state, epoch}, ...]} atomically.
    Apply { file: PathBuf },
    /// Remove sites.
    Remove {
        #[arg(required = true)]
        hosts: Vec<String>,
    },
}

struct Api {
    http: HttpClient,
    base: String,
    token: Option<String>,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let url = format!("{}{}", self.base.trim_end_matches('/'), path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = Vec::new();
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        let reply = self
            .http
            .request(
                method,
                &url,
                &headers,
                body.map(|b| b.to_string().into_bytes()),
            )
            .await?;
        let v: Value =
            serde_json::from_slice(&reply.body).unwrap_or_else(|_| json!({ "raw": reply.text() }));
        if reply.status.is_success() {
            Ok(v)
        } else if reply.status.is_client_error() {
            Err(Failure::refused(anyhow!(
                "{} {}: {}",
                reply.status.as_u16(),
                path,
                pretty(&v)
            )))
        } else {
            Err(anyhow!("{} {}: {}", reply.status.as_u16(), path, pretty(&v)).into())
        }
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn encode(host: &str) -> String {
    host.replace('*', "%2A")
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let token = match &args.token_file {
        Some(path) => Some(
            ferry_secret::read_file("--token-file", path)
                .map_err(Failure::usage)?
                .expose()
                .to_string(),
        ),
        None => args.token,
    };
    let api = Api {
        http: HttpClient::new(Duration::from_secs(30)),
        base: args.admin,
        token,
    };
    let out = match args.command {
        Cmd::Status => api.call(Method::GET, "/v1/status", None).await?,
        Cmd::Pools => api.call(Method::GET, "/v1/pools", None).await?,
        Cmd::Reload => api.call(Method::POST, "/v1/reload", None).await?,
        Cmd::Server {
            pool,
            server,
            state,
        } => {
            api.call(
                Method::PUT,
                &format!("/v1/pools/{pool}/servers/{server}"),
                Some(json!({ "state": state })),
            )
            .await?
        }
        Cmd::Sites(SitesCmd::List {
            prefix,
            limit,
            offset,
        }) => {
            api.call(
                Method::GET,
                &format!(
                    "/v1/sites?prefix={}&limit={limit}&offset={offset}",
                    encode(&prefix)
                ),
                None,
            )
            .await?
        }
        Cmd::Sites(SitesCmd::Get { host }) => {
            api.call(Method::GET, &format!("/v1/sites/{}", encode(&host)), None)
                .await?
        }
        Cmd::Sites(SitesCmd::Set {
            host,
            placement,
            state,
            epoch,
        }) => {
            let path = format!("/v1/sites/{}", encode(&host));
            // Fill what was not given from the current record.
            let current = if placement.is_none() || state.is_none() || epoch.is_none() {
                Some(api.call(Method::GET, &path, None).await?)
            } else {
                None
            };
            let field = |name: &str| {
                current
                    .as_ref()
                    .and_then(|c| c.get(name))
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            };
            let placement = placement
                .or_else(|| field("placement"))
                .ok_or_else(|| Failure::usage(anyhow!("--placement is required for a new site")))?;
            let state = state
                .or_else(|| field("state"))
                .unwrap_or_else(|| "active".into());
            let epoch = match epoch {
                Some(e) => e,
                None => current
                    .as_ref()
                    .and_then(|c| c.get("epoch"))
                    .and_then(|v| v.as_u64())
                    .map(|e| e + 1)
                    .unwrap_or(1),
            };
            api.call(
                Method::PUT,
                &path,
                Some(json!({ "placement": placement, "state": state, "epoch": epoch })),
            )
            .await?
        }
        Cmd::Sites(SitesCmd::Apply { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))
                .map_err(Failure::usage)?;
            let body: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", file.display()))
                .map_err(Failure::usage)?;
            api.call(Method::POST, "/v1/sites", Some(body)).await?
        }
        Cmd::Sites(SitesCmd::Remove { hosts }) => {
            api.call(
                Method::POST,
                "/v1/sites/remove",
                Some(json!({ "hosts": hosts })),
            )
            .await?
        }
    };
    println!("{}", pretty(&out));
    Ok(())
}
