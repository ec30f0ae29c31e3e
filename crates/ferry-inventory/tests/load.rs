//! Loading inventories from files: the example loads, every kind of bad input is
//! refused with the file and line that caused it, and the generator is
//! deterministic and produces inventories that load clean.

use std::fs;
use std::path::{Path, PathBuf};

use ferry_inventory::{
    generate, load_dir, Format, GenerateParams, InventoryError, Problem, Quiet, RowError, User,
};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/inventory")
}

/// A small valid inventory, one file per entity; `edit` may replace files.
fn base(edit: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("datacenters.csv", "name\npar\n"),
        ("clusters.csv", "name,datacenter\nc1,par\nc2,par\n"),
        ("ips.csv", "address,cluster\n192.0.2.1,c1\n192.0.2.2,c2\n"),
        ("filers.csv", "name,cluster\nfs1,c1\nfs2,c2\n"),
        ("db_servers.csv", "name,cluster\nsql1,c1\nsql2,c2\n"),
        (
            "databases.csv",
            "name,server,bytes\nshop,sql1,100\nblog,sql2,200\n",
        ),
        (
            "hostings.csv",
            "name,filer,directory,files,bytes\nh1,fs1,/h1,10,1000\nh2,fs2,/h2,20,2000\n",
        ),
        (
            "sites.csv",
            "hostname,hosting,ip\nwww.a.com,h1,192.0.2.1\nwww.b.com,h2,192.0.2.2\n",
        ),
        (
            "declared_uses.csv",
            "hosting,database\nh1,shop@sql1\nh2,blog@sql2\n",
        ),
        (
            "observed_uses.csv",
            "database,hosting,client\nshop@sql1,h2,\nblog@sql2,,198.51.100.1\n",
        ),
    ];
    for (name, text) in files {
        fs::write(dir.path().join(name), text).unwrap();
    }
    for (name, text) in edit {
        if text.is_empty() {
            fs::remove_file(dir.path().join(name)).unwrap();
        } else {
            fs::write(dir.path().join(name), text).unwrap();
        }
    }
    dir
}

/// Loads a directory that must be refused; returns its problems.
fn problems(dir: &Path) -> Vec<Problem> {
    match load_dir(dir, &Quiet) {
        Err(InventoryError::Invalid {
            problems, count, ..
        }) => {
            assert_eq!(problems.len(), count);
            problems
        }
        Err(e) => panic!("expected problems, got {e}"),
        Ok(_) => panic!("expected problems, the inventory loaded"),
    }
}

/// The single problem of a directory, checked to be at `file:line`.
fn one_problem(edit: &[(&str, &str)], file: &str, line: u64) -> RowError {
    let dir = base(edit);
    let p = problems(dir.path());
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((p[0].file.as_str(), p[0].line), (file, line), "{}", p[0]);
    p[0].error.clone()
}

#[test]
fn the_base_and_the_example_load() {
    let dir = base(&[]);
    let inv = load_dir(dir.path(), &Quiet).unwrap();
    let c = inv.counts();
    assert_eq!(
        (c.sites, c.hostings, c.databases, c.observed_uses),
        (2, 2, 2, 2)
    );
    assert_eq!(inv.files().len(), 10);

    let inv = load_dir(&example_dir(), &Quiet).unwrap();
    let c = inv.counts();
    assert_eq!((c.sites, c.hostings, c.filers, c.databases), (11, 6, 4, 5));
    let clients = inv
        .observed_uses()
        .iter()
        .filter(|u| matches!(u.user, User::Client(_)))
        .count();
    assert_eq!(clients, 1);
    // The example mixes formats: observed uses are JSON Lines.
    assert!(inv.files().iter().any(|f| f.name == "observed_uses.jsonl"));
}

#[test]
fn unknown_reference() {
    let e = one_problem(
        &[(
            "sites.csv",
            "hostname,hosting,ip\nwww.a.com,h1,192.0.2.1\nwww.c.com,h9,192.0.2.1\n",
        )],
        "sites.csv",
        3,
    );
    assert!(
        matches!(
            e,
            RowError::UnknownReference {
                kind: "hosting",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn unknown_database_in_a_use() {
    let e = one_problem(
        &[("declared_uses.csv", "hosting,database\nh1,shop@sql2\n")],
        "declared_uses.csv",
        2,
    );
    assert!(
        matches!(
            e,
            RowError::UnknownReference {
                kind: "database",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn duplicate_name() {
    let e = one_problem(
        &[("filers.csv", "name,cluster\nfs1,c1\nfs2,c2\nfs1,c2\n")],
        "filers.csv",
        4,
    );
    assert!(
        matches!(
            e,
            RowError::Duplicate {
                kind: "filer",
                first_line: 2,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn duplicate_site() {
    let e = one_problem(
        &[(
            "sites.csv",
            "hostname,hosting,ip\nwww.a.com,h1,192.0.2.1\nwww.b.com,h2,192.0.2.2\nWWW.A.COM,h1,192.0.2.1\n",
        )],
        "sites.csv",
        4,
    );
    assert!(
        matches!(
            e,
            RowError::Duplicate {
                kind: "site",
                first_line: 2,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn a_site_on_two_hostings() {
    let e = one_problem(
        &[(
            "sites.csv",
            "hostname,hosting,ip\nwww.a.com,h1,192.0.2.1\nwww.b.com,h2,192.0.2.2\nwww.a.com,h2,192.0.2.2\n",
        )],
        "sites.csv",
        4,
    );
    match e {
        RowError::SiteOnTwoHostings {
            first_line,
            first_hosting,
            hosting,
            ..
        } => assert_eq!(
            (first_line, first_hosting.as_str(), hosting.as_str()),
            (2, "h1", "h2")
        ),
        e => panic!("{e}"),
    }
}

#[test]
fn duplicate_declared_use() {
    let e = one_problem(
        &[(
            "declared_uses.csv",
            "hosting,database\nh1,shop@sql1\nh2,blog@sql2\nh1,shop@sql1\n",
        )],
        "declared_uses.csv",
        4,
    );
    assert!(
        matches!(
            e,
            RowError::Duplicate {
                kind: "declared use",
                first_line: 2,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn negative_size() {
    let e = one_problem(
        &[(
            "hostings.csv",
            "name,filer,directory,files,bytes\nh1,fs1,/h1,10,1000\nh2,fs2,/h2,20,-2000\n",
        )],
        "hostings.csv",
        3,
    );
    assert!(
        matches!(e, RowError::Negative { field: "bytes", .. }),
        "{e}"
    );
}

#[test]
fn bad_number() {
    let e = one_problem(
        &[(
            "databases.csv",
            "name,server,bytes\nshop,sql1,12MB\nblog,sql2,200\n",
        )],
        "databases.csv",
        2,
    );
    assert!(
        matches!(e, RowError::BadNumber { field: "bytes", .. }),
        "{e}"
    );
}

#[test]
fn bad_hostname() {
    let e = one_problem(
        &[(
            "sites.csv",
            "hostname,hosting,ip\nwww.a.com,h1,192.0.2.1\nwww.b.com,h2,192.0.2.2\nwww..c.com,h1,192.0.2.1\n",
        )],
        "sites.csv",
        4,
    );
    assert!(matches!(e, RowError::BadHostname { .. }), "{e}");
}

#[test]
fn bad_ip_address() {
    let e = one_problem(
        &[(
            "ips.csv",
            "address,cluster\n192.0.2.1,c1\n192.0.2.2,c2\n192.0.2.300,c1\n",
        )],
        "ips.csv",
        4,
    );
    assert!(matches!(e, RowError::BadAddress { .. }), "{e}");
}

#[test]
fn missing_column() {
    let e = one_problem(&[("filers.csv", "name\nfs1\n")], "filers.csv", 1);
    assert!(
        matches!(
            e,
            RowError::MissingColumn {
                column: "cluster",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn unknown_column() {
    let e = one_problem(
        &[("datacenters.csv", "# our DCs\nname,city\npar,Paris\n")],
        "datacenters.csv",
        2,
    );
    assert!(matches!(e, RowError::UnknownColumn { .. }), "{e}");
}

#[test]
fn wrong_field_count() {
    let e = one_problem(
        &[("clusters.csv", "name,datacenter\nc1,par\nc2,par,extra\n")],
        "clusters.csv",
        3,
    );
    assert!(matches!(e, RowError::FieldCount { got: 3, want: 2 }), "{e}");
}

#[test]
fn unterminated_quote() {
    let e = one_problem(
        &[("clusters.csv", "name,datacenter\nc1,par\n\"c2,par\n")],
        "clusters.csv",
        3,
    );
    assert!(matches!(e, RowError::Csv(_)), "{e}");
}

#[test]
fn quoted_fields_are_read() {
    let dir = base(&[(
        "hostings.csv",
        "name,filer,directory,files,bytes\n\"h1\",fs1,\"/homez/with,comma\",10,1000\nh2,fs2,/h2,20,2000\n",
    )]);
    let inv = load_dir(dir.path(), &Quiet).unwrap();
    assert_eq!(
        inv.hosting_directory(inv.find_hosting("h1").unwrap()),
        "/homez/with,comma"
    );
}

#[test]
fn observed_use_needs_one_user() {
    let e = one_problem(
        &[(
            "observed_uses.csv",
            "database,hosting,client\nshop@sql1,h2,198.51.100.1\n",
        )],
        "observed_uses.csv",
        2,
    );
    assert!(matches!(e, RowError::ObservedUser { got: "both" }), "{e}");
}

#[test]
fn database_reference_needs_a_server() {
    let e = one_problem(
        &[("declared_uses.csv", "hosting,database\nh1,shop\n")],
        "declared_uses.csv",
        2,
    );
    assert!(matches!(e, RowError::BadDatabaseRef { .. }), "{e}");
}

#[test]
fn invalid_json_line() {
    let e = one_problem(
        &[
            ("observed_uses.csv", ""),
            (
                "observed_uses.jsonl",
                "{\"database\": \"shop@sql1\", \"hosting\": \"h2\"}\n\n{\"database\": \"blog@sql2\",\n",
            ),
        ],
        "observed_uses.jsonl",
        3,
    );
    assert!(matches!(e, RowError::Json(_)), "{e}");
}

#[test]
fn unknown_json_key() {
    let e = one_problem(
        &[
            ("datacenters.csv", ""),
            (
                "datacenters.jsonl",
                "{\"name\": \"par\", \"town\": \"Paris\"}\n",
            ),
        ],
        "datacenters.jsonl",
        1,
    );
    assert!(matches!(e, RowError::UnknownColumn { .. }), "{e}");
}

#[test]
fn json_numbers_and_strings_both_work() {
    let dir = base(&[
        ("databases.csv", ""),
        (
            "databases.jsonl",
            "{\"name\": \"shop\", \"server\": \"sql1\", \"bytes\": 100}\n{\"name\": \"blog\", \"server\": \"sql2\", \"bytes\": \"200\"}\n",
        ),
    ]);
    let inv = load_dir(dir.path(), &Quiet).unwrap();
    assert_eq!(inv.database_bytes(), &[100, 200]);
    let dir = base(&[
        ("databases.csv", ""),
        (
            "databases.jsonl",
            "{\"name\": \"shop\", \"server\": \"sql1\", \"bytes\": -1}\n",
        ),
    ]);
    let p = problems(dir.path());
    assert!(matches!(p[0].error, RowError::Negative { .. }), "{}", p[0]);
}

#[test]
fn not_utf8() {
    let dir = base(&[]);
    fs::write(
        dir.path().join("datacenters.csv"),
        b"name\npar\n\xff\xfe\n".as_slice(),
    )
    .unwrap();
    let p = problems(dir.path());
    assert_eq!((p[0].file.as_str(), p[0].line), ("datacenters.csv", 3));
    assert!(matches!(p[0].error, RowError::NotUtf8));
}

#[test]
fn a_bad_row_does_not_cascade() {
    // The hosting with a bad size is still known by name: the sites and uses
    // that name it are not reported as unknown.
    let dir = base(&[(
        "hostings.csv",
        "name,filer,directory,files,bytes\nh1,fs1,/h1,10,-1\nh2,fs2,/h2,20,2000\n",
    )]);
    assert_eq!(problems(dir.path()).len(), 1);
}

#[test]
fn both_formats_of_one_file_are_refused() {
    let dir = base(&[("sites.jsonl", "{}\n")]);
    let e = load_dir(dir.path(), &Quiet).err().unwrap();
    assert!(
        matches!(e, InventoryError::BothFormats { stem: "sites", .. }),
        "{e}"
    );
}

#[test]
fn an_empty_or_missing_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        load_dir(dir.path(), &Quiet),
        Err(InventoryError::NoFiles { .. })
    ));
    assert!(matches!(
        load_dir(&dir.path().join("nope"), &Quiet),
        Err(InventoryError::NotADirectory { .. })
    ));
}

#[test]
fn problems_come_in_file_order_with_a_count() {
    let dir = base(&[
        (
            "sites.csv",
            "hostname,hosting,ip\nwww.a.com,h1,192.0.2.999\nwww.b.com,h2,192.0.2.2\n",
        ),
        ("filers.csv", "name,cluster\nfs1,c1\nfs2,c9\n"),
    ]);
    let p = problems(dir.path());
    let at: Vec<(String, u64)> = p.iter().map(|p| (p.file.clone(), p.line)).collect();
    // fs2 is refused; h2 (on fs2) and the rows naming h2 are follow-ons, not
    // listed; the bad address is a problem of its own.
    assert_eq!(
        at,
        [("filers.csv".to_string(), 3), ("sites.csv".to_string(), 2),]
    );
    match load_dir(dir.path(), &Quiet) {
        Err(InventoryError::Invalid { follow_on, .. }) => assert_eq!(follow_on, 4),
        _ => unreachable!(),
    }
}

fn read_all(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn generate_is_deterministic_and_loads_clean() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let params = GenerateParams {
        sites: 20_000,
        seed: 7,
        format: Format::Csv,
    };
    let counts = generate(&params, a.path(), &Quiet).unwrap();
    generate(&params, b.path(), &Quiet).unwrap();
    generate(&GenerateParams { seed: 8, ..params }, c.path(), &Quiet).unwrap();
    assert_eq!(read_all(a.path()), read_all(b.path()));
    assert_ne!(read_all(a.path()), read_all(c.path()));

    let inv = load_dir(a.path(), &Quiet).unwrap();
    assert_eq!(inv.counts(), counts);
    assert_eq!(counts.sites, 20_000);
    assert!(counts.clusters >= 2 && counts.filers >= 10, "{counts:?}");
    // Some uses are only observed, some by outside clients.
    assert!(counts.observed_uses > 0);
    let undeclared = inv
        .observed_uses()
        .iter()
        .filter(|u| match u.user {
            User::Hosting(h) => !inv.declared_uses().contains(&(h, u.database)),
            User::Client(_) => false,
        })
        .count();
    assert!(undeclared > 0);
}

#[test]
fn generated_json_lines_load_like_csv() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let params = GenerateParams {
        sites: 3_000,
        seed: 3,
        format: Format::Csv,
    };
    generate(&params, a.path(), &Quiet).unwrap();
    generate(
        &GenerateParams {
            format: Format::Jsonl,
            ..params
        },
        b.path(),
        &Quiet,
    )
    .unwrap();
    let (x, y) = (
        load_dir(a.path(), &Quiet).unwrap(),
        load_dir(b.path(), &Quiet).unwrap(),
    );
    assert_eq!(x.counts(), y.counts());
    assert_eq!(x.hosting_bytes(), y.hosting_bytes());
    assert_eq!(x.declared_uses(), y.declared_uses());
    // Generating CSV where JSON Lines files are is refused, not mixed.
    let e = generate(&params, b.path(), &Quiet).err().unwrap();
    assert!(
        matches!(e, InventoryError::OtherFormatPresent { .. }),
        "{e}"
    );
}
