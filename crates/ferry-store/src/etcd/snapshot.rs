//! Snapshots: every site at one revision, paged, with long ranges cut into
//! parts so etcd does not walk the rest of the range for every page.

use etcd_client::{GetOptions, GetResponse};
use ferry_model::SiteRecord;

use super::keys::decode_site_kv;
use super::{Inner, Snapshot};
use crate::StoreError;

/// Attempts of a snapshot whose revision is compacted while it is being paged.
const SNAPSHOT_ATTEMPTS: u32 = 3;

/// A snapshot cuts the rest of a range when more than this many pages remain
/// in it (see `Inner::snapshot_once`).
const SPLIT_PAGES: usize = 4;

/// Keys after `last`, before `to`, in increasing order, that cut the keys after a
/// page `first..=last` into parts of about 4, 16, 64... pages if the keys
/// continue as densely as in the page. Keys are read as big-endian numbers of
/// 16 bytes starting 8 bytes before the first byte where `first` and `last`
/// differ: the 8 bytes above let the cuts carry into the next prefixes
/// (`site0001999` is followed by `site0002000`, far away in base 256).
fn split_points(first: &[u8], last: &[u8], to: &[u8]) -> Vec<Vec<u8>> {
    let shared = first
        .iter()
        .zip(last)
        .take_while(|(a, b)| a == b)
        .count()
        .saturating_sub(8);
    let window = |key: &[u8]| {
        let mut bytes = [0u8; 16];
        for (b, k) in bytes.iter_mut().zip(key.iter().skip(shared)) {
            *b = *k;
        }
        u128::from_be_bytes(bytes)
    };
    let (f, l) = (window(first), window(last));
    let Some(spread) = l.checked_sub(f).filter(|d| *d > 0) else {
        return Vec::new();
    };
    let mut points = Vec::new();
    let mut step = spread.saturating_mul(4);
    // Each point is above `last` inside the window, so above every key read.
    while let Some(n) = l.checked_add(step) {
        let mut key = last[..shared].to_vec();
        key.extend_from_slice(&n.to_be_bytes());
        if key.as_slice() >= to {
            break;
        }
        points.push(key);
        match step.checked_mul(4) {
            Some(next) => step = next,
            None => break,
        }
    }
    points
}

/// The records of a page decoded by `spawn_blocking`.
async fn join_decoded(
    task: tokio::task::JoinHandle<Result<Vec<SiteRecord>, StoreError>>,
) -> Result<Vec<SiteRecord>, StoreError> {
    task.await.map_err(|e| StoreError::Etcd {
        op: "decode sites",
        source: e.into(),
    })?
}

impl Inner {
    pub(super) async fn snapshot(&self, at: i64) -> Result<Snapshot, StoreError> {
        let mut attempt = 1;
        loop {
            match self.snapshot_once(at).await {
                // The first page's revision was compacted while we paged; a
                // fresh snapshot is at a newer one. (A revision the caller named
                // stays compacted: no retry.)
                Err(StoreError::Etcd { source, .. })
                    if at == 0
                        && attempt < SNAPSHOT_ATTEMPTS
                        && source.to_string().contains("compacted") =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Pages through the sites at one revision. etcd (3.4) walks every key from
    /// a page's start to its range end to answer each page (it counts them), so
    /// paging one range of N keys costs O(N^2 / page). When a page says that
    /// much more than [`SPLIT_PAGES`] pages remain, the rest of its range is cut
    /// at keys guessed from the page's own spread ([`split_points`]: about 4,
    /// 16, 64... pages further), and each part is paged on its own, in key
    /// order. A wrong guess only costs a bigger or smaller part, never a key.
    async fn snapshot_once(&self, at: i64) -> Result<Snapshot, StoreError> {
        let (start, end) = self.keys.sites_range();
        let page = self.cfg.page_size.max(1);
        let limit = i64::try_from(page).unwrap_or(i64::MAX);
        let mut revision = at;
        let mut sites = Vec::new();
        let mut decoding = None;
        // Ranges still to read, the next one on top.
        let mut todo = vec![(start.into_bytes(), end.into_bytes())];
        while let Some((mut from, mut to)) = todo.pop() {
            loop {
                let mut resp: GetResponse = self
                    .call("read sites", |mut c| {
                        let (from, to) = (from.clone(), to.clone());
                        let options = GetOptions::new()
                            .with_range(to)
                            .with_limit(limit)
                            .with_revision(revision);
                        async move { c.get(from, Some(options)).await }
                    })
                    .await?;
                if revision <= 0 {
                    // Every later page is read at the first page's revision.
                    revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                }
                let (more, count) = (resp.more(), resp.count());
                let kvs = resp.take_kvs();
                let next = match (kvs.first(), kvs.last()) {
                    (Some(first), Some(last)) if more => {
                        // The next key after the last one read.
                        from = last.key().to_vec();
                        from.push(0);
                        let left = usize::try_from(count)
                            .unwrap_or(0)
                            .saturating_sub(kvs.len());
                        if left > SPLIT_PAGES * page {
                            let points = split_points(first.key(), last.key(), &to);
                            let mut upper = to.clone();
                            for p in points.iter().rev() {
                                todo.push((p.clone(), upper));
                                upper = p.clone();
                            }
                            to = upper;
                        }
                        true
                    }
                    _ => false,
                };
                // Decode this page on another thread while the next one is
                // fetched; pages are joined in order.
                if let Some(previous) = decoding.take() {
                    sites.extend(join_decoded(previous).await?);
                }
                let sites_start = self.keys.sites_start();
                decoding = Some(tokio::task::spawn_blocking(move || {
                    kvs.iter()
                        .map(|kv| decode_site_kv(&sites_start, kv))
                        .collect::<Result<Vec<_>, _>>()
                }));
                if !next {
                    break;
                }
            }
        }
        if let Some(previous) = decoding.take() {
            sites.extend(join_decoded(previous).await?);
        }
        Ok(Snapshot { revision, sites })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_points_grow_and_stay_inside_the_range() {
        let first = b"/p/sites/site0001000.example.com";
        let last = b"/p/sites/site0001999.example.com";
        let to = b"/p/sites0";
        let points = split_points(first, last, to);
        assert!(!points.is_empty());
        let mut prev = last.to_vec();
        for p in &points {
            assert!(p.as_slice() > prev.as_slice() && p.as_slice() < to.as_slice());
            prev = p.clone();
        }
        // Cuts go past the page's shared prefix, up to the end of the range.
        assert!(points
            .iter()
            .any(|p| p.as_slice() > b"/p/sites/site0002".as_slice()));
        assert!(points
            .iter()
            .any(|p| p.as_slice() > b"/p/sites/sitf".as_slice()));
        // No spread in the window, no cut.
        assert!(split_points(b"/a", b"/a", to).is_empty());
        let near = b"/p/sites/site0002";
        assert!(split_points(first, last, near)
            .iter()
            .all(|p| p.as_slice() > last.as_slice() && p.as_slice() < near.as_slice()));
    }
}
