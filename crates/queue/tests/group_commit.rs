//! Group commit, observed through the metrics the WAL emits. A separate test binary because
//! it installs a process-wide metrics recorder.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use metrics::{Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata};
use metrics::{Recorder, SharedString, Unit};
use tally_queue::{FsyncPolicy, Wal, WalConfig};

#[derive(Default)]
struct Totals {
    fsyncs: AtomicU64,
    group_records: AtomicU64,
    groups: AtomicU64,
}

struct Fsyncs(Arc<Totals>);
struct GroupSizes(Arc<Totals>);

impl CounterFn for Fsyncs {
    fn increment(&self, value: u64) {
        self.0.fsyncs.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, _: u64) {}
}

impl HistogramFn for GroupSizes {
    fn record(&self, value: f64) {
        self.0.groups.fetch_add(1, Ordering::Relaxed);
        self.0
            .group_records
            .fetch_add(value as u64, Ordering::Relaxed);
    }
}

struct TestRecorder(Arc<Totals>);

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        match key.name() {
            "tally_wal_fsyncs_total" => Counter::from_arc(Arc::new(Fsyncs(self.0.clone()))),
            _ => Counter::noop(),
        }
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        match key.name() {
            "tally_wal_group_commit_records" => {
                Histogram::from_arc(Arc::new(GroupSizes(self.0.clone())))
            }
            _ => Histogram::noop(),
        }
    }
}

#[tokio::test]
async fn concurrent_appends_share_fsyncs() {
    let totals = Arc::new(Totals::default());
    metrics::set_global_recorder(TestRecorder(totals.clone())).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        dir: dir.path().to_path_buf(),
        fsync: FsyncPolicy::Always,
        ..WalConfig::default()
    };
    let wal = Wal::open(config, 0).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500 {
        let wal = wal.clone();
        tasks.spawn(async move { wal.append(Bytes::from(format!("{i}")), 1).await.unwrap() });
    }
    let mut lsns = Vec::new();
    while let Some(lsn) = tasks.join_next().await {
        lsns.push(lsn.unwrap());
    }
    lsns.sort_unstable();
    assert_eq!(lsns, (1..=500).collect::<Vec<_>>());

    let fsyncs = totals.fsyncs.load(Ordering::Relaxed);
    let groups = totals.groups.load(Ordering::Relaxed);
    assert_eq!(totals.group_records.load(Ordering::Relaxed), 500);
    assert_eq!(fsyncs, groups, "fsync=always syncs each group once");
    assert!(fsyncs < 100, "500 queued appends took {fsyncs} fsyncs");
}
