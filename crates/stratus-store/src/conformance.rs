//! The behaviour every [`Metastore`] and [`LogStore`] backend must show. Backends call
//! [`metastore`] and [`logstore`] from their own tests with a fresh, empty store, so SQLite and
//! (later) PostgreSQL are held to the same contract.

use std::collections::BTreeMap;

use stratus_core::{
    AliasName, Build, FunctionName, FunctionSpec, Health, Limits, RuntimeKind, Scaling,
    VersionNumber,
};

use crate::{
    ChangeReason, LogLine, LogQuery, LogStore, LogStream, Metastore, NewVersion, StoreError,
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
}
