//! The streaming output filter (secrets, PII, canary): any chunk payloads, split anywhere, are
//! released, held or blocked; once blocked nothing more is released; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tollgate::guardrails::{canary_family_rule, default_secret_rules, pii_redaction_rules, StreamScanner};
use tollgate::relay::output_filter::{Filtered, OutputFilter};

/// The rules, compiled once (as the gateway does at start-up); each input gets a clone.
fn template() -> &'static StreamScanner {
    static TEMPLATE: OnceLock<StreamScanner> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let mut rules = default_secret_rules();
        rules.extend(pii_redaction_rules());
        rules.push(canary_family_rule());
        StreamScanner::new(rules).expect("the built-in rules compile")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut filter = OutputFilter::from_template(template().clone());
    // Each line is either a whole chunk payload (starting with `{`) or the content of one.
    for line in text.split('\n') {
        let payload = if line.starts_with('{') {
            line.to_string()
        } else {
            serde_json::json!({"choices": [{"index": 0, "delta": {"content": line}}]}).to_string()
        };
        if let Filtered::Blocked { .. } = filter.filter_chunk(&payload) {
            return;
        }
    }
    let _ = filter.finish();
});
