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
];

/// Brings the database to the newest schema version.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: usize =
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Connection settings shared by the writer and the readers.
pub fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a committed transaction survives a power cut too. The broker acknowledgement for a message
    // goes out only after its transaction commits, so "acknowledged" must mean "on disk". Writes are
    // batched (one transaction per batch), which keeps the fsync cost per message small.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // 64 MiB of page cache per connection (the default 2 MiB makes a batch touching many series
    // read its B-tree pages back from the OS over and over).
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}
