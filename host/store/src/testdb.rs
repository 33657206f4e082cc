//! Test databases: a fresh SQLite file, and a fresh PostgreSQL schema when
//! `CHENGIS_TEST_DATABASE_URL` names a server. With `CHENGIS_TEST_REQUIRE` containing
//! `postgres`, a missing server fails the test instead of skipping that half.

use super::Store;

/// The stores every store test runs against: SQLite always, PostgreSQL when configured.
pub async fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let mut out = vec![(Store::open(&url).await.expect("open sqlite"), Some(dir))];
    match std::env::var("CHENGIS_TEST_DATABASE_URL") {
        Ok(base) => out.push((fresh_postgres(&base).await, None)),
        Err(_) => {
            let required = std::env::var("CHENGIS_TEST_REQUIRE").unwrap_or_default();
            assert!(
                !required.split(',').any(|r| r.trim() == "postgres"),
                "CHENGIS_TEST_REQUIRE names postgres but CHENGIS_TEST_DATABASE_URL is not set"
            );
            eprintln!("note: CHENGIS_TEST_DATABASE_URL is not set; testing SQLite only");
        }
    }
    out
}

/// A new database on the server named by `base`, so tests never see each other's rows.
async fn fresh_postgres(base: &str) -> Store {
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let name =
        format!("chengis_test_{}_{}", std::process::id(), super::now_ms() % 1_000_000_000 + i64::from(rand_u16()));
    let admin = sqlx::AnyPool::connect(base).await.expect("connect to CHENGIS_TEST_DATABASE_URL");
    admin.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create test database");
    let url = match base.rfind('/') {
        Some(i) if base[..i].contains("://") && i > base.find("://").unwrap_or(0) + 2 => {
            let query = base.find('?').map(|q| &base[q..]).unwrap_or("");
            format!("{}/{name}{query}", &base[..i])
        }
        _ => format!("{base}/{name}"),
    };
    Store::open(&url).await.expect("open postgres")
}

fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(std::time::Instant::now()) & 0xffff) as u16
}
