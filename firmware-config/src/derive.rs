//! Derived values: metrics computed from a decoded field and a per-device parameter, pure.
//!
//! The canonical case is the waterlogging sensor: it measures the distance down to the water (or
//! road) surface, and the depth is the mounting height (a device parameter) minus that distance.

use std::collections::BTreeMap;

use protocol::Value;

use crate::decode::{DecodeProblem, Decoded, apply_scale, in_range};
use crate::field::{Derived, Formula};
use crate::profile::Profile;

/// Computes every derived value of `profile` whose source is among `decoded`. A source that was
/// not read this cycle yields nothing; a bad source yields a bad derived value with its reason.
pub fn derive(
    profile: &Profile,
    params: &BTreeMap<String, f64>,
    decoded: &[Decoded],
) -> Vec<Decoded> {
    profile
        .derived
        .iter()
        .filter_map(|d| {
            let source = decoded.iter().find(|x| x.metric == d.from)?;
            let outcome = match &source.outcome {
                Ok(Value::Number(x)) => compute(d, *x, params),
                Ok(_) => Err(DecodeProblem::SourceBad {
                    from: d.from.clone(),
                    reason: protocol::BadReason::Undecodable,
                }),
                Err(problem) => Err(DecodeProblem::SourceBad {
                    from: d.from.clone(),
                    reason: problem.reason(),
                }),
            };
            Some(Decoded {
                metric: d.metric.clone(),
                unit: d.unit.clone(),
                outcome,
            })
        })
        .collect()
}

/// The derived value for source value `from`.
pub fn compute(
    d: &Derived,
    from: f64,
    params: &BTreeMap<String, f64>,
) -> Result<Value, DecodeProblem> {
    let param = *params
        .get(&d.param)
        .ok_or_else(|| DecodeProblem::MissingParam(d.param.clone()))?;
    let base = match d.formula {
        Formula::HeightMinus => (param - from).max(0.0),
        Formula::Ratio if param == 0.0 => {
            return Err(DecodeProblem::DivisionByZero(d.param.clone()));
        }
        Formula::Ratio => from / param,
        Formula::Product => from * param,
    };
    in_range(apply_scale(base, d.scale, d.offset), d.range())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{BadReason, MetricId};

    fn profile() -> Profile {
        toml::from_str(
            r#"
            name = "wl"
            kind = "waterlogging"
            [[field]]
            metric = "measuredDistance"
            table = "input"
            address = 0
            type = "u16"
            [[derived]]
            metric = "waterDepth"
            from = "measuredDistance"
            formula = "height_minus"
            param = "mounting_height_mm"
            scale = 0.1
            range = [0, 200]
            "#,
        )
        .unwrap()
    }

    fn distance(outcome: Result<Value, DecodeProblem>) -> Vec<Decoded> {
        vec![Decoded {
            metric: MetricId::new("measuredDistance").unwrap(),
            unit: None,
            outcome,
        }]
    }

    #[test]
    fn depth_is_height_minus_distance_clamped_at_zero() {
        let params = BTreeMap::from([("mounting_height_mm".to_owned(), 3500.0)]);
        let out = derive(&profile(), &params, &distance(Ok(Value::Number(3300.0))));
        assert_eq!(out[0].metric.as_str(), "waterDepth");
        assert_eq!(out[0].outcome, Ok(Value::Number(20.0)));
        let dry = derive(&profile(), &params, &distance(Ok(Value::Number(3600.0))));
        assert_eq!(dry[0].outcome, Ok(Value::Number(0.0)));
        let deep = derive(&profile(), &params, &distance(Ok(Value::Number(1000.0))));
        assert_eq!(
            deep[0].outcome.as_ref().unwrap_err().reason(),
            BadReason::OutOfRange
        );
    }

    #[test]
    fn missing_param_or_bad_source_is_bad() {
        let none = derive(
            &profile(),
            &BTreeMap::new(),
            &distance(Ok(Value::Number(1.0))),
        );
        assert_eq!(
            none[0].outcome,
            Err(DecodeProblem::MissingParam("mounting_height_mm".into()))
        );
        let params = BTreeMap::from([("mounting_height_mm".to_owned(), 3500.0)]);
        let bad = derive(
            &profile(),
            &params,
            &distance(Err(DecodeProblem::NotFinite(f64::NAN))),
        );
        assert_eq!(
            bad[0].outcome.as_ref().unwrap_err().reason(),
            BadReason::Undecodable
        );
        assert!(derive(&profile(), &params, &[]).is_empty());
    }

    /// Found by the `modbus_decode` fuzz target: a ratio to a tiny (valid, finite) parameter
    /// overflowed to `Ok(Number(inf))`, which the envelope encoder refuses.
    #[test]
    fn derived_value_overflowing_to_infinity_is_not_finite() {
        let mut p = profile();
        p.derived[0].formula = crate::field::Formula::Ratio;
        p.derived[0].scale = 1e300;
        p.derived[0].range = None;
        let params = BTreeMap::from([("mounting_height_mm".to_owned(), 9.9e-150)]);
        let out = derive(&p, &params, &distance(Ok(Value::Number(3300.0))));
        assert!(
            matches!(out[0].outcome, Err(DecodeProblem::NotFinite(x)) if x.is_infinite()),
            "{out:?}"
        );
        assert_eq!(out[0].outcome.as_ref().unwrap_err().value(), None);
    }
}
