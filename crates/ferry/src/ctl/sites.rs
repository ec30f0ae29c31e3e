//! `ferry ctl sites ...`: read, change, query and remove sites; `set` fills
//! what is not given from the current record.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use ferry_admin_api::sites::{
    Applied, QueriedSite, QueryAnswer, SiteBatch, SiteChange, SiteListQuery, SiteState,
};
use ferry_admin_api::AdminClient;

use super::failure;
use super::table::{Out, Table};
use crate::Failure;

#[derive(clap::Subcommand)]
pub(super) enum SitesCmd {
    /// List sites in host order, a page at a time.
    List {
        /// Only hosts starting with this text.
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// One site: placement, state, epoch, held and in-flight requests.
    Get {
        /// The site's configured name or pattern (`*.example.com`).
        host: String,
    },
    /// Add or change a site. What is not given is kept from the current
    /// record; without --epoch, the current epoch + 1.
    Set {
        /// The site's name or pattern (`*.example.com`).
        host: String,
        /// pool:NAME or remote:NAME (required for a new site).
        #[arg(long)]
        placement: Option<String>,
        /// What the router does with the site's requests (frozen: hold them).
        #[arg(long, value_enum)]
        state: Option<SiteStateArg>,
        /// The change's epoch: above the current one, or equal with the
        /// same content (a no-op); lower is refused (exit 3).
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Apply a JSON file {"sites": [{host, placement, state, epoch}, ...]}
    /// atomically: all changes or none.
    Apply {
        /// The batch as a JSON file.
        file: PathBuf,
    },
    /// Several sites with their held and in-flight requests ("absent" for
    /// those the router does not have).
    Query {
        /// Site names or patterns.
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// Remove sites atomically (hosts the router does not have are ignored).
    Remove {
        /// Site names or patterns.
        #[arg(required = true)]
        hosts: Vec<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum SiteStateArg {
    /// Requests go to the placement.
    Active,
    /// 503 with the maintenance page (operator networks pass).
    Maintenance,
    /// Requests are held until the site changes again (or hold_max).
    Frozen,
}

impl From<SiteStateArg> for SiteState {
    fn from(s: SiteStateArg) -> SiteState {
        match s {
            SiteStateArg::Active => SiteState::Active,
            SiteStateArg::Maintenance => SiteState::Maintenance,
            SiteStateArg::Frozen => SiteState::Frozen,
        }
    }
}

pub(super) async fn run(api: &AdminClient, out: &Out, cmd: SitesCmd) -> Result<(), Failure> {
    match cmd {
        SitesCmd::List {
            prefix,
            limit,
            offset,
        } => {
            let q = SiteListQuery {
                prefix,
                limit: Some(limit),
                offset,
            };
            let page = api.list_sites(&q).await.map_err(failure)?;
            out.print(&page, |p| {
                let mut t = Table::new(&["HOST", "PLACEMENT", "STATE", "EPOCH"]);
                for s in &p.sites {
                    t = t.row(vec![
                        s.host.clone(),
                        s.placement.clone(),
                        s.state.to_string(),
                        s.epoch.to_string(),
                    ]);
                }
                let shown = p.sites.len();
                t.row(vec![format!("({shown} of {} sites)", p.total)])
            });
        }
        SitesCmd::Get { host } => {
            let s = api.get_site(&host).await.map_err(failure)?;
            out.print(&s, |s| site_table(&[QueriedSite::Present(s.clone())]));
        }
        SitesCmd::Set {
            host,
            placement,
            state,
            epoch,
        } => {
            // Fill what was not given from the current record.
            let current = if placement.is_none() || state.is_none() || epoch.is_none() {
                match api.get_site(&host).await {
                    Ok(s) => Some(s),
                    Err(e) if e.status() == Some(404) => None,
                    Err(e) => return Err(failure(e)),
                }
            } else {
                None
            };
            let placement = placement
                .or_else(|| current.as_ref().map(|c| c.placement.clone()))
                .ok_or_else(|| Failure::usage(anyhow!("--placement is required for a new site")))?;
            let change = SiteChange {
                host: None,
                placement,
                state: state
                    .map(SiteState::from)
                    .or_else(|| current.as_ref().map(|c| c.state))
                    .unwrap_or_default(),
                epoch: epoch.unwrap_or_else(|| current.as_ref().map_or(1, |c| c.epoch + 1)),
            };
            let a = api.put_site(&host, &change).await.map_err(failure)?;
            out.print(&a, applied_table);
        }
        SitesCmd::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))
                .map_err(Failure::usage)?;
            let batch: SiteBatch = serde_json::from_str(&text)
                .with_context(|| {
                    format!(
                        "{}: not a batch {{\"sites\": [{{host, placement, state, epoch}}, ...]}}",
                        file.display()
                    )
                })
                .map_err(Failure::usage)?;
            let a = api.apply(&batch).await.map_err(failure)?;
            out.print(&a, applied_table);
        }
        SitesCmd::Query { hosts } => {
            let sites = api.query(&hosts).await.map_err(failure)?;
            let answer = QueryAnswer { sites };
            out.print(&answer, |a| site_table(&a.sites));
        }
        SitesCmd::Remove { hosts } => {
            let r = api.remove_sites(&hosts).await.map_err(failure)?;
            out.print(&r, |r| {
                Table::fields(vec![("removed", r.removed.to_string())])
            });
        }
    }
    Ok(())
}

fn site_table(sites: &[QueriedSite]) -> Table {
    let mut t = Table::new(&["HOST", "PLACEMENT", "STATE", "EPOCH", "HELD", "IN_FLIGHT"]);
    for q in sites {
        t = t.row(match q {
            QueriedSite::Present(s) => vec![
                s.host.clone(),
                s.placement.clone(),
                s.state.to_string(),
                s.epoch.to_string(),
                s.held.to_string(),
                s.in_flight.to_string(),
            ],
            QueriedSite::Absent(a) => vec![a.host.clone(), "(absent)".into()],
        });
    }
    t
}

fn applied_table(a: &Applied) -> Table {
    Table::fields(vec![
        ("added", a.added.to_string()),
        ("changed", a.changed.to_string()),
        ("unchanged", a.unchanged.to_string()),
    ])
}
