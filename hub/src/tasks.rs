//! Tasks: the closed loop of city management (DOMAIN.md). A task is filed (by a rule, or by an
//! operator from a citizen's report), dispatched to a department, accepted and handled by its crew,
//! verified and closed, with reopen and cancel; every transition is kept in an audit trail with who,
//! when and why, and goes out on the live feed.
//!
//! ```text
//! filed ─dispatch─▶ dispatched ─accept─▶ accepted ─start─▶ handling ─handle─▶ handled ─verify─▶ verified ─close─▶ closed
//!                        ▲                   └────────────handle──────────────┘                                  │
//!                        └──────────────────────────── reopen (from handled, verified, closed) ◀─────────────────┘
//! any state but closed and cancelled ─cancel─▶ cancelled
//! ```
//!
//! At most one open task exists per (subject, rule) — the subject being an asset, or a plate in a
//! zone — enforced by a unique index, so a rule that fires again finds the task it already opened.
//!
//! Who may do what: operators and admins file, dispatch, verify, close, reopen and cancel; a crew
//! token works (accept, start, handle) the maintenance tasks of its own department and sees only
//! those; an enforcement token works enforcement tasks. Installers read.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};

use crate::access::{Principal, Role};
use crate::api::{ApiError, ApiState};
use crate::db::{self, Begin, Sql, Tx, args, for_update};

/// Where a task is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Filed,
    Dispatched,
    Accepted,
    Handling,
    Handled,
    Verified,
    Closed,
    Cancelled,
}

const STATES: [TaskState; 8] = [
    TaskState::Filed,
    TaskState::Dispatched,
    TaskState::Accepted,
    TaskState::Handling,
    TaskState::Handled,
    TaskState::Verified,
    TaskState::Closed,
    TaskState::Cancelled,
];

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Filed => "filed",
            TaskState::Dispatched => "dispatched",
            TaskState::Accepted => "accepted",
            TaskState::Handling => "handling",
            TaskState::Handled => "handled",
            TaskState::Verified => "verified",
            TaskState::Closed => "closed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        STATES.into_iter().find(|t| t.as_str() == s)
    }

    pub fn is_open(self) -> bool {
        !matches!(self, TaskState::Closed | TaskState::Cancelled)
    }
}

/// What a person does to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Dispatch,
    Accept,
    Start,
    Handle,
    Verify,
    Close,
    Reopen,
    Cancel,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Dispatch => "dispatch",
            Action::Accept => "accept",
            Action::Start => "start",
            Action::Handle => "handle",
            Action::Verify => "verify",
            Action::Close => "close",
            Action::Reopen => "reopen",
            Action::Cancel => "cancel",
        }
    }

    /// The state the action leads to from `from`, or why it cannot be done.
    pub fn apply(self, from: TaskState) -> Result<TaskState, String> {
        use TaskState::*;
        let to = match (self, from) {
            (Action::Dispatch, Filed) => Dispatched,
            (Action::Accept, Dispatched) => Accepted,
            (Action::Start, Accepted) => Handling,
            (Action::Handle, Accepted | Handling) => Handled,
            (Action::Verify, Handled) => Verified,
            (Action::Close, Verified) => Closed,
            (Action::Reopen, Handled | Verified | Closed) => Dispatched,
            (Action::Cancel, s) if s.is_open() => Cancelled,
            (a, s) => {
                return Err(format!(
                    "cannot {} a task that is {}",
                    a.as_str(),
                    s.as_str()
                ));
            }
        };
        Ok(to)
    }

    /// Actions that must say why.
    fn needs_note(self) -> bool {
        matches!(self, Action::Handle | Action::Reopen | Action::Cancel)
    }
}

/// Enforcement (illegal parking, trucks, street trading, dust at sites) or maintenance (lamps,
/// waterlogging, bins, dead sensors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Enforcement,
    Maintenance,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Enforcement => "enforcement",
            Kind::Maintenance => "maintenance",
        }
    }
}

/// A task as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    pub id: i64,
    pub kind: String,
    pub category: String,
    pub rule: String,
    pub subject: String,
    pub asset: Option<String>,
    pub road_segment: Option<String>,
    pub grid: Option<String>,
    pub zone: Option<String>,
    pub department: Option<String>,
    pub severity: String,
    pub state: String,
    pub title: String,
    pub detail: serde_json::Value,
    pub opened_at: String,
    pub due_at: Option<String>,
    pub updated_at: String,
    pub closed_at: Option<String>,
    /// The audit trail (task detail only), oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<TaskEvent>>,
    /// Notifications sent about it and their delivery state (task detail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Vec<crate::notify::DeliveryView>>,
}

/// One transition in a task's audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct TaskEvent {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub from: Option<String>,
    pub to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Whether `who` may do `action` to a task of `kind` in `department`.
fn may(who: &Principal, action: Action, kind: &str, department: Option<&str>) -> bool {
    let work = matches!(action, Action::Accept | Action::Start | Action::Handle);
    match who.role {
        Role::Admin | Role::Operator => true,
        Role::Crew => {
            work && kind == Kind::Maintenance.as_str()
                && department.is_some()
                && department == who.department.as_deref()
        }
        Role::Enforcement => work && kind == Kind::Enforcement.as_str(),
        Role::Installer => false,
    }
}

/// Whether `who` sees a task of `department` (crews see their own department's only).
fn sees(who: &Principal, department: Option<&str>) -> bool {
    who.role != Role::Crew || (department.is_some() && department == who.department.as_deref())
}

fn rfc3339(ms: i64) -> String {
    protocol::Timestamp::from_unix_millis(ms).to_rfc3339()
}

const COLUMNS: &str =
    "id, kind, category, rule, subject, asset, road_segment, grid, zone, department,
    severity, state, title, detail, opened_at, due_at, updated_at, closed_at";

fn view(r: &db::Row) -> db::Result<TaskView> {
    Ok(TaskView {
        id: r.get(0)?,
        kind: r.get(1)?,
        category: r.get(2)?,
        rule: r.get(3)?,
        subject: r.get(4)?,
        asset: r.get(5)?,
        road_segment: r.get(6)?,
        grid: r.get(7)?,
        zone: r.get(8)?,
        department: r.get(9)?,
        severity: r.get(10)?,
        state: r.get(11)?,
        title: r.get(12)?,
        detail: serde_json::from_str(&r.get::<String>(13)?).unwrap_or_default(),
        opened_at: rfc3339(r.get(14)?),
        due_at: r.get::<Option<i64>>(15)?.map(rfc3339),
        updated_at: rfc3339(r.get(16)?),
        closed_at: r.get::<Option<i64>>(17)?.map(rfc3339),
        history: None,
        notifications: None,
    })
}

pub(crate) fn load(c: &dyn Sql, id: i64) -> db::Result<Option<TaskView>> {
    c.query_opt(
        &format!("SELECT {COLUMNS} FROM tasks WHERE id = $1"),
        args![id],
    )?
    .map(|r| view(&r))
    .transpose()
}

fn history(c: &dyn Sql, id: i64) -> db::Result<Vec<TaskEvent>> {
    c.query(
        "SELECT at, actor, action, from_state, to_state, note FROM task_events WHERE task = $1 ORDER BY id",
        args![id],
    )?
    .iter()
    .map(|r| {
        Ok(TaskEvent {
            at: rfc3339(r.get(0)?),
            actor: r.get(1)?,
            action: r.get(2)?,
            from: r.get(3)?,
            to: r.get(4)?,
            note: r.get(5)?,
        })
    })
    .collect()
}

/// Records one step of a task in its audit trail (every writer of tasks goes through here).
#[allow(clippy::too_many_arguments)]
pub(crate) fn audit(
    tx: &dyn Sql,
    task: i64,
    at: i64,
    actor: &str,
    action: &str,
    from: Option<&str>,
    to: &str,
    note: Option<&str>,
) -> db::Result<()> {
    tx.execute(
        "INSERT INTO task_events (task, at, actor, action, from_state, to_state, note) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        args![task, at, actor, action, from, to, note],
    )?;
    Ok(())
}

/// Which tasks a list shows.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub states: Vec<&'static str>,
    pub category: Option<String>,
    pub department: Option<String>,
    pub kind: Option<String>,
    pub limit: i64,
}

/// Tasks by `f`, newest first.
pub(crate) fn select(c: &dyn Sql, f: &Filter) -> db::Result<Vec<TaskView>> {
    let n = f.states.len();
    let placeholders = (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",");
    // CAST: PostgreSQL cannot tell a parameter's type from `$n IS NULL` alone.
    let sql = format!(
        "SELECT {COLUMNS} FROM tasks WHERE state IN ({placeholders})
           AND (CAST(${n1} AS TEXT) IS NULL OR category = ${n1})
           AND (CAST(${n2} AS TEXT) IS NULL OR department = ${n2})
           AND (CAST(${n3} AS TEXT) IS NULL OR kind = ${n3})
         ORDER BY id DESC LIMIT ${n4}",
        n1 = n + 1,
        n2 = n + 2,
        n3 = n + 3,
        n4 = n + 4,
    );
    let mut values: Vec<db::Value> = f
        .states
        .iter()
        .map(|s| db::Value::Text((*s).into()))
        .collect();
    values.extend(
        args![f.category, f.department, f.kind, f.limit]
            .iter()
            .cloned(),
    );
    c.query(&sql, &values)?.iter().map(view).collect()
}

/// A task and its audit trail.
pub(crate) fn detail(c: &dyn Sql, id: i64) -> db::Result<Option<TaskView>> {
    let Some(mut t) = load(c, id)? else {
        return Ok(None);
    };
    t.history = Some(history(c, id)?);
    Ok(Some(t))
}

/// Files a task by hand (`t` checked, its text trimmed): the task, or why not (an unknown asset).
pub(crate) fn file_by_hand(
    c: &dyn Sql,
    t: &NewTask,
    due_ms: Option<i64>,
    actor: &str,
    now: i64,
) -> db::Result<Result<TaskView, String>> {
    let severity = t.severity.as_deref().unwrap_or("warning");
    // Write: the write lock first (waiting for the store writer), so the read below cannot go
    // stale before the write (a deferred SQLite transaction would fail to upgrade then).
    let tx = Tx::begin(c, Begin::Write)?;
    let place = match &t.asset {
        Some(a) => match tx.query_opt(
            "SELECT road_segment, grid, zone FROM assets WHERE id = $1",
            args![a],
        )? {
            Some(r) => (
                r.get::<Option<String>>(0)?,
                r.get::<Option<String>>(1)?,
                r.get::<Option<String>>(2)?,
            ),
            None => return Ok(Err(format!("no asset {a:?}"))),
        },
        None => (None, None, None),
    };
    let (road_segment, grid, zone) = place;
    // A hand-filed task is its own subject: several reports about one asset are several tasks.
    let subject = format!("report:{}", uuid::Uuid::new_v4());
    let id: i64 = db::one(
        &tx,
        "INSERT INTO tasks (kind, category, rule, subject, asset, road_segment, grid, zone, department,
            severity, state, title, detail, opened_at, due_at, updated_at)
         VALUES ($1, $2, 'manual', $3, $4, $5, $6, $7, $8, $9, 'filed', $10, '{}', $11, $12, $11)
         RETURNING id",
        args![
            t.kind.as_str(),
            t.category,
            subject,
            t.asset,
            road_segment,
            grid,
            zone,
            t.department,
            severity,
            t.title,
            now,
            due_ms.map(|d| now + d)
        ],
    )?;
    audit(
        &tx,
        id,
        now,
        actor,
        "file",
        None,
        "filed",
        t.note.as_deref(),
    )?;
    let task = load(&tx, id)?;
    tx.commit()?;
    Ok(task.ok_or_else(|| "the new task vanished".to_owned()))
}

/// Moves task `id` by `action` on behalf of `who`: the task after, or the HTTP status and why not.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply(
    c: &dyn Sql,
    who: &Principal,
    id: i64,
    action: Action,
    note: Option<&str>,
    dispatch_to: Option<&str>,
    now: i64,
) -> db::Result<Result<TaskView, (StatusCode, String)>> {
    let tx = Tx::begin(c, Begin::Write)?;
    // FOR UPDATE (PostgreSQL): two people acting on one task at once act one after the other.
    let Some(t) = tx
        .query_opt(
            &format!("SELECT {COLUMNS} FROM tasks WHERE id = $1{}", for_update(c)),
            args![id],
        )?
        .map(|r| view(&r))
        .transpose()?
    else {
        return Ok(Err((StatusCode::NOT_FOUND, format!("no task {id}"))));
    };
    if !sees(who, t.department.as_deref()) {
        return Ok(Err((StatusCode::NOT_FOUND, format!("no task {id}"))));
    }
    if !may(who, action, &t.kind, t.department.as_deref()) {
        return Ok(Err((
            StatusCode::FORBIDDEN,
            format!(
                "role {} may not {} this {} task{}",
                who.role.as_str(),
                action.as_str(),
                t.kind,
                t.department
                    .as_deref()
                    .map(|d| format!(" of department {d}"))
                    .unwrap_or_default()
            ),
        )));
    }
    let from = TaskState::parse(&t.state).unwrap_or(TaskState::Filed);
    let to = match action.apply(from) {
        Ok(to) => to,
        Err(m) => return Ok(Err((StatusCode::CONFLICT, m))),
    };
    let department = if action == Action::Dispatch {
        dispatch_to.map(str::to_owned).or(t.department.clone())
    } else {
        t.department.clone()
    };
    if to == TaskState::Dispatched && department.is_none() {
        return Ok(Err((
            StatusCode::BAD_REQUEST,
            "dispatch needs a department (this task has none): {\"action\":\"dispatch\",\"department\":\"...\"}".into(),
        )));
    }
    let closed = matches!(to, TaskState::Closed | TaskState::Cancelled);
    tx.execute(
        "UPDATE tasks SET state = $2, department = $3, updated_at = $4, closed_at = $5 WHERE id = $1",
        args![id, to.as_str(), department, now, closed.then_some(now)],
    )?;
    audit(
        &tx,
        id,
        now,
        &who.name,
        action.as_str(),
        Some(from.as_str()),
        to.as_str(),
        note,
    )?;
    let after = load(&tx, id)?;
    tx.commit()?;
    Ok(after.ok_or_else(|| (StatusCode::NOT_FOUND, format!("no task {id}"))))
}

/// Puts a task change on the live feed.
pub(crate) fn announce(live: &crate::live::Live, t: &TaskView, action: &str) {
    if live.announces_tasks_in_place() {
        announce_now(live, t, action);
    }
}

/// Puts a task change on the live feed, wherever it was made.
pub(crate) fn announce_now(live: &crate::live::Live, t: &TaskView, action: &str) {
    live.send(crate::live::LiveItem {
        kind: "task",
        gateway: String::new(),
        device: None,
        data: serde_json::json!({
            "id": t.id,
            "action": action,
            "state": t.state,
            "kind": t.kind,
            "category": t.category,
            "subject": t.subject,
            "asset": t.asset,
            "department": t.department,
            "title": t.title,
            "ts": t.updated_at,
        }),
    });
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    #[serde(rename = "token")]
    _token: Option<String>,
    /// `open` (default), `closed` (closed or cancelled), `all`, or one state.
    status: Option<String>,
    category: Option<String>,
    department: Option<String>,
    kind: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/tasks?status=open&category=&department=&kind=&limit=`: newest first.
pub async fn list(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let states: Vec<&'static str> = match p.status.as_deref().unwrap_or("open") {
        "open" => STATES
            .iter()
            .filter(|s| s.is_open())
            .map(|s| s.as_str())
            .collect(),
        "closed" => vec!["closed", "cancelled"],
        "all" => STATES.iter().map(|s| s.as_str()).collect(),
        one => match TaskState::parse(one) {
            Some(st) => vec![st.as_str()],
            None => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "status {one:?}: use open, closed, all, or a state (filed, dispatched, accepted, handling, handled, verified, closed, cancelled)"
                    ),
                ));
            }
        },
    };
    // A crew sees its own department's tasks, whatever it asks for.
    let department = match who.role {
        Role::Crew => who.department.clone(),
        _ => p.department,
    };
    let filter = Filter {
        states,
        category: p.category,
        department,
        kind: p.kind,
        limit: p.limit.unwrap_or(200).clamp(1, 1000) as i64,
    };
    let tasks = s.store.read(move |c| Ok(select(c, &filter)?)).await?;
    Ok(Json(
        tasks
            .into_iter()
            .map(|t| shown(&who, t))
            .collect::<Vec<_>>(),
    ))
}

/// A task as `who` may see it: plates in its detail (enforcement evidence) masked for the roles
/// that may not see plates.
fn shown(who: &Principal, mut t: TaskView) -> TaskView {
    if !who.sees_plates() {
        crate::access::mask_attributes(&mut t.detail);
    }
    t
}

/// `GET /api/v1/tasks/{id}`: the task with its audit trail.
pub async fn get_one(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, ApiError> {
    let task = s
        .store
        .read(move |c| {
            let Some(mut t) = detail(c, id)? else {
                return Ok(None);
            };
            t.notifications = Some(crate::notify::deliveries(c, id)?);
            Ok(Some(t))
        })
        .await?;
    match task {
        Some(t) if sees(&who, t.department.as_deref()) => Ok(Json(shown(&who, t))),
        // A task of another department does not exist for a crew.
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no task {id}"),
        )),
    }
}

/// A task an operator files by hand (a citizen's report, a patrol's finding).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    kind: Kind,
    category: String,
    title: String,
    /// The asset it is about; its road segment, grid and zone are filled in.
    asset: Option<String>,
    department: Option<String>,
    /// info, warning (default) or critical.
    severity: Option<String>,
    /// Hours until it is due.
    due_in_h: Option<f64>,
    note: Option<String>,
}

/// `POST /api/v1/tasks`: file a task by hand (operators and admins).
pub async fn file(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    body: Result<Json<NewTask>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    if !matches!(who.role, Role::Admin | Role::Operator) {
        return Err(who.forbidden("filing tasks"));
    }
    let Json(mut t) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let category = t.category.trim().to_owned();
    if category.is_empty() || category.len() > 64 {
        return Err(bad(
            "category must be 1 to 64 characters, e.g. \"lamp_out\"".into(),
        ));
    }
    let title = t.title.trim().to_owned();
    if title.is_empty() || title.len() > 500 {
        return Err(bad("title must be 1 to 500 characters".into()));
    }
    let severity = t.severity.clone().unwrap_or_else(|| "warning".into());
    if !matches!(severity.as_str(), "info" | "warning" | "critical") {
        return Err(bad(format!(
            "severity {severity:?}: use info, warning or critical"
        )));
    }
    let due_ms = match t.due_in_h {
        Some(h) if !(0.0..=24.0 * 366.0).contains(&h) => {
            return Err(bad("due_in_h must be 0 to 8784 hours".into()));
        }
        Some(h) => Some((h * 3_600_000.0) as i64),
        None => None,
    };
    (t.category, t.title, t.severity) = (category, title, Some(severity));
    let actor = who.name.clone();
    let now = crate::now_ms();
    let task = s
        .store
        .write_aside(move |c| Ok(file_by_hand(c, &t, due_ms, &actor, now)?))
        .await?
        .map_err(|m| ApiError::new(StatusCode::NOT_FOUND, m))?;
    announce(&s.live, &task, "file");
    Ok((StatusCode::CREATED, Json(task)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    action: Action,
    note: Option<String>,
    /// Dispatch: the department to send it to (else the one it has).
    department: Option<String>,
}

/// `POST /api/v1/tasks/{id}/actions` `{"action": "accept", "note": "..."}`.
pub async fn act(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    body: Result<Json<ActionBody>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(b) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let note = b
        .note
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    if b.action.needs_note() && note.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{} needs a note saying why (or what was done)",
                b.action.as_str()
            ),
        ));
    }
    let who2 = who.clone();
    let action = b.action.as_str();
    let now = crate::now_ms();
    let outcome = s
        .store
        .write_aside(move |c| {
            Ok(apply(
                c,
                &who2,
                id,
                b.action,
                note.as_deref(),
                b.department.as_deref(),
                now,
            )?)
        })
        .await?;
    match outcome {
        Ok(t) => {
            announce(&s.live, &t, action);
            Ok(Json(shown(&who, t)))
        }
        Err((code, m)) => Err(ApiError::new(code, m)),
    }
}

/// Whether a crew or enforcement subscriber of the live feed sees this task item.
pub fn live_visible(who: &Principal, data: &serde_json::Value) -> bool {
    sees(who, data["department"].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_transitions_and_refusals() {
        use TaskState::*;
        let path = [
            (Action::Dispatch, Filed, Dispatched),
            (Action::Accept, Dispatched, Accepted),
            (Action::Start, Accepted, Handling),
            (Action::Handle, Handling, Handled),
            (Action::Verify, Handled, Verified),
            (Action::Close, Verified, Closed),
            (Action::Reopen, Closed, Dispatched),
            (Action::Handle, Accepted, Handled),
            (Action::Cancel, Handling, Cancelled),
        ];
        for (a, from, to) in path {
            assert_eq!(a.apply(from), Ok(to), "{a:?} from {from:?}");
        }
        for (a, from) in [
            (Action::Close, Handled),
            (Action::Accept, Filed),
            (Action::Verify, Accepted),
            (Action::Cancel, Closed),
            (Action::Cancel, Cancelled),
            (Action::Reopen, Dispatched),
            (Action::Dispatch, Dispatched),
        ] {
            let e = a.apply(from).unwrap_err();
            assert!(e.starts_with("cannot"), "{e}");
        }
    }

    #[test]
    fn crews_work_their_departments_maintenance_tasks_only() {
        let crew = Principal {
            name: "c".into(),
            role: Role::Crew,
            department: Some("lighting".into()),
        };
        assert!(may(&crew, Action::Accept, "maintenance", Some("lighting")));
        assert!(may(&crew, Action::Handle, "maintenance", Some("lighting")));
        assert!(!may(
            &crew,
            Action::Accept,
            "maintenance",
            Some("sanitation")
        ));
        assert!(!may(&crew, Action::Accept, "maintenance", None));
        assert!(!may(&crew, Action::Accept, "enforcement", Some("lighting")));
        assert!(!may(&crew, Action::Close, "maintenance", Some("lighting")));
        assert!(sees(&crew, Some("lighting")) && !sees(&crew, Some("sanitation")));
        let enforcement = Principal {
            name: "e".into(),
            role: Role::Enforcement,
            department: None,
        };
        assert!(may(&enforcement, Action::Accept, "enforcement", None));
        assert!(!may(&enforcement, Action::Accept, "maintenance", None));
        assert!(!may(&enforcement, Action::Dispatch, "enforcement", None));
        let installer = Principal {
            name: "i".into(),
            role: Role::Installer,
            department: None,
        };
        assert!(!may(&installer, Action::Dispatch, "maintenance", None));
        assert!(sees(&installer, Some("lighting")));
    }

    fn who(role: Role, department: Option<&str>) -> Principal {
        Principal {
            name: format!("{}-1", role.as_str()),
            role,
            department: department.map(str::to_owned),
        }
    }

    fn by_hand(asset: Option<&str>) -> NewTask {
        NewTask {
            kind: Kind::Maintenance,
            category: "lamp_out".into(),
            title: "lamp out".into(),
            asset: asset.map(str::to_owned),
            department: None,
            severity: None,
            due_in_h: None,
            note: Some("citizen report".into()),
        }
    }

    /// The closed loop through the store's SQL, on SQLite and on PostgreSQL.
    #[test]
    fn a_task_goes_round_the_loop_on_both_engines() {
        for (name, c) in crate::db::testing::migrated() {
            let c = &*c;
            c.execute(
                "INSERT INTO assets (id, kind, gateway, device, road_segment, grid, zone, updated_at)
                 VALUES ('sl-1', 'streetlight', 'gw-1', 'lamp-1', 'hanzhong-rd-s2', 'g-7', 'commercial', 0)",
                &[],
            )
            .unwrap();
            let op = who(Role::Operator, None);
            let unknown = file_by_hand(c, &by_hand(Some("sl-9")), None, "op", 1_000).unwrap();
            assert_eq!(unknown.unwrap_err(), "no asset \"sl-9\"", "{name}");
            let t = file_by_hand(c, &by_hand(Some("sl-1")), Some(3_600_000), "op", 1_000)
                .unwrap()
                .unwrap();
            assert_eq!(
                (t.state.as_str(), t.road_segment.as_deref()),
                ("filed", Some("hanzhong-rd-s2")),
                "{name}"
            );
            assert_eq!(
                t.due_at.as_deref(),
                Some("1970-01-01T01:00:01.000Z"),
                "{name}"
            );
            let id = t.id;
            let act = |p: &Principal, a: Action, dept: Option<&str>, at: i64| {
                apply(c, p, id, a, Some("note"), dept, at).unwrap()
            };
            let e = act(&op, Action::Dispatch, None, 2_000).unwrap_err();
            assert_eq!(e.0, StatusCode::BAD_REQUEST, "{name}: {e:?}");
            assert_eq!(
                act(&op, Action::Dispatch, Some("lighting"), 2_000)
                    .unwrap()
                    .state,
                "dispatched"
            );
            // Another department's crew does not see it; the lighting crew works it.
            let e = act(
                &who(Role::Crew, Some("sanitation")),
                Action::Accept,
                None,
                3_000,
            )
            .unwrap_err();
            assert_eq!(e.0, StatusCode::NOT_FOUND, "{name}");
            let crew = who(Role::Crew, Some("lighting"));
            for (a, state) in [
                (Action::Accept, "accepted"),
                (Action::Start, "handling"),
                (Action::Handle, "handled"),
            ] {
                assert_eq!(act(&crew, a, None, 4_000).unwrap().state, state, "{name}");
            }
            let e = act(&crew, Action::Close, None, 5_000).unwrap_err();
            assert_eq!(e.0, StatusCode::FORBIDDEN, "{name}");
            act(&op, Action::Verify, None, 5_000).unwrap();
            let closed = act(&op, Action::Close, None, 6_000).unwrap();
            assert_eq!(
                (closed.state.as_str(), closed.closed_at.as_deref()),
                ("closed", Some("1970-01-01T00:00:06.000Z")),
                "{name}"
            );
            assert_eq!(
                act(&op, Action::Close, None, 7_000).unwrap_err().0,
                StatusCode::CONFLICT,
                "{name}"
            );
            let trail = detail(c, id).unwrap().unwrap().history.unwrap();
            let steps: Vec<&str> = trail.iter().map(|e| e.action.as_str()).collect();
            assert_eq!(
                steps,
                [
                    "file", "dispatch", "accept", "start", "handle", "verify", "close"
                ],
                "{name}"
            );
            assert_eq!(
                apply(c, &op, 999, Action::Close, None, None, 0)
                    .unwrap()
                    .unwrap_err()
                    .0,
                StatusCode::NOT_FOUND
            );

            // Lists: open ones, closed ones, by department, newest first, limited.
            let t2 = file_by_hand(
                c,
                &NewTask {
                    category: "bin_full".into(),
                    ..by_hand(None)
                },
                None,
                "op",
                8_000,
            )
            .unwrap()
            .unwrap();
            let list =
                |states: Vec<&'static str>, department: Option<&str>, limit: i64| -> Vec<i64> {
                    let f = Filter {
                        states,
                        department: department.map(str::to_owned),
                        limit,
                        ..Filter::default()
                    };
                    select(c, &f).unwrap().iter().map(|t| t.id).collect()
                };
            assert_eq!(list(vec!["filed"], None, 10), [t2.id], "{name}");
            assert_eq!(list(vec!["closed", "cancelled"], None, 10), [id], "{name}");
            assert_eq!(
                list(vec!["closed", "filed"], None, 10),
                [t2.id, id],
                "{name}"
            );
            assert_eq!(list(vec!["closed", "filed"], None, 1), [t2.id], "{name}");
            assert_eq!(
                list(vec!["closed", "filed"], Some("lighting"), 10),
                [id],
                "{name}"
            );
            let f = Filter {
                states: vec!["filed"],
                category: Some("lamp_out".into()),
                limit: 10,
                ..Filter::default()
            };
            assert!(select(c, &f).unwrap().is_empty(), "{name}");

            // One open task per subject and rule, on both engines.
            let open_rule_task = |subject: &str| {
                c.execute(
                    "INSERT INTO tasks (kind, category, rule, subject, severity, state, title, detail, opened_at, updated_at)
                     VALUES ('maintenance', 'lamp_out', 'lamp_out', $1, 'warning', 'filed', 't', '{}', 0, 0)",
                    args![subject],
                )
            };
            open_rule_task("sl-1").unwrap();
            let e = open_rule_task("sl-1")
                .unwrap_err()
                .to_string()
                .to_lowercase();
            assert!(e.contains("unique"), "{name}: {e}");
        }
    }
}
