//! Reading an inventory directory: finds one file per entity, streams its rows
//! (CSV via the `csv` crate, JSON Lines via `serde_json`), and feeds them to an
//! [`InventoryBuilder`] in dependency order. Every problem is collected with its
//! file and line; the first [`MAX_PROBLEMS`] are kept and all are counted.
//! `rows.rs` reads one file's rows in its format.

mod rows;

use rows::{read_csv, read_jsonl};

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{InventoryError, Problem, RowError, MAX_PROBLEMS};
use crate::model::{
    DatabaseSink, FileInfo, HostingSink, Inventory, InventoryBuilder, SiteSink, UseSink, UserRef,
};
use crate::progress::Progress;
use crate::schema::{Entity, Format, MAX_COLUMNS};

/// The file holding `entity` in `dir`, if any.
pub(crate) fn find_file(
    dir: &Path,
    entity: Entity,
) -> Result<Option<(PathBuf, Format)>, InventoryError> {
    let csv = dir.join(format!("{}.csv", entity.stem()));
    let jsonl = dir.join(format!("{}.jsonl", entity.stem()));
    match (csv.is_file(), jsonl.is_file()) {
        (true, true) => Err(InventoryError::BothFormats {
            dir: dir.to_path_buf(),
            stem: entity.stem(),
        }),
        (true, false) => Ok(Some((csv, Format::Csv))),
        (false, true) => Ok(Some((jsonl, Format::Jsonl))),
        (false, false) => Ok(None),
    }
}

/// Collected problems: the first [`MAX_PROBLEMS`] and a count of all.
///
/// A row that fails leaves its name undefined, and every later row naming it
/// would fail too ("unknown hosting"). Once a file has failed rows, unknown
/// references to its entity in later files are counted as follow-on problems
/// but not listed: the first cause is what needs fixing.
#[derive(Default, Clone)]
struct Problems {
    kept: Vec<Problem>,
    count: usize,
    follow_on: usize,
    /// Reference kinds ("hosting") whose file had failed rows.
    poisoned: Vec<&'static str>,
    /// Set when a row fails; read and reset per file.
    row_failed: bool,
}

/// The kind an unknown reference to `entity` reports (see `RowError::UnknownReference`).
fn reference_kind(entity: Entity) -> Option<&'static str> {
    match entity {
        Entity::Datacenters => Some("datacenter"),
        Entity::Clusters => Some("cluster"),
        Entity::Ips => Some("IP"),
        Entity::Filers => Some("filer"),
        Entity::DbServers => Some("database server"),
        Entity::Databases => Some("database"),
        Entity::Hostings => Some("hosting"),
        Entity::Sites | Entity::DeclaredUses | Entity::ObservedUses => None,
    }
}

/// Joins a loading thread; a panic there is re-raised here.
fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    match h.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn file_rank(file: &str) -> usize {
    let stem = file.rsplit_once('.').map_or(file, |(s, _)| s);
    Entity::ALL
        .iter()
        .position(|e| e.stem() == stem)
        .unwrap_or(usize::MAX)
}

impl Problems {
    fn append(&mut self, other: Problems) {
        self.count += other.count;
        self.follow_on += other.follow_on;
        for k in other.poisoned {
            if !self.poisoned.contains(&k) {
                self.poisoned.push(k);
            }
        }
        let room = MAX_PROBLEMS.saturating_sub(self.kept.len());
        self.kept.extend(other.kept.into_iter().take(room));
    }

    fn sort(&mut self) {
        self.kept.sort_by_key(|p| (file_rank(&p.file), p.line));
    }

    fn push(&mut self, file: &str, line: u64, error: RowError) {
        self.row_failed = true;
        if let RowError::UnknownReference { kind, .. } = &error {
            if self.poisoned.contains(kind) {
                self.follow_on += 1;
                return;
            }
        }
        self.count += 1;
        if self.kept.len() < MAX_PROBLEMS {
            self.kept.push(Problem {
                file: file.to_string(),
                line,
                error,
            });
        }
    }
}

/// Loads and checks the inventory in `dir`.
pub fn load_dir(dir: &Path, progress: &dyn Progress) -> Result<Inventory, InventoryError> {
    let files = inventory_files(dir)?;
    progress.begin("loading inventory", total_bytes(&files)?);
    let mut builder = InventoryBuilder::new();
    reserve_from_sizes(&mut builder, &files);
    let mut loader = Loader {
        files: &files,
        progress,
        infos: Vec::new(),
        problems: Problems::default(),
    };
    loader.small_tables(&mut builder)?;
    // Then two large files at a time on two threads: hostings with databases,
    // then sites with uses. Each pair writes disjoint parts of the builder.
    {
        let (mut hostings, mut databases) = builder.table_sinks();
        loader.pair(
            (
                &[Entity::Hostings],
                Box::new(|_, f, line| apply_hosting(&mut hostings, f, line)),
            ),
            (
                &[Entity::Databases],
                Box::new(|_, f, line| apply_database(&mut databases, f, line)),
            ),
        )?;
    }
    {
        let (mut sites, mut uses) = builder.link_sinks();
        loader.pair(
            (
                &[Entity::Sites],
                Box::new(|_, f, line| apply_site(&mut sites, f, line)),
            ),
            (
                &[Entity::DeclaredUses, Entity::ObservedUses],
                Box::new(|e, f, line| apply_use(e, &mut uses, f, line)),
            ),
        )?;
    }
    loader.finish(builder)
}

/// One file of an inventory directory: what it holds, where, in which format.
type InventoryFile = (Entity, PathBuf, Format);

/// The inventory's files in `dir`, in [`Entity::ALL`] order; at least one.
fn inventory_files(dir: &Path) -> Result<Vec<InventoryFile>, InventoryError> {
    if !dir.is_dir() {
        return Err(InventoryError::NotADirectory {
            dir: dir.to_path_buf(),
        });
    }
    let mut files = Vec::new();
    for entity in Entity::ALL {
        if let Some((path, format)) = find_file(dir, entity)? {
            files.push((entity, path, format));
        }
    }
    if files.is_empty() {
        return Err(InventoryError::NoFiles {
            dir: dir.to_path_buf(),
        });
    }
    Ok(files)
}

/// The bytes to read in all, for the progress bar.
fn total_bytes(files: &[InventoryFile]) -> Result<u64, InventoryError> {
    let mut total = 0;
    for (_, path, _) in files {
        total += std::fs::metadata(path)
            .map_err(|source| InventoryError::Io {
                path: path.clone(),
                source,
            })?
            .len();
    }
    Ok(total)
}

/// Pre-sizes the large tables from file sizes (typical bytes per row), so
/// millions of rows load without repeated growing and rehashing.
fn reserve_from_sizes(builder: &mut InventoryBuilder, files: &[InventoryFile]) {
    let size_of = |e: Entity| {
        files
            .iter()
            .find(|f| f.0 == e)
            .and_then(|f| std::fs::metadata(&f.1).ok())
            .map_or(0, |m| m.len() as usize)
    };
    builder.reserve(
        size_of(Entity::Hostings) / 60,
        size_of(Entity::Databases) / 34,
        size_of(Entity::Sites) / 41,
        size_of(Entity::DeclaredUses) / 36,
    );
}

/// What one loading thread returns: its files' infos and its problems.
type Loaded = Result<(Vec<(Entity, FileInfo)>, Problems), InventoryError>;
/// Applies one row of a large file to its part of the builder.
type RowFn<'a> = Box<dyn FnMut(Entity, &Fields<'_>, u64) -> Result<(), RowError> + Send + 'a>;

/// The state of one `load_dir`: the files, and what their rows gave so far.
struct Loader<'a> {
    files: &'a [InventoryFile],
    progress: &'a dyn Progress,
    infos: Vec<(Entity, FileInfo)>,
    problems: Problems,
}

impl<'a> Loader<'a> {
    fn file_of(&self, e: Entity) -> Option<(&'a PathBuf, Format)> {
        self.files.iter().find(|f| f.0 == e).map(|f| (&f.1, f.2))
    }

    /// The small tables, in order on this thread: they are what the large
    /// ones refer to.
    fn small_tables(&mut self, builder: &mut InventoryBuilder) -> Result<(), InventoryError> {
        for entity in [
            Entity::Datacenters,
            Entity::Clusters,
            Entity::Ips,
            Entity::Filers,
            Entity::DbServers,
        ] {
            if let Some((path, format)) = self.file_of(entity) {
                let info = load_file(
                    entity,
                    path,
                    format,
                    &mut self.problems,
                    self.progress,
                    |f, line| apply_small(entity, builder, f, line),
                )?;
                self.infos.push((entity, info));
            }
        }
        Ok(())
    }

    /// Loads `here`'s files on this thread and `there`'s on another, then
    /// merges their results (here's first).
    fn pair(
        &mut self,
        here: (&[Entity], RowFn<'_>),
        there: (&[Entity], RowFn<'_>),
    ) -> Result<(), InventoryError> {
        let poisoned = self.problems.poisoned.clone();
        let this = &*self;
        let (a, b) = std::thread::scope(|s| {
            let p = poisoned.clone();
            let b = s.spawn(move || this.run(there.0, p, there.1));
            let a = this.run(here.0, poisoned, here.1);
            (a, join(b))
        });
        self.merge(a)?;
        self.merge(b)
    }

    /// Loads the files of `entities` with problems of their own, starting
    /// from the kinds already `poisoned`.
    fn run(
        &self,
        entities: &[Entity],
        poisoned: Vec<&'static str>,
        mut apply: RowFn<'_>,
    ) -> Loaded {
        let mut problems = Problems {
            poisoned,
            ..Problems::default()
        };
        let mut infos = Vec::new();
        for &entity in entities {
            if let Some((path, format)) = self.file_of(entity) {
                let info = load_file(
                    entity,
                    path,
                    format,
                    &mut problems,
                    self.progress,
                    |f, line| apply(entity, f, line),
                )?;
                infos.push((entity, info));
            }
        }
        Ok((infos, problems))
    }

    fn merge(&mut self, r: Loaded) -> Result<(), InventoryError> {
        let (i, mut p) = r?;
        self.infos.extend(i);
        // The thread started with our poisoned kinds; keep only its new ones.
        p.poisoned.retain(|k| !self.problems.poisoned.contains(k));
        self.problems.append(p);
        Ok(())
    }

    /// Sorts what was found into file order, runs the checks that need every
    /// row, and gives the inventory or every problem.
    fn finish(self, builder: InventoryBuilder) -> Result<Inventory, InventoryError> {
        let Loader {
            progress,
            mut infos,
            mut problems,
            ..
        } = self;
        // Report in file order, whatever thread found what.
        problems.sort();
        infos.sort_by_key(|(e, _)| Entity::ALL.iter().position(|x| x == e));
        let files_order: Vec<Entity> = infos.iter().map(|(e, _)| *e).collect();
        let infos: Vec<FileInfo> = infos.into_iter().map(|(_, i)| i).collect();
        progress.end();
        // Checks that need every row (duplicates of the largest tables).
        let finished = builder.finish();
        if let Err(late) = &finished {
            for p in late {
                let file = infos
                    .iter()
                    .zip(&files_order)
                    .find(|(_, e)| **e == p.entity)
                    .map_or_else(|| p.entity.stem().to_string(), |(i, _)| i.name.clone());
                problems.push(&file, p.line, p.error.clone());
            }
            problems.sort();
        }
        let invalid = |problems: Problems| InventoryError::Invalid {
            problems: problems.kept,
            count: problems.count,
            follow_on: problems.follow_on,
        };
        if problems.count > 0 {
            return Err(invalid(problems));
        }
        let Ok(mut inv) = finished else {
            // Unreachable: a late problem was counted above.
            return Err(invalid(problems));
        };
        inv.set_files(infos);
        Ok(inv)
    }
}

/// Counts bytes for the progress bar and digests them as they are read.
struct Tap<'a, R> {
    inner: R,
    digest: Digest,
    bytes: u64,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for Tap<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digest.update(&buf[..n]);
        self.bytes += n as u64;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// One row's values, indexed like [`Entity::columns`]; `None` when absent or empty.
pub(crate) struct Fields<'a> {
    values: [Option<&'a str>; MAX_COLUMNS],
}

impl<'a> Fields<'a> {
    fn get(&self, i: usize) -> Option<&'a str> {
        self.values[i]
    }

    fn req(&self, i: usize, field: &'static str) -> Result<&'a str, RowError> {
        self.values[i].ok_or(RowError::Empty { field })
    }

    fn num(&self, i: usize, field: &'static str) -> Result<u64, RowError> {
        parse_count(field, self.req(i, field)?)
    }
}

/// A non-negative whole number; a negative one gets its own message because it is
/// the usual sign of an export bug (sizes as signed 32-bit integers overflowing).
pub(crate) fn parse_count(field: &'static str, value: &str) -> Result<u64, RowError> {
    if let Ok(n) = value.parse::<u64>() {
        return Ok(n);
    }
    if let Some(rest) = value.strip_prefix('-') {
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(RowError::Negative {
                field,
                value: value.to_string(),
            });
        }
    }
    Err(RowError::BadNumber {
        field,
        value: value.to_string(),
    })
}

fn apply_small(
    entity: Entity,
    b: &mut InventoryBuilder,
    f: &Fields<'_>,
    line: u64,
) -> Result<(), RowError> {
    match entity {
        Entity::Datacenters => b.add_datacenter(f.req(0, "name")?, line).map(drop),
        Entity::Clusters => b
            .add_cluster(f.req(0, "name")?, f.req(1, "datacenter")?, line)
            .map(drop),
        Entity::Ips => b
            .add_ip(f.req(0, "address")?, f.req(1, "cluster")?, line)
            .map(drop),
        Entity::Filers => b
            .add_filer(f.req(0, "name")?, f.req(1, "cluster")?, line)
            .map(drop),
        Entity::DbServers => b
            .add_db_server(f.req(0, "name")?, f.req(1, "cluster")?, line)
            .map(drop),
        // The large tables go through their sinks (see `load_dir`).
        Entity::Databases
        | Entity::Hostings
        | Entity::Sites
        | Entity::DeclaredUses
        | Entity::ObservedUses => Ok(()),
    }
}

fn apply_database(s: &mut DatabaseSink<'_>, f: &Fields<'_>, line: u64) -> Result<(), RowError> {
    // A bad size still registers the name, so rows that use the database do
    // not each report it as unknown: one problem, one message.
    let bytes = f.num(2, "bytes");
    s.add_database(
        f.req(0, "name")?,
        f.req(1, "server")?,
        *bytes.as_ref().unwrap_or(&0),
        line,
    )?;
    bytes.map(drop)
}

fn apply_hosting(s: &mut HostingSink<'_>, f: &Fields<'_>, line: u64) -> Result<(), RowError> {
    // As for databases: a bad number still registers the hosting's name.
    let files = f.num(3, "files");
    let bytes = f.num(4, "bytes");
    s.add_hosting(
        f.req(0, "name")?,
        f.req(1, "filer")?,
        f.get(2).unwrap_or(""),
        *files.as_ref().unwrap_or(&0),
        *bytes.as_ref().unwrap_or(&0),
        line,
    )?;
    files?;
    bytes.map(drop)
}

fn apply_site(s: &mut SiteSink<'_>, f: &Fields<'_>, line: u64) -> Result<(), RowError> {
    s.add_site(
        f.req(0, "hostname")?,
        f.req(1, "hosting")?,
        f.req(2, "ip")?,
        line,
    )
    .map(drop)
}

fn apply_use(
    entity: Entity,
    s: &mut UseSink<'_>,
    f: &Fields<'_>,
    line: u64,
) -> Result<(), RowError> {
    if entity == Entity::DeclaredUses {
        return s.add_declared_use(f.req(0, "hosting")?, f.req(1, "database")?, line);
    }
    let user = match (f.get(1), f.get(2)) {
        (Some(h), None) => UserRef::Hosting(h),
        (None, Some(c)) => UserRef::Client(c),
        (Some(_), Some(_)) => return Err(RowError::ObservedUser { got: "both" }),
        (None, None) => return Err(RowError::ObservedUser { got: "neither" }),
    };
    s.add_observed_use(f.req(0, "database")?, user, line)
}

fn load_file(
    entity: Entity,
    path: &Path,
    format: Format,
    problems: &mut Problems,
    progress: &dyn Progress,
    row: impl FnMut(&Fields<'_>, u64) -> Result<(), RowError>,
) -> Result<FileInfo, InventoryError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = File::open(path).map_err(|source| InventoryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut tap = Tap {
        inner: file,
        digest: Digest::default(),
        bytes: 0,
        progress,
    };
    problems.row_failed = false;
    let rows = match format {
        Format::Csv => read_csv(entity, &name, &mut tap, problems, row),
        Format::Jsonl => read_jsonl(entity, &name, &mut tap, problems, row),
    }
    .map_err(|source| InventoryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if problems.row_failed {
        if let Some(kind) = reference_kind(entity) {
            problems.poisoned.push(kind);
        }
    }
    Ok(FileInfo {
        name,
        rows,
        bytes: tap.bytes,
        digest: format!("{:016x}", tap.digest.finish()),
    })
}
