//! The store conformance suite: every case runs against every backend.
//!
//! Each backend gets a [`Fixture`] that opens fresh, isolated stores (a temp
//! directory for SQLite, a schema of its own on the real PostgreSQL server for
//! PostgreSQL) and can reach the database behind the library's back.

#![allow(dead_code)]

pub mod cases;
pub mod records;

use std::sync::atomic::{AtomicU32, Ordering};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection, RunQueryDsl, SqliteConnection};
use persist::backend::sqlite::SqliteOptions;
use persist::store::BackendConfig;
use persist::{Store, StoreConfig};

/// URL of the PostgreSQL server used by the tests.
pub fn pg_url() -> String {
    std::env::var("PERSIST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Isolated databases of one backend.
pub struct Fixture {
    config: StoreConfig,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<String>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Fixture {
    /// A fresh SQLite database in a temporary directory.
    pub fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        Fixture {
            config: StoreConfig::sqlite(dir.path().join("store.db")),
            _dir: Some(dir),
            pg_schema: None,
        }
    }

    /// A fresh schema on the PostgreSQL server.
    pub fn postgres() -> Fixture {
        let schema = format!(
            "persist_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        Fixture {
            config: StoreConfig::postgres(pg_url(), schema.clone()),
            _dir: None,
            pg_schema: Some(schema),
        }
    }

    /// Another isolated database of the same backend.
    pub fn sibling(&self) -> Fixture {
        match self.pg_schema {
            Some(_) => Fixture::postgres(),
            None => Fixture::sqlite(),
        }
    }

    /// A fresh database of the other backend (SQLite for PostgreSQL and back).
    pub fn other_backend(&self) -> Fixture {
        match self.pg_schema {
            Some(_) => Fixture::sqlite(),
            None => Fixture::postgres(),
        }
    }

    /// The store's configuration.
    pub fn config(&self) -> StoreConfig {
        self.config.clone()
    }

    /// Opens a store on this fixture's database (again, after a drop: a restart).
    pub fn open(&self) -> Store {
        Store::open(self.config.clone()).expect("open store")
    }

    /// Whether this is the SQLite fixture.
    pub fn is_sqlite(&self) -> bool {
        self.pg_schema.is_none()
    }

    /// Runs SQL on the database behind the library's back.
    pub fn raw(&self, sql: &str) {
        match &self.config.backend {
            BackendConfig::Sqlite(SqliteOptions { path, .. }) => {
                let mut c = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
                diesel::sql_query("PRAGMA busy_timeout = 5000")
                    .execute(&mut c)
                    .unwrap();
                c.batch_execute(sql).unwrap();
            }
            BackendConfig::Postgres(o) => {
                let mut c = PgConnection::establish(&o.url).unwrap();
                let schema = o.schema.as_deref().unwrap();
                c.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"; SET search_path TO \"{schema}\"; {sql}"))
                    .unwrap();
            }
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(schema) = &self.pg_schema {
            if let Ok(mut c) = PgConnection::establish(&pg_url()) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
            }
        }
    }
}

/// Generates one `#[test]` per case for a backend.
#[macro_export]
macro_rules! conformance_suite {
    ($backend:ident, $fixture:expr) => {
        mod $backend {
            use super::conformance::{cases, Fixture};
            $crate::conformance_suite!(@cases $fixture;
                crud_round_trips_every_field_type,
                identity_keys_are_assigned_in_order,
                explicit_keys_and_save,
                missing_rows_are_not_found,
                unique_violation_names_the_column,
                validation_error_reaches_the_caller,
                missing_reference_is_refused,
                restrict_refuses_delete,
                cascade_deletes_are_logged_and_announced,
                cascade_through_self_reference,
                transaction_is_all_or_nothing,
                failed_operation_spoils_the_transaction,
                panic_in_transaction_rolls_back,
                queries_filter_order_limit_count,
                log_positions_are_dense_and_survive_restart,
                log_entries_hold_changes_in_commit_order,
                log_reads_and_trim,
                large_entries_read_back_as_written,
                a_batch_of_entries_keeps_every_log_row,
                apply_replicates_exactly,
                apply_is_idempotent_and_refuses_gaps,
                apply_detects_divergence,
                apply_refuses_malformed_entries,
                listeners_see_commits_in_order_on_master_and_backup,
                slow_listener_lags_instead_of_growing,
                migration_adds_columns_without_losing_rows,
                migration_refuses_type_change,
                migration_refuses_dropping_data,
                migration_refuses_new_not_null_without_default,
                migration_drops_empty_column,
                fingerprint_is_stable_and_sensitive,
                digest_is_order_independent_and_verifiable,
                foreign_table_name_is_refused,
                unregistered_type_is_an_error,
                insert_many_batches_and_checks,
                snapshot_restore_replaces_diverged_data,
                snapshot_is_consistent_while_writes_go_on,
                interrupted_restore_keeps_old_data,
                stepwise_restore_keeps_readers_on_old_data_until_it_commits,
                apply_batch_is_all_or_nothing,
                commit_feed_carries_entries,
                write_gate_refuses_local_writes_only,
                claims_are_durable_and_stamp_entries,
                stale_epoch_entries_are_refused,
                replicated_operation_runs_once_on_each_node,
                f64_values_round_trip_bit_for_bit,
                f64_digests_agree_across_backends,
                f64_default_is_stored_canonically,
                nan_is_refused_with_a_typed_error,
                nan_in_a_filter_is_refused,
                legacy_negative_zero_image_applies,
                legacy_nan_image_is_refused_without_harm,
            );
        }
    };
    (@cases $fixture:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let fx = $fixture;
                cases::$case(&fx);
            }
        )*
    };
}
