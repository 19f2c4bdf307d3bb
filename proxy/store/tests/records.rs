//! Share and connection events become records (text fitted to the columns, identity fixed
//! once), and records round-trip through the spool's binary form.

use loka_store::events::{ConnectionEvent, Event};
use loka_store::record::*;
use loka_test_support::share_event;

use loka_store::compact_str::CompactString;
use rust_decimal::Decimal;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

#[test]
fn records_round_trip_through_the_binary_form() {
    let mut rec = Recorder::new("main");
    let records: Vec<Record> = [
        Event::Connection(ConnectionEvent::Authorized {
            at: SystemTime::now(),
            connection_id: 7,
            worker: Arc::from("alice.rig1"),
            pool: Arc::from(""),
            user_agent: Some("bitaxe/2.0".into()),
            remote: "10.1.2.3:4000".parse().unwrap(),
        }),
        Event::Share(share_event("alice.rig1", 1, true)),
        Event::Share(share_event("alice.rig1", 2, false)),
        Event::Connection(ConnectionEvent::Connected {
            connection_id: 8,
            remote: "10.1.2.3:4001".parse().unwrap(),
        }),
        Event::Connection(ConnectionEvent::Disconnected {
            at: SystemTime::now(),
            connection_id: 7,
            worker: Some(Arc::from("alice.rig1")),
            reason: "peer closed".into(),
        }),
    ]
    .into_iter()
    .filter_map(|e| rec.record(e))
    .collect();
    assert_eq!(
        records.len(),
        4,
        "an unauthorized connection stores nothing"
    );
    let mut buf = Vec::new();
    encode(&records, &mut buf);
    assert_eq!(decode(&buf).unwrap(), records);
    for cut in [0, 3, 10, buf.len() - 1] {
        assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = buf.clone();
    longer.push(0);
    assert!(decode(&longer).is_err());
}

#[test]
fn text_is_made_to_fit_and_identity_is_fixed_once() {
    let mut e = share_event("bob", 1, false);
    e.job_id = "j".repeat(500).into();
    e.worker = Arc::from(format!("bob\0.{}", "é".repeat(300)).as_str());
    e.difficulty = Decimal::from_str("0.123456789").unwrap();
    let Some(Record::Share(s)) = Recorder::new("p").record(Event::Share(e.clone())) else {
        panic!()
    };
    assert_eq!(s.job_id.len(), 64);
    assert_eq!(s.worker.chars().count(), 255);
    assert!(!s.worker.contains('\0'));
    assert_eq!(s.difficulty, Decimal::from_str("0.12345678").unwrap());
    assert_eq!(s.at_us, micros(e.at));
    assert_eq!(s.id.get_version_num(), 7);
    // a short string still loses its NUL bytes; one that fits keeps its buffer
    let mut e = share_event("bob", 2, true);
    e.ntime = "6543\0abc".into();
    e.difficulty = Decimal::from(10_i64.pow(15));
    let Some(Record::Share(s)) = Recorder::new("p").record(Event::Share(e)) else {
        panic!()
    };
    assert_eq!(s.ntime, "6543abc");
    assert_eq!(
        s.difficulty,
        Decimal::from_str("999999999999.99999999").unwrap()
    );
    // the column's largest value is kept as it is, not cut to its integer part
    for kept in [
        "999999999999.99999999",
        "999999999999.9999999",
        "0.00000001",
    ] {
        let mut e = share_event("bob", 3, true);
        e.difficulty = Decimal::from_str(kept).unwrap();
        let Some(Record::Share(s)) = Recorder::new("p").record(Event::Share(e)) else {
            panic!()
        };
        assert_eq!(s.difficulty, Decimal::from_str(kept).unwrap());
    }
    let nonce = String::from("0000abcd");
    let at = nonce.as_ptr();
    let kept = fit_owned(nonce, 8);
    assert_eq!(kept.as_ptr(), at);
    assert_eq!(fit_owned(String::from("0000abcd1"), 8), "0000abcd");
    let worker: Arc<str> = Arc::from("alice.rig1");
    assert!(Arc::ptr_eq(&fit_owned(worker.clone(), 255), &worker));
    assert_eq!(fit_owned(CompactString::from("ab\0c"), 8), "abc");
    assert_eq!(miner_of("alice.rig1.x"), "alice");
    assert_eq!(miner_of("carol"), "carol");
    assert_eq!(miner_of(".x"), ".x");
}

#[test]
fn authorized_workers_follow_the_pool_of_the_latest_share() {
    let mut rec = Recorder::new("primary");
    let auth = || {
        Event::Connection(ConnectionEvent::Authorized {
            at: SystemTime::now(),
            connection_id: 1,
            worker: Arc::from("a.b"),
            pool: Arc::from(""),
            user_agent: None,
            remote: "127.0.0.1:1".parse().unwrap(),
        })
    };
    let Some(Record::Connect(c)) = rec.record(auth()) else {
        panic!()
    };
    assert_eq!(c.pool, "primary");
    let mut e = share_event("a.b", 1, true);
    e.pool = Arc::from("backup");
    rec.record(Event::Share(e));
    let Some(Record::Connect(c)) = rec.record(auth()) else {
        panic!()
    };
    assert_eq!(c.pool, "backup");
}
