//! What a collector says it applied, for the tests that account for every report:
//! its `report accepted` log lines (at `rally_collector::ingest=debug`) and the
//! samples of its `/metrics`.

use std::collections::BTreeMap;

/// `report accepted` lines of a collector log: (vm, run) → sequence numbers, in the
/// order they were applied.
pub fn accepted(log: &str) -> BTreeMap<(String, String), Vec<u64>> {
    let mut out: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("report accepted")) {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .map(|v| v.trim_matches('"').to_owned())
        };
        let (Some(vm), Some(run), Some(seq)) = (field("vm"), field("run"), field("seq")) else {
            panic!("unparseable accept line: {line}");
        };
        out.entry((vm, run))
            .or_default()
            .push(seq.parse().expect("seq is a number"));
    }
    out
}

/// The value of the sample of `metric` whose labels include every `label="value"`.
pub fn sample(metrics: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(metric)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        let (label_part, value) = match rest.split_once('}') {
            Some((l, v)) => (l, v),
            None => ("", rest),
        };
        labels
            .iter()
            .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.split_whitespace().next()?.parse().ok())?
    })
}

/// The sum of every sample of `metric` whose labels include every `label="value"`.
pub fn sum(metrics: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?;
            let (label_part, value) = rest.strip_prefix('{')?.split_once('}')?;
            labels
                .iter()
                .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.split_whitespace().next()?.parse::<f64>().ok())?
        })
        .sum()
}

/// Checks that `seqs` (one run's, in the order applied) rise by one from `first`:
/// nothing skipped, nothing applied twice, order kept. Returns the last one.
pub fn assert_contiguous(what: &str, seqs: &[u64], first: u64) -> u64 {
    assert!(!seqs.is_empty(), "{what}: no report applied");
    assert_eq!(seqs[0], first, "{what}: starts at {} not {first}", seqs[0]);
    for pair in seqs.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "{what}: {} follows {} (a gap, a repeat or a reordering)",
            pair[1],
            pair[0]
        );
    }
    seqs[seqs.len() - 1]
}
