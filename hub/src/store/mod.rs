//! The embedded store (SQLite): one writer thread fed by a bounded queue, plus a reader connection
//! for the API. Sits after ingest in the hub's flow: ingest ─▶ store ─▶ API.

mod events;
pub(crate) mod query;
pub(crate) mod raw;
mod rollup;
pub(crate) mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use protocol::{Envelope, Heartbeat, Presence, Timestamp};
use rusqlite::Connection;
use thiserror::Error;
use tokio::sync::mpsc;

pub use events::{EventView, EventsQuery, EvidenceMeta, EvidenceView};
pub use query::{AssetView, DeadLetterView, GatewayView, ReadingPoint, Readings, ReadingsQuery};
pub use rollup::Retention;
/// The schema on PostgreSQL (crate::db); the hub itself does not run on PostgreSQL yet.
pub use schema::migrate_pg;

use crate::db::Sql;
use crate::metrics::Metrics;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database query failed: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("database query failed: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("PostgreSQL database: {0}")]
    Postgres(crate::db::DbError),
    #[error("no asset {0:?}")]
    UnknownAsset(String),
    #[error("the store has shut down")]
    Closed,
}

/// Called once the write it belongs to is committed (the ingest acknowledges the MQTT message then).
pub type Ack = Box<dyn FnOnce() + Send>;

/// One write, in the order ingest received it.
pub enum WriteOp {
    Envelope {
        env: Envelope,
        received: Timestamp,
    },
    Presence {
        presence: Presence,
        received: Timestamp,
    },
    Heartbeat {
        heartbeat: Heartbeat,
        received: Timestamp,
    },
    /// A command the API is about to publish.
    Command {
        command: protocol::Command,
        gateway: String,
        asset: Option<String>,
    },
    /// A gateway's reply to a command.
    Reply {
        reply: protocol::Reply,
        received: Timestamp,
    },
    /// An evidence file is on disk under its hash: record it.
    Evidence {
        sha256: String,
        media_type: String,
        bytes: u64,
        gateway: String,
        received: Timestamp,
    },
    /// Nothing to write, but acknowledged in order with the writes around it (MQTT requires
    /// PUBACKs in the order the messages came: a message the hub drops, such as one over its
    /// gateway's rate limit, must not be acknowledged ahead of earlier ones still being stored).
    Skip,
    DeadLetter {
        received: Timestamp,
        topic: String,
        gateway: Option<String>,
        code: String,
        reason: String,
        payload: Vec<u8>,
    },
}

impl std::fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteOp::Envelope { env, .. } => {
                write!(f, "Envelope({} {} #{})", env.gateway, env.boot, env.seq)
            }
            WriteOp::Presence { presence, .. } => write!(f, "Presence({})", presence.gateway),
            WriteOp::Heartbeat { heartbeat, .. } => write!(f, "Heartbeat({})", heartbeat.gateway),
            WriteOp::DeadLetter { topic, code, .. } => write!(f, "DeadLetter({topic}, {code})"),
            WriteOp::Evidence { sha256, .. } => write!(f, "Evidence({sha256})"),
            WriteOp::Command { command, .. } => write!(f, "Command({})", command.id),
            WriteOp::Reply { reply, .. } => write!(f, "Reply({})", reply.id),
            WriteOp::Skip => write!(f, "Skip"),
        }
    }
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    writes: mpsc::Sender<(WriteOp, Option<Ack>)>,
    reader: Arc<Mutex<Box<dyn Sql + Send>>>,
    /// For the few writes that do not go through the writer's queue (people acting on tasks):
    /// waiting for the write lock there must not hold up the API's reads.
    aside: Arc<Mutex<Box<dyn Sql + Send>>>,
    database: Database,
    retention: Retention,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("database", &self.database)
            .finish()
    }
}

/// Where the hub's relational state lives: SQLite under the data directory (one hub on one
/// machine, the default), or a PostgreSQL database shared by several hub processes.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    /// A libpq-style connection string or `postgresql://` URL.
    Postgres(String),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(p) => write!(f, "SQLite {}", p.display()),
            // Never the password.
            Database::Postgres(_) => write!(f, "PostgreSQL"),
        }
    }
}

impl Database {
    /// SQLite `hub.sqlite3` under `data_dir`, or PostgreSQL at `postgres` when given.
    pub fn new(data_dir: &Path, postgres: Option<&str>) -> Self {
        match postgres {
            Some(p) => Database::Postgres(p.to_owned()),
            None => Database::Sqlite(data_dir.join("hub.sqlite3")),
        }
    }

    fn sqlite(path: &Path, migrate: bool) -> Result<Box<dyn Sql + Send>, StoreError> {
        let fail = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let mut conn = Connection::open(path).map_err(fail)?;
        schema::configure(&conn).map_err(fail)?;
        if migrate {
            schema::migrate(&mut conn).map_err(fail)?;
        }
        Ok(Box::new(conn))
    }

    /// A new connection, configured (SQLite: WAL, synchronous, cache, busy timeout).
    pub fn connect(&self) -> Result<Box<dyn Sql + Send>, StoreError> {
        match self {
            Database::Sqlite(path) => Self::sqlite(path, false),
            Database::Postgres(params) => Ok(Box::new(
                crate::db::PgConn::connect(params).map_err(StoreError::Postgres)?,
            )),
        }
    }

    /// Connects and brings the schema to the newest version.
    pub fn connect_and_migrate(&self) -> Result<Box<dyn Sql + Send>, StoreError> {
        match self {
            Database::Sqlite(path) => Self::sqlite(path, true),
            Database::Postgres(params) => {
                let conn = crate::db::PgConn::connect(params).map_err(StoreError::Postgres)?;
                schema::migrate_pg(&conn).map_err(StoreError::Postgres)?;
                Ok(Box::new(conn))
            }
        }
    }
}

/// Capacity of the write queue. When it is full, ingest waits, stops reading from the broker and so
/// stops acknowledging: a slow disk slows the gateways' uplink instead of growing the hub's memory.
pub const WRITE_QUEUE: usize = 4096;

/// Configures a connection and brings its database to the newest schema (for tools that open the
/// database beside a running hub, such as `hub keys`).
pub fn prepare(conn: &mut Connection) -> rusqlite::Result<()> {
    schema::configure(conn)?;
    schema::migrate(conn)
}

impl Store {
    /// Opens (creating and migrating) `hub.sqlite3` under `data_dir` and starts the writer thread.
    /// The writer stops when every `Store` handle is dropped, after writing what was queued.
    pub fn open(
        data_dir: &Path,
        database: &Database,
        metrics: Arc<Metrics>,
        influx: Option<crate::influx::InfluxConfig>,
        live: crate::live::Live,
        retention: Retention,
        feed: crate::rules::Feed,
    ) -> Result<(Store, std::thread::JoinHandle<()>), StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let wconn = database.connect_and_migrate()?;
        let reader = database.connect()?;
        let aside = database.connect()?;
        for c in [&wconn, &reader, &aside] {
            if c.engine() == crate::db::Engine::Sqlite {
                c.batch(schema::STORE_CACHE)?;
            }
        }
        // SQLite: pages go from the WAL into the database file on a thread of their own
        // (writer::Checkpointer); the writer's own automatic checkpoint stays as a safety net.
        let checkpoints = match wconn.engine() {
            crate::db::Engine::Sqlite => {
                wconn.batch(writer::WRITER_AUTOCHECKPOINT)?;
                Some(database.connect()?)
            }
            crate::db::Engine::Postgres => None,
        };
        let maintenance = rollup::Maintenance::load(&*wconn, retention, data_dir.join("evidence"))?;
        let sink =
            match influx {
                Some(cfg) => {
                    let (sink, sink_metrics) = crate::influx::start(cfg, database.connect()?)
                        .map_err(|e| StoreError::DataDir {
                            path: data_dir.to_owned(),
                            source: std::io::Error::other(e.to_string()),
                        })?;
                    let _ = metrics.influx.set(sink_metrics);
                    Some(sink)
                }
                None => None,
            };
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                writer::run(
                    wconn,
                    checkpoints,
                    rx,
                    metrics,
                    sink,
                    live,
                    maintenance,
                    feed,
                )
            })
            .map_err(|e| StoreError::DataDir {
                path: data_dir.to_owned(),
                source: e,
            })?;
        Ok((
            Store {
                writes: tx,
                reader: Arc::new(Mutex::new(reader)),
                aside: Arc::new(Mutex::new(aside)),
                database: database.clone(),
                retention,
            },
            handle,
        ))
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Queues a write, waiting while the queue is full.
    pub async fn write(&self, op: WriteOp, ack: Option<Ack>) -> Result<(), StoreError> {
        self.writes
            .send((op, ack))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Runs a read on the reader connection off the async runtime.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Sql) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        run_on(self.reader.clone(), f).await
    }

    /// Runs a small read-write transaction beside the writer (on a connection of its own, off the
    /// async runtime); for writes made by people at human rates, such as task actions.
    pub(crate) async fn write_aside<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Sql) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        run_on(self.aside.clone(), f).await
    }
}

async fn run_on<T: Send + 'static>(
    conn: Arc<Mutex<Box<dyn Sql + Send>>>,
    f: impl FnOnce(&dyn Sql) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(move || {
        let conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&**conn)
    })
    .await
    .map_err(|_| StoreError::Closed)?
}
