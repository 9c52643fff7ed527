//! The history's bounds, counted.

use super::*;
use crate::digest::DigestFunction;

fn limits(max_actions: usize, max_bytes: u64, max_invocations: usize) -> HistoryLimits {
    HistoryLimits {
        max_actions,
        max_bytes,
        max_invocations,
    }
}

fn metadata(invocation: &str, mnemonic: &str) -> RequestMetadata {
    RequestMetadata {
        tool_invocation_id: invocation.into(),
        action_mnemonic: mnemonic.into(),
        target_id: "//pkg:target".into(),
        ..Default::default()
    }
}

fn digest(n: u64) -> Digest {
    Digest::of(DigestFunction::Sha256, &n.to_le_bytes())
}

fn executed(exit_code: i32) -> ExecuteResponse {
    crate::execution::operations::execute_response(
        Some(ActionResult {
            exit_code,
            ..Default::default()
        }),
        false,
        None,
    )
}

#[test]
fn keeps_at_most_max_actions_newest_first() {
    let history = History::new(limits(100, u64::MAX, 10));
    for n in 0..1000 {
        let m = metadata("inv", "Genrule");
        history.record_execution("", digest(n), Some(&m), "op", &executed(0));
    }
    let (count, _) = history.size();
    assert_eq!(count, 100);
    let recent = history.recent(&Filter::default(), usize::MAX);
    assert_eq!(recent.len(), 100);
    assert_eq!(recent[0].action_digest, digest(999));
    assert_eq!(recent[99].action_digest, digest(900));
    assert!(history.get(recent[99].seq - 1).is_none());
    assert!(history.latest(&digest(899)).is_none());
    assert_eq!(history.latest(&digest(950)).unwrap().seq, recent[49].seq);
    assert_eq!(history.totals().executed, 1000);
}

#[test]
fn keeps_within_max_bytes() {
    let history = History::new(limits(usize::MAX, 10_000, 10));
    for n in 0..1000 {
        history.record_hit("", digest(n), None, &ActionResult::default());
    }
    let (count, bytes) = history.size();
    assert!(bytes <= 10_000, "{bytes} bytes retained");
    assert!(count > 10 && count < 100, "{count} records");
}

#[test]
fn invocations_are_bounded_and_counted() {
    let history = History::new(limits(10_000, u64::MAX, 5));
    for n in 0..50 {
        let m = metadata(&format!("inv-{n}"), "CppCompile");
        history.record_execution("", digest(n), Some(&m), "op", &executed(1));
        history.record_hit("", digest(n), Some(&m), &ActionResult::default());
    }
    let invocations = history.invocations();
    assert_eq!(invocations.len(), 5);
    assert_eq!(invocations[0].0, "inv-49");
    let stats = &invocations[0].1;
    assert_eq!(
        (
            stats.actions,
            stats.cache_hits,
            stats.executed,
            stats.failed
        ),
        (2, 1, 1, 1)
    );
}

#[test]
fn filters_by_outcome_mnemonic_invocation_and_target() {
    let history = History::new(limits(1000, u64::MAX, 10));
    history.record_execution(
        "",
        digest(1),
        Some(&metadata("a", "Javac")),
        "op",
        &executed(0),
    );
    history.record_execution(
        "",
        digest(2),
        Some(&metadata("b", "Javac")),
        "op",
        &executed(3),
    );
    history.record_hit(
        "",
        digest(3),
        Some(&metadata("a", "Genrule")),
        &ActionResult::default(),
    );
    let count = |f: Filter| history.recent(&f, 100).len();
    assert_eq!(count(Filter::default()), 3);
    let failed = Filter {
        outcome: Some(OutcomeKind::Failed),
        ..Default::default()
    };
    assert_eq!(history.recent(&failed, 100)[0].action_digest, digest(2));
    let javac = Filter {
        mnemonic: "Javac".into(),
        ..Default::default()
    };
    assert_eq!(count(javac), 2);
    let a = Filter {
        invocation: "a".into(),
        ..Default::default()
    };
    assert_eq!(count(a), 2);
    let target = Filter {
        target: "pkg:".into(),
        ..Default::default()
    };
    assert_eq!(count(target), 3);
    let earlier = history.executed_before(&history.latest(&digest(3)).unwrap(), 10);
    assert_eq!(earlier.len(), 2);
}
