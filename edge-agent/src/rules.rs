//! Local rules on the gateway (see `firmware_config::rules`): every reading passes through on its
//! way to the uplink; a rule whose condition has held for its duration raises a `start` event and
//! writes its actions (commands routed like the hub's, to the bus or GPIO task owning the device);
//! when the value is back past the clearing threshold for the clearing duration, an `end` event and
//! the clearing writes. Works with the uplink down: nothing here waits for the hub.
//!
//! Time is the readings' own (`observedAt`), so a rule behaves the same however the polls are spread.
//! Readings of bad quality leave a rule as it is. A rule starts cleared at every agent start.

use std::collections::BTreeMap;

use firmware_config::rules::Rule;
use protocol::{
    Action, Command, CommandId, Event, EventType, GatewayId, Item, Phase, Quality, Reading,
    Timestamp, Value,
};
use tokio::sync::mpsc;

/// Ids of the commands local rules issued, so their replies stay on the gateway (the hub never
/// asked); shared with the uplink.
pub type LocalCommands = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<CommandId>>>;

#[derive(Debug)]
struct RuleState {
    rule: Rule,
    raised: bool,
    /// Since when (reading time, ms) the condition for the next change has held.
    since: Option<i64>,
}

/// What a reading made a rule do.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Event(Item),
    Command(Command),
}

/// The rules of one gateway and their state.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<RuleState>,
    /// Commands issued and not yet answered.
    pub issued: LocalCommands,
}

impl Engine {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            rules: rules
                .into_iter()
                .map(|rule| RuleState {
                    rule,
                    raised: false,
                    since: None,
                })
                .collect(),
            issued: LocalCommands::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Feeds one reading.
    pub fn observe(&mut self, r: &Reading) -> Vec<Outcome> {
        let mut out = Vec::new();
        let Some(v) = r.value.as_ref().and_then(Value::as_f64) else {
            return out;
        };
        if !matches!(r.quality, Quality::Good) {
            return out;
        }
        let t = r.observed_at.unix_millis();
        let mut changes = Vec::new();
        for (i, st) in self.rules.iter_mut().enumerate() {
            if st.rule.device != r.device || st.rule.metric != r.metric {
                continue;
            }
            let (toward_change, wait) = if st.raised {
                (st.rule.back(v), st.rule.clear_for_ms)
            } else {
                (st.rule.beyond(v), st.rule.for_ms)
            };
            if !toward_change {
                st.since = None;
                continue;
            }
            let since = *st.since.get_or_insert(t);
            if t - since >= wait {
                st.raised = !st.raised;
                st.since = None;
                changes.push((i, st.raised));
            }
        }
        for (i, raised) in changes {
            out.extend(self.change(i, raised, v, r.observed_at));
        }
        out
    }

    fn change(&mut self, i: usize, raised: bool, value: f64, at: Timestamp) -> Vec<Outcome> {
        let rule = self.rules[i].rule.clone();
        tracing::info!(
            rule = %rule.name,
            device = %rule.device,
            metric = %rule.metric,
            value,
            "local rule {}",
            if raised { "raised" } else { "cleared" }
        );
        let mut attributes = BTreeMap::new();
        attributes.insert("rule".into(), Value::Text(rule.name.clone()));
        attributes.insert("metric".into(), Value::Text(rule.metric.to_string()));
        attributes.insert("value".into(), Value::Number(value));
        attributes.insert(
            "threshold".into(),
            Value::Number(if raised { rule.threshold } else { rule.clear }),
        );
        let mut out = Vec::new();
        if let Ok(event) = EventType::new(rule.event.clone()) {
            out.push(Outcome::Event(Item::Event(Event {
                device: rule.device.clone(),
                event,
                observed_at: at,
                phase: if raised { Phase::Start } else { Phase::End },
                attributes,
                evidence: Vec::new(),
            })));
        }
        let now = Timestamp::now();
        for a in &rule.actions {
            let value = if raised {
                Some(a.raise.clone())
            } else {
                a.clear.clone()
            };
            let Some(value) = value else { continue };
            let id = CommandId::from_uuid(uuid::Uuid::new_v4());
            let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
            // Replies that never come (a dead device) must not grow the set without bound.
            if issued.len() > 1024 {
                issued.clear();
            }
            issued.insert(id);
            drop(issued);
            out.push(Outcome::Command(Command {
                v: protocol::PROTOCOL_VERSION,
                id,
                device: a.device.clone(),
                issued_at: now,
                expires_at: now.add_millis(60_000),
                action: Action::Write {
                    metric: a.metric.clone(),
                    value,
                },
            }));
        }
        out
    }
}

/// Passes every item from `rx` to `tx`, evaluating the rules on readings on the way.
pub async fn run(
    mut engine: Engine,
    gateway: GatewayId,
    mut rx: mpsc::Receiver<Item>,
    tx: mpsc::Sender<Item>,
    commands: mpsc::Sender<Command>,
) {
    while let Some(item) = rx.recv().await {
        let outcomes = match &item {
            Item::Reading(r) => engine.observe(r),
            Item::Event(_) => Vec::new(),
        };
        if tx.send(item).await.is_err() {
            return;
        }
        for o in outcomes {
            match o {
                Outcome::Event(e) => {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                Outcome::Command(c) => {
                    if commands.send(c).await.is_err() {
                        tracing::error!(%gateway, "command router gone; local rule action not performed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_config::rules::{ActionSpec, RuleSpec};

    fn rule(above: f64, clear: f64, for_s: u32, clear_for_s: u32) -> Rule {
        Rule::resolve(&RuleSpec {
            name: "water-warning".into(),
            device: "water-1".parse().unwrap(),
            metric: "waterDepth".parse().unwrap(),
            above: Some(above),
            below: None,
            for_s,
            clear: Some(clear),
            clear_for_s,
            event: None,
            actions: vec![ActionSpec {
                device: "warn-1".parse().unwrap(),
                metric: "powerState".parse().unwrap(),
                raise: Value::Bool(true),
                clear: Some(Value::Bool(false)),
            }],
        })
        .unwrap()
    }

    fn reading(t_s: i64, v: f64) -> Reading {
        Reading {
            device: "water-1".parse().unwrap(),
            metric: "waterDepth".parse().unwrap(),
            observed_at: Timestamp::from_unix_millis(1_800_000_000_000 + t_s * 1000),
            value: Some(Value::Number(v)),
            unit: None,
            quality: Quality::Good,
        }
    }

    fn kinds(out: &[Outcome]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                Outcome::Event(Item::Event(e)) => format!("{:?}", e.phase),
                Outcome::Command(c) => match &c.action {
                    Action::Write { value, .. } => format!("write {value:?}"),
                    Action::Reset => "reset".into(),
                },
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn raises_after_the_duration_and_clears_with_hysteresis() {
        let mut e = Engine::new(vec![rule(15.0, 12.0, 60, 120)]);
        assert!(e.observe(&reading(0, 16.0)).is_empty());
        assert!(e.observe(&reading(30, 17.0)).is_empty());
        // A dip resets the clock.
        assert!(e.observe(&reading(40, 14.0)).is_empty());
        assert!(e.observe(&reading(50, 16.0)).is_empty());
        assert!(e.observe(&reading(100, 16.0)).is_empty());
        let out = e.observe(&reading(110, 18.0));
        assert_eq!(kinds(&out), ["Start", "write true"]);
        // Between clear and threshold: stays raised (hysteresis), nothing new.
        assert!(e.observe(&reading(200, 13.0)).is_empty());
        assert!(e.observe(&reading(300, 16.0)).is_empty());
        assert!(e.observe(&reading(400, 12.0)).is_empty());
        assert!(e.observe(&reading(500, 11.0)).is_empty());
        let out = e.observe(&reading(520, 10.0));
        assert_eq!(kinds(&out), ["End", "write false"]);
        if let Outcome::Command(c) = &out[1] {
            assert!(e.issued.lock().unwrap().contains(&c.id));
            assert_eq!(c.device.as_str(), "warn-1");
        }
    }

    #[test]
    fn bad_readings_and_other_metrics_change_nothing() {
        let mut e = Engine::new(vec![rule(15.0, 15.0, 0, 0)]);
        let mut bad = reading(0, 99.0);
        bad.quality = Quality::Bad {
            reason: protocol::BadReason::OutOfRange,
            detail: None,
        };
        assert!(e.observe(&bad).is_empty());
        let mut other = reading(0, 99.0);
        other.metric = "distance".parse().unwrap();
        assert!(e.observe(&other).is_empty());
        assert_eq!(
            kinds(&e.observe(&reading(1, 20.0))),
            ["Start", "write true"]
        );
        assert!(e.observe(&reading(2, 21.0)).is_empty(), "raised once");
        assert_eq!(kinds(&e.observe(&reading(3, 15.0))), ["End", "write false"]);
    }
}
