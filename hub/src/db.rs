//! One SQL interface over the two engines of the hub's relational state: SQLite, embedded, for one
//! hub on one machine; PostgreSQL, shared, when a city runs several hub processes (docs/SCALING.md).
//!
//! Code that is to run on both writes its SQL once, in the subset both engines speak, against
//! [`Sql`]:
//! - parameters are `$1`, `$2`, ... (translated to SQLite's `?1`, `?2`, ...);
//! - new rows' ids come from `INSERT ... RETURNING id` (both engines), not `last_insert_rowid()`;
//! - upserts are `INSERT ... ON CONFLICT (...) DO UPDATE/NOTHING` (both), not `INSERT OR ...`;
//! - a parameter whose type PostgreSQL cannot infer from its column, or infers too narrow (as in
//!   `$1 + 60000`, taken as a 4-byte integer), is written `CAST($1 AS BIGINT)`;
//! - sums of integers are cast back (`CAST(SUM(n) AS BIGINT)`): PostgreSQL makes them NUMERIC.
//!
//! Values cross as [`Value`]: the five storage classes of SQLite, which PostgreSQL's BIGINT, DOUBLE
//! PRECISION, TEXT and BYTEA columns map onto. Rows come back owned ([`Row`]).
//!
//! This is the layer the store moves onto module by module (issue 10). Converted so far: the task
//! loop's SQL (`crate::tasks`). The rest of the hub still talks rusqlite directly, so a hub process
//! cannot run on PostgreSQL yet.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use bytes::BytesMut;
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use thiserror::Error;

/// Which engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Debug, Error)]
pub enum DbError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("column {index}: {message}")]
    Column { index: usize, message: String },
    /// A condition the caller checks in SQL (the cluster's partitions).
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, DbError>;

/// The server's own words (message, detail, hint), not just "db error".
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                m.push_str(": ");
                m.push_str(d);
            }
            if let Some(h) = db.hint() {
                m.push_str("; hint: ");
                m.push_str(h);
            }
            m
        }
        None => e.to_string(),
    }
}

impl DbError {
    /// Whether trying the same work again later may succeed (the disk, the connection, a lock),
    /// as against the database refusing this data (a constraint, a value out of range).
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Sqlite(e) => {
                use rusqlite::ErrorCode::*;
                matches!(
                    e.sqlite_error_code(),
                    Some(
                        SystemIoFailure
                            | DiskFull
                            | DatabaseBusy
                            | DatabaseLocked
                            | CannotOpen
                            | ReadOnly
                            | OutOfMemory
                    )
                )
            }
            DbError::Postgres(e) => match e.code() {
                // No SQLSTATE: the connection itself failed.
                None => true,
                // Connection exception, transaction rollback (serialization, deadlock),
                // insufficient resources, operator intervention (shutdown), system error.
                Some(code) => {
                    let class = &code.code()[..2];
                    matches!(class, "08" | "40" | "53" | "57" | "58")
                }
            },
            DbError::Column { .. } | DbError::Other(_) => false,
        }
    }
}

/// Lets code not yet moved onto this layer (returning `rusqlite::Result`) call code that has.
impl From<DbError> for rusqlite::Error {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Sqlite(e) => e,
            other => rusqlite::Error::ToSqlConversionFailure(Box::new(other)),
        }
    }
}

/// A value as both engines store it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Real(_) => "a real",
            Value::Text(_) => "text",
            Value::Blob(_) => "a blob",
        }
    }
}

/// A Rust value that can be a parameter.
pub trait ToValue {
    fn to_value(&self) -> Value;
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(i64::from(*self))
            }
        }
    )*};
}
int_to_value!(i64, i32, i16, u32, u16, u8);

impl ToValue for usize {
    fn to_value(&self) -> Value {
        // Counts and sizes: far below i64::MAX on any machine this runs on.
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}
impl ToValue for u64 {
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl ToValue for f32 {
    fn to_value(&self) -> Value {
        Value::Real(f64::from(*self))
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

/// Parameters for [`Sql`] calls: `args![id, name, None::<i64>]`.
#[macro_export]
macro_rules! args {
    ($($x:expr),* $(,)?) => {
        &[$($crate::db::ToValue::to_value(&$x)),*][..]
    };
}
pub use args;

/// A Rust value a column can be read as.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> std::result::Result<Self, String>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Int(i) => Ok(*i),
            other => Err(format!("expected an integer, found {}", other.kind())),
        }
    }
}
macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: &Value) -> std::result::Result<Self, String> {
                let i = i64::from_value(v)?;
                <$t>::try_from(i).map_err(|_| format!("{i} is out of range for {}", stringify!($t)))
            }
        }
    )*};
}
int_from_value!(i32, u32, u64, usize);

impl FromValue for bool {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        Ok(i64::from_value(v)? != 0)
    }
}
impl FromValue for f64 {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Real(f) => Ok(*f),
            // An integer stored in a REAL column of SQLite, or MAX() over integers.
            Value::Int(i) => Ok(*i as f64),
            other => Err(format!("expected a number, found {}", other.kind())),
        }
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            other => Err(format!("expected text, found {}", other.kind())),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b.clone()),
            other => Err(format!("expected a blob, found {}", other.kind())),
        }
    }
}
impl FromValue for Value {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        Ok(v.clone())
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One result row, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(Vec<Value>);

impl Row {
    /// Column `index` (from 0) as `T`.
    pub fn get<T: FromValue>(&self, index: usize) -> Result<T> {
        let v = self.0.get(index).ok_or_else(|| DbError::Column {
            index,
            message: format!("the row has {} columns", self.0.len()),
        })?;
        T::from_value(v).map_err(|message| DbError::Column { index, message })
    }
}

/// A connection (or an open transaction) of either engine.
pub trait Sql {
    fn engine(&self) -> Engine;
    /// Runs one statement; the number of rows it changed.
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize>;
    /// Runs one statement; every row it returns.
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;
    /// Runs statements separated by `;`, without parameters (schema, `BEGIN`, ...).
    fn batch(&self, sql: &str) -> Result<()>;

    /// The first row, if any.
    fn query_opt(&self, sql: &str, params: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Runs one statement once per `width` parameters (`params` holding several such sets, in
    /// order); the rows changed in all. SQLite looks the prepared statement up once for all of
    /// them, where calling [`Sql::execute`] for each would look it up each time.
    fn execute_each(&self, sql: &str, params: &[Value], width: usize) -> Result<usize> {
        let mut changed = 0;
        for p in params.chunks(width.max(1)) {
            changed += self.execute(sql, p)?;
        }
        Ok(changed)
    }
}

impl fmt::Debug for dyn Sql + Send {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sql({:?})", self.engine())
    }
}

/// Runs `{head} VALUES (…), (…) {tail}` for rows of `width` parameters each (`params` holds them
/// all, row after row). On SQLite each row is a one-row statement, prepared once: a statement
/// that writes several rows and may fail gets a statement journal, into which SQLite first copies
/// every page it changes, and a one-row insert costs no round trip. On PostgreSQL up to 64 rows
/// a statement, since each statement is a round trip. A statement may not touch one row twice
/// (PostgreSQL refuses an upsert that does): callers pass distinct keys.
pub fn insert_rows(
    c: &(impl Sql + ?Sized),
    head: &str,
    width: usize,
    tail: &str,
    params: &[Value],
) -> Result<()> {
    let sql = |n: usize| {
        let rows: Vec<String> = (0..n)
            .map(|i| {
                let p: Vec<String> = (1..=width).map(|k| format!("${}", width * i + k)).collect();
                format!("({})", p.join(", "))
            })
            .collect();
        format!("{head} VALUES {} {tail}", rows.join(", "))
    };
    if params.is_empty() || width == 0 {
        return Ok(());
    }
    if c.engine() == Engine::Sqlite {
        c.execute_each(&sql(1), params, width)?;
        return Ok(());
    }
    let mut rest = params;
    while !rest.is_empty() {
        let n = [64, 16, 4, 1]
            .into_iter()
            .find(|&r| width * r <= rest.len())
            .unwrap_or(1);
        let (now, tail_params) = rest.split_at((width * n).min(rest.len()));
        c.execute(&sql(n), now)?;
        rest = tail_params;
    }
    Ok(())
}

/// The first column of the first row of a statement that returns one (`RETURNING id`, `COUNT`).
pub fn one<T: FromValue>(c: &(impl Sql + ?Sized), sql: &str, params: &[Value]) -> Result<T> {
    match c.query_opt(sql, params)? {
        Some(row) => row.get(0),
        None => Err(DbError::Column {
            index: 0,
            message: format!(
                "no row from {}",
                sql.split_whitespace().take(6).collect::<Vec<_>>().join(" ")
            ),
        }),
    }
}

/// How a transaction starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Reads first, maybe writes later.
    Deferred,
    /// Takes the write lock at once (SQLite `BEGIN IMMEDIATE`), so what it reads cannot go stale
    /// before it writes. In PostgreSQL rows read for writing are locked by `FOR UPDATE`
    /// ([`for_update`]).
    Write,
}

/// A transaction on a connection; rolled back when dropped uncommitted.
pub struct Tx<'c> {
    conn: &'c dyn Sql,
    done: bool,
}

impl fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tx({:?}, done: {})", self.conn.engine(), self.done)
    }
}

impl<'c> Tx<'c> {
    pub fn begin(conn: &'c dyn Sql, how: Begin) -> Result<Self> {
        let sql = match (conn.engine(), how) {
            (Engine::Sqlite, Begin::Write) => "BEGIN IMMEDIATE",
            _ => "BEGIN",
        };
        conn.batch(sql)?;
        Ok(Tx { conn, done: false })
    }

    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        let result = self.conn.batch("COMMIT");
        if result.is_err() {
            // SQLite stays in the transaction when COMMIT fails (busy, I/O): end it, or every
            // later BEGIN fails. (PostgreSQL has ended it already; this is then a no-op.)
            let _ = self.conn.batch("ROLLBACK");
        }
        result
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Nothing more to do if this fails: the connection reports it on its next statement.
            let _ = self.conn.batch("ROLLBACK");
        }
    }
}

impl Sql for Tx<'_> {
    fn engine(&self) -> Engine {
        self.conn.engine()
    }
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        self.conn.execute(sql, params)
    }
    fn execute_each(&self, sql: &str, params: &[Value], width: usize) -> Result<usize> {
        self.conn.execute_each(sql, params, width)
    }
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.conn.query(sql, params)
    }
    fn batch(&self, sql: &str) -> Result<()> {
        self.conn.batch(sql)
    }
}

/// `" FOR UPDATE"` on PostgreSQL, nothing on SQLite (whose write transaction locks the database).
pub fn for_update(c: &(impl Sql + ?Sized)) -> &'static str {
    match c.engine() {
        Engine::Sqlite => "",
        Engine::Postgres => " FOR UPDATE",
    }
}

// ---- SQLite ----

/// `$1` → `?1`. The SQL this layer runs has no `$` in its literals (the only other place one
/// could appear), so a plain scan does.
fn sqlite_sql(sql: &str) -> std::borrow::Cow<'_, str> {
    if !sql.contains('$') {
        return sql.into();
    }
    // Byte for byte: this runs for every statement the writer executes.
    let mut out = sql.as_bytes().to_vec();
    for i in 0..out.len().saturating_sub(1) {
        if out[i] == b'$' && out[i + 1].is_ascii_digit() {
            out[i] = b'?';
        }
    }
    // One ASCII byte replaced by another: still UTF-8.
    String::from_utf8(out).map_or_else(|_| sql.into(), Into::into)
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn sqlite_row(r: &rusqlite::Row<'_>, columns: usize) -> rusqlite::Result<Row> {
    use rusqlite::types::ValueRef;
    let mut values = Vec::with_capacity(columns);
    for i in 0..columns {
        values.push(match r.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Int(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        });
    }
    Ok(Row(values))
}

impl Sql for rusqlite::Connection {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        let mut stmt = self.prepare_cached(&sqlite_sql(sql))?;
        Ok(stmt.execute(rusqlite::params_from_iter(params))?)
    }
    fn execute_each(&self, sql: &str, params: &[Value], width: usize) -> Result<usize> {
        let mut stmt = self.prepare_cached(&sqlite_sql(sql))?;
        let mut changed = 0;
        for p in params.chunks(width.max(1)) {
            changed += stmt.execute(rusqlite::params_from_iter(p))?;
        }
        Ok(changed)
    }
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let mut stmt = self.prepare_cached(&sqlite_sql(sql))?;
        let columns = stmt.column_count();
        let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| {
            sqlite_row(r, columns)
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
    fn batch(&self, sql: &str) -> Result<()> {
        Ok(self.execute_batch(sql)?)
    }
}

/// rusqlite's own transactions, for code that opened one itself.
impl Sql for rusqlite::Transaction<'_> {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        Sql::execute(&**self, sql, params)
    }
    fn execute_each(&self, sql: &str, params: &[Value], width: usize) -> Result<usize> {
        Sql::execute_each(&**self, sql, params, width)
    }
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        Sql::query(&**self, sql, params)
    }
    fn batch(&self, sql: &str) -> Result<()> {
        Sql::batch(&**self, sql)
    }
}

// ---- PostgreSQL ----

/// A PostgreSQL connection with its prepared statements.
pub struct PgConn {
    /// How to connect again after the connection is lost (`None`: made from a client).
    params: Option<String>,
    /// `None` while being dropped, or after a failed reconnection.
    client: Mutex<Option<postgres::Client>>,
    /// Inside BEGIN … COMMIT/ROLLBACK: a connection lost then must not be silently replaced
    /// (the new one would take the rest of the transaction's statements on their own, and
    /// PostgreSQL answers a COMMIT outside a transaction with a mere warning).
    in_tx: std::sync::atomic::AtomicBool,
    statements: Mutex<HashMap<String, postgres::Statement>>,
}

impl fmt::Debug for PgConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgConn({} statements)", lock(&self.statements).len())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f`, which blocks on the PostgreSQL client's own runtime, so that it may be called from
/// anywhere: on a thread of the hub's (the store writer, the rules) directly; on an async worker
/// thread (ingest checking a key) through `block_in_place`; on a single-threaded runtime (tests)
/// on a thread of its own. The client would panic if it blocked on a runtime's worker thread.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Err(_) => f(),
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(t) => t,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

impl PgConn {
    /// Connects with a libpq-style string (`host=/run/postgresql dbname=city user=hub`) or URL
    /// (`postgresql://hub@db.example/city`). Callable from anywhere (see [`off_runtime`]).
    pub fn connect(params: &str) -> Result<Self> {
        let client = off_runtime(|| postgres::Client::connect(params, postgres::NoTls))?;
        let mut conn = Self::from_client(client);
        conn.params = Some(params.to_owned());
        Ok(conn)
    }

    pub fn from_client(client: postgres::Client) -> Self {
        PgConn {
            params: None,
            in_tx: std::sync::atomic::AtomicBool::new(false),
            client: Mutex::new(Some(client)),
            statements: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` with the client, off the async runtime.
    fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T> + Send,
    ) -> Result<T> {
        use std::sync::atomic::Ordering::SeqCst;
        off_runtime(|| {
            let mut guard = lock(&self.client);
            let lost = guard.as_ref().is_none_or(postgres::Client::is_closed);
            if lost && !self.in_tx.load(SeqCst) {
                // The server restarted or the network dropped: connect again (the hub's
                // threads retry what failed), with the prepared statements gone too.
                if let Some(params) = &self.params {
                    *guard = None;
                    lock(&self.statements).clear();
                    *guard = Some(postgres::Client::connect(params, postgres::NoTls)?);
                    tracing::warn!("PostgreSQL connection lost; connected again");
                }
            }
            let client = guard.as_mut().ok_or_else(|| DbError::Column {
                index: 0,
                message: "the PostgreSQL connection is closed".into(),
            })?;
            f(client)
        })
    }

    fn statement(&self, client: &mut postgres::Client, sql: &str) -> Result<postgres::Statement> {
        if let Some(s) = lock(&self.statements).get(sql) {
            return Ok(s.clone());
        }
        let s = client.prepare(sql)?;
        lock(&self.statements).insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

fn pg_params(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl Sql for PgConn {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        let n = self.with(|client| {
            let stmt = self.statement(client, sql)?;
            Ok(client.execute(&stmt, &pg_params(params))?)
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let rows = self.with(|client| {
            let stmt = self.statement(client, sql)?;
            Ok(client.query(&stmt, &pg_params(params))?)
        })?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.try_get::<_, Value>(i))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map(Row)
                    .map_err(DbError::from)
            })
            .collect()
    }
    fn batch(&self, sql: &str) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let word: String = sql
            .trim_start()
            .chars()
            .take(8)
            .collect::<String>()
            .to_ascii_uppercase();
        let ends = word.starts_with("COMMIT")
            || (word.starts_with("ROLLBACK") && !sql.to_ascii_uppercase().contains(" TO "));
        if ends {
            // Whatever happens next, this transaction is over (a failed COMMIT rolls back).
            self.in_tx.store(false, SeqCst);
        }
        self.with(|client| Ok(client.batch_execute(sql)?))?;
        if word.starts_with("BEGIN") {
            self.in_tx.store(true, SeqCst);
        }
        Ok(())
    }
}

/// Closing the client blocks on its runtime too: on an async runtime's thread (a task holding
/// the store being dropped at shutdown) it is closed on a thread of its own.
impl Drop for PgConn {
    fn drop(&mut self) {
        let Some(client) = self
            .client
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::Builder::new()
                .name("pg-close".into())
                .spawn(move || drop(client));
        } else {
            drop(client);
        }
    }
}

#[derive(Debug, Error)]
#[error("{0}")]
struct Mismatch(String);

fn mismatch(v: &Value, ty: &Type) -> Box<dyn std::error::Error + Sync + Send> {
    Box::new(Mismatch(format!(
        "cannot bind {} to a parameter of type {ty} (write CAST($n AS ...) in the SQL)",
        v.kind()
    )))
}

/// Binds as SQLite would store: an integer goes into any integer, real or boolean parameter (in
/// range), a real into a real one, text into text, a blob into bytea.
impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)
                .map_err(|_| mismatch(self, ty))?
                .to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)
                .map_err(|_| mismatch(self, ty))?
                .to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT4) => (*i as f32).to_sql(ty, out),
            (Value::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (Value::Int(i), &Type::TEXT | &Type::VARCHAR) => i.to_string().to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Value::Text(s), &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME) => {
                s.to_sql(ty, out)
            }
            (Value::Blob(b), &Type::BYTEA) => b.to_sql(ty, out),
            _ => Err(mismatch(self, ty)),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)?.into()),
            Type::BYTEA => Value::Blob(<Vec<u8>>::from_sql(ty, raw)?),
            _ => Value::Text(String::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(
        _: &Type,
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Value::Null)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT8
                | Type::INT4
                | Type::INT2
                | Type::BOOL
                | Type::FLOAT8
                | Type::FLOAT4
                | Type::BYTEA
                | Type::TEXT
                | Type::VARCHAR
                | Type::BPCHAR
                | Type::NAME
        )
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Runs a test on both engines: SQLite in memory, and PostgreSQL when `CITY_TEST_POSTGRES`
    //! names a server (./test.sh starts one), each test in a schema of its own.

    use super::*;

    /// The connection string of the test server, if any. Without one the PostgreSQL half of a
    /// test is skipped, loudly, unless `CITY_REQUIRE_POSTGRES` is set (./test.sh sets it): then
    /// a missing server fails the test rather than letting it pass on SQLite alone.
    pub fn pg_params() -> Option<String> {
        match std::env::var("CITY_TEST_POSTGRES") {
            Ok(p) if !p.is_empty() => Some(p),
            _ if std::env::var_os("CITY_REQUIRE_POSTGRES").is_some() => {
                panic!("CITY_REQUIRE_POSTGRES is set but CITY_TEST_POSTGRES names no server")
            }
            _ => {
                eprintln!(
                    "CITY_TEST_POSTGRES is not set: PostgreSQL half skipped (./test.sh runs it)"
                );
                None
            }
        }
    }

    /// A fresh PostgreSQL schema of its own on the test server, if there is one.
    pub fn pg() -> Option<PgConn> {
        let params = pg_params()?;
        let conn = PgConn::connect(&params).expect("connect to CITY_TEST_POSTGRES");
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        conn.batch(&format!(
            "CREATE SCHEMA {schema}; SET search_path TO {schema}"
        ))
        .expect("create a test schema");
        Some(conn)
    }

    /// Each engine this run can reach with the hub's schema, named.
    pub fn migrated() -> Vec<(&'static str, Box<dyn Sql>)> {
        let mut lite = rusqlite::Connection::open_in_memory().expect("sqlite in memory");
        crate::store::schema::migrate(&mut lite).expect("migrate SQLite");
        let mut v: Vec<(&'static str, Box<dyn Sql>)> = vec![("sqlite", Box::new(lite))];
        if let Some(pg) = pg() {
            crate::store::schema::migrate_pg(&pg).expect("migrate PostgreSQL");
            v.push(("postgres", Box::new(pg)));
        }
        v
    }

    /// Two connections to one database with the hub's schema, per engine this run can reach,
    /// named; the guard keeps a SQLite file alive.
    #[allow(clippy::type_complexity)]
    pub fn pairs() -> Vec<(
        &'static str,
        Box<dyn Sql + Send>,
        Box<dyn Sql + Send>,
        Option<tempfile::TempDir>,
    )> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hub.sqlite3");
        let open = || {
            let c = rusqlite::Connection::open(&path).expect("open SQLite");
            crate::store::schema::configure(&c).expect("configure SQLite");
            c
        };
        let mut first = open();
        crate::store::schema::migrate(&mut first).expect("migrate SQLite");
        let mut v: Vec<(
            &'static str,
            Box<dyn Sql + Send>,
            Box<dyn Sql + Send>,
            Option<tempfile::TempDir>,
        )> = vec![("sqlite", Box::new(first), Box::new(open()), Some(dir))];
        if let Some(a) = pg() {
            crate::store::schema::migrate_pg(&a).expect("migrate PostgreSQL");
            let schema: String =
                one(&a, "SELECT CAST(current_schema() AS TEXT)", &[]).expect("schema");
            let params = pg_params().expect("server");
            let b = std::thread::spawn(move || {
                let b = PgConn::connect(&params).expect("connect");
                b.batch(&format!("SET search_path TO {schema}"))
                    .expect("search path");
                b
            })
            .join()
            .expect("connect thread");
            v.push(("postgres", Box::new(a), Box::new(b), None));
        }
        v
    }

    /// A fresh database per engine this run can reaches, as the hub names one (SQLite: a file in
    /// the returned directory; PostgreSQL: a new database on the test server).
    pub fn databases() -> Vec<(&'static str, crate::store::Database, tempfile::TempDir)> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut v = vec![(
            "sqlite",
            crate::store::Database::Sqlite(dir.path().join("hub.sqlite3")),
            dir,
        )];
        if let Some(params) = pg_params() {
            let name = format!("t_{}", uuid::Uuid::new_v4().simple());
            PgConn::connect(&params)
                .and_then(|c| c.batch(&format!("CREATE DATABASE {name}")))
                .expect("create a test database");
            v.push((
                "postgres",
                crate::store::Database::Postgres(format!("{params} dbname={name}")),
                tempfile::tempdir().expect("temp dir"),
            ));
        }
        v
    }

    /// Each engine this run can reach, named.
    pub fn engines() -> Vec<(&'static str, Box<dyn Sql>)> {
        let mut v: Vec<(&'static str, Box<dyn Sql>)> = vec![(
            "sqlite",
            Box::new(rusqlite::Connection::open_in_memory().expect("sqlite in memory")),
        )];
        if let Some(pg) = pg() {
            v.push(("postgres", Box::new(pg)));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::testing::engines;
    use super::*;

    #[test]
    fn placeholders_translate_for_sqlite() {
        assert_eq!(sqlite_sql("SELECT $1, $12 FROM t"), "SELECT ?1, ?12 FROM t");
        assert_eq!(sqlite_sql("SELECT 1"), "SELECT 1");
    }

    #[test]
    fn values_round_trip_on_both_engines() {
        for (name, c) in engines() {
            c.batch(
                "CREATE TABLE t (id BIGINT PRIMARY KEY, r DOUBLE PRECISION, s TEXT, b BYTEA, n BIGINT)",
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            let id: i64 = one(
                &*c,
                "INSERT INTO t (id, r, s, b, n) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                args![
                    1_700_000_000_000_i64,
                    2.5,
                    "蓝苏A8H123",
                    vec![0_u8, 255],
                    None::<i64>
                ],
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(id, 1_700_000_000_000);
            // An integer into a real column, read back as a real.
            c.execute("UPDATE t SET r = $1 WHERE id = $2", args![3_i64, id])
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let row = c
                .query_opt("SELECT id, r, s, b, n FROM t WHERE id = $1", args![id])
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .expect("the row");
            assert_eq!(row.get::<f64>(1).unwrap(), 3.0, "{name}");
            assert_eq!(row.get::<String>(2).unwrap(), "蓝苏A8H123", "{name}");
            assert_eq!(row.get::<Vec<u8>>(3).unwrap(), vec![0, 255], "{name}");
            assert_eq!(row.get::<Option<i64>>(4).unwrap(), None, "{name}");
            let e = row.get::<i64>(2).unwrap_err().to_string();
            assert!(
                e.contains("column 2") && e.contains("found text"),
                "{name}: {e}"
            );
            // A timestamp in milliseconds does not fit the 4-byte integer PostgreSQL infers here.
            let n: i64 = one(
                &*c,
                "SELECT CAST($1 AS BIGINT) + 60000",
                args![1_700_000_000_000_i64],
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(n, 1_700_000_060_000, "{name}");
        }
    }

    #[test]
    fn a_dropped_transaction_rolls_back_and_a_committed_one_stays() {
        for (name, c) in engines() {
            c.batch("CREATE TABLE t (k TEXT PRIMARY KEY)").unwrap();
            {
                let tx = Tx::begin(&*c, Begin::Write).unwrap();
                tx.execute("INSERT INTO t VALUES ($1)", args!["lost"])
                    .unwrap();
            }
            let tx = Tx::begin(&*c, Begin::Write).unwrap();
            tx.execute("INSERT INTO t VALUES ($1)", args!["kept"])
                .unwrap();
            tx.commit().unwrap();
            let keys: Vec<String> = c
                .query("SELECT k FROM t ORDER BY k", &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0).unwrap())
                .collect();
            assert_eq!(keys, ["kept"], "{name}");
            // A failed statement names the engine and what is wrong.
            let e = c
                .execute("INSERT INTO t VALUES ($1)", args!["kept"])
                .unwrap_err();
            assert!(
                e.to_string().to_lowercase().contains("unique"),
                "{name}: {e}"
            );
        }
    }

    /// A PostgreSQL connection that is lost (the server restarted, the network dropped) is made
    /// again on next use, but never inside a transaction: that one fails until it is ended.
    #[test]
    fn a_lost_postgresql_connection_is_made_again_outside_a_transaction() {
        let Some(a) = super::testing::pg() else {
            return;
        };
        let b = super::testing::pg().unwrap();
        let kill = |c: &PgConn| {
            let pid: i64 = one(c, "SELECT CAST(pg_backend_pid() AS BIGINT)", &[]).unwrap();
            b.execute("SELECT pg_terminate_backend(CAST($1 AS INT))", args![pid])
                .unwrap();
            // The client notices when it next talks to the server.
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        let ask = |c: &PgConn| one::<i64>(c, "SELECT CAST(1 AS BIGINT)", &[]);
        kill(&a);
        // The first statement may fail (that is how the loss shows); a retry reconnects.
        let again = (0..3).find_map(|_| ask(&a).ok());
        assert_eq!(again, Some(1));

        let tx = Tx::begin(&a, Begin::Write).unwrap();
        kill(&a);
        assert!(ask(&a).is_err());
        assert!(ask(&a).is_err(), "not reconnected inside the transaction");
        drop(tx);
        let again = (0..3).find_map(|_| ask(&a).ok());
        assert_eq!(again, Some(1), "reconnected once the transaction ended");
    }
}
