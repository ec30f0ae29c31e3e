//! The app's database writes, for the rehearsal: `POST /db/order` inserts
//! the order's sequence number into the site's own database on the
//! database server of the app's DC, as a PHP shop writes to its MySQL
//! database. The row says which DC and app server wrote it and when (the
//! server's clock at the statement), which is what the checks read: every
//! acknowledged order exactly once at the destination, none at the source
//! after its freeze, none at the destination before its flip.

use std::collections::HashMap;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use parking_lot::Mutex;

/// The orders table every site database has (the rehearsal creates it).
pub const ORDERS_TABLE: &str = "CREATE TABLE orders (\
     id BIGINT AUTO_INCREMENT PRIMARY KEY, \
     seq BIGINT NOT NULL, \
     dc VARCHAR(16) NOT NULL, \
     app VARCHAR(64) NOT NULL, \
     micros BIGINT NOT NULL, \
     KEY (seq))";

/// A site's database, its server's port (on the app's DC's address), and
/// the account it logs in with.
#[derive(Clone, Debug)]
pub struct SiteDb {
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: String,
}

/// Where an app server's database servers are, and each site's database.
pub struct AppDb {
    /// The address of this DC's servers.
    pub host: String,
    /// Host -> its database.
    pub sites: HashMap<String, SiteDb>,
    /// One small pool per site, made at its first order.
    pools: Mutex<HashMap<String, mysql_async::Pool>>,
}

impl AppDb {
    pub fn new(host: String, sites: HashMap<String, SiteDb>) -> AppDb {
        AppDb {
            host,
            sites,
            pools: Mutex::default(),
        }
    }

    fn pool(&self, host: &str, db: &SiteDb) -> mysql_async::Pool {
        let mut pools = self.pools.lock();
        pools
            .entry(host.to_string())
            .or_insert_with(|| {
                let constraints = mysql_async::PoolConstraints::new(0, 4).unwrap_or_default();
                let opts = mysql_async::OptsBuilder::default()
                    .ip_or_hostname(self.host.clone())
                    .tcp_port(db.port)
                    .user(Some(db.user.clone()))
                    .pass(Some(db.password.clone()))
                    .db_name(Some(db.database.clone()))
                    .prefer_socket(false)
                    .pool_opts(
                        mysql_async::PoolOpts::default()
                            .with_constraints(constraints)
                            .with_inactive_connection_ttl(Duration::from_secs(5)),
                    );
                mysql_async::Pool::new(opts)
            })
            .clone()
    }

    /// Inserts order `seq` for `host`; the row as the answer's line. A
    /// connection the server ended (the freeze ends every session of the
    /// site's account) is retried once on a fresh one.
    pub async fn order(&self, host: &str, seq: u64, dc: &str, app: &str) -> Result<String, String> {
        let Some(db) = self.sites.get(host) else {
            return Err("this site has no database".into());
        };
        let pool = self.pool(host, db);
        let mut last = String::new();
        for _ in 0..2 {
            let attempt = async {
                let mut c = pool.get_conn().await?;
                c.exec_drop(
                    "INSERT INTO orders (seq, dc, app, micros) \
                     VALUES (?, ?, ?, CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS UNSIGNED))",
                    (seq, dc, app),
                )
                .await
            };
            match tokio::time::timeout(Duration::from_secs(20), attempt).await {
                Ok(Ok(())) => return Ok(format!("{seq} {dc} {app}\n")),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => return Err("database timeout after 20s".into()),
            }
        }
        Err(format!("database: {last}"))
    }
}
