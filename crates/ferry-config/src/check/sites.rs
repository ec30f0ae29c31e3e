//! `[[remote]]` and `[[site]]`.

use std::collections::HashMap;
use std::ops::Range;

use ferry_model::{Hostname, Placement};

use super::{Cx, Result};
use crate::raw::{RawRemote, RawSite};
use crate::{ListenerSpec, RemoteSpec, SiteSpec};

impl Cx<'_> {
    pub(super) fn remotes(
        &self,
        raw: Vec<RawRemote>,
        router_name: &str,
        listeners: &[ListenerSpec],
        local_pools: &[&str],
    ) -> Result<Vec<RemoteSpec>> {
        let mut seen: HashMap<String, Range<usize>> = HashMap::new();
        // Pool name -> the remote that claims it: a pool lives in one place.
        let mut claimed: HashMap<String, String> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for r in raw {
            let name = self.name("remote", &r.name)?;
            if let Some(first) = seen.get(&name) {
                return Err(self.error(
                    r.name.span(),
                    format!(
                        "remote {name:?} is defined twice (first at line {})",
                        self.line_of(first)
                    ),
                ));
            }
            if name == router_name {
                return Err(self.error(
                    r.name.span(),
                    format!("remote {name:?} has this router's own name (router.name)"),
                ));
            }
            let address = self.socket_addr(&format!("remote {name:?}: address"), &r.address)?;
            // Forwarding to our own listener would loop forever.
            if listeners.iter().any(|l| l.listen == address) {
                return Err(self.error(
                    r.address.span(),
                    format!("remote {name:?}: address {address} is one of this router's listeners"),
                ));
            }
            let passthrough = match &r.passthrough {
                Some(p) => Some(self.socket_addr(&format!("remote {name:?}: passthrough"), p)?),
                None => None,
            };
            let mut pools = Vec::with_capacity(r.pools.len());
            for p in &r.pools {
                let pool = self.name("pool", p)?;
                if local_pools.contains(&pool.as_str()) {
                    return Err(self.error(
                        p.span(),
                        format!("remote {name:?}: pool {pool:?} is one of this router's own pools"),
                    ));
                }
                if let Some(other) = claimed.insert(pool.clone(), name.clone()) {
                    let whose = if other == name {
                        "listed twice".to_string()
                    } else {
                        format!("also listed by remote {other:?}")
                    };
                    return Err(self.error(
                        p.span(),
                        format!("remote {name:?}: pool {pool:?} is {whose}"),
                    ));
                }
                pools.push(pool);
            }
            seen.insert(name.clone(), r.name.span());
            out.push(RemoteSpec {
                name,
                address,
                proxy_protocol: r.proxy_protocol,
                passthrough,
                pools,
            });
        }
        Ok(out)
    }

    pub(super) fn sites(
        &self,
        raw: Vec<RawSite>,
        pool_names: &[&str],
        remotes: &[RemoteSpec],
    ) -> Result<Vec<SiteSpec>> {
        let mut seen: HashMap<Hostname, Range<usize>> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for s in raw {
            let host = Hostname::parse(s.host.get_ref()).map_err(|e| {
                self.error(s.host.span(), format!("site {:?}: {e}", s.host.get_ref()))
            })?;
            let ctx = format!("site \"{host}\"");
            if let Some(first) = seen.get(&host) {
                return Err(self.error(
                    s.host.span(),
                    format!(
                        "{ctx} is defined twice (first at line {})",
                        self.line_of(first)
                    ),
                ));
            }
            seen.insert(host.clone(), s.host.span());
            let text = s.placement.get_ref();
            let placement = Placement::parse(text).ok_or_else(|| {
                self.error(
                    s.placement.span(),
                    format!("{ctx}: placement {text:?} is not \"pool:NAME\" or \"remote:NAME\""),
                )
            })?;
            let exists = match &placement {
                Placement::Pool(p) => {
                    pool_names.contains(&p.as_str()) || remotes.iter().any(|x| x.pools.contains(p))
                }
                Placement::Remote(r) => remotes.iter().any(|x| &x.name == r),
            };
            if !exists {
                return Err(self.error(
                    s.placement.span(),
                    format!("{ctx}: placement \"{placement}\" names no pool or remote"),
                ));
            }
            let maintenance_page = match &s.maintenance_page {
                Some(p) => Some(self.read_named_file(&format!("{ctx}: maintenance_page"), p)?),
                None => None,
            };
            out.push(SiteSpec {
                rules: self.rules(&ctx, &s.rules, pool_names)?,
                host,
                placement,
                state: s.state,
                epoch: s.epoch,
                maintenance_page,
            });
        }
        Ok(out)
    }
}
