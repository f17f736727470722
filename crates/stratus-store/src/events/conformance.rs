//! The contract of every [`EventStore`] backend. Backends call [`run`] from their tests with a
//! fresh, empty store.

use super::{EventStore, InvocationState, NewInvocation, Outcome};
use crate::StoreError;

fn inv(id: &str, function: &str, not_before: i64) -> NewInvocation {
    NewInvocation {
        id: id.into(),
        function: function.into(),
        target: "latest".into(),
        webhook: None,
        payload: br#"{"n":1}"#.to_vec(),
        content_type: Some("application/json".into()),
        event_type: "stratus.invoke".into(),
        source: "stratus/api".into(),
        created_at: 1_000,
        not_before,
        traceparent: None,
    }
}

/// Runs the whole event store contract. Panics on the first violation.
pub async fn run(store: &dyn EventStore) {
    // Enqueue is durable and readable back; ids are unique.
    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    store
        .enqueue(NewInvocation {
            traceparent: Some(TP.into()),
            ..inv("a", "f", 1_000)
        })
        .await
        .unwrap();
    assert!(matches!(
        store.enqueue(inv("a", "f", 1_000)).await,
        Err(StoreError::Conflict(_))
    ));
    let a = store.get_invocation("a").await.unwrap().unwrap();
    assert_eq!(a.state, InvocationState::Pending);
    assert_eq!(a.payload, br#"{"n":1}"#);
    assert_eq!(a.attempts, 0);
    assert!(store.get_invocation("nope").await.unwrap().is_none());
    store.enqueue(inv("b", "f", 5_000)).await.unwrap();
    store.enqueue(inv("c", "g", 1_500)).await.unwrap();
    assert_eq!(store.next_due().await.unwrap(), Some(1_000));

    // Only due invocations are claimed, oldest due first, minus excluded functions.
    let got = store
        .claim_due("n1", 2_000, 10, &["g".into()])
        .await
        .unwrap();
    assert_eq!(got.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["a"]);
    assert_eq!(got[0].state, InvocationState::Running);
    assert_eq!(got[0].attempts, 1);
    assert_eq!(got[0].owner.as_deref(), Some("n1"));
    assert_eq!(
        got[0].traceparent.as_deref(),
        Some(TP),
        "the trace travels with the claim"
    );
    // A claimed invocation is not claimed twice.
    let got = store.claim_due("n2", 2_000, 10, &[]).await.unwrap();
    assert_eq!(got.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["c"]);
    assert!(
        store
            .claim_due("n2", 2_000, 10, &[])
            .await
            .unwrap()
            .is_empty()
    );

    // Only the owner completes; a retry goes back to pending at its time, with its error kept.
    let retry = Outcome::Retry {
        error: "boom".into(),
        at: 3_000,
    };
    assert!(
        !store
            .complete("a", "n2", retry.clone(), None)
            .await
            .unwrap()
    );
    assert!(store.complete("a", "n1", retry, None).await.unwrap());
    let a = store.get_invocation("a").await.unwrap().unwrap();
    assert_eq!(a.state, InvocationState::Pending);
    assert_eq!(a.next_at, 3_000);
    assert_eq!(a.errors.len(), 1);
    assert_eq!(
        (a.errors[0].attempt, a.errors[0].error.as_str()),
        (1, "boom")
    );
    assert!(
        store
            .claim_due("n1", 2_500, 10, &[])
            .await
            .unwrap()
            .is_empty()
    );
    let got = store.claim_due("n1", 3_000, 1, &[]).await.unwrap();
    assert_eq!((got[0].id.as_str(), got[0].attempts), ("a", 2));

    // Dead letters keep every error; completing can enqueue a destination atomically.
    let mut dest = inv("a-dest", "audit", 3_000);
    dest.event_type = "stratus.destination".into();
    assert!(
        store
            .complete(
                "a",
                "n1",
                Outcome::DeadLetter {
                    error: "boom again".into()
                },
                Some(dest)
            )
            .await
            .unwrap()
    );
    let a = store.get_invocation("a").await.unwrap().unwrap();
    assert_eq!(a.state, InvocationState::DeadLettered);
    assert_eq!(a.errors.len(), 2);
    assert!(store.get_invocation("a-dest").await.unwrap().is_some());
    let dl = store.dead_letters("f", 100).await.unwrap();
    assert_eq!(dl.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["a"]);
    assert!(store.dead_letters("g", 100).await.unwrap().is_empty());

    // Success records the result.
    let ok = Outcome::Succeeded {
        status: Some(200),
        result: Some("done".into()),
    };
    assert!(store.complete("c", "n2", ok, None).await.unwrap());
    let c = store.get_invocation("c").await.unwrap().unwrap();
    assert_eq!(c.state, InvocationState::Succeeded);
    assert_eq!(c.result.as_deref(), Some("done"));
    assert_eq!(c.status, Some(200));
    assert_eq!(c.owner, None);

    // Redrive moves dead letters back, attempts reset, errors kept.
    assert_eq!(store.redrive("f", Some("nope"), 4_000).await.unwrap(), 0);
    assert_eq!(store.redrive("f", None, 4_000).await.unwrap(), 1);
    let a = store.get_invocation("a").await.unwrap().unwrap();
    assert_eq!(
        (a.state, a.attempts, a.next_at, a.errors.len()),
        (InvocationState::Pending, 0, 4_000, 2)
    );
    assert!(store.dead_letters("f", 100).await.unwrap().is_empty());

    // A crashed owner's claims come back.
    let got = store.claim_due("n3", 10_000, 10, &[]).await.unwrap();
    assert_eq!(got.len(), 3, "a, b and a-dest are due");
    assert_eq!(store.release_owned("n3").await.unwrap(), 3);
    let b = store.get_invocation("b").await.unwrap().unwrap();
    assert_eq!((b.state, b.owner), (InvocationState::Pending, None));
    assert_eq!(store.release_owned("n3").await.unwrap(), 0);

    // Pruning removes finished invocations only.
    assert_eq!(store.prune_invocations(i64::MAX).await.unwrap(), 1);
    assert!(store.get_invocation("c").await.unwrap().is_none());
    assert!(store.get_invocation("b").await.unwrap().is_some());

    // Timers: a fire is claimed once, against the last fire as read.
    assert_eq!(store.timer_last_fire("t").await.unwrap(), None);
    assert!(store.claim_fire("t", None, 100, None).await.unwrap());
    assert!(!store.claim_fire("t", None, 100, None).await.unwrap());
    assert_eq!(store.timer_last_fire("t").await.unwrap(), Some(100));
    let fire = inv("t-200", "f", 200);
    assert!(
        store
            .claim_fire("t", Some(100), 200, Some(fire.clone()))
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_fire("t", Some(100), 200, Some(fire))
            .await
            .unwrap()
    );
    assert_eq!(store.timer_last_fire("t").await.unwrap(), Some(200));
    assert!(store.get_invocation("t-200").await.unwrap().is_some());
}
