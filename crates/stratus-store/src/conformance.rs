//! The behaviour every [`Metastore`] and [`LogStore`] backend must show. Backends call
//! [`metastore`] and [`logstore`] from their own tests with a fresh, empty store, so SQLite and
//! (later) PostgreSQL are held to the same contract.

use std::collections::BTreeMap;

use stratus_core::traffic::syntax;
use stratus_core::{
    AliasName, Build, FunctionName, FunctionSpec, Health, Limits, RuntimeKind, Scaling,
    TrafficPolicy, VersionNumber, now_ms,
};

use crate::{
    AlarmMetric, AlarmNotification, AlarmOp, AlarmRecord, AlarmState, CaptureRecord, CapturedBody,
    CapturedRequest, CapturedResponse, ChangeReason, LogLine, LogQuery, LogStore, LogStream,
    Metastore, NewVersion, Release, ReleaseState, RequestQuery, RequestRecord, StatusFilter,
    StoreError, SummaryQuery, Trigger,
};

fn spec(name: &str) -> FunctionSpec {
    FunctionSpec {
        name: FunctionName::new(name).unwrap(),
        runtime: RuntimeKind::Process,
        command: vec!["node".into(), "server.js".into()],
        env: BTreeMap::from([("A".into(), "1".into())]),
        limits: Limits::default(),
        scaling: Scaling::default(),
        health: Health::default(),
        routes: vec![],
        build: Build::default(),
        events: Default::default(),
        capture: None,
    }
}

async fn deploy(store: &dyn Metastore, name: &str) -> VersionNumber {
    let f = FunctionName::new(name).unwrap();
    let number = store.next_version_number(&f).await.unwrap();
    let v = store
        .create_version(NewVersion {
            spec: spec(name),
            artifact: format!("sha256:{:064}", number.0),
            artifact_size: 10,
            number,
            actor: "conformance".into(),
        })
        .await
        .unwrap();
    assert_eq!(v.number, number);
    v.number
}

/// Runs the whole metastore contract. Panics on the first violation.
pub async fn metastore(store: &dyn Metastore) {
    alarms(store).await;
    let f = FunctionName::new("conf-a").unwrap();
    let latest = AliasName::latest();
    let release = AliasName::new("release").unwrap();
    let mut changes = store.changes();
    let gen0 = *changes.borrow_and_update();

    // Unknown things are reported as such.
    assert!(matches!(
        store.get_function(&f).await,
        Err(StoreError::FunctionNotFound(_))
    ));
    assert_eq!(
        store.next_version_number(&f).await.unwrap(),
        VersionNumber(1)
    );

    // Deploys number versions from 1 and move latest.
    assert_eq!(deploy(store, "conf-a").await, VersionNumber(1));
    assert_eq!(deploy(store, "conf-a").await, VersionNumber(2));
    assert!(
        *changes.borrow_and_update() > gen0,
        "changes must move after a commit"
    );
    let rec = store.get_function(&f).await.unwrap();
    assert_eq!(rec.latest_version, Some(VersionNumber(2)));
    assert_eq!(rec.version_count, 2);
    assert_eq!(
        store.get_alias(&f, &latest).await.unwrap().version,
        VersionNumber(2)
    );
    let v1 = store.get_version(&f, VersionNumber(1)).await.unwrap();
    assert_eq!(v1.spec, spec("conf-a"), "a version keeps its spec exactly");
    assert_eq!(store.list_versions(&f).await.unwrap().len(), 2);

    // A version number can only be taken once.
    let dup = store
        .create_version(NewVersion {
            spec: spec("conf-a"),
            artifact: "sha256:dup".into(),
            artifact_size: 1,
            number: VersionNumber(2),
            actor: "conformance".into(),
        })
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "got {dup:?}");
    assert_eq!(
        store.get_alias(&f, &latest).await.unwrap().version,
        VersionNumber(2)
    );

    // Aliases point at existing versions only.
    let missing = store
        .set_alias(&f, &release, VersionNumber(9), ChangeReason::Manual, "t")
        .await;
    assert!(
        matches!(missing, Err(StoreError::VersionNotFound(..))),
        "got {missing:?}"
    );
    assert!(matches!(
        store.get_alias(&f, &release).await,
        Err(StoreError::AliasNotFound(..))
    ));
    store
        .set_alias(
            &f,
            &release,
            VersionNumber(1),
            ChangeReason::Manual,
            "alice",
        )
        .await
        .unwrap();
    store
        .set_alias(&f, &release, VersionNumber(2), ChangeReason::Manual, "bob")
        .await
        .unwrap();
    assert_eq!(store.list_aliases(&f).await.unwrap().len(), 2);

    // History records every move; rollback steps back and is itself recorded.
    let h = store.alias_history(&f, &release).await.unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(
        (h[1].from, h[1].to, h[1].actor.as_str()),
        (Some(VersionNumber(1)), VersionNumber(2), "bob")
    );
    let back = store.rollback_alias(&f, &release, "carol").await.unwrap();
    assert_eq!(back.version, VersionNumber(1));
    let h = store.alias_history(&f, &release).await.unwrap();
    assert_eq!(h.last().unwrap().reason, ChangeReason::Rollback);
    let none = store.rollback_alias(&f, &release, "carol").await;
    assert!(
        matches!(none, Err(StoreError::NoHistory(..))),
        "got {none:?}"
    );
    assert_eq!(
        store.get_alias(&f, &release).await.unwrap().version,
        VersionNumber(1)
    );

    // Rolling back latest after two deploys returns to version 1.
    assert_eq!(
        store
            .rollback_alias(&f, &latest, "t")
            .await
            .unwrap()
            .version,
        VersionNumber(1)
    );
    assert_eq!(
        store.get_function(&f).await.unwrap().latest_version,
        Some(VersionNumber(1))
    );

    // Versions in use cannot be deleted; unused ones can.
    let in_use = store.delete_version(&f, VersionNumber(1)).await;
    assert!(
        matches!(in_use, Err(StoreError::AliasInUse { .. })),
        "got {in_use:?}"
    );
    store.delete_version(&f, VersionNumber(2)).await.unwrap();
    assert!(matches!(
        store.get_version(&f, VersionNumber(2)).await,
        Err(StoreError::VersionNotFound(..))
    ));
    // Numbers are never reused, even after a delete.
    assert_eq!(deploy(store, "conf-a").await, VersionNumber(3));

    // The routing snapshot shows functions with their aliases and versions.
    deploy(store, "conf-b").await;
    let snap = store.routing_snapshot().await.unwrap();
    let a = snap
        .functions
        .iter()
        .find(|x| x.name == f)
        .expect("conf-a in snapshot");
    assert_eq!(a.versions.len(), 2);
    assert!(
        a.aliases
            .iter()
            .any(|x| x.name == release && x.version == VersionNumber(1))
    );
    assert!(snap.functions.iter().any(|x| x.name.as_str() == "conf-b"));

    // Deleting a function removes everything of it, and nothing else.
    store.delete_function(&f).await.unwrap();
    assert!(matches!(
        store.get_function(&f).await,
        Err(StoreError::FunctionNotFound(_))
    ));
    assert!(
        store.list_aliases(&f).await.is_err() || store.list_aliases(&f).await.unwrap().is_empty()
    );
    let names: Vec<_> = store
        .list_functions()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, vec![FunctionName::new("conf-b").unwrap()]);
    assert!(matches!(
        store.delete_function(&f).await,
        Err(StoreError::FunctionNotFound(_))
    ));
    // A re-created function starts again from 1.
    assert_eq!(deploy(store, "conf-a").await, VersionNumber(1));

    policies(store).await;
    releases(store).await;
}

fn policy(weights: &[&str]) -> TrafficPolicy {
    let w: Vec<String> = weights.iter().map(|s| s.to_string()).collect();
    TrafficPolicy {
        weights: syntax::weights(&w).unwrap(),
        rules: vec![],
        sticky: None,
        shadow: None,
    }
}

async fn policies(store: &dyn Metastore) {
    let f = FunctionName::new("conf-p").unwrap();
    let release = AliasName::new("release").unwrap();
    let canary = AliasName::new("canary").unwrap();
    for _ in 0..3 {
        deploy(store, "conf-p").await;
    }
    let set = |a: &AliasName, p: TrafficPolicy| {
        let a = a.clone();
        let f = f.clone();
        async move {
            store
                .set_alias_policy(&f, &a, p, ChangeReason::Manual, None, "t")
                .await
        }
    };

    // Weighted over several versions; the primary is the heaviest.
    let rec = set(&release, policy(&["2=10", "1=90"])).await.unwrap();
    assert_eq!(rec.version, VersionNumber(1));
    assert_eq!(rec.policy.weights.len(), 2);
    assert_eq!(
        store.get_alias(&f, &release).await.unwrap().policy,
        rec.policy,
        "stored as given, canonical order"
    );

    // Bad policies change nothing.
    let bad = set(&release, policy(&["1=50", "2=40"])).await;
    assert!(
        matches!(bad, Err(StoreError::InvalidPolicy(_))),
        "got {bad:?}"
    );
    let missing = set(&release, policy(&["1=50", "9=50"])).await;
    assert!(
        matches!(missing, Err(StoreError::VersionNotFound(..))),
        "got {missing:?}"
    );
    let mut with_rule = policy(&["1"]);
    with_rule
        .rules
        .push(syntax::rule("header:x-tenant-id in t1,t7 -> canary").unwrap());
    let unknown_alias = set(&release, with_rule.clone()).await;
    assert!(
        matches!(unknown_alias, Err(StoreError::AliasNotFound(..))),
        "got {unknown_alias:?}"
    );
    let mut self_ref = policy(&["1"]);
    self_ref
        .rules
        .push(syntax::rule("header:a=b -> release").unwrap());
    assert!(matches!(
        set(&release, self_ref).await,
        Err(StoreError::InvalidPolicy(_))
    ));
    assert_eq!(
        store.get_alias(&f, &release).await.unwrap().policy,
        rec.policy
    );

    // Rules may point at other aliases; the shadow version counts as in use.
    set(&canary, policy(&["3"])).await.unwrap();
    with_rule.shadow = Some(syntax::shadow("2:10%", true).unwrap());
    set(&release, with_rule.clone()).await.unwrap();
    let in_use = store.delete_version(&f, VersionNumber(2)).await;
    assert!(
        matches!(in_use, Err(StoreError::AliasInUse { .. })),
        "shadow versions are in use: {in_use:?}"
    );

    // Rollback restores the whole previous policy.
    let back = store.rollback_alias(&f, &release, "t").await.unwrap();
    assert_eq!(back.policy, rec.policy);
    let h = store.alias_history(&f, &release).await.unwrap();
    assert_eq!(h.last().unwrap().from_policy.as_ref(), Some(&with_rule));
    assert_eq!(h.last().unwrap().to_policy, rec.policy);

    // Notes are kept with the change.
    store
        .set_alias_policy(
            &f,
            &release,
            policy(&["1=75", "3=25"]),
            ChangeReason::Progressive,
            Some("step 2 of 4".into()),
            "controller",
        )
        .await
        .unwrap();
    let h = store.alias_history(&f, &release).await.unwrap();
    let last = h.last().unwrap();
    assert_eq!(
        (last.reason, last.note.as_deref(), last.actor.as_str()),
        (ChangeReason::Progressive, Some("step 2 of 4"), "controller")
    );
}

async fn releases(store: &dyn Metastore) {
    let f = FunctionName::new("conf-p").unwrap();
    let release = AliasName::new("release").unwrap();
    let new = Release {
        id: 0,
        function: f.clone(),
        alias: release.clone(),
        stable: VersionNumber(1),
        target: VersionNumber(3),
        steps: vec![10, 50, 100],
        step: 0,
        interval_ms: 60_000,
        max_error_rate: 0.01,
        max_p99_ms: Some(500),
        state: ReleaseState::Running,
        actor: "t".into(),
        created_at: now_ms(),
        updated_at: now_ms(),
        step_started_at: now_ms(),
        events: vec![],
    };
    let mut r = store.create_release(new.clone()).await.unwrap();
    assert!(r.id > 0);
    let again = store.create_release(new.clone()).await;
    assert!(
        matches!(again, Err(StoreError::Conflict(_))),
        "one running release per alias: {again:?}"
    );
    assert_eq!(store.running_releases().await.unwrap().len(), 1);
    r.step = 1;
    r.state = ReleaseState::Promoted;
    store.update_release(&r).await.unwrap();
    assert!(store.running_releases().await.unwrap().is_empty());
    let listed = store.list_releases(&f).await.unwrap();
    assert_eq!(listed, vec![r.clone()]);
    let second = store.create_release(new).await.unwrap();
    assert_eq!(
        store.list_releases(&f).await.unwrap()[0].id,
        second.id,
        "newest first"
    );
}

/// Runs the log store contract.
pub async fn logstore(store: &dyn LogStore) {
    let line = |i: i64, f: &str| LogLine {
        id: 0,
        at: 1_000 + i,
        function: f.into(),
        version: 1,
        instance: "i-1".into(),
        stream: if i % 2 == 0 {
            LogStream::Stdout
        } else {
            LogStream::Stderr
        },
        line: format!("line {i}"),
        request_id: None,
    };
    store
        .append((0..10).map(|i| line(i, "logs-a")).collect())
        .await
        .unwrap();
    store.append(vec![line(10, "logs-b")]).await.unwrap();
    let all = store
        .query(LogQuery {
            function: Some("logs-a".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 10);
    assert_eq!(all[0].line, "line 0", "oldest first");
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    assert_eq!(all[1].stream, LogStream::Stderr);
    let tail = store
        .query(LogQuery {
            function: Some("logs-a".into()),
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        tail.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
        ["line 7", "line 8", "line 9"]
    );
    let after = store
        .query(LogQuery {
            function: Some("logs-a".into()),
            after_id: Some(all[7].id),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(after.len(), 2);
    let removed = store.prune(1_005, 1_000_000).await.unwrap();
    assert_eq!(removed, 5);
    let removed = store.prune(0, 2).await.unwrap();
    assert_eq!(removed, 4);
    let left = store
        .query(LogQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        left.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
        ["line 9", "line 10"]
    );

    requests(store).await;
    captures(store).await;
}

/// Captures: stored whole (bodies as bytes), found by request id (the newest of a reused id),
/// pruned by age and then by size, oldest first.
async fn captures(store: &dyn LogStore) {
    let cap = |id: &str, at: i64, body: &[u8]| CaptureRecord {
        request_id: id.into(),
        function: "cap-f".into(),
        version: 3,
        at_ms: at,
        request: CapturedRequest {
            method: "POST".into(),
            uri: "/fn/cap-f/orders?x=1".into(),
            forward_uri: "/orders?x=1".into(),
            headers: vec![
                ("content-type".into(), "application/octet-stream".into()),
                ("x-two".into(), "a".into()),
                ("x-two".into(), "b".into()),
            ],
            body: CapturedBody {
                bytes: body.to_vec(),
                size: body.len() as u64 + 10,
                truncated: true,
                dropped: None,
            },
        },
        response: Some(CapturedResponse {
            status: 201,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: CapturedBody {
                bytes: b"made".to_vec(),
                size: 4,
                truncated: false,
                dropped: None,
            },
        }),
    };
    assert_eq!(store.get_capture("cap-none").await.unwrap(), None);
    let binary = [0u8, 255, 1, 254, b'\n'];
    let first = cap("cap-1", 1_000, &binary);
    store
        .append_captures(vec![first.clone(), cap("cap-2", 2_000, &[7; 100])])
        .await
        .unwrap();
    assert_eq!(store.get_capture("cap-1").await.unwrap(), Some(first));
    let mut reused = cap("cap-1", 3_000, b"again");
    reused.response = None;
    store.append_captures(vec![reused.clone()]).await.unwrap();
    assert_eq!(
        store.get_capture("cap-1").await.unwrap(),
        Some(reused.clone()),
        "a reused id finds the newest"
    );
    // By age: the capture at 1,000 goes.
    assert_eq!(store.prune_captures(1_500, u64::MAX).await.unwrap(), 1);
    assert!(store.get_capture("cap-2").await.unwrap().is_some());
    // By size: only the newest fits.
    let budget = reused.stored_bytes();
    assert_eq!(store.prune_captures(0, budget).await.unwrap(), 1);
    assert_eq!(store.get_capture("cap-2").await.unwrap(), None);
    assert_eq!(store.get_capture("cap-1").await.unwrap(), Some(reused));
    assert_eq!(store.prune_captures(0, 0).await.unwrap(), 1);
    assert_eq!(store.get_capture("cap-1").await.unwrap(), None);
}

/// Request records: every filter, the grep through a request's own lines, tailing and pruning.
async fn requests(store: &dyn LogStore) {
    let rec = |i: u32, f: &str| RequestRecord {
        id: 0,
        request_id: format!("req-{f}-{i}"),
        trace_id: format!("{:032x}", i / 2),
        function: f.into(),
        version: 1 + i % 2,
        instance: "i-1".into(),
        trigger: if i == 3 {
            Trigger::Timer
        } else {
            Trigger::Http
        },
        method: "GET".into(),
        path: format!("/p/{i}"),
        start_ms: 10_000 + i as i64 * 10,
        duration_us: 1_000 + i as u64,
        queue_us: 5,
        init_us: (i == 0).then_some(8_000),
        status: if i % 5 == 4 { 503 } else { 200 },
        error: (i % 5 == 4).then(|| "overloaded".to_string()),
        bytes_in: 0,
        bytes_out: 12,
    };
    store
        .append_requests((0..10).map(|i| rec(i, "req-a")).collect())
        .await
        .unwrap();
    store.append_requests(vec![rec(0, "req-b")]).await.unwrap();
    let mut with_line = line_of("req-a", "req-req-a-2", "connection reset by peer");
    with_line.at = 10_020;
    store
        .append(vec![with_line, line_of("req-a", "req-req-a-6", "all fine")])
        .await
        .unwrap();
    let q = |f: &dyn Fn(&mut RequestQuery)| {
        let mut q = RequestQuery {
            function: Some("req-a".into()),
            limit: 100,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    let ids = |v: Vec<RequestRecord>| v.into_iter().map(|r| r.request_id).collect::<Vec<_>>();
    let all = store.query_requests(q(&|_| {})).await.unwrap();
    assert_eq!(all.len(), 10);
    assert_eq!(
        all[0],
        RequestRecord {
            id: all[0].id,
            ..rec(0, "req-a")
        },
        "round trip"
    );
    assert_eq!(all[3].trigger, Trigger::Timer);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
    let errors = store
        .query_requests(q(&|q| q.status = StatusFilter::parse("5xx")))
        .await
        .unwrap();
    assert_eq!(ids(errors), ["req-req-a-4", "req-req-a-9"]);
    let one = store
        .query_requests(RequestQuery {
            request_id: Some("req-req-a-7".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(one), ["req-req-a-7"]);
    let trace = store
        .query_requests(q(&|q| q.trace_id = Some(format!("{:032x}", 3))))
        .await
        .unwrap();
    assert_eq!(ids(trace), ["req-req-a-6", "req-req-a-7"]);
    let window = store
        .query_requests(q(&|q| {
            q.since_ms = Some(10_020);
            q.until_ms = Some(10_040);
            q.version = Some(1);
        }))
        .await
        .unwrap();
    assert_eq!(ids(window), ["req-req-a-2", "req-req-a-4"]);
    let grep_line = store
        .query_requests(q(&|q| q.grep = Some("RESET by".into())))
        .await
        .unwrap();
    assert_eq!(
        ids(grep_line),
        ["req-req-a-2"],
        "grep reaches the request's lines"
    );
    let windowed = store
        .query_requests(q(&|q| {
            q.grep = Some("reset".into());
            q.since_ms = Some(10_000);
        }))
        .await
        .unwrap();
    assert_eq!(
        ids(windowed),
        ["req-req-a-2"],
        "the same within a time window"
    );
    let too_late = store
        .query_requests(q(&|q| {
            q.grep = Some("reset".into());
            q.since_ms = Some(10_021);
        }))
        .await
        .unwrap();
    assert!(
        too_late.is_empty(),
        "a line before the window does not match"
    );
    let grep_error = store
        .query_requests(q(&|q| q.grep = Some("overload".into())))
        .await
        .unwrap();
    assert_eq!(ids(grep_error), ["req-req-a-4", "req-req-a-9"]);
    let wildcard = store
        .query_requests(q(&|q| q.grep = Some("%".into())))
        .await
        .unwrap();
    assert!(wildcard.is_empty(), "grep text is literal");
    let tail = store
        .query_requests(q(&|q| {
            q.after_id = Some(all[7].id);
        }))
        .await
        .unwrap();
    assert_eq!(ids(tail), ["req-req-a-8", "req-req-a-9"]);
    let lines = store
        .query(LogQuery {
            request_ids: vec!["req-req-a-2".into()],
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].request_id.as_deref(), Some("req-req-a-2"));
    let sums = store
        .summarize(SummaryQuery {
            since_ms: 10_000,
            until_ms: 10_090,
            function: None,
            bounds_us: vec![1_004, 1_008],
        })
        .await
        .unwrap();
    assert_eq!(sums.len(), 2);
    let a = &sums[0];
    assert_eq!(a.function, "req-a");
    assert_eq!(
        (a.requests, a.errors, a.cold_starts, a.throttled),
        (10, 2, 1, 2)
    );
    assert_eq!(
        a.buckets,
        [5, 4, 1],
        "durations 1000..=1009us against bounds 1004, 1008"
    );
    let only_b = store
        .summarize(SummaryQuery {
            since_ms: 10_000,
            until_ms: 10_010,
            function: Some("req-b".into()),
            bounds_us: vec![],
        })
        .await
        .unwrap();
    assert_eq!(only_b.len(), 1);
    assert_eq!(
        (only_b[0].requests, only_b[0].buckets.as_slice()),
        (1, &[1][..])
    );
    store.prune(10_050, 1_000_000).await.unwrap();
    let left = store.query_requests(q(&|_| {})).await.unwrap();
    assert_eq!(
        ids(left),
        [
            "req-req-a-5",
            "req-req-a-6",
            "req-req-a-7",
            "req-req-a-8",
            "req-req-a-9"
        ]
    );
}

fn line_of(function: &str, request: &str, text: &str) -> LogLine {
    LogLine {
        id: 0,
        at: 20_000,
        function: function.into(),
        version: 1,
        instance: "i-1".into(),
        stream: LogStream::Stdout,
        line: text.into(),
        request_id: Some(request.into()),
    }
}

/// Alarms: created, replaced by id, listed in id order, deleted once.
async fn alarms(store: &dyn Metastore) {
    let alarm = |id: &str, threshold: f64| AlarmRecord {
        id: id.into(),
        function: "conf-a".into(),
        metric: AlarmMetric::ErrorRate,
        op: AlarmOp::Gt,
        threshold,
        for_ms: 60_000,
        window_ms: 60_000,
        webhook: "http://127.0.0.1:9/hook".into(),
        created_at: 1,
        state: AlarmState::Ok,
        state_since: 1,
        last_value: None,
        last_evaluated: 0,
        notifications: vec![],
    };
    let changes = *store.changes().borrow();
    store.create_alarm(&alarm("b", 0.1)).await.unwrap();
    store.create_alarm(&alarm("a", 0.05)).await.unwrap();
    assert!(matches!(
        store.create_alarm(&alarm("a", 0.9)).await,
        Err(StoreError::Conflict(_))
    ));
    let mut firing = alarm("a", 0.05);
    firing.state = AlarmState::Firing;
    firing.notifications.push(AlarmNotification {
        kind: "firing".into(),
        at: 5,
        value: Some(0.5),
        delivered: false,
        attempts: 2,
        error: Some("connection refused".into()),
    });
    store.update_alarm(&firing).await.unwrap();
    let all = store.list_alarms().await.unwrap();
    assert_eq!(
        all,
        vec![firing, alarm("b", 0.1)],
        "replaced by id, in id order"
    );
    assert_eq!(
        *store.changes().borrow(),
        changes,
        "alarms are not routing changes"
    );
    store.delete_alarm("b").await.unwrap();
    assert_eq!(
        store.delete_alarm("b").await,
        Err(StoreError::AlarmNotFound("b".into()))
    );
    store.delete_alarm("a").await.unwrap();
    assert_eq!(
        store.update_alarm(&alarm("a", 0.05)).await,
        Err(StoreError::AlarmNotFound("a".into())),
        "a deleted alarm is not brought back"
    );
    assert!(store.list_alarms().await.unwrap().is_empty());
}
