//! The Redis Streams queue against a real `redis-server` on loopback, started per test in
//! a temporary directory (scripts/test.sh installs Debian's redis-server).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tally_queue::{EntryId, RedisStreams, StreamConfig, StreamError};
use tally_testkit::Redis;

/// The stream every test uses, on `redis`, as `consumer` of `group`.
fn config(redis: &Redis, group: &str, consumer: &str) -> StreamConfig {
    StreamConfig {
        url: redis.url(),
        stream: "test:events".into(),
        group: group.into(),
        consumer: consumer.into(),
        max_len: 1_000_000,
        claim_idle: Duration::from_millis(300),
        timeout: Duration::from_secs(2),
    }
}

async fn connect(redis: &Redis, group: &str, consumer: &str) -> RedisStreams {
    RedisStreams::connect(config(redis, group, consumer))
        .await
        .unwrap()
}

/// Appends records `e0`, `e1`... in one call; their ids.
async fn append_n(q: &RedisStreams, n: usize) -> Vec<EntryId> {
    let records: Vec<_> = (0..n).map(|i| record(&format!("e{i}"))).collect();
    q.append(&records).await.unwrap()
}

/// Up to `max` entries through a new reader (as after a restart).
async fn read_fresh(q: &RedisStreams, max: usize) -> Vec<tally_queue::Entry> {
    q.reader()
        .await
        .unwrap()
        .read(max, Duration::from_millis(50))
        .await
        .unwrap()
}

fn record(s: &str) -> (Bytes, u32) {
    (Bytes::from(s.to_owned()), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_from_many_clients_reach_two_writers_exactly_once() {
    let redis = Redis::start();
    let queue = connect(&redis, "writers", "w1").await;
    let mut sent = HashSet::new();
    let mut tasks = Vec::new();
    for client in 0..8 {
        let q = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for batch in 0..10 {
                let records: Vec<_> = (0..5)
                    .map(|i| record(&format!("c{client}-b{batch}-{i}")))
                    .collect();
                ids.extend(q.append(&records).await.unwrap());
            }
            ids
        }));
        for batch in 0..10 {
            for i in 0..5 {
                sent.insert(format!("c{client}-b{batch}-{i}"));
            }
        }
    }
    let mut ids = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(ids.insert(id), "id {id} handed out twice");
        }
    }
    assert_eq!(ids.len(), 400);

    // Two writers of one group split the stream; each acks what it "stored".
    let mut readers = Vec::new();
    for name in ["w1", "w2"] {
        let q = connect(&redis, "writers", name).await;
        readers.push(tokio::spawn(async move {
            let mut reader = q.reader().await.unwrap();
            let mut got = Vec::new();
            loop {
                let batch = reader.read(37, Duration::from_millis(200)).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                let ids: Vec<EntryId> = batch.iter().map(|e| e.id).collect();
                assert_eq!(q.ack(&ids).await.unwrap(), ids.len() as u64);
                got.extend(batch);
            }
        }));
    }
    let mut received = Vec::new();
    for r in readers {
        received.extend(r.await.unwrap());
    }
    let payloads: Vec<String> = received
        .iter()
        .map(|e| String::from_utf8(e.payload.to_vec()).unwrap())
        .collect();
    let unique: HashSet<String> = payloads.iter().cloned().collect();
    assert_eq!(payloads.len(), 400, "every entry delivered once");
    assert_eq!(unique, sent);
    assert!(received.iter().all(|e| e.events == 1));

    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.lag, Some(0));
    assert_eq!(stats.oldest_age, None);
    assert_eq!(queue.trim().await.unwrap(), 400);
    assert_eq!(queue.length().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_writers_entries_are_taken_over_once_idle() {
    let redis = Redis::start();
    let w1 = connect(&redis, "writers", "w1").await;
    let ids = append_n(&w1, 10).await;
    let mut r1 = w1.reader().await.unwrap();
    let held = r1.read(100, Duration::from_millis(100)).await.unwrap();
    assert_eq!(held.len(), 10);
    drop(r1); // w1 dies without acknowledging

    let w2 = connect(&redis, "writers", "w2").await;
    let mut r2 = w2.reader().await.unwrap();
    // Not idle long enough yet: nothing to take over, nothing new.
    assert!(r2
        .read(100, Duration::from_millis(50))
        .await
        .unwrap()
        .is_empty());
    let stats = w2.stats().await.unwrap();
    assert_eq!((stats.pending, stats.lag), (10, Some(0)));
    assert!(stats.oldest_age.is_some());

    tokio::time::sleep(Duration::from_millis(350)).await;
    let taken = r2.read(100, Duration::from_millis(50)).await.unwrap();
    let taken_ids: Vec<EntryId> = taken.iter().map(|e| e.id).collect();
    assert_eq!(taken_ids, ids, "all ten, in order");
    assert_eq!(w2.ack(&taken_ids).await.unwrap(), 10);
    assert!(r2
        .read(100, Duration::from_millis(50))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(w2.stats().await.unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_writer_reads_its_unacknowledged_entries_again() {
    let redis = Redis::start();
    let q = connect(&redis, "writers", "w1").await;
    append_n(&q, 5).await;
    let first = read_fresh(&q, 3).await;
    assert_eq!(first.len(), 3);

    // The same consumer name after a restart: its three come back first, then the rest.
    let mut again = q.reader().await.unwrap();
    let replay = again.read(10, Duration::from_millis(50)).await.unwrap();
    assert_eq!(replay, first);
    let ids: Vec<EntryId> = replay.iter().map(|e| e.id).collect();
    q.ack(&ids).await.unwrap();
    let rest = again.read(10, Duration::from_millis(50)).await.unwrap();
    assert_eq!(rest.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_keeps_what_any_group_still_needs() {
    let redis = Redis::start();
    let a = connect(&redis, "writers", "a1").await;
    let b = connect(&redis, "audit", "b1").await;
    append_n(&a, 10).await;

    let all = read_fresh(&a, 100).await;
    a.ack(&all.iter().map(|e| e.id).collect::<Vec<_>>())
        .await
        .unwrap();
    // Group "audit" read four and acknowledged the first two.
    let mut rb = b.reader().await.unwrap();
    let four = rb.read(4, Duration::from_millis(50)).await.unwrap();
    b.ack(&[four[0].id, four[1].id]).await.unwrap();

    assert_eq!(
        a.trim().await.unwrap(),
        2,
        "only what both groups acknowledged"
    );
    assert_eq!(a.length().await.unwrap(), 8);
    assert_eq!(b.stats().await.unwrap().pending, 2);
    assert_eq!(b.stats().await.unwrap().lag, Some(6));

    b.ack(&[four[2].id, four[3].id]).await.unwrap();
    assert_eq!(a.trim().await.unwrap(), 2, "the unread six stay");
    let six = rb.read(100, Duration::from_millis(50)).await.unwrap();
    assert_eq!(six.len(), 6);
    b.ack(&six.iter().map(|e| e.id).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(a.trim().await.unwrap(), 6);
    assert_eq!(a.length().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refuses_appends_until_trimmed() {
    let redis = Redis::start();
    let config = StreamConfig {
        max_len: 5,
        ..config(&redis, "writers", "w1")
    };
    let q = RedisStreams::connect(config).await.unwrap();
    let five: Vec<_> = (0..5).map(|i| record(&format!("e{i}"))).collect();
    q.append(&five).await.unwrap();
    match q.append(&[record("over")]).await {
        Err(StreamError::Full { len: 5, max: 5 }) => {}
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(
        q.length().await.unwrap(),
        5,
        "the refused record was not added"
    );

    let got = read_fresh(&q, 10).await;
    q.ack(&got.iter().map(|e| e.id).collect::<Vec<_>>())
        .await
        .unwrap();
    q.trim().await.unwrap();
    q.append(&[record("fits")]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_fail_loudly_while_redis_is_away_and_recover_after() {
    let mut redis = Redis::start();
    let q = connect(&redis, "writers", "w1").await;
    q.append(&[record("before")]).await.unwrap();

    redis.stop();
    let started = Instant::now();
    match q.append(&[record("while away")]).await {
        Err(StreamError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fails, does not hang"
    );

    // appendonly + appendfsync always: what was accepted survives the restart.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match q.append(&[record("after")]).await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "never recovered: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let got = read_fresh(&q, 10).await;
    let payloads: Vec<_> = got.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(payloads, vec![Bytes::from("before"), Bytes::from("after")]);
}
