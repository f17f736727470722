//! The traffic policy's JSON shape, as API clients write it.

#[test]
fn minimal_and_full_policies_parse() {
    let p: Result<stratus_core::TrafficPolicy, _> =
        serde_json::from_str(r#"{"weights":[{"version":1,"weight":100}]}"#);
    assert!(p.is_ok(), "{p:?}");
    let p: Result<stratus_core::TrafficPolicy, _> = serde_json::from_str(
        r#"{"weights":[{"version":1,"weight":20},{"version":2,"weight":80}],
            "rules":[{"match":{"kind":"value","source":"header","name":"x-rule-0","op":"equals","value":"never"},"target":{"version":5}}],
            "sticky":{"source":"header","name":"x-tenant-id"}}"#,
    );
    assert!(p.is_ok(), "{p:?}");
}
