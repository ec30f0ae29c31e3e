//! `ferry ctl certs ...`: the TLS certificates (the API lists them; `show`
//! picks one from the list).

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use ferry_admin_api::certs::{CertPair, Certificate};
use ferry_admin_api::AdminClient;

use super::failure;
use super::table::{Out, Table};
use crate::Failure;

#[derive(clap::Subcommand)]
pub(super) enum CertsCmd {
    /// Every certificate, with the names it answers.
    List,
    /// One certificate.
    Show {
        /// The certificate's name (its file NAME.pem in cert_dir).
        name: String,
    },
    /// Add or replace a certificate: PEM chain (leaf first) and private key.
    Add {
        /// The certificate's name (1-200 of A-Z a-z 0-9 . _ -).
        name: String,
        /// PEM file of the chain, leaf first.
        #[arg(long)]
        chain: PathBuf,
        /// PEM file of the leaf's private key.
        #[arg(long)]
        key: PathBuf,
    },
    /// Remove a certificate (not the default one).
    Remove {
        /// The certificate's name.
        name: String,
    },
}

pub(super) async fn run(api: &AdminClient, out: &Out, cmd: CertsCmd) -> Result<(), Failure> {
    let cert_table = |certs: &[Certificate]| {
        let mut t = Table::new(&["NAME", "DEFAULT", "KEY_CACHED", "HOSTS"]);
        for c in certs {
            t = t.row(vec![
                c.name.clone(),
                if c.default { "yes" } else { "" }.to_string(),
                if c.key_cached { "yes" } else { "no" }.to_string(),
                c.hosts.join(" "),
            ]);
        }
        t
    };
    match cmd {
        CertsCmd::List => {
            let list = api.certs().await.map_err(failure)?;
            out.print(&list, |l| cert_table(&l.certificates));
        }
        CertsCmd::Show { name } => {
            // The API lists certificates; it has no route for one.
            let list = api.certs().await.map_err(failure)?;
            let Some(c) = list.certificates.into_iter().find(|c| c.name == name) else {
                return Err(Failure::refused(anyhow!(
                    "router {}: has no certificate {name:?}",
                    api.router()
                )));
            };
            out.print(&c, |c| cert_table(std::slice::from_ref(c)));
        }
        CertsCmd::Add { name, chain, key } => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))
                    .map_err(Failure::usage)
            };
            let pair = CertPair {
                chain: read(&chain)?,
                key: read(&key)?,
            };
            let s = api.put_cert(&name, &pair).await.map_err(failure)?;
            out.print(&s, |s| {
                Table::new(&["NAME", "REPLACED", "HOSTS"]).row(vec![
                    s.name.clone(),
                    if s.replaced { "yes" } else { "no" }.to_string(),
                    s.hosts.join(" "),
                ])
            });
        }
        CertsCmd::Remove { name } => {
            let r = api.delete_cert(&name).await.map_err(failure)?;
            out.print(&r, |r| Table::fields(vec![("removed", r.removed.clone())]));
        }
    }
    Ok(())
}
