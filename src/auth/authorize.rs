//! Authorization: may this identity's plan use this feature and this model?

use super::Identity;
use crate::config::PlanConfig;
use crate::error::{ApiError, ErrorCode};
use std::collections::BTreeMap;

/// Checks the caller's plan and the requested feature; returns the plan.
pub fn authorize_feature<'p>(
    plans: &'p BTreeMap<String, PlanConfig>,
    identity: &Identity,
    feature: &str,
) -> Result<&'p PlanConfig, ApiError> {
    let plan = plans.get(&identity.plan).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownPlan,
            "the token's plan is not known to this gateway",
        )
    })?;
    if plan.features.iter().any(|f| f == feature) {
        return Ok(plan);
    }
    if plans
        .values()
        .any(|p| p.features.iter().any(|f| f == feature))
    {
        Err(ApiError::new(
            ErrorCode::FeatureNotInPlan,
            format!(
                "plan '{}' does not include feature '{}'",
                identity.plan,
                printable(feature)
            ),
        ))
    } else {
        Err(ApiError::new(
            ErrorCode::UnknownFeature,
            format!("no plan offers feature '{}'", printable(feature)),
        ))
    }
}

/// Whether the plan's model allow-list admits `model` (an empty list allows every priced model).
fn plan_allows(plan: &PlanConfig, model: &str) -> bool {
    plan.models.is_empty() || plan.models.iter().any(|m| m == model)
}

/// The priced models the plan may use, in name order (`/v1/models`).
pub fn models_in_plan<'m>(
    plan: &PlanConfig,
    priced: impl IntoIterator<Item = &'m String>,
) -> Vec<&'m str> {
    priced
        .into_iter()
        .filter(|model| plan_allows(plan, model))
        .map(String::as_str)
        .collect()
}

/// Checks the plan's model allow-list (an empty list allows every priced model).
pub fn authorize_model(plan_name: &str, plan: &PlanConfig, model: &str) -> Result<(), ApiError> {
    if plan_allows(plan, model) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::ModelNotInPlan,
        format!(
            "plan '{plan_name}' does not include model '{}'",
            printable(model)
        ),
    ))
}

/// Checks the plan's denied parameters against the fields the request sets.
pub fn authorize_parameters(
    plan_name: &str,
    plan: &PlanConfig,
    sets: impl Fn(&str) -> bool,
) -> Result<(), ApiError> {
    match plan.denied_parameters.iter().find(|name| sets(name)) {
        None => Ok(()),
        Some(name) => Err(ApiError::new(
            ErrorCode::ParameterNotAllowed,
            format!("plan '{plan_name}' does not allow the parameter `{name}`"),
        )),
    }
}

/// A client-supplied name, bounded and without control characters, for an error message.
fn printable(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn who(plan: &str) -> Identity {
        Identity {
            user_id: "u".into(),
            plan: plan.into(),
            session_id: None,
            max_message_chars: None,
        }
    }

    #[test]
    fn plans_grant_their_features_only() {
        let plans = Config::default().plans;
        assert!(authorize_feature(&plans, &who("basic"), "chat_support").is_ok());
        assert!(authorize_feature(&plans, &who("pro"), "code_review").is_ok());
        let denied = authorize_feature(&plans, &who("basic"), "code_review").unwrap_err();
        assert_eq!(denied.code, ErrorCode::FeatureNotInPlan);
        assert!(denied.message.contains("basic") && denied.message.contains("code_review"));
        assert_eq!(
            authorize_feature(&plans, &who("basic"), "teleport")
                .unwrap_err()
                .code,
            ErrorCode::UnknownFeature
        );
        assert_eq!(
            authorize_feature(&plans, &who("platinum"), "chat_support")
                .unwrap_err()
                .code,
            ErrorCode::UnknownPlan
        );
    }

    #[test]
    fn model_allow_lists() {
        let mut plan = Config::default().plans["basic"].clone();
        assert!(authorize_model("basic", &plan, "gpt-4o").is_ok());
        plan.models = vec!["gpt-4o-mini".into()];
        assert!(authorize_model("basic", &plan, "gpt-4o-mini").is_ok());
        assert_eq!(
            authorize_model("basic", &plan, "gpt-4o").unwrap_err().code,
            ErrorCode::ModelNotInPlan
        );
    }
}
