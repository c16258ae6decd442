//! The SQLite schema of the embedded store, applied in order as numbered migrations.

use rusqlite::Connection;

/// Each entry moves the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: gateways, assets, series with their latest value, readings, events, dedupe, dead letters.
    r#"
    CREATE TABLE gateways (
        id              TEXT PRIMARY KEY,
        boot            TEXT,
        state           TEXT NOT NULL,
        clock           TEXT,
        agent           TEXT,
        config_version  TEXT,
        connected_at    INTEGER,
        last_seen       INTEGER NOT NULL,
        last_heartbeat  TEXT
    );
    CREATE TABLE assets (
        id                 TEXT PRIMARY KEY,
        kind               TEXT NOT NULL,
        gateway            TEXT NOT NULL,
        device             TEXT NOT NULL,
        profile            TEXT,
        lon                REAL,
        lat                REAL,
        road_segment       TEXT,
        grid               TEXT,
        zone               TEXT,
        report_interval_s  INTEGER,
        updated_at         INTEGER NOT NULL
    );
    CREATE INDEX assets_by_device ON assets (gateway, device);
    CREATE TABLE series (
        id            INTEGER PRIMARY KEY,
        gateway       TEXT NOT NULL,
        device        TEXT NOT NULL,
        metric        TEXT NOT NULL,
        unit          TEXT,
        last_ts       INTEGER,
        last_value    REAL,
        last_text     TEXT,
        last_quality  TEXT,
        last_received INTEGER,
        -- 'number', 'bool' or 'text': how values of this series are returned by the API.
        vtype         TEXT,
        UNIQUE (gateway, device, metric)
    );
    -- One row per series and millisecond: a reading delivered twice is stored once.
    CREATE TABLE readings (
        series   INTEGER NOT NULL,
        ts       INTEGER NOT NULL,
        value    REAL,
        text     TEXT,
        quality  TEXT,
        PRIMARY KEY (series, ts)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id          INTEGER PRIMARY KEY,
        gateway     TEXT NOT NULL,
        device      TEXT NOT NULL,
        event       TEXT NOT NULL,
        ts          INTEGER NOT NULL,
        phase       TEXT NOT NULL,
        attributes  TEXT NOT NULL,
        evidence    TEXT NOT NULL,
        received    INTEGER NOT NULL,
        UNIQUE (gateway, device, event, ts, phase)
    );
    -- Every envelope accepted, by its unique name: redelivery (even after a hub restart) is skipped.
    CREATE TABLE envelopes (
        gateway   TEXT NOT NULL,
        boot      TEXT NOT NULL,
        seq       INTEGER NOT NULL,
        received  INTEGER NOT NULL,
        items     INTEGER NOT NULL,
        PRIMARY KEY (gateway, boot, seq)
    ) WITHOUT ROWID;
    CREATE TABLE dead_letters (
        id        INTEGER PRIMARY KEY,
        received  INTEGER NOT NULL,
        topic     TEXT NOT NULL,
        gateway   TEXT,
        code      TEXT NOT NULL,
        reason    TEXT NOT NULL,
        payload   BLOB NOT NULL,
        size      INTEGER NOT NULL
    );
    "#,
    // 2: evidence (camera images) by content hash, and which events reference which images.
    r#"
    CREATE TABLE evidence (
        sha256      TEXT PRIMARY KEY,
        media_type  TEXT NOT NULL,
        bytes       INTEGER NOT NULL,
        gateway     TEXT NOT NULL,
        stored_at   INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE event_evidence (
        event_id    INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        sha256      TEXT NOT NULL,
        -- The order of the evidence in the event (plate close-up first, as the camera sent it).
        position    INTEGER NOT NULL,
        gateway     TEXT NOT NULL,
        media_type  TEXT NOT NULL,
        bytes       INTEGER NOT NULL,
        PRIMARY KEY (event_id, sha256)
    ) WITHOUT ROWID;
    CREATE INDEX event_evidence_by_sha ON event_evidence (sha256, gateway);
    CREATE INDEX events_by_time ON events (ts);
    "#,
    // 3: commands issued through the API and what the gateways replied.
    r#"
    CREATE TABLE commands (
        id          TEXT PRIMARY KEY,
        gateway     TEXT NOT NULL,
        device      TEXT NOT NULL,
        asset       TEXT,
        action      TEXT NOT NULL,
        issued_at   INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        outcome     TEXT,
        detail      TEXT,
        read_back   TEXT,
        replied_at  INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX commands_by_asset ON commands (asset, issued_at);
    "#,
    // 4: gateway message keys (protocol::auth). The secret must be kept: HMAC needs it to verify.
    r#"
    CREATE TABLE gateway_keys (
        gateway     TEXT NOT NULL,
        key_id      TEXT NOT NULL,
        secret      BLOB NOT NULL,
        created_at  INTEGER NOT NULL,
        revoked_at  INTEGER,
        PRIMARY KEY (gateway, key_id)
    ) WITHOUT ROWID;
    -- Bumped by every change, whoever makes it (a running hub and `hub keys` are two processes):
    -- the hub reloads its keys when this moves.
    CREATE TABLE gateway_keys_version (
        id          INTEGER PRIMARY KEY CHECK (id = 0),
        version     INTEGER NOT NULL
    );
    INSERT INTO gateway_keys_version VALUES (0, 0);
    CREATE TRIGGER gateway_keys_ins AFTER INSERT ON gateway_keys
        BEGIN UPDATE gateway_keys_version SET version = version + 1; END;
    CREATE TRIGGER gateway_keys_upd AFTER UPDATE ON gateway_keys
        BEGIN UPDATE gateway_keys_version SET version = version + 1; END;
    CREATE TRIGGER gateway_keys_del AFTER DELETE ON gateway_keys
        BEGIN UPDATE gateway_keys_version SET version = version + 1; END;
    "#,
    // 5: API tokens, kept as their SHA-256 only.
    r#"
    CREATE TABLE api_tokens (
        name        TEXT NOT NULL PRIMARY KEY,
        role        TEXT NOT NULL,
        department  TEXT,
        hash        BLOB NOT NULL UNIQUE,
        created_at  INTEGER NOT NULL,
        revoked_at  INTEGER
    );
    "#,
    // 6: 1-minute and 1-hour rollups of the numeric readings (see store::rollup), the minutes to
    // recompute because readings came late, how far the rollups go; envelope names by age (so
    // retention can delete them) and evidence images deleted after their retention period.
    r#"
    CREATE TABLE rollup_1m (
        series  INTEGER NOT NULL,
        ts      INTEGER NOT NULL,
        n       INTEGER NOT NULL,
        sum     REAL NOT NULL,
        min     REAL NOT NULL,
        max     REAL NOT NULL,
        PRIMARY KEY (series, ts)
    ) WITHOUT ROWID;
    CREATE TABLE rollup_1h (
        series  INTEGER NOT NULL,
        ts      INTEGER NOT NULL,
        n       INTEGER NOT NULL,
        sum     REAL NOT NULL,
        min     REAL NOT NULL,
        max     REAL NOT NULL,
        PRIMARY KEY (series, ts)
    ) WITHOUT ROWID;
    CREATE TABLE rollup_dirty (
        series  INTEGER NOT NULL,
        ts      INTEGER NOT NULL,
        PRIMARY KEY (series, ts)
    ) WITHOUT ROWID;
    CREATE TABLE rollup_state (
        id         INTEGER PRIMARY KEY CHECK (id = 0),
        watermark  INTEGER NOT NULL
    );
    INSERT INTO rollup_state VALUES (0, 0);
    CREATE INDEX envelopes_by_received ON envelopes (received);
    ALTER TABLE evidence ADD COLUMN expired_at INTEGER;
    "#,
    // 7: where a token comes from: `hub tokens add` ('cli') or the hub's tokens file ('config').
    r#"
    ALTER TABLE api_tokens ADD COLUMN source TEXT NOT NULL DEFAULT 'cli';
    "#,
    // 8: tasks (the closed loop, see crate::tasks) and their audit trail.
    r#"
    CREATE TABLE tasks (
        id            INTEGER PRIMARY KEY,
        kind          TEXT NOT NULL,
        category      TEXT NOT NULL,
        rule          TEXT NOT NULL,
        -- What the task is about: an asset id, a plate in a zone, or a report of its own.
        subject       TEXT NOT NULL,
        asset         TEXT,
        road_segment  TEXT,
        grid          TEXT,
        zone          TEXT,
        department    TEXT,
        severity      TEXT NOT NULL,
        state         TEXT NOT NULL,
        title         TEXT NOT NULL,
        detail        TEXT NOT NULL,
        opened_at     INTEGER NOT NULL,
        due_at        INTEGER,
        updated_at    INTEGER NOT NULL,
        closed_at     INTEGER
    );
    -- One open task per subject and rule.
    CREATE UNIQUE INDEX tasks_one_open ON tasks (subject, rule) WHERE state NOT IN ('closed', 'cancelled');
    CREATE INDEX tasks_by_state ON tasks (state, department);
    CREATE TABLE task_events (
        id          INTEGER PRIMARY KEY,
        task        INTEGER NOT NULL REFERENCES tasks (id),
        at          INTEGER NOT NULL,
        actor       TEXT NOT NULL,
        action      TEXT NOT NULL,
        from_state  TEXT,
        to_state    TEXT NOT NULL,
        note        TEXT
    );
    CREATE INDEX task_events_by_task ON task_events (task, id);
    "#,
    // 9: the rules' persisted state (crate::rules): conditions in progress per asset or zone, how far
    // each series has been evaluated, the camera event cursor; escalation steps of tasks.
    r#"
    CREATE TABLE rule_state (
        key         TEXT PRIMARY KEY,
        state       TEXT NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    CREATE TABLE rule_cursor (
        series  INTEGER PRIMARY KEY,
        ts      INTEGER NOT NULL
    );
    CREATE TABLE rule_meta (
        key    TEXT PRIMARY KEY,
        value  INTEGER NOT NULL
    );
    ALTER TABLE tasks ADD COLUMN escalation INTEGER NOT NULL DEFAULT 0;
    "#,
    // 10: the lighting rate of each road segment per night (crate::rules::lighting), for the KPI
    // rule and the monthly assessment; kept as long as the database.
    r#"
    CREATE TABLE lighting_nights (
        night    INTEGER NOT NULL,
        segment  TEXT NOT NULL,
        lamps    INTEGER NOT NULL,
        rate     REAL NOT NULL,
        target   REAL NOT NULL,
        dark     TEXT NOT NULL,
        PRIMARY KEY (night, segment)
    );
    "#,
    // 11: notifications of task changes (crate::notify): one row per (task event, channel).
    r#"
    CREATE TABLE notifications (
        id            INTEGER PRIMARY KEY,
        event         INTEGER NOT NULL REFERENCES task_events (id),
        task          INTEGER NOT NULL REFERENCES tasks (id),
        channel       TEXT NOT NULL,
        state         TEXT NOT NULL,
        attempts      INTEGER NOT NULL,
        next_at       INTEGER NOT NULL,
        last_error    TEXT,
        created_at    INTEGER NOT NULL,
        delivered_at  INTEGER
    );
    CREATE INDEX notifications_due ON notifications (state, next_at);
    CREATE INDEX notifications_by_task ON notifications (task);
    "#,
    // 12: gateway configuration versions uploaded through the API (crate::fleet).
    r#"
    CREATE TABLE gateway_configs (
        gateway      TEXT NOT NULL,
        version      INTEGER NOT NULL,
        sha256       TEXT NOT NULL,
        toml         TEXT NOT NULL,
        uploaded_at  INTEGER NOT NULL,
        uploaded_by  TEXT NOT NULL,
        comment      TEXT,
        PRIMARY KEY (gateway, version)
    );
    "#,
    // 13: when the hub last saw each gateway come online, by the hub's clock (the presence's
    // connected_at is the gateway's); crate::fleet pushes again to a gateway back since its push.
    r#"
    ALTER TABLE gateways ADD COLUMN online_at INTEGER;
    "#,
    // 14: a notification once per (task event, channel), whichever notifier creates it
    // (crate::notify: several hub processes may run one each).
    r#"
    CREATE UNIQUE INDEX notifications_once ON notifications (event, channel);
    "#,
    // 15: several hub processes (crate::cluster): who owns which partition of the gateways, until
    // when; the processes alive (the camera event cursor of each partition is in rule_meta).
    r#"
    CREATE TABLE cluster_partitions (
        part         INTEGER PRIMARY KEY,
        owner        TEXT,
        lease_until  INTEGER NOT NULL DEFAULT 0,
        -- Bumped at every change of owner: a fencing token for what the owner writes.
        epoch        INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE cluster_hubs (
        hub      TEXT PRIMARY KEY,
        seen_at  INTEGER NOT NULL
    );
    "#,
    // 16: raw readings in chunks (store::raw) instead of a row per reading: what one write brought
    // of a series in one minute (the id is the write order), merged into a row per series and hour
    // once the hour is rolled up. [`CHUNKS`] then moves the rows of `readings` over and drops it.
    r#"
    CREATE TABLE reading_chunks (
        id      INTEGER PRIMARY KEY,
        series  INTEGER NOT NULL,
        minute  INTEGER NOT NULL,
        n       INTEGER NOT NULL,
        data    BLOB NOT NULL
    );
    CREATE INDEX reading_chunks_by_series ON reading_chunks (series, minute, id);
    CREATE TABLE reading_hours (
        id      INTEGER PRIMARY KEY,
        series  INTEGER NOT NULL,
        hour    INTEGER NOT NULL,
        n       INTEGER NOT NULL,
        data    BLOB NOT NULL,
        UNIQUE (series, hour)
    );
    -- Hours before this have one chunk per series (store::raw::compact).
    ALTER TABLE rollup_state ADD COLUMN compacted INTEGER NOT NULL DEFAULT 0;
    -- Hours of a series before it that late readings came for, and when the last came: merged
    -- again once no more have come for a while (a replay brings many in a row).
    CREATE TABLE chunks_late (
        series   INTEGER NOT NULL,
        hour     INTEGER NOT NULL,
        touched  INTEGER NOT NULL,
        PRIMARY KEY (series, hour)
    ) WITHOUT ROWID;
    "#,
    // 17
    r#"
    -- Set while the writer carries latest values not yet written to `series` (SQLite only, see
    -- store::writer::Carry): chunks after this id may hold newer readings than `series` says, and
    -- a start after a crash writes them (store::writer::repair_latest).
    ALTER TABLE rollup_state ADD COLUMN latest_from INTEGER;
    "#,
];

/// The index in [`MIGRATIONS`] (and [`PG_MIGRATIONS`]) of version 16, after which the rows of the
/// `readings` table move into chunks.
const CHUNKS: usize = 15;

/// Moves the rows of `readings` into chunks (a page of each series at a time, so a big table does
/// not have to fit in memory) and drops the table.
fn readings_to_chunks(tx: &dyn crate::db::Sql) -> crate::db::Result<()> {
    use crate::db::args;
    const PAGE: i64 = 50_000;
    let ids: Vec<i64> = tx
        .query("SELECT DISTINCT series FROM readings ORDER BY series", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect::<crate::db::Result<_>>()?;
    for id in ids {
        let mut after = i64::MIN;
        loop {
            let rows = tx.query(
                "SELECT ts, value, text, quality FROM readings
                 WHERE series = $1 AND ts > $2 ORDER BY ts LIMIT $3",
                args![id, after, PAGE],
            )?;
            let points = rows
                .iter()
                .map(|r| {
                    Ok(super::raw::Point {
                        ts: r.get(0)?,
                        value: r.get(1)?,
                        text: r.get(2)?,
                        quality: r.get(3)?,
                    })
                })
                .collect::<crate::db::Result<Vec<_>>>()?;
            super::raw::merge_into_hours(tx, id, &points)?;
            match points.last() {
                Some(p) if points.len() as i64 == PAGE => after = p.ts,
                _ => break,
            }
        }
    }
    // What moved is in hour rows already: merging starts from now, not from the oldest hour.
    tx.execute(
        "UPDATE rollup_state SET compacted = $1",
        args![super::raw::hour_of(crate::now_ms())],
    )?;
    tx.batch("DROP TABLE readings")
}

/// Brings the database to the newest schema version.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: usize =
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        if i == CHUNKS {
            readings_to_chunks(&tx)?;
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// 64 MiB of page cache, for the store's own connections (writer, reader, aside) only: the
/// default 2 MiB makes a batch touching many series read its B-tree pages back from the OS over
/// and over. The other threads' connections (rules, notifier, keys) keep the default, so the
/// hub's memory is bounded as before.
pub const STORE_CACHE: &str = "PRAGMA cache_size = -65536";

/// Connection settings shared by every connection to the SQLite database.
pub fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a committed transaction survives a power cut too. The broker acknowledgement for a message
    // goes out only after its transaction commits, so "acknowledged" must mean "on disk". Writes are
    // batched (one transaction per batch), which keeps the fsync cost per message small.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

/// The same schema for PostgreSQL (crate::db), migration for migration: entry `i` here does what
/// entry `i` of [`MIGRATIONS`] does, in PostgreSQL's types (BIGINT, DOUBLE PRECISION, BYTEA; ids
/// from identity columns where SQLite uses the rowid). `sqlite_and_postgres_schemas_agree` checks
/// that both end with the same tables and columns.
const PG_MIGRATIONS: &[&str] = &[
    // 1
    r#"
    CREATE TABLE gateways (
        id              TEXT PRIMARY KEY,
        boot            TEXT,
        state           TEXT NOT NULL,
        clock           TEXT,
        agent           TEXT,
        config_version  TEXT,
        connected_at    BIGINT,
        last_seen       BIGINT NOT NULL,
        last_heartbeat  TEXT
    );
    CREATE TABLE assets (
        id                 TEXT PRIMARY KEY,
        kind               TEXT NOT NULL,
        gateway            TEXT NOT NULL,
        device             TEXT NOT NULL,
        profile            TEXT,
        lon                DOUBLE PRECISION,
        lat                DOUBLE PRECISION,
        road_segment       TEXT,
        grid               TEXT,
        zone               TEXT,
        report_interval_s  BIGINT,
        updated_at         BIGINT NOT NULL
    );
    CREATE INDEX assets_by_device ON assets (gateway, device);
    CREATE TABLE series (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        gateway       TEXT NOT NULL,
        device        TEXT NOT NULL,
        metric        TEXT NOT NULL,
        unit          TEXT,
        last_ts       BIGINT,
        last_value    DOUBLE PRECISION,
        last_text     TEXT,
        last_quality  TEXT,
        last_received BIGINT,
        vtype         TEXT,
        UNIQUE (gateway, device, metric)
    );
    CREATE TABLE readings (
        series   BIGINT NOT NULL,
        ts       BIGINT NOT NULL,
        value    DOUBLE PRECISION,
        text     TEXT,
        quality  TEXT,
        PRIMARY KEY (series, ts)
    );
    CREATE TABLE events (
        id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        gateway     TEXT NOT NULL,
        device      TEXT NOT NULL,
        event       TEXT NOT NULL,
        ts          BIGINT NOT NULL,
        phase       TEXT NOT NULL,
        attributes  TEXT NOT NULL,
        evidence    TEXT NOT NULL,
        received    BIGINT NOT NULL,
        UNIQUE (gateway, device, event, ts, phase)
    );
    CREATE TABLE envelopes (
        gateway   TEXT NOT NULL,
        boot      TEXT NOT NULL,
        seq       BIGINT NOT NULL,
        received  BIGINT NOT NULL,
        items     BIGINT NOT NULL,
        PRIMARY KEY (gateway, boot, seq)
    );
    CREATE TABLE dead_letters (
        id        BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        received  BIGINT NOT NULL,
        topic     TEXT NOT NULL,
        gateway   TEXT,
        code      TEXT NOT NULL,
        reason    TEXT NOT NULL,
        payload   BYTEA NOT NULL,
        size      BIGINT NOT NULL
    );
    "#,
    // 2
    r#"
    CREATE TABLE evidence (
        sha256      TEXT PRIMARY KEY,
        media_type  TEXT NOT NULL,
        bytes       BIGINT NOT NULL,
        gateway     TEXT NOT NULL,
        stored_at   BIGINT NOT NULL
    );
    CREATE TABLE event_evidence (
        event_id    BIGINT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        sha256      TEXT NOT NULL,
        position    BIGINT NOT NULL,
        gateway     TEXT NOT NULL,
        media_type  TEXT NOT NULL,
        bytes       BIGINT NOT NULL,
        PRIMARY KEY (event_id, sha256)
    );
    CREATE INDEX event_evidence_by_sha ON event_evidence (sha256, gateway);
    CREATE INDEX events_by_time ON events (ts);
    "#,
    // 3
    r#"
    CREATE TABLE commands (
        id          TEXT PRIMARY KEY,
        gateway     TEXT NOT NULL,
        device      TEXT NOT NULL,
        asset       TEXT,
        action      TEXT NOT NULL,
        issued_at   BIGINT NOT NULL,
        expires_at  BIGINT NOT NULL,
        outcome     TEXT,
        detail      TEXT,
        read_back   TEXT,
        replied_at  BIGINT
    );
    CREATE INDEX commands_by_asset ON commands (asset, issued_at);
    "#,
    // 4: the version moves with every change of the keys, whichever hub process makes it.
    r#"
    CREATE TABLE gateway_keys (
        gateway     TEXT NOT NULL,
        key_id      TEXT NOT NULL,
        secret      BYTEA NOT NULL,
        created_at  BIGINT NOT NULL,
        revoked_at  BIGINT,
        PRIMARY KEY (gateway, key_id)
    );
    CREATE TABLE gateway_keys_version (
        id          BIGINT PRIMARY KEY CHECK (id = 0),
        version     BIGINT NOT NULL
    );
    INSERT INTO gateway_keys_version VALUES (0, 0);
    CREATE FUNCTION gateway_keys_bump() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN UPDATE gateway_keys_version SET version = version + 1; RETURN NULL; END
    $$;
    CREATE TRIGGER gateway_keys_changed AFTER INSERT OR UPDATE OR DELETE ON gateway_keys
        FOR EACH ROW EXECUTE FUNCTION gateway_keys_bump();
    "#,
    // 5
    r#"
    CREATE TABLE api_tokens (
        name        TEXT NOT NULL PRIMARY KEY,
        role        TEXT NOT NULL,
        department  TEXT,
        hash        BYTEA NOT NULL UNIQUE,
        created_at  BIGINT NOT NULL,
        revoked_at  BIGINT
    );
    "#,
    // 6
    r#"
    CREATE TABLE rollup_1m (
        series  BIGINT NOT NULL,
        ts      BIGINT NOT NULL,
        n       BIGINT NOT NULL,
        sum     DOUBLE PRECISION NOT NULL,
        min     DOUBLE PRECISION NOT NULL,
        max     DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (series, ts)
    );
    CREATE TABLE rollup_1h (
        series  BIGINT NOT NULL,
        ts      BIGINT NOT NULL,
        n       BIGINT NOT NULL,
        sum     DOUBLE PRECISION NOT NULL,
        min     DOUBLE PRECISION NOT NULL,
        max     DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (series, ts)
    );
    CREATE TABLE rollup_dirty (
        series  BIGINT NOT NULL,
        ts      BIGINT NOT NULL,
        PRIMARY KEY (series, ts)
    );
    CREATE TABLE rollup_state (
        id         BIGINT PRIMARY KEY CHECK (id = 0),
        watermark  BIGINT NOT NULL
    );
    INSERT INTO rollup_state VALUES (0, 0);
    CREATE INDEX envelopes_by_received ON envelopes (received);
    ALTER TABLE evidence ADD COLUMN expired_at BIGINT;
    "#,
    // 7
    r#"
    ALTER TABLE api_tokens ADD COLUMN source TEXT NOT NULL DEFAULT 'cli';
    "#,
    // 8
    r#"
    CREATE TABLE tasks (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        kind          TEXT NOT NULL,
        category      TEXT NOT NULL,
        rule          TEXT NOT NULL,
        subject       TEXT NOT NULL,
        asset         TEXT,
        road_segment  TEXT,
        grid          TEXT,
        zone          TEXT,
        department    TEXT,
        severity      TEXT NOT NULL,
        state         TEXT NOT NULL,
        title         TEXT NOT NULL,
        detail        TEXT NOT NULL,
        opened_at     BIGINT NOT NULL,
        due_at        BIGINT,
        updated_at    BIGINT NOT NULL,
        closed_at     BIGINT
    );
    CREATE UNIQUE INDEX tasks_one_open ON tasks (subject, rule) WHERE state NOT IN ('closed', 'cancelled');
    CREATE INDEX tasks_by_state ON tasks (state, department);
    CREATE TABLE task_events (
        id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        task        BIGINT NOT NULL REFERENCES tasks (id),
        at          BIGINT NOT NULL,
        actor       TEXT NOT NULL,
        action      TEXT NOT NULL,
        from_state  TEXT,
        to_state    TEXT NOT NULL,
        note        TEXT
    );
    CREATE INDEX task_events_by_task ON task_events (task, id);
    "#,
    // 9
    r#"
    CREATE TABLE rule_state (
        key         TEXT PRIMARY KEY,
        state       TEXT NOT NULL,
        updated_at  BIGINT NOT NULL
    );
    CREATE TABLE rule_cursor (
        series  BIGINT PRIMARY KEY,
        ts      BIGINT NOT NULL
    );
    CREATE TABLE rule_meta (
        key    TEXT PRIMARY KEY,
        value  BIGINT NOT NULL
    );
    ALTER TABLE tasks ADD COLUMN escalation BIGINT NOT NULL DEFAULT 0;
    "#,
    // 10
    r#"
    CREATE TABLE lighting_nights (
        night    BIGINT NOT NULL,
        segment  TEXT NOT NULL,
        lamps    BIGINT NOT NULL,
        rate     DOUBLE PRECISION NOT NULL,
        target   DOUBLE PRECISION NOT NULL,
        dark     TEXT NOT NULL,
        PRIMARY KEY (night, segment)
    );
    "#,
    // 11
    r#"
    CREATE TABLE notifications (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        event         BIGINT NOT NULL REFERENCES task_events (id),
        task          BIGINT NOT NULL REFERENCES tasks (id),
        channel       TEXT NOT NULL,
        state         TEXT NOT NULL,
        attempts      BIGINT NOT NULL,
        next_at       BIGINT NOT NULL,
        last_error    TEXT,
        created_at    BIGINT NOT NULL,
        delivered_at  BIGINT
    );
    CREATE INDEX notifications_due ON notifications (state, next_at);
    CREATE INDEX notifications_by_task ON notifications (task);
    "#,
    // 12
    r#"
    CREATE TABLE gateway_configs (
        gateway      TEXT NOT NULL,
        version      BIGINT NOT NULL,
        sha256       TEXT NOT NULL,
        toml         TEXT NOT NULL,
        uploaded_at  BIGINT NOT NULL,
        uploaded_by  TEXT NOT NULL,
        comment      TEXT,
        PRIMARY KEY (gateway, version)
    );
    "#,
    // 13
    r#"
    ALTER TABLE gateways ADD COLUMN online_at BIGINT;
    "#,
    // 14
    r#"
    CREATE UNIQUE INDEX notifications_once ON notifications (event, channel);
    "#,
    // 15: several hub processes (crate::cluster): who owns which partition of the gateways, until
    // when; the processes alive (the camera event cursor of each partition is in rule_meta).
    r#"
    CREATE TABLE cluster_partitions (
        part         BIGINT PRIMARY KEY,
        owner        TEXT,
        lease_until  BIGINT NOT NULL DEFAULT 0,
        -- Bumped at every change of owner: a fencing token for what the owner writes.
        epoch        BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE cluster_hubs (
        hub      TEXT PRIMARY KEY,
        seen_at  BIGINT NOT NULL
    );
    "#,
    // 16
    r#"
    CREATE TABLE reading_chunks (
        id      BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        series  BIGINT NOT NULL,
        minute  BIGINT NOT NULL,
        n       BIGINT NOT NULL,
        data    BYTEA NOT NULL
    );
    CREATE INDEX reading_chunks_by_series ON reading_chunks (series, minute, id);
    CREATE TABLE reading_hours (
        id      BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        series  BIGINT NOT NULL,
        hour    BIGINT NOT NULL,
        n       BIGINT NOT NULL,
        data    BYTEA NOT NULL,
        UNIQUE (series, hour)
    );
    ALTER TABLE rollup_state ADD COLUMN compacted BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE chunks_late (
        series   BIGINT NOT NULL,
        hour     BIGINT NOT NULL,
        touched  BIGINT NOT NULL,
        PRIMARY KEY (series, hour)
    );
    "#,
    // 17 (never set on PostgreSQL: its writers write latest values with every batch)
    r#"
    ALTER TABLE rollup_state ADD COLUMN latest_from BIGINT;
    "#,
];

/// Brings a PostgreSQL database to the newest schema version. Several hub processes may start at
/// once: an advisory lock makes them migrate one after the other, and each migration commits with
/// its version (PostgreSQL's DDL is transactional), so a crash leaves no half-applied step.
pub fn migrate_pg(c: &crate::db::PgConn) -> crate::db::Result<()> {
    use crate::db::{Begin, Sql, Tx, args, one};
    let tx = Tx::begin(c, Begin::Write)?;
    // Any fixed number, the same in every hub process: "city-iot schema".
    tx.batch("SELECT pg_advisory_xact_lock(7263001)")?;
    tx.batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY,
            applied_at BIGINT NOT NULL
        )",
    )?;
    let current: i64 = one(
        &tx,
        "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM schema_migrations",
        &[],
    )?;
    for (i, sql) in PG_MIGRATIONS
        .iter()
        .enumerate()
        .skip(current.max(0) as usize)
    {
        tx.batch(sql)?;
        if i == CHUNKS {
            readings_to_chunks(&tx)?;
        }
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            args![i + 1, crate::now_ms()],
        )?;
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Sql, args};

    /// (table, column) → (type class, nullable) of a schema, as both engines report it.
    fn columns(c: &dyn Sql) -> std::collections::BTreeMap<(String, String), (String, bool)> {
        let rows = match c.engine() {
            crate::db::Engine::Sqlite => c
                .query(
                    "SELECT m.name, p.name, p.type, p.\"notnull\" OR p.pk > 0
                     FROM sqlite_master m, pragma_table_info(m.name) p
                     WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
                    &[],
                )
                .unwrap(),
            crate::db::Engine::Postgres => c
                .query(
                    "SELECT table_name::text, column_name::text, data_type::text,
                        CASE WHEN is_nullable = 'NO' THEN 1 ELSE 0 END
                     FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name <> 'schema_migrations'",
                    &[],
                )
                .unwrap(),
        };
        rows.iter()
            .map(|r| {
                let class = match r.get::<String>(2).unwrap().to_lowercase().as_str() {
                    "integer" | "bigint" => "integer",
                    "real" | "double precision" => "real",
                    "text" => "text",
                    "blob" | "bytea" => "blob",
                    other => panic!("column type {other}"),
                };
                (
                    (r.get(0).unwrap(), r.get(1).unwrap()),
                    (class.to_owned(), !r.get::<bool>(3).unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn sqlite_and_postgres_schemas_agree() {
        assert_eq!(
            MIGRATIONS.len(),
            PG_MIGRATIONS.len(),
            "a migration without its twin"
        );
        let Some(pg) = crate::db::testing::pg() else {
            return;
        };
        migrate_pg(&pg).unwrap();
        // Again: nothing to do, nothing fails.
        migrate_pg(&pg).unwrap();
        let mut lite = Connection::open_in_memory().unwrap();
        migrate(&mut lite).unwrap();
        let (l, p) = (columns(&lite), columns(&pg));
        assert!(l.len() > 100, "{} columns", l.len());
        let only = |a: &std::collections::BTreeMap<_, _>, b: &std::collections::BTreeMap<_, _>| {
            a.keys()
                .filter(|k| !b.contains_key(*k))
                .cloned()
                .collect::<Vec<(String, String)>>()
        };
        assert!(
            only(&l, &p).is_empty(),
            "only in SQLite: {:?}",
            only(&l, &p)
        );
        assert!(
            only(&p, &l).is_empty(),
            "only in PostgreSQL: {:?}",
            only(&p, &l)
        );
        for (k, v) in &l {
            assert_eq!(Some(v), p.get(k), "{k:?}");
        }
        // The key version moves on PostgreSQL as on SQLite.
        for c in [&lite as &dyn Sql, &pg] {
            c.execute(
                "INSERT INTO gateway_keys (gateway, key_id, secret, created_at) VALUES ($1, $2, $3, $4)",
                args!["gw-1", "k1", vec![1_u8; 32], 1],
            )
            .unwrap();
            let v: i64 =
                crate::db::one(c, "SELECT version FROM gateway_keys_version", &[]).unwrap();
            assert_eq!(v, 1, "{:?}", c.engine());
        }
    }

    /// A store from before chunks: its readings rows, made at version 16 the way that writer made
    /// them, and read back through `raw` after the migration.
    fn readings_before_chunks(c: &dyn Sql) {
        c.batch(
            "INSERT INTO series (id, gateway, device, metric) VALUES (1, 'gw', 'd', 'a'), (2, 'gw', 'd', 'b');",
        )
        .unwrap();
        let h = 1_790_000_000_000 - 1_790_000_000_000 % super::super::raw::SPAN_MS;
        for (series, ts, value, text, quality) in [
            (1, h - 1, Some(1.0), None, None),
            (1, h, Some(2.0), None, Some("out_of_range")),
            (1, h + 7, None, Some("开"), None),
            (2, h + 5, Some(3.0), None, None),
        ] {
            c.execute(
                "INSERT INTO readings (series, ts, value, text, quality) VALUES ($1, $2, $3, $4, $5)",
                args![series, ts, value, text, quality],
            )
            .unwrap();
        }
    }

    fn check_chunks(c: &dyn Sql, name: &str) {
        let h = 1_790_000_000_000 - 1_790_000_000_000 % super::super::raw::SPAN_MS;
        let a = super::super::raw::range(c, 1, 0, i64::MAX, None).unwrap();
        let got: Vec<_> = a
            .iter()
            .map(|p| (p.ts, p.value, p.text.as_deref(), p.quality.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (h - 1, Some(1.0), None, None),
                (h, Some(2.0), None, Some("out_of_range")),
                (h + 7, None, Some("开"), None),
            ],
            "{name}"
        );
        assert_eq!(super::super::raw::count(c), 4, "{name}");
        let hours: i64 = crate::db::one(c, "SELECT COUNT(*) FROM reading_hours", &[]).unwrap();
        assert_eq!(hours, 3, "{name}: a row per series and hour");
        assert!(
            c.query("SELECT 1 FROM readings", &[]).is_err(),
            "{name}: the old table is gone"
        );
    }

    #[test]
    fn readings_rows_move_into_chunks() {
        let mut lite = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..CHUNKS] {
            lite.execute_batch(sql).unwrap();
        }
        lite.pragma_update(None, "user_version", CHUNKS as i64)
            .unwrap();
        readings_before_chunks(&lite);
        migrate(&mut lite).unwrap();
        check_chunks(&lite, "sqlite");
        if let Some(pg) = crate::db::testing::pg() {
            pg.batch(
                "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .unwrap();
            for (i, sql) in PG_MIGRATIONS[..CHUNKS].iter().enumerate() {
                pg.batch(sql).unwrap();
                pg.execute("INSERT INTO schema_migrations VALUES ($1, 0)", args![i + 1])
                    .unwrap();
            }
            readings_before_chunks(&pg);
            migrate_pg(&pg).unwrap();
            check_chunks(&pg, "postgres");
        }
    }
}
