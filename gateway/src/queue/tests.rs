use super::*;
use proptest::prelude::*;

fn reading(point: &str, value: Value) -> Reading {
    Reading::new(
        "sim",
        "dev",
        point,
        UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
        value,
    )
}

fn open(dir: &Path, opts: QueueOptions, uplinks: &[&str]) -> Queue {
    Queue::open(&dir.join("q.db"), opts, uplinks).expect("queue opens")
}

fn seqs(items: &[Queued]) -> Vec<u64> {
    items.iter().map(|q| q.seq).collect()
}

#[test]
fn every_value_kind_and_quality_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = open(dir.path(), QueueOptions::default(), &["up"]);
    let input = vec![
        reading("b", Value::Bool(true)),
        reading("i", Value::I64(i64::MIN)),
        reading("f", Value::F64(-0.125)).with_unit("°C"),
        reading("t", Value::Text("héllo".into())).with_quality(Quality::Bad("exception 2".into())),
        reading("y", Value::Bytes(vec![0, 255, 7])).with_quality(Quality::Stale("timeout".into())),
        Reading::new(
            "a",
            "d",
            "p",
            UNIX_EPOCH - Duration::from_micros(5),
            Value::Bytes(vec![]),
        ),
    ];
    let out = q.append(&input).expect("append");
    assert_eq!(out.seqs, Some((1, 6)));
    let got = q.peek(0, 100).expect("peek");
    assert_eq!(seqs(&got), [1, 2, 3, 4, 5, 6]);
    let readings: Vec<_> = got.into_iter().map(|q| q.reading).collect();
    assert_eq!(readings, input);
}

#[test]
fn each_database_has_its_own_stable_id() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let id = {
        let q = open(a.path(), QueueOptions::default(), &["up"]);
        assert_eq!(q.instance().len(), 16);
        q.instance().to_string()
    };
    let reopened = open(a.path(), QueueOptions::default(), &["up"]);
    assert_eq!(reopened.instance(), id, "the id survives a reopen");
    assert_eq!(reopened.stats().expect("stats").queue_id, id);
    let other = open(b.path(), QueueOptions::default(), &["up"]);
    assert_ne!(
        other.instance(),
        id,
        "a new database (a new SD card) gets a new id"
    );
}

#[test]
fn nan_survives_storage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = open(dir.path(), QueueOptions::default(), &["up"]);
    q.append(&[reading("f", Value::F64(f64::NAN))])
        .expect("append");
    let got = q.peek(0, 1).expect("peek");
    assert!(matches!(got[0].reading.value, Value::F64(f) if f.is_nan()));
}

#[test]
fn rows_leave_only_when_every_uplink_acked_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = open(dir.path(), QueueOptions::default(), &["a", "b"]);
    let batch: Vec<_> = (0..10).map(|i| reading("p", Value::I64(i))).collect();
    q.append(&batch).expect("append");
    assert_eq!(q.ack("a", 10, 10).expect("ack a"), 0, "b has not acked yet");
    assert_eq!(q.stats().expect("stats").depth, 10);
    assert_eq!(q.ack("b", 4, 4).expect("ack b"), 4);
    let s = q.stats().expect("stats");
    assert_eq!((s.depth, s.first_seq, s.delivered), (6, Some(5), 4));
    assert_eq!(
        q.ack("b", 2, 0).expect("stale ack"),
        0,
        "watermarks never move back"
    );
    assert_eq!(q.watermark("b"), Some(4));
    assert!(q.ack("nobody", 1, 1).is_err());
}

#[test]
fn sequence_ids_are_never_reused_after_the_queue_empties() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut q = open(dir.path(), QueueOptions::default(), &["up"]);
        q.append(&[reading("p", Value::I64(1)), reading("p", Value::I64(2))])
            .expect("append");
        q.ack("up", 2, 2).expect("ack");
        assert_eq!(q.stats().expect("stats").depth, 0);
        q.close().expect("close");
    }
    let mut q = open(dir.path(), QueueOptions::default(), &["up"]);
    let out = q.append(&[reading("p", Value::I64(3))]).expect("append");
    assert_eq!(out.seqs, Some((3, 3)));
}

#[test]
fn a_new_uplink_gets_what_is_queued_and_a_removed_one_releases_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut q = open(dir.path(), QueueOptions::default(), &["a", "b"]);
        q.append(&[reading("p", Value::I64(1)), reading("p", Value::I64(2))])
            .expect("append");
        q.ack("a", 2, 2).expect("ack");
    }
    // "c" is new: it starts at the front of what is queued, so rows 1 and 2 wait for it.
    {
        let mut q = open(dir.path(), QueueOptions::default(), &["a", "b", "c"]);
        assert_eq!(q.watermark("c"), Some(0));
        q.append(&[reading("p", Value::I64(3))]).expect("append");
        assert_eq!(seqs(&q.peek(0, 10).expect("peek")), [1, 2, 3]);
        q.ack("c", 3, 3).expect("ack c");
        assert_eq!(q.stats().expect("stats").depth, 3, "b still holds them");
    }
    // "b" is gone from the config: the rows only it held are released at once.
    let q = open(dir.path(), QueueOptions::default(), &["a", "c"]);
    let s = q.stats().expect("stats");
    assert_eq!(
        (s.depth, s.first_seq),
        (1, Some(3)),
        "a has not acked row 3"
    );
    assert_eq!(
        s.uplinks
            .iter()
            .map(|u| u.uplink.as_str())
            .collect::<Vec<_>>(),
        ["a", "c"]
    );
}

fn fill(q: &mut Queue, batches: usize, per_batch: usize) -> Vec<AppendOutcome> {
    (0..batches)
        .map(|b| {
            let batch: Vec<_> = (0..per_batch)
                .map(|i| reading("p", Value::Text(format!("{b}-{i}-padding-padding-padding"))))
                .collect();
            q.append(&batch)
        })
        .map(|r| match r {
            Ok(o) => o,
            Err(QueueError::Full { .. }) => AppendOutcome::default(),
            Err(e) => panic!("append failed: {e}"),
        })
        .collect()
}

#[test]
fn drop_oldest_keeps_the_newest_under_the_cap_and_counts_drops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = QueueOptions {
        max_bytes: Some(256 * 1024),
        when_full: WhenFull::DropOldest,
        ..QueueOptions::default()
    };
    let mut q = open(dir.path(), opts, &["up"]);
    let outcomes = fill(&mut q, 200, 100);
    let s = q.stats().expect("stats");
    let dropped: u64 = outcomes.iter().map(|o| o.dropped_oldest).sum();
    assert!(dropped > 0);
    assert_eq!(s.dropped_oldest, dropped);
    assert_eq!(
        s.depth + dropped,
        20_000,
        "every reading is either queued or counted as dropped"
    );
    assert_eq!(s.last_seq, Some(20_000), "the newest survive");
    assert!(
        s.used_bytes <= 256 * 1024 + 64 * 1024,
        "used {} bytes",
        s.used_bytes
    );
}

#[test]
fn drop_newest_refuses_batches_and_keeps_the_oldest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = QueueOptions {
        max_bytes: Some(256 * 1024),
        when_full: WhenFull::DropNewest,
        ..QueueOptions::default()
    };
    let mut q = open(dir.path(), opts, &["up"]);
    let outcomes = fill(&mut q, 200, 100);
    let s = q.stats().expect("stats");
    let refused: u64 = outcomes.iter().map(|o| o.dropped_newest).sum();
    assert!(refused > 0);
    assert_eq!(s.dropped_newest, refused);
    assert_eq!(s.first_seq, Some(1), "the oldest survive");
    assert_eq!(s.depth + refused, 20_000);
    assert_eq!(
        s.last_seq,
        Some(s.depth),
        "refused batches get no sequence ids"
    );
}

fn alert(rule: &str) -> Alert {
    Alert {
        rule: rule.into(),
        state: AlertState::Raised,
        level: AlertLevel::Low,
        threshold: 1.5,
        severity: Severity::Critical,
    }
}

#[test]
fn alerts_are_stored_with_their_reading_peeked_first_and_deleted_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = open(dir.path(), QueueOptions::default(), &["up"]);
    q.append(&[reading("a", Value::I64(1)), reading("b", Value::I64(2))])
        .expect("append");
    let batch = [reading("p", Value::F64(1.2)), reading("c", Value::I64(3))];
    let out = q
        .append_alerts(&batch, &[(0, alert("pipe-burst"))], None, SystemTime::now())
        .expect("append");
    assert_eq!(out.seqs, Some((3, 4)));
    let all = q.peek(0, 10).expect("peek");
    assert_eq!(all.iter().filter(|x| x.alert.is_some()).count(), 1);
    assert_eq!(all[2].alert, Some(alert("pipe-burst")), "seq 3 carries it");
    let alerts = q.peek_alerts(0, 10).expect("alerts");
    assert_eq!(seqs(&alerts), vec![3]);
    assert_eq!(alerts[0].reading.value, Value::F64(1.2));
    assert!(q.peek_alerts(3, 10).expect("alerts").is_empty());
    q.ack("up", 4, 4).expect("ack");
    assert!(
        q.peek_alerts(0, 10).expect("alerts").is_empty(),
        "deleted with its reading"
    );
}

#[test]
fn a_full_drop_newest_queue_still_takes_alerts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = QueueOptions {
        max_bytes: Some(256 * 1024),
        when_full: WhenFull::DropNewest,
        ..QueueOptions::default()
    };
    let mut q = open(dir.path(), opts, &["up"]);
    fill(&mut q, 200, 100);
    let before = q.stats().expect("stats");
    assert!(before.dropped_newest > 0, "full");
    let batch = [
        reading("p", Value::I64(1)),
        reading("low", Value::F64(0.4)),
        reading("q", Value::I64(2)),
    ];
    let out = q
        .append_alerts(&batch, &[(1, alert("pipe-burst"))], None, SystemTime::now())
        .expect("append");
    assert_eq!(out.dropped_newest, 2, "the plain readings are refused");
    let (first, last) = out.seqs.expect("the alert got a sequence id");
    assert_eq!(first, last);
    let got = q.peek(first - 1, 1).expect("peek");
    assert_eq!(got[0].reading.point.as_str(), "low");
    assert_eq!(got[0].alert, Some(alert("pipe-burst")));
}

#[test]
fn block_refuses_until_an_uplink_makes_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = QueueOptions {
        max_bytes: Some(256 * 1024),
        when_full: WhenFull::Block,
        ..QueueOptions::default()
    };
    let mut q = open(dir.path(), opts, &["up"]);
    let big: Vec<_> = (0..100)
        .map(|i| reading("p", Value::Text(format!("{i:0>64}"))))
        .collect();
    let mut accepted = 0;
    loop {
        match q.append(&big) {
            Ok(o) => accepted += o.seqs.map_or(0, |(a, b)| b - a + 1),
            Err(QueueError::Full { used, max }) => {
                assert!(used >= max);
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(accepted < 100_000, "the cap must be reached");
    }
    let s = q.stats().expect("stats");
    assert_eq!(
        (s.depth, s.dropped_oldest, s.dropped_newest),
        (accepted, 0, 0)
    );
    q.ack("up", accepted, accepted).expect("ack all");
    assert!(q.append(&big).expect("room again").seqs.is_some());
}

#[test]
fn max_age_drops_old_batches_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = QueueOptions {
        max_age: Some(Duration::from_secs(60)),
        ..QueueOptions::default()
    };
    let mut q = open(dir.path(), opts, &["up"]);
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    q.append_at(
        &[reading("p", Value::I64(1)), reading("p", Value::I64(2))],
        t0,
    )
    .expect("old");
    q.append_at(&[reading("p", Value::I64(3))], t0 + Duration::from_secs(50))
        .expect("young");
    assert_eq!(q.expire(t0 + Duration::from_secs(59)).expect("expire"), 0);
    assert_eq!(q.expire(t0 + Duration::from_secs(61)).expect("expire"), 2);
    let s = stats(&q.conn, &q.path, t0 + Duration::from_secs(70)).expect("stats");
    assert_eq!((s.depth, s.first_seq, s.dropped_age), (1, Some(3), 2));
    assert_eq!(s.oldest_age, Some(Duration::from_secs(20)));
    assert_eq!(q.expire(t0 + Duration::from_secs(200)).expect("expire"), 1);
    assert_eq!(q.stats().expect("stats").depth, 0);
}

#[test]
fn dead_letters_are_kept_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = open(dir.path(), QueueOptions::default(), &["up"]);
    q.append(&[reading("p", Value::I64(1)), reading("p", Value::I64(2))])
        .expect("append");
    q.dead_letter("up", &[2], "HTTP 400: bad payload")
        .expect("dead letter");
    q.ack("up", 2, 1).expect("ack");
    let s = q.stats().expect("stats");
    assert_eq!((s.depth, s.dead_letters), (0, 1));
    let kept: (i64, String) = q
        .conn
        .query_row("SELECT seq, error FROM dead_letters", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("row");
    assert_eq!(kept, (2, "HTTP 400: bad payload".to_string()));
}

#[test]
fn requeued_dead_letters_go_to_the_rejecting_uplink_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = open(dir.path(), QueueOptions::default(), &["https", "mqtt"]);
    let input = [
        reading("a", Value::I64(1)),
        reading("b", Value::F64(2.5)).with_unit("bar"),
        reading("c", Value::Text("x".into())).with_quality(Quality::Bad("exception 2".into())),
    ];
    q.append(&input).expect("append");
    q.dead_letter_each("https", &[(2, "HTTP 400: b"), (3, "HTTP 400: c")])
        .expect("dead letters");
    q.ack("https", 3, 1).expect("ack https");
    q.ack("mqtt", 3, 3).expect("ack mqtt");
    assert_eq!(q.stats().expect("stats").depth, 0);

    // Listed by a reader beside the gateway, with the reading as it was.
    let path = dir.path().join("q.db");
    let mut ins = Inspector::open(&path).expect("inspector");
    let letters = ins.dead_letters(Some("https"), 10).expect("list");
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0].queued.seq, 2);
    assert_eq!(letters[0].queued.reading, input[1]);
    assert_eq!(letters[1].queued.reading, input[2]);
    assert_eq!(letters[1].error, "HTTP 400: c");
    assert!(!letters[0].requeue_asked);
    assert!(ins.dead_letters(Some("mqtt"), 10).expect("list").is_empty());

    // Nothing happens until asked; asking marks, the gateway moves.
    assert_eq!(q.requeue_requested().expect("noop"), 0);
    let n = request_requeue(&path, &RequeueSelection::Ids(vec![letters[1].id, 999])).expect("mark");
    assert_eq!(n, 1, "unknown ids are ignored");
    assert!(ins.dead_letters(None, 10).expect("list")[1].requeue_asked);
    assert_eq!(q.requeue_requested().expect("move"), 1);
    assert_eq!(q.requeue_requested().expect("done"), 0);

    let back = q.peek(3, 10).expect("peek");
    assert_eq!(seqs(&back), [4], "a new sequence id");
    assert_eq!(
        back[0].reading, input[2],
        "the same reading, timestamp and quality"
    );
    assert_eq!(back[0].only_for.as_deref(), Some("https"));
    let left = ins.dead_letters(None, 10).expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].queued.seq, 2);

    // Only the rejecting uplink must deliver it; the row goes once both moved past it.
    q.ack("mqtt", 4, 0).expect("mqtt skips it");
    assert_eq!(q.stats().expect("stats").depth, 1);
    q.ack("https", 4, 1).expect("https delivers it");
    assert_eq!(q.stats().expect("stats").depth, 0);
    let targets: i64 = q
        .conn
        .query_row("SELECT count(*) FROM targets", [], |r| r.get(0))
        .expect("count");
    assert_eq!(targets, 0, "the target range went with its rows");

    // --all for one uplink; an uplink no longer configured keeps its dead letters.
    q.dead_letter("mqtt", &[], "none").expect("no-op");
    drop(q);
    let mut q = open(dir.path(), QueueOptions::default(), &["mqtt"]);
    request_requeue(&path, &RequeueSelection::All(None)).expect("mark all");
    assert_eq!(q.requeue_requested().expect("orphans"), 0);
    assert_eq!(ins.dead_letters(None, 10).expect("list").len(), 1);
}

#[test]
fn inspector_reads_beside_a_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = open(dir.path(), QueueOptions::default(), &["up"]);
    q.append(&[reading("p", Value::I64(7))]).expect("append");
    let mut ins = Inspector::open(q.path()).expect("inspector");
    assert_eq!(ins.stats().expect("stats").depth, 1);
    q.append(&[reading("p", Value::I64(8))])
        .expect("append while inspected");
    let got = ins.peek(0, 10).expect("peek");
    assert_eq!(seqs(&got), [1, 2]);
    assert!(Inspector::open(&dir.path().join("missing.db")).is_err());
}

/// Regression: a second gateway on the same queue handed out the same sequence ids as the
/// first (each cached `next_seq`); the second now fails to open, naming the lock.
#[test]
fn a_second_writer_on_the_same_queue_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(dir.path(), QueueOptions::default(), &["up"]);
    let err = Queue::open(&dir.path().join("q.db"), QueueOptions::default(), &["up"])
        .expect_err("locked");
    assert!(
        err.to_string()
            .contains("in use by another fieldgate process"),
        "{err}"
    );
    drop(first);
    let _again = open(dir.path(), QueueOptions::default(), &["up"]);
}

#[test]
fn dead_letters_are_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = open(dir.path(), QueueOptions::default(), &["up"]);
    q.append(&[reading("p", Value::I64(1))]).expect("append");
    q.conn
        .execute(
            "INSERT INTO dead_letters (uplink, seq, series, ts, kind, value, error, failed_ms)
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
             SELECT 'up', i, 1, 0, 1, i, 'old', 0 FROM n",
            [DEAD_LETTER_CAP],
        )
        .expect("fill");
    q.dead_letter("up", &[1], "new").expect("dead letter");
    let (n, newest): (i64, String) = q
        .conn
        .query_row("SELECT count(*), (SELECT error FROM dead_letters ORDER BY id DESC LIMIT 1) FROM dead_letters", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("count");
    assert_eq!(
        (n, newest.as_str()),
        (DEAD_LETTER_CAP, "new"),
        "the oldest went, the newest stayed"
    );
}

#[test]
fn a_database_from_the_future_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("q.db");
    Connection::open(&path)
        .and_then(|c| c.pragma_update(None, "user_version", 99))
        .expect("prepare");
    let err = Queue::open(&path, QueueOptions::default(), &["up"]).expect_err("refused");
    assert!(err.to_string().contains("newer fieldgate"), "{err}");
}

// ---- model test -------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Reading>),
    Peek { uplink: usize, limit: usize },
    Ack { uplink: usize, advance: u64 },
    Reopen,
}

fn value_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::I64),
        (-1e12f64..1e12).prop_map(Value::F64),
        "[a-z ]{0,8}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..6).prop_map(Value::Bytes),
    ]
}

fn reading_strategy() -> impl Strategy<Value = Reading> {
    (
        0..3usize,
        0..4usize,
        value_strategy(),
        0..3u8,
        proptest::option::of("[a-z%]{1,3}"),
        0i64..4_000_000_000_000_000,
    )
        .prop_map(|(dev, point, value, q, unit, ts)| {
            let mut r = Reading::new(
                "sim",
                format!("d{dev}"),
                format!("p{point}"),
                from_micros(ts),
                value,
            );
            r.unit = unit.map(Into::into);
            r.quality = match q {
                0 => Quality::Good,
                1 => Quality::Bad("bad".into()),
                _ => Quality::Stale("old".into()),
            };
            r
        })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(reading_strategy(), 0..12).prop_map(Op::Append),
        2 => (0..2usize, 1..20usize).prop_map(|(uplink, limit)| Op::Peek { uplink, limit }),
        3 => (0..2usize, 0..15u64).prop_map(|(uplink, advance)| Op::Ack { uplink, advance }),
        1 => Just(Op::Reopen),
    ]
}

/// The queue's contract, in memory: rows with ids, and one watermark per uplink.
#[derive(Debug, Default)]
struct Model {
    rows: Vec<(u64, Reading)>,
    next_seq: u64,
    marks: [u64; 2],
    appended: u64,
    delivered: u64,
}

impl Model {
    fn visible(&self, after: u64, limit: usize) -> Vec<(u64, Reading)> {
        self.rows
            .iter()
            .filter(|(s, _)| *s > after)
            .take(limit)
            .cloned()
            .collect()
    }
}

const UPLINKS: [&str; 2] = ["mqtt", "file"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn queue_behaves_like_its_model(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = Some(open(dir.path(), QueueOptions::default(), &UPLINKS));
        let mut m = Model { next_seq: 1, ..Model::default() };
        for op in ops {
            let queue = q.as_mut().expect("open");
            match op {
                Op::Append(batch) => {
                    let out = queue.append(&batch).expect("append");
                    if batch.is_empty() {
                        prop_assert_eq!(out.seqs, None);
                    } else {
                        let first = m.next_seq;
                        let n = batch.len() as u64;
                        prop_assert_eq!(out.seqs, Some((first, first + n - 1)));
                        m.rows.extend(batch.into_iter().enumerate().map(|(i, r)| (first + i as u64, r)));
                        m.next_seq += n;
                        m.appended += n;
                    }
                }
                Op::Peek { uplink, limit } => {
                    let after = m.marks[uplink];
                    prop_assert_eq!(queue.watermark(UPLINKS[uplink]), Some(after));
                    let got: Vec<_> = queue.peek(after, limit).expect("peek").into_iter().map(|q| (q.seq, q.reading)).collect();
                    prop_assert_eq!(got, m.visible(after, limit));
                }
                Op::Ack { uplink, advance } => {
                    let target = (m.marks[uplink] + advance).min(m.next_seq - 1);
                    queue.ack(UPLINKS[uplink], target, 0).expect("ack");
                    m.marks[uplink] = m.marks[uplink].max(target);
                    let low = m.marks[0].min(m.marks[1]);
                    let before = m.rows.len();
                    m.rows.retain(|(s, _)| *s > low);
                    m.delivered += (before - m.rows.len()) as u64;
                }
                Op::Reopen => {
                    q.take().expect("open").close().expect("close");
                    q = Some(open(dir.path(), QueueOptions::default(), &UPLINKS));
                }
            }
            let queue = q.as_mut().expect("open");
            let s = queue.stats().expect("stats");
            prop_assert_eq!(s.depth, m.rows.len() as u64);
            prop_assert_eq!(s.first_seq, m.rows.first().map(|r| r.0));
            prop_assert_eq!(s.appended, m.appended);
            prop_assert_eq!(s.delivered, m.delivered);
            prop_assert_eq!(queue.next_seq(), m.next_seq);
            let all: Vec<_> = queue.peek(0, usize::MAX >> 1).expect("peek all").into_iter().map(|q| (q.seq, q.reading)).collect();
            prop_assert_eq!(all, m.visible(0, usize::MAX));
        }
    }
}

// ---- clock ------------------------------------------------------------------------------

use crate::clock::{build_floor, ClockStamp};

fn stamp(boot: &str, wall: SystemTime, since_boot_s: u64, synchronized: bool) -> ClockStamp {
    ClockStamp {
        boot: boot.into(),
        wall,
        since_boot: Duration::from_secs(since_boot_s),
        synchronized,
    }
}

fn at(wall: SystemTime, value: i64) -> Reading {
    Reading::new("sim", "dev", "p", wall, Value::I64(value))
}

#[test]
fn readings_taken_before_the_clock_synced_are_restamped_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = open(dir.path(), QueueOptions::default(), &["up"]);
    // A Pi without a real-time clock: 100 s after boot its wall clock says 1970 + 100 s.
    let boot_wall = UNIX_EPOCH + Duration::from_secs(100);
    let early = stamp("boot-a", boot_wall, 100, false);
    // One reading taken 5 s before the commit, one at the commit.
    q.append_stamped(
        &[at(boot_wall - Duration::from_secs(5), 1), at(boot_wall, 2)],
        &early,
    )
    .expect("append");
    let before = q.peek(0, 10).expect("peek");
    assert!(
        before.iter().all(|r| r.unsynced),
        "flagged while the clock is wrong"
    );
    assert!(
        before.iter().all(|r| r.reading.ts == build_floor()),
        "never before the build date"
    );

    // 60 s later NTP sets the clock: at 160 s after boot it reads T.
    let t = build_floor() + Duration::from_secs(86_400);
    assert_eq!(
        q.restamp(&stamp("boot-a", t, 160, true)).expect("restamp"),
        2
    );
    let after = q.peek(0, 10).expect("peek");
    assert!(after.iter().all(|r| !r.unsynced));
    // Taken at 95 s and 100 s after boot: T - 65 s and T - 60 s.
    assert_eq!(after[0].reading.ts, t - Duration::from_secs(65));
    assert_eq!(after[1].reading.ts, t - Duration::from_secs(60));
    assert_eq!(
        q.restamp(&stamp("boot-a", t, 161, true)).expect("again"),
        0,
        "done once"
    );
}

#[test]
fn readings_of_a_boot_that_never_synced_stay_flagged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = open(dir.path(), QueueOptions::default(), &["up"]);
    let wall = UNIX_EPOCH + Duration::from_secs(30);
    q.append_stamped(&[at(wall, 1)], &stamp("boot-a", wall, 30, false))
        .expect("append");
    // Rebooted; the new boot synchronizes: the old boot's timeline cannot be placed.
    let t = build_floor() + Duration::from_secs(3600);
    assert_eq!(
        q.restamp(&stamp("boot-b", t, 20, true)).expect("restamp"),
        0
    );
    let got = q.peek(0, 10).expect("peek");
    assert!(got[0].unsynced, "still flagged");
    assert_eq!(got[0].reading.ts, build_floor());
    // Delivered and deleted: nothing is left behind.
    q.ack("up", 1, 1).expect("ack");
    let left: i64 = q
        .conn
        .query_row("SELECT count(*) FROM unsynced", [], |r| r.get(0))
        .expect("count");
    assert_eq!(left, 0);
}

#[test]
fn a_synchronized_clock_is_trusted_except_before_the_build_date() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = open(dir.path(), QueueOptions::default(), &["up"]);
    let now = build_floor() + Duration::from_secs(10);
    let odd = UNIX_EPOCH + Duration::from_secs(31_536_000); // a device that thinks it is 1971
    q.append_stamped(&[at(now, 1), at(odd, 2)], &stamp("boot-a", now, 500, true))
        .expect("append");
    let got = q.peek(0, 10).expect("peek");
    assert_eq!((got[0].unsynced, got[1].unsynced), (false, true));
    assert_eq!(got[0].reading.ts, now);
}

/// Regression: a batch enqueued while the clock said 1970 looked 56 years old once the clock
/// was set, and `max_age` deleted it at once.
#[test]
fn max_age_does_not_expire_readings_queued_under_a_wrong_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = QueueOptions {
        max_age: Some(Duration::from_secs(3600)),
        ..QueueOptions::default()
    };
    let mut q = open(dir.path(), opts, &["up"]);
    let wrong = UNIX_EPOCH + Duration::from_secs(100);
    q.append_stamped(&[at(wrong, 1)], &stamp("boot-a", wrong, 100, false))
        .expect("append");
    let t = build_floor() + Duration::from_secs(86_400);
    // Before the sync the batch's age is unknown: kept.
    assert_eq!(q.expire(t).expect("expire"), 0);
    // Synced 60 s after it was queued: re-stamped, and 60 s old, not 56 years.
    q.restamp(&stamp("boot-a", t, 160, true)).expect("restamp");
    assert_eq!(q.expire(t).expect("expire"), 0);
    let s = stats(&q.conn, &q.path, t).expect("stats");
    assert_eq!(s.oldest_age, Some(Duration::from_secs(60)));
    assert_eq!(
        q.expire(t + Duration::from_secs(3600)).expect("expire"),
        1,
        "expires an hour after it was queued"
    );
}

#[test]
fn the_disk_reserve_is_written_released_on_a_full_disk_and_written_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = open(dir.path(), QueueOptions::default(), &["u"]);
    let reserve = dir.path().join("q.db.reserve");
    let len = || std::fs::metadata(&reserve).map(|m| m.len()).ok();
    assert_eq!(len(), Some(RESERVE_BYTES), "written when the queue opens");
    q.append(&[reading("a", Value::I64(1))]).expect("append");
    assert!(q.relieve_disk().expect("relieve"), "released");
    assert_eq!(len(), None);
    assert!(
        !q.relieve_disk().expect("relieve"),
        "nothing left to release"
    );
    let wal = dir.path().join("q.db-wal");
    assert_eq!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0),
        0,
        "the WAL is truncated"
    );
    assert!(q.restore_reserve());
    assert_eq!(len(), Some(RESERVE_BYTES));
    assert_eq!(q.peek(0, 10).expect("peek").len(), 1, "nothing lost");
}

#[test]
fn dropping_for_a_full_disk_frees_whole_pages_from_the_front() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = open(dir.path(), QueueOptions::default(), &["u"]);
    let batch: Vec<Reading> = (0..20_000).map(|i| reading("a", Value::I64(i))).collect();
    q.append(&batch).expect("append");
    let before = q.stats().expect("stats");
    let n = q.drop_oldest_bytes(256 * 1024).expect("drop");
    let after = q.stats().expect("stats");
    assert!(n > 1000, "256 KiB of rows, not a handful: {n}");
    assert_eq!(after.first_seq, Some(before.first_seq.expect("first") + n));
    assert_eq!(after.dropped_oldest, n, "counted");
    let conn = Connection::open(dir.path().join("q.db")).expect("open");
    let free: i64 = conn
        .pragma_query_value(None, "freelist_count", |r| r.get(0))
        .expect("freelist");
    assert!(free > 0, "whole pages were freed for new rows");
}
